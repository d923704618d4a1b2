"""``train DATA --tune [--budget MINUTES]``: a KerasTuner search around the derived set-up, then the final run.

Each trial is a short run of :func:`bpnn_jax.training.train` (a committee of
:data:`TRIAL_MEMBERS`, a quarter of the derived epochs) with one set of
hyper-parameters (:data:`SPACE`: cut-off, descriptor density, depth,
width, force weights, learning rate, weight decay), scored on the
validation split by

    score = E_RMSE (meV/atom) + 25 meV/atom per eV/Å x F_RMSE (eV/Å)

of the committee (25: for typical errors of a few meV/atom and ~0.1 eV/Å
the two terms are of one size).  KerasTuner's ``RandomSearch`` oracle
proposes the points (the derived set-up first); its state lives in
``RUN_DIR/tune/`` and the trials' runs in ``RUN_DIR/tune/trial_N/``.  A
search that is killed and started again (the same command) reloads the
oracle: finished trials are not run again, the interrupted one resumes
from its own checkpoint.  Several machines or GPUs search together with
KerasTuner's own chief/worker set-up (``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``); the chief runs the
final training.

The budget: trials start while the elapsed time plus the longest trial so
far stays below :data:`SEARCH_FRACTION` of it; the final committee (the
derived members and schedule with the best trial's hyper-parameters)
gets the rest, its epochs cut to fit by the trials' measured cost.  The
trials table (``RUN_DIR/tune/trials.csv``) and the chosen set-up
(``RUN_DIR/tune/best.yaml``) stay in the run directory.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from pathlib import Path

import jax
import numpy as np

from ..io.atomic import atomic_write
from .config import TrainConfig
from .tuning import ResultsTable

#: The search space: the first value of each is the derived set-up's (scales multiply derived values).
SPACE: dict[str, tuple] = {
    "cutoff_scale": (1.0, 0.9, 1.15),
    "descriptors": ("dense", "imbalzano"),
    "layers": (2, 3),
    "nodes_scale": (1.0, 0.5, 2.0),
    "force_weight_scale": (1.0, 0.3, 3.0),
    "learning_rate": (2e-3, 1e-3, 4e-3),
    "weight_decay": (5e-4, 1e-4, 2e-3),
}
#: Members and share of the derived epochs of a trial.
TRIAL_MEMBERS = 2
TRIAL_EPOCH_FRACTION = 0.25
#: Share of the budget the search may use; the final training gets the rest.
SEARCH_FRACTION = 0.6
#: meV/atom per eV/Å in the score.
FORCE_SCORE_WEIGHT = 25.0
OBJECTIVE = "val_score"
COLUMNS = ("trial_id", *SPACE, OBJECTIVE, "val_energy_rmse_mev_atom", "val_force_rmse_ev_a", "seconds")


def _hyperparameters():
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for name, values in SPACE.items():
        hp.Choice(name, list(values), default=values[0])
    return hp


def trial_config(base: TrainConfig, values: dict, *, trial: bool = True) -> TrainConfig:
    """``base`` (resolved, derived values filled in) with a trial's hyper-parameters.

    ``trial=False``: the final run's config (members and epochs of ``base``).
    """
    nodes = max(8, int(round(base.hidden[0] * values["nodes_scale"])))
    w = np.atleast_1d(np.asarray(base.ef_force_weight, float)) * values["force_weight_scale"]
    config = dataclasses.replace(
        base, preset=values["descriptors"], cutoff=round(float(base.cutoff) * values["cutoff_scale"], 2),
        hidden=(nodes,) * int(values["layers"]), ef_learning_rate=float(values["learning_rate"]),
        weight_decay=float(values["weight_decay"]), derive=(), time_limit_minutes=None)
    if trial:
        epochs = max(int(base.ef_epochs * TRIAL_EPOCH_FRACTION), 10)
        w = np.geomspace(w.min(), w.max(), TRIAL_MEMBERS) if w.size > 1 else np.full(TRIAL_MEMBERS, w[0])
        config = dataclasses.replace(config, members=TRIAL_MEMBERS, ef_epochs=epochs,
                                     ef_final_epochs=max(epochs // 5, 1) if base.ef_final_epochs else 0)
    w = tuple(float(f"{x:.3g}") for x in w)
    return dataclasses.replace(config, ef_force_weight=w if len(w) > 1 else w[0])


def _last_validation(run_dir: Path) -> tuple[float, float]:
    """(energy RMSE meV/atom, force RMSE eV/Å) of the committee at a run's last epoch."""
    with open(run_dir / "ef_history.csv", newline="") as fh:
        last = list(csv.DictReader(fh))[-1]
    return float(last["val_committee_energy_rmse_mev_atom"]), float(last["val_committee_force_rmse_ev_a"])


def _make_oracle(budget_s: float, max_trials: int, seed: int):
    import keras_tuner

    class BudgetOracle(keras_tuner.oracles.RandomSearchOracle):
        """Random search, the derived set-up first, no new trial once the budget cannot hold one."""

        def __init__(self, **kw):
            super().__init__(**kw)
            self.search_until = time.time() + SEARCH_FRACTION * budget_s
            self.longest = 0.0

        def populate_space(self, trial_id):
            import keras_tuner as kt

            done = [t for t in self.trials.values() if t.status == kt.engine.trial.TrialStatus.COMPLETED]
            if self.trials and time.time() + self.longest > self.search_until:
                return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
            if len(self.trials) <= 1 and not done:  # the derived set-up itself comes first
                return {"status": kt.engine.trial.TrialStatus.RUNNING,
                        "values": {name: values[0] for name, values in SPACE.items()}}
            return super().populate_space(trial_id)

        def set_state(self, state):
            super().set_state(state)
            self.search_until = time.time() + SEARCH_FRACTION * budget_s  # this invocation's budget

    return BudgetOracle(objective=keras_tuner.Objective(OBJECTIVE, "min"), max_trials=max_trials,
                        hyperparameters=_hyperparameters(), seed=seed)


