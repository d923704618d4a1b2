"""``train --tune`` (:mod:`bpnn_jax.training.tuning_train`): a KerasTuner search within a budget, resumable.

* the budget bounds the search by the oracle's own rule (no new trial once elapsed time plus the longest
  trial passes the search share of the budget): a budget shorter than one trial runs exactly one;
* the same command again after a finished search with room for more trials runs only new ones: the
  finished trials' runs are left as they were (not retrained);
* the trials table, the chosen set-up and the final committee are in the run directory.
"""

from __future__ import annotations

import csv

import ase.io
import yaml

from bpnn_jax.cli import main
from bpnn_jax.model import load_model

from test_defaults import cu_frames


def _rows(run):
    with open(run / "tune" / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tune_stays_in_its_budget_and_resumes_without_redoing_trials(tmp_path):
    data = tmp_path / "cu.extxyz"
    ase.io.write(data, cu_frames(24, 3.61), format="extxyz")
    quick = ["--ef-epochs", "16", "--members", "2", "--quiet", "--tune"]
    # A budget far below one trial: the first trial runs, the oracle then stops the search.
    tiny = tmp_path / "tiny"
    assert main(["train", str(data), "--out", str(tiny), *quick, "--budget", "0.01", "--tune-trials", "5"]) == 0
    assert len(_rows(tiny)) == 1 and (tiny / "model.keras").exists()
    # Two trials, then the same command with room for a third: only the third is trained.
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), *quick, "--budget", "30", "--tune-trials", "2"]) == 0
    first = {p.parent.name: p.stat().st_mtime_ns for p in sorted(run.glob("tune/trial_*/model.keras"))}
    assert len(first) == 2 and len(_rows(run)) == 2
    assert main(["train", str(data), "--out", str(run), *quick, "--budget", "30", "--tune-trials", "3"]) == 0
    again = {p.parent.name: p.stat().st_mtime_ns for p in sorted(run.glob("tune/trial_*/model.keras"))}
    assert len(again) == 3 and all(again[k] == v for k, v in first.items())
    rows = _rows(run)
    assert len(rows) == 3 and rows[0]["descriptors"] == "dense" and float(rows[0]["cutoff_scale"]) == 1.0
    best = yaml.safe_load((run / "tune" / "best.yaml").read_text())
    assert best["trial"] == min(rows, key=lambda r: float(r["val_score"]))["trial_id"]
    model = load_model(str(run / "model.keras"))
    assert model.members == 2 and list(model.hidden) == best["final"]["hidden"]
