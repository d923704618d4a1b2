"""Tests of the resumable KerasTuner grid search (bpnn_jax.training.tuning, experiments.grid).

The end-to-end tests run ``--quick`` (2 grid points on 60 structures).  The
descriptors of those structures are computed once per module and copied
into each run's output directory, where the run finds them as its cache.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (JAX backend for Keras)
from bpnn_jax.descriptors import SymmetryFunctionSet
from bpnn_jax.training import TrainConfig
from bpnn_jax.training.tuning import (
    DEFAULT_CHOICES,
    RESULT_COLUMNS,
    BPNNGridSearch,
    BPNNHyperModel,
    ResultsTable,
    ResumableGridSearchOracle,
    grid_hyperparameters,
    prepare_tuning_data,
    select_files,
)

from experiments import grid as grid_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_POINTS = {(1, 8, 1e-3, 0.0), (2, 8, 1e-3, 0.0)}


def _rows(out: Path) -> list[dict]:
    path = out / "results.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _points(rows) -> list[tuple]:
    return [(int(r["layers"]), int(r["nodes"]), float(r["learning_rate"]), float(r["dropout"])) for r in rows]


def _assert_complete(out: Path) -> None:
    rows = _rows(out)
    points = _points(rows)
    assert sorted(points) == sorted(QUICK_POINTS), points  # every grid point exactly once
    for r in rows:
        assert list(r) == list(RESULT_COLUMNS)
        assert math.isfinite(float(r["val_energy_rmse_mev_atom"]))
        assert math.isfinite(float(r["val_energy_rmse_ev_total"]))
        assert r["val_force_rmse_ev_a"] == ""  # energies only
    assert "| rank |" in (out / "results.md").read_text()
    assert (out / "trials.png").stat().st_size > 0
    best = out / "best"
    assert (best / "model.keras").exists()
    metrics = json.loads((best / "test_metrics.json").read_text())
    assert metrics["n_structures"] > 0 and math.isfinite(metrics["energy_rmse_ev"])
    assert (best / "plots" / "parity_energy.png").exists()
    assert "test split" in (out / "results.md").read_text()


@pytest.fixture(scope="module")
def quick_cache(tmp_path_factory, data_dir) -> Path:
    """The descriptor cache of ``--quick``'s structures, computed once."""
    out = tmp_path_factory.mktemp("quick_cache")
    files = select_files(data_dir, grid_cli.QUICK["subset"], 0)
    prepare_tuning_data(files, TrainConfig(seed=0), cache=out / "descriptors.npz", progress=False)
    return out / "descriptors.npz"


def _quick_out(tmp_path: Path, quick_cache: Path) -> Path:
    out = tmp_path / "grid"
    (out / "cache").mkdir(parents=True)
    shutil.copy(quick_cache, out / "cache" / "descriptors.npz")
    return out


# ------------------------------------------------------------ unit tests
def _fake_statistics(n_elements: int, n_functions: int) -> dict:
    shape = (n_elements, n_functions)
    return dict(sf_mean=np.full(shape, 0.5), sf_std=np.full(shape, 2.0), sf_min=np.zeros(shape),
                sf_max=np.ones(shape), energy_shift=np.array([-1.0, -2.0]), energy_scale=0.3)


@pytest.mark.parametrize("layers,nodes,learning_rate,dropout", [(5, 32, 1e-4, 0.1), (4, 16, 5e-4, 0.0),
                                                                (6, 64, 5e-5, 0.0)])
def test_build_gives_the_requested_architecture(layers, nodes, learning_rate, dropout):
    """A trial is the study's set-up (--preset seed) on the committee trainer with the grid point's values;
    its network exports with the requested architecture and the shared statistics."""
    import jax

    from bpnn_jax.training import jacobian as jt

    spec = SymmetryFunctionSet.preset("artrith-urban", ("O", "Ti"))
    F = spec.n_functions
    stats = _fake_statistics(2, F)
    hm = BPNNHyperModel(spec.to_config(), stats, reference_energies={"O": -1.0, "Ti": -2.0})
    hp = hm.hyperparameters_for(dict(layers=layers, nodes=nodes, learning_rate=learning_rate, dropout=dropout))
    cfg = hm.build(hp, epochs=7, atoms_per_batch=300)
    assert cfg.members == 1 and cfg.hidden == (nodes,) * layers and cfg.dropout == dropout
    assert cfg.learning_rate == cfg.final_learning_rate == pytest.approx(learning_rate)
    assert cfg.energy_loss == "mae" and float(cfg.weights()[0]) == 0.0  # energies only
    assert cfg.epochs == 7 and cfg.atoms_per_batch == 300 and cfg.final_epochs == 0 and cfg.ema_decay == 0.0
    params = jt.init_params(jax.random.PRNGKey(0), 1, 2, F, cfg.hidden)
    model = hm.to_model(params, cfg)
    assert model.hidden == (nodes,) * layers
    assert model.dropout == dropout
    for net in model.nets:
        assert [d.units for d in net.dense] == [nodes] * layers
        assert net.out.units == 1
    per_net = F * nodes + nodes + (layers - 1) * (nodes * nodes + nodes) + nodes + 1
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 2 * per_net
    np.testing.assert_allclose(np.asarray(model.sf_std), 2.0)
    assert float(np.asarray(model.energy_scale)) == pytest.approx(0.3)
    assert model.reference_energies == {"O": -1.0, "Ti": -2.0}