def tune_and_train(paths, run_dir, base: TrainConfig, *, budget_minutes: float, max_trials: int = 50,
                   verbose: int = 1):
    """Search (module doc), then train the final committee in ``run_dir``.

    Args:
        paths: training data.
        run_dir: the run directory (``tune/`` inside it holds the search).
        base: the resolved set-up (derived options filled in).
        budget_minutes: wall-time budget of this invocation, search and
            final training together.
        max_trials: most trials in all.
        verbose: as :func:`bpnn_jax.training.train`.

    Returns:
        The final model (also ``run_dir/model.keras``); None on a worker.
    """
    import keras_tuner
    from keras_tuner.src.distribute import utils as dist_utils

    from .run import train

    run_dir = Path(run_dir)
    tune_dir = run_dir / "tune"
    (tune_dir / "cache").mkdir(parents=True, exist_ok=True)
    start = time.time()
    budget_s = 60.0 * budget_minutes
    oracle = _make_oracle(budget_s, max_trials, base.seed)
    # One row per finished trial, written atomically under a lock (several workers share it).
    table = ResultsTable(tune_dir / "trials.csv", hp_names=("trial_id",), columns=COLUMNS)

    class TrainTuner(keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            values = dict(trial.hyperparameters.values)
            config = trial_config(base, values)
            tdir = tune_dir / f"trial_{trial.trial_id}"
            tdir.mkdir(exist_ok=True)
            if not (tdir / "cache").exists():  # one descriptor-Jacobian cache for all trials (keyed by set)
                os.symlink(os.path.relpath(tune_dir / "cache", tdir), tdir / "cache")
            t0 = time.time()
            jax.clear_caches()  # free the last trial's programs: each holds ~18 memory maps (vm.max_map_count)
            if not (tdir / "model.keras").exists():
                resume = (tdir / "ef_state.npz").exists()
                if verbose:
                    print(f"[tune] trial {trial.trial_id}{' (resumed)' if resume else ''}: "
                          + ", ".join(f"{k} {v}" for k, v in values.items()), flush=True)
                train(paths, tdir, config, resume=resume, verbose=0)
            e_rmse, f_rmse = _last_validation(tdir)
            score = e_rmse + FORCE_SCORE_WEIGHT * f_rmse
            seconds = time.time() - t0
            oracle.longest = max(oracle.longest, seconds)
            row = {"trial_id": trial.trial_id, **values, OBJECTIVE: round(score, 4),
                   "val_energy_rmse_mev_atom": round(e_rmse, 4), "val_force_rmse_ev_a": round(f_rmse, 5),
                   "seconds": round(seconds, 1)}
            table.append(row)
            if verbose:
                print(f"[tune] trial {trial.trial_id}: validation {e_rmse:.2f} meV/atom, {f_rmse:.4f} eV/Å, "
                      f"score {score:.3f} ({seconds:.0f} s)", flush=True)
            return {OBJECTIVE: score}

    tuner = TrainTuner(oracle=oracle, directory=str(run_dir), project_name="tune", overwrite=False)
    tuner.search(verbose=1 if verbose == 1 else 0)
    if not dist_utils.is_chief_oracle() and dist_utils.has_chief_oracle():
        return None  # a worker: the chief trains the final committee
    rows = table.rows()
    if not rows:
        raise RuntimeError(f"{table.path}: no finished trial to choose from")
    best = min(rows, key=lambda r: r[OBJECTIVE])
    values = {k: best[k] for k in SPACE}
    final = trial_config(base, values, trial=False)
    # Fit the final epochs into what is left of the budget, by the best trial's measured cost.
    left = max(budget_s - (time.time() - start), 0.0)
    trial_epochs = max(int(base.ef_epochs * TRIAL_EPOCH_FRACTION), 10)
    per_epoch = float(best["seconds"]) / trial_epochs * (final.members / TRIAL_MEMBERS)
    epochs = int(min(final.ef_epochs, max(left / max(per_epoch, 1e-6), trial_epochs)))
    if epochs < final.ef_epochs:
        final = dataclasses.replace(final, ef_epochs=epochs,
                                    ef_final_epochs=max(epochs // 5, 1) if final.ef_final_epochs else 0)
    import yaml

    with atomic_write(tune_dir / "best.yaml") as fh:
        fh.write(f"# best of {len(rows)} trials (score {best[OBJECTIVE]}); the final run's options\n")
        yaml.safe_dump({"trial": best["trial_id"], "hyperparameters": values,
                        "final": {"members": final.members, "ef_epochs": final.ef_epochs, "hidden": list(final.hidden),
                                  "preset": final.preset, "cutoff": final.cutoff,
                                  "ef_force_weight": list(np.atleast_1d(final.ef_force_weight).tolist())}},
                       fh, sort_keys=False)
    if verbose:
        print(f"[tune] best of {len(rows)} trials: trial {best['trial_id']} (score {best[OBJECTIVE]}); final "
              f"committee of {final.members}, {final.ef_epochs} epochs", flush=True)
    resume = (run_dir / "ef_state.npz").exists()
    return train(paths, run_dir, final, resume=resume, verbose=verbose)
