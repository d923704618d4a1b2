"""Tests of the command line: ``bpnn-jax energies``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bpnn_jax import cli
from bpnn_jax.cli import main
from bpnn_jax.io import ENERGY_CSV_COLUMNS, energy_table, read_structures, sample_data_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_energies_writes_csv(tmp_path, small_files, capsys):
    out = tmp_path / "e.csv"
    files = [str(f) for f in small_files[:3]]
    assert main(["energies", *files, "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert list(rows[0]) == list(ENERGY_CSV_COLUMNS)
    assert [r["file"] for r in rows] == files
    expected = energy_table(read_structures(files)[0])
    for r, e in zip(rows, expected):
        assert int(r["n_atoms"]) == e["n_atoms"]
        assert r["composition"] == e["composition"]
        assert float(r["energy_ev"]) == e["energy_ev"]
        assert float(r["cohesive_energy_per_atom_ev"]) == e["cohesive_energy_per_atom_ev"]
    assert rows[0]["composition"] == "O16Ti8"
    assert float(rows[0]["cohesive_energy_per_atom_ev"]) == pytest.approx(-8.490634298, abs=1e-11)
    err = capsys.readouterr().err
    assert "wrote 3 structure(s)" in err


def test_energies_directory_and_references(tmp_path):
    out = tmp_path / "s.csv"
    d = sample_data_dir()
    assert main(["energies", str(d), "-o", str(out), "--ref", "O=0", "--ref", "Ti=0", "--no-progress"]) == 0
    rows = _read_csv(out)
    assert len(rows) == len(list(d.glob("*.xsf")))
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)
    for r in rows:  # zero references: cohesive energy = energy per atom
        assert float(r["cohesive_energy_per_atom_ev"]) == pytest.approx(float(r["energy_per_atom_ev"]), rel=1e-14)


def test_energies_bad_file_exit_2(tmp_path, small_files, capsys):
    bad = tmp_path / "bad.xsf"
    bad.write_text("# total energy = -1.0 eV\nCRYSTAL\nPRIMVEC\n1 0 0\n0 1 0\n")
    out = tmp_path / "e.csv"
    assert main(["energies", str(small_files[0]), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert str(bad) in err and "PRIMVEC needs 3 rows" in err and "line 5" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_energies_skip_invalid(tmp_path, small_files, capsys):
    bad = tmp_path / "bad.xsf"
    bad.write_bytes(b"\xff\xfe garbage")
    out = tmp_path / "e.csv"
    assert main(["energies", str(bad), str(small_files[1]), "--skip-invalid", "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert [r["file"] for r in rows] == [str(small_files[1])]
    err = capsys.readouterr().err
    assert f"skipped {bad}" in err and "UTF-8" in err
    # nothing readable at all is an error
    assert main(["energies", str(bad), "--skip-invalid", "--out", str(tmp_path / "n.csv")]) == 2
    assert "no readable structures" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv_tail", "fragment"),
    [
        (["{tmp}/missing.xsf", "--out", "{tmp}/e.csv"], "no such file"),
        (["{file}", "--out", "{tmp}/nodir/e.csv"], "does not exist"),
        (["{tmp}", "--out", "{tmp}/e.csv"], "no .xsf files"),
    ],
)
def test_energies_input_errors(tmp_path, small_files, capsys, argv_tail, fragment):
    argv = ["energies"] + [a.format(tmp=tmp_path, file=small_files[0]) for a in argv_tail]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["energies", "x.xsf"]) == 2  # --out missing
    assert main(["energies", "x.xsf", "--out", "e.csv", "--ref", "O"]) == 2
    assert main(["nosuchcommand"]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert "energies" in capsys.readouterr().out
    assert main(["energies", "--help"]) == 0
    assert "--skip-invalid" in capsys.readouterr().out
    # train: the common options in --help, every option in --help-all.
    assert main(["train", "--help"]) == 0
    short = capsys.readouterr().out
    assert "--out RUN_DIR" in short and "--members" in short and "--help-all" in short
    assert "--ema-decay" not in short and len(short.splitlines()) < 90
    assert main(["train", "--help-all"]) == 0
    full = capsys.readouterr().out
    assert "--ema-decay" in full and "--preset" in full and len(full.splitlines()) > len(short.splitlines())


def test_keyboard_interrupt_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "energies", (cli.energies.add_energies_parser, interrupted))
    assert main(["energies", "x.xsf", "--out", "e.csv"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_python_m_bpnn_jax_bad_file(tmp_path):
    bad = tmp_path / "bad.xsf"
    bad.write_text("# total energy = -1.0 eV\nATOMS\nQq 0 0 0\n")
    out = tmp_path / "e.csv"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "bpnn_jax", "energies", str(bad), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: {bad}, line 3: unknown element 'Qq'" in proc.stderr
    assert not out.exists()


def test_resume_reads_the_data_paths_from_the_run_config(tmp_path, monkeypatch, capsys):
    """`train --out RUN --resume` needs no DATA: they come from RUN/config.yaml; no config.yaml is a clear error."""
    import bpnn_jax.training as training

    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume (no config.yaml)" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n- a.extxyz\n- b.extxyz\nout: elsewhere\nmembers: 5\n")
    seen = {}

    def fake_train(paths, out, config, *, resume, **kw):
        seen.update(paths=paths, out=out, resume=resume, members=config.members, lbfgs=kw["resume_overrides"])

    monkeypatch.setattr(training, "train", fake_train)
    assert main(["train", "--out", str(run), "--resume", "--ef-lbfgs-steps", "7"]) == 0
    assert seen == {"paths": ["a.extxyz", "b.extxyz"], "out": str(run), "resume": True, "members": 5,
                    "lbfgs": {"ef_lbfgs_steps": 7}}


def test_preset_seed_runs_the_study_on_the_committee_trainer(tmp_path, six_atom_files, capsys):
    """--preset seed: one network on energies only, MAE, 5 x 64 tanh, constant lr 1e-4, ~20 structures per
    batch (turned into padded atoms, said in the log), no final phase, on the committee trainer."""
    import json

    from bpnn_jax.model import load_model

    files = [str(f) for f in six_atom_files[:12]]
    assert main(["train", *files, "--out", str(tmp_path / "run"), "--preset", "seed", "--ef-epochs", "3"]) == 0
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["members"] == 1 and config["ef_force_weight"] == 0.0 and config["energy_loss"] == "mae"
    assert config["hidden"] == [64] * 5 and config["activation"] == "tanh"
    assert config["ef_learning_rate"] == config["ef_final_learning_rate"] == 1e-4
    assert config["ema_decay"] == 0.0 and config["weight_decay"] == 0.0 and config["ef_final_epochs"] == 0
    assert config["ef_epochs"] == 3 and config["batch_size"] == 20  # a flag overrides the preset
    # Six-atom structures are padded to 8 atoms: 20 x 8 = 160 atoms per batch.
    assert "--batch-size 20: 20 structures x 8.0 padded atoms" in out and "= 160 atoms per batch" in out
    assert "energy-only committee of 1" in out
    state = np.load(tmp_path / "run" / "ef_state.npz")
    meta = json.loads(bytes(state["meta"]).decode())
    assert meta["config"]["atoms_per_batch"] == 160 and meta["config"]["energy_loss"] == "mae"
    assert {round(r["learning_rate"], 12) for r in meta["history"]} == {1e-4}
    model = load_model(tmp_path / "run" / "model.keras")
    assert model.members == 1 and model.hidden == (64,) * 5 and model.energy_loss == "mae"


@pytest.mark.parametrize("flag,replacement", [
    ("--energy-epochs", "--ef-epochs"), ("--force-epochs", "--ef-epochs"), ("--lbfgs-steps", "--ef-lbfgs-steps"),
    ("--lbfgs-force-weight", "--ef-force-weight"), ("--force-weight", "--ef-force-weight"),
    ("--force-subset", "--ef-epochs"), ("--lr", "--ef-lr"), ("--atoms-per-batch", "--ef-atoms-per-batch"),
    ("--members", "use --members 1")])
def test_options_of_the_removed_keras_stages_stop_with_their_replacement(tmp_path, capsys, flag, replacement):
    value = "0" if flag == "--members" else "5"
    assert main(["train", "x.xsf", "--out", str(tmp_path / "r"), flag, value]) == 2
    err = capsys.readouterr().err
    assert replacement in err and flag in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_members_0_in_a_config_file_stops_before_the_run(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("members: 0\n")
    assert main(["train", "x.xsf", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "use members 1" in err and "Traceback" not in err