def test_search_space_and_grid_order():
    hp = grid_hyperparameters()
    assert {p.name: list(p.values) for p in hp.space} == {k: list(v) for k, v in DEFAULT_CHOICES.items()}
    oracle = ResumableGridSearchOracle(hyperparameters=hp)
    points = oracle.grid()
    assert len(points) == 3 * 3 * 3 * 2 == len({tuple(p.values()) for p in points})
    # GridSearch's order: the last hyper-parameter varies fastest.
    assert points[0] == dict(layers=4, nodes=16, learning_rate=5e-4, dropout=0.0)
    assert points[1] == dict(layers=4, nodes=16, learning_rate=5e-4, dropout=0.1)
    assert points[-1] == dict(layers=6, nodes=64, learning_rate=5e-5, dropout=0.1)
    with pytest.raises(ValueError):
        grid_hyperparameters({"dropout": [0.0, 1.5]})
    with pytest.raises(ValueError):
        grid_hyperparameters({"width": [3]})


def test_results_table_records_each_point_once(tmp_path):
    table = ResultsTable(tmp_path / "results.csv")
    row = dict(trial_id="0003", layers=4, nodes=16, learning_rate=5e-4, dropout=0.0,
               val_energy_rmse_mev_atom=12.5, val_energy_rmse_ev_total=0.4, epochs_run=3, seconds=1.0)
    assert table.append(row)
    assert not table.append({**row, "val_energy_rmse_mev_atom": 1.0})
    assert table.keys() == {(4, 16, 5e-4, 0.0)}
    got = table.get(dict(layers=4.0, nodes=16, learning_rate=0.0005, dropout=0))
    assert got["trial_id"] == "0003" and got["val_energy_rmse_mev_atom"] == 12.5
    assert got["val_force_rmse_ev_a"] is None
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries


class _SimulatedCrash(BaseException):
    """Not an ``Exception``: KerasTuner does not catch it, like a killed process."""


class _ToyGridSearch(BPNNGridSearch):
    """Trains nothing: the objective is a function of the grid point."""

    def train_trial(self, trial, log, crash_in=None, **kwargs):
        v = trial.hyperparameters.values
        log.append(self.results.key(v))
        if crash_in is not None and len(log) == crash_in:
            raise _SimulatedCrash()
        score = v["layers"] * v["nodes"] * v["learning_rate"] * 1e3 + v["dropout"]
        return {"val_energy_rmse_mev_atom": score, "val_energy_rmse_ev_total": 1.0}, 1


@pytest.mark.parametrize("where", ["mid_trial", "after_record"])
def test_every_grid_point_exactly_once_across_crashes(tmp_path, monkeypatch, where):
    """KerasTuner state and results.csv after crashes at many points, the first trial included."""
    results = ResultsTable(tmp_path / "results.csv")
    real_append = ResultsTable.append
    trained, crashes = [], 0
    for crash_in in (1, 1, 3, 10, 25, 2, None):  # n-th trial of a session dies
        session = []
        kwargs = {}
        if where == "mid_trial":
            kwargs["crash_in"] = crash_in
        else:
            appended = []

            def append_then_die(self, row, appended=appended, crash_in=crash_in):
                written = real_append(self, row)
                appended.append(row)
                if len(appended) == crash_in:
                    raise _SimulatedCrash()  # recorded, but KerasTuner never hears of it
                return written

            monkeypatch.setattr(ResultsTable, "append", append_then_die)
        tuner = _ToyGridSearch(None, results=results, directory=str(tmp_path / "tuner"), project_name="p",
                               overwrite=False)
        try:
            tuner.search(session, verbose=0, **kwargs)
        except _SimulatedCrash:
            crashes += 1
        else:
            assert crash_in is None
        trained += session
    rows = results.rows()
    grid = ResumableGridSearchOracle(hyperparameters=grid_hyperparameters()).grid()
    assert sorted(results.key(r) for r in rows) == sorted(results.key(g) for g in grid)
    assert len({r["trial_id"] for r in rows}) == len(rows)
    assert crashes == 6
    if where == "mid_trial":  # each interrupted trial is trained once more, nothing else
        assert len(trained) == len(grid) + crashes
    else:  # a recorded trial is never trained again
        assert len(trained) == len(grid)
    assert len(set(trained)) == len(grid)


