"""Tests of the energy+force grid search (bpnn_jax.training.tuning_ef, ``python -m experiments.grid --ef``).

A 2-point grid (1 hidden layer of 8 or 16 nodes) on 40 training structures
of the bundled sample, 3 epochs per trial.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (JAX backend for Keras)
from bpnn_jax.io import sample_data_dir
from bpnn_jax.training.tuning_ef import EF_COLUMNS, ef_grid_hyperparameters
from experiments import grid as grid_cli

ARGS = ["--ef", "--subset", "40", "--epochs", "3", "--layers", "1", "--nodes", "8", "16", "--atoms-per-batch", "256",
        "--verbose", "0"]


def _rows(out):
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid_ef")
    rc = grid_cli.main([*ARGS, "--data", str(sample_data_dir()), "--out", str(out)])
    return out, rc


def test_every_point_trained_once_and_scored(grid_run):
    out, rc = grid_run
    assert rc == 0
    rows = _rows(out)
    assert list(rows[0]) == list(EF_COLUMNS)
    assert sorted(int(r["nodes"]) for r in rows) == [8, 16]
    for r in rows:
        e, f, obj = (float(r[k]) for k in ("val_energy_rmse_mev_atom", "val_force_rmse_ev_a", "val_objective"))
        assert all(math.isfinite(x) and x > 0 for x in (e, f, obj))
        # The objective is the committee's validation E MSE + λ F MSE at λ = 1.5e-2 (the default).
        assert obj == pytest.approx((e / 1e3) ** 2 + 1.5e-2 * f * f, rel=1e-9)
    md = (out / "results.md").read_text()
    assert "| 1 | 1 |" in md and "tanh" in md
    assert json.loads((out / "grid.json").read_text())["mode"] == "ef"


def test_scores_match_the_trainers_own_validation(grid_run):
    """The recomputed committee errors equal those the trainer logged at the kept (best) epoch."""
    out, _ = grid_run
    for r in _rows(out):
        hist_path = next((out / "trials").glob(f"*nodes={r['nodes']}_*")) / "ef_history.csv"
        with open(hist_path, newline="") as fh:
            hist = list(csv.DictReader(fh))
        rec = hist[int(r["best_epoch"]) - 1]
        assert float(r["val_energy_rmse_mev_atom"]) == pytest.approx(
            float(rec["val_committee_energy_rmse_mev_atom"]), rel=1e-4)
        assert float(r["val_force_rmse_ev_a"]) == pytest.approx(float(rec["val_committee_force_rmse_ev_a"]), rel=1e-4)


def test_rerun_trains_nothing_and_other_settings_are_refused(grid_run, capsys):
    out, _ = grid_run
    before = {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("ef_state.npz")}
    assert len(before) == 2
    assert grid_cli.main([*ARGS, "--data", str(sample_data_dir()), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("ef_state.npz")} == before
    assert len(_rows(out)) == 2
    capsys.readouterr()
    assert grid_cli.main([*ARGS[:-2], "--epochs", "4", "--data", str(sample_data_dir()), "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_choices_are_validated():
    hp = ef_grid_hyperparameters({"nodes": [32], "activation": ["silu", "tanh"]})
    assert {h.name: list(h.values) for h in hp.space} == {
        "layers": [2, 3], "nodes": [32], "activation": ["silu", "tanh"], "weight_decay": [5e-4]}
    for bad in ({"nodes": [0]}, {"activation": ["relu6"]}, {"weight_decay": [-1.0]}, {"depth": [2]},
                {"layers": []}, {"nodes": [8, 8]}):
        with pytest.raises(ValueError):
            ef_grid_hyperparameters(bad)
    assert np.isclose(ef_grid_hyperparameters().space[3].values[0], 5e-4)