# ------------------------------------------------------- end to end, fast


def test_crash_mid_trial_then_resume_in_process(tmp_path, data_dir, quick_cache, monkeypatch, capsys):
    out = _quick_out(tmp_path, quick_cache)
    argv = ["--quick", "--data", str(data_dir), "--out", str(out), "--verbose", "0"]
    fitted = []
    real_fit = BPNNHyperModel.fit

    def crash_on_second(self, hp, model, *args, **kwargs):
        fitted.append(dict(hp.values))
        if len(fitted) == 2:
            raise _SimulatedCrash()
        return real_fit(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(BPNNHyperModel, "fit", crash_on_second)
    with pytest.raises(_SimulatedCrash):
        grid_cli.main(argv)
    assert _points(_rows(out)) == [(1, 8, 1e-3, 0.0)]
    # KerasTuner left the interrupted trial RUNNING: the state a resume must handle.
    statuses = {json.loads(p.read_text())["status"] for p in (out / "tuner" / "bpnn_grid").glob("trial_*/trial.json")}
    assert statuses == {"COMPLETED", "RUNNING"}
    assert not (out / "results.md").exists()

    def spy(self, hp, model, *args, **kwargs):
        fitted.append(dict(hp.values))
        return real_fit(self, hp, model, *args, **kwargs)

    fitted.clear()
    monkeypatch.setattr(BPNNHyperModel, "fit", spy)
    assert grid_cli.main(argv) == 0
    assert [f["layers"] for f in fitted] == [2]  # only the interrupted grid point is trained again
    _assert_complete(out)

    # A finished run started again trains nothing and keeps the record.
    fitted.clear()
    before = (out / "results.csv").read_text()
    assert grid_cli.main(argv) == 0
    assert fitted == []
    assert (out / "results.csv").read_text() == before
    _assert_complete(out)
    assert "finished already" in capsys.readouterr().out


def test_failed_trial_is_retried_by_the_next_run(tmp_path, data_dir, quick_cache, monkeypatch):
    out = _quick_out(tmp_path, quick_cache)
    argv = ["--quick", "--data", str(data_dir), "--out", str(out), "--verbose", "0", "--no-retrain"]
    real_fit = BPNNHyperModel.fit
    fitted = []

    def fail_first_point(self, hp, model, *args, **kwargs):
        fitted.append(hp.values["layers"])
        if hp.values["layers"] == 1:
            raise RuntimeError("simulated failure")
        return real_fit(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(BPNNHyperModel, "fit", fail_first_point)
    assert grid_cli.main(argv) == 1  # one grid point missing
    assert fitted == [1, 2]  # the failure was not retried in the same run
    assert _points(_rows(out)) == [(2, 8, 1e-3, 0.0)]

    def spy(self, hp, model, *args, **kwargs):
        fitted.append(hp.values["layers"])
        return real_fit(self, hp, model, *args, **kwargs)

    fitted.clear()
    monkeypatch.setattr(BPNNHyperModel, "fit", spy)
    assert grid_cli.main(argv) == 0
    assert fitted == [1]
    assert sorted(_points(_rows(out))) == sorted(QUICK_POINTS)


def test_other_settings_in_the_same_directory_are_refused(tmp_path, data_dir, capsys):
    out = tmp_path / "grid"
    out.mkdir()
    (out / "grid.json").write_text(json.dumps({"epochs": 999}))
    assert grid_cli.main(["--quick", "--data", str(data_dir), "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err


# ------------------------------------------------- end to end, real kill
@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun(tmp_path, data_dir, quick_cache):
    out = _quick_out(tmp_path, quick_cache)
    cmd = [sys.executable, "-m", "experiments.grid", "--quick", "--data", str(data_dir), "--out", str(out),
           "--verbose", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log1 = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT)
    second_trial = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            # Kill once the first row is recorded and the second trial has started.
            started = [json.loads(p.read_text()) for p in (out / "tuner" / "bpnn_grid").glob("trial_*/trial.json")]
            running = [t for t in started if t["status"] == "RUNNING"]
            if len(_rows(out)) == 1 and running and running[0]["hyperparameters"]["values"]["layers"] == 2:
                second_trial = running[0]["trial_id"]
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log1.close()
    assert second_trial is not None, (tmp_path / "run1.log").read_text()[-3000:]
    assert len(_rows(out)) == 1, "the second trial finished before the kill"

    run2 = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run2.returncode == 0, run2.stdout[-3000:] + run2.stderr[-3000:]
    assert "trial 1/2 (id" not in run2.stdout  # the finished trial is not trained again
    assert run2.stdout.count("trial 2/2 (id") == 1  # the interrupted one is
    _assert_complete(out)
