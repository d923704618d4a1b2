"""KerasTuner grid over the energy+force committee trainer: depth, width, activation, weight decay.

The study's grid (:mod:`bpnn_jax.training.tuning`) tunes Keras models on energies.
This one tunes the recipe of the shipped models: each grid point is a
committee (one member by default) trained by
:func:`bpnn_jax.training.jacobian.fit_committee` on energies and forces
from cached descriptor Jacobians, scored on the validation split by the
joint objective

    val_objective = mean((ΔE/n)²) + λ · mean(ΔF²)     (eV²/atom², λ in eV²/Å² per eV²/atom²)

of the committee mean (the quantity the training minimises, at the force
weight λ of the grid).  The search is KerasTuner's ``GridSearch`` with the
resumable oracle and ``results.csv`` of :mod:`bpnn_jax.training.tuning`; a trial
killed midway resumes from its own ``ef_state.npz``.  The front end is
``python -m experiments.grid --ef``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import keras_tuner
import numpy as np

from . import jacobian as jt
from .tuning import BPNNGridSearch, ResultsTable, grid_label, merge_choices

__all__ = [
    "EF_CHOICES",
    "EF_HP_NAMES",
    "EF_OBJECTIVE_NAME",
    "EF_COLUMNS",
    "ef_grid_hyperparameters",
    "EFTuningData",
    "prepare_ef_data",
    "ef_results_table",
    "validation_metrics",
    "EFGridSearch",
    "write_ef_results_markdown",
]

#: The default grid (issue 13's example): 2 x 4 = 8 points.
EF_CHOICES: dict[str, tuple] = {
    "layers": (2, 3),
    "nodes": (64, 96, 128, 160),
    "activation": ("tanh",),
    "weight_decay": (5e-4,),
}
EF_HP_NAMES = tuple(EF_CHOICES)
EF_OBJECTIVE_NAME = "val_objective"
EF_COLUMNS = ("trial_id", *EF_HP_NAMES, EF_OBJECTIVE_NAME, "val_energy_rmse_mev_atom", "val_energy_mae_mev_atom",
              "val_force_rmse_ev_a", "best_epoch", "epochs_run", "seconds")


def ef_grid_hyperparameters(choices: Mapping[str, Iterable] | None = None) -> keras_tuner.HyperParameters:
    """The search space: one ``Choice`` per hyper-parameter, defaults from :data:`EF_CHOICES`.

    Raises:
        ValueError: an unknown name, no values, a repeated value, layers or
            nodes < 1, an unknown activation or a negative weight decay.
    """
    out = merge_choices(EF_CHOICES, choices, {"layers": int, "nodes": int, "activation": str, "weight_decay": float})
    known = ("tanh", "silu", "softplus", "sigmoid")
    bad = [a for a in out["activation"] if a not in known]
    if bad:
        raise ValueError(f"unknown activation(s) {bad}; expected {known}")
    if any(v < 0 for v in out["weight_decay"]):
        raise ValueError("weight decay must be >= 0")
    hp = keras_tuner.HyperParameters()
    for name, values in out.items():
        hp.Choice(name, list(values))
    return hp


def ef_results_table(path) -> ResultsTable:
    """``results.csv`` of an E+F grid (its hyper-parameters and columns)."""
    return ResultsTable(path, hp_names=EF_HP_NAMES, columns=EF_COLUMNS)


@dataclasses.dataclass
class EFTuningData:
    """What every trial shares: grouped training/validation data with Jacobians, statistics.

    Attributes:
        train, val: :class:`~bpnn_jax.training.jacobian.Groups` with forces
            and descriptor Jacobians.
        stats: descriptor and energy statistics of the training structures.
        spec: the symmetry-function set.
        references: free-atom reference energies, eV.
    """

    train: jt.Groups
    val: jt.Groups
    stats: dict
    spec: object
    references: dict


def prepare_ef_data(paths, config, *, subset: int | None = None, cache_dir=None, verbose: bool = True) -> EFTuningData:
    """Read, split (``config``'s seed and fractions), featurise and take the Jacobians (cached).

    Args:
        paths: data files or directories.
        config: a :class:`~bpnn_jax.training.TrainConfig` (descriptor
            preset, cut-off, references, energy filter, split).
        subset: use this many training structures, drawn with the split
            seed (default all); the validation split stays whole, so
            objectives of different subsets are comparable.
        cache_dir: Jacobian cache directory (see
            :func:`bpnn_jax.descriptors.jacobian_cache.cached_jacobians`), None = none.
        verbose: say what was done.
    """
    from ..descriptors.jacobian_cache import cached_jacobians
    from .data import compute_statistics, featurize_host, load_training_data
    from .run_state import require_forces

    data = load_training_data(paths, config, progress=False)
    S, split, spec = data["structures"], data["split"], data["spec"]
    train, val = [S[i] for i in split["train"]], [S[i] for i in split["val"]]
    if subset is not None and subset < len(train):
        pick = np.sort(np.random.default_rng(config.seed).choice(len(train), int(subset), replace=False))
        train = [train[i] for i in pick]
    require_forces(train + val)
    sf_train, sf_val = featurize_host(train, spec), featurize_host(val, spec)
    stats = compute_statistics(sf_train, [s.species for s in train], [s.energy for s in train], len(data["elements"]))
    jac, hit = cached_jacobians(train + val, spec, cache_dir, verbose=verbose)
    groups = [jt.group_by_size(sf, [s.species for s in part], [s.energy for s in part], [s.forces for s in part],
                               list(jac[a:b]))
              for sf, part, (a, b) in ((sf_train, train, (0, len(train))),
                                       (sf_val, val, (len(train), len(train) + len(val))))]
    if verbose:
        print(f"[data] {len(train)} training + {len(val)} validation structures, {spec.describe()}; "
              f"Jacobians {'from the cache' if hit else 'computed'} ({sum(g.nbytes for g in groups) / 1e9:.2f} GB)",
              flush=True)
    return EFTuningData(groups[0], groups[1], stats, spec, data["references"])


def validation_metrics(params, data: EFTuningData, activation: str, force_weight: float) -> dict:
    """Committee-mean validation errors and the joint objective of :mod:`this module <bpnn_jax.training.tuning_ef>`.

    The errors are :func:`~bpnn_jax.training.jacobian.committee_validation`'s, the trainer's own.

    Returns:
        {"val_objective" (eV²/atom² units), "val_energy_rmse_mev_atom",
        "val_energy_mae_mev_atom", "val_force_rmse_ev_a"}.
    """
    m = jt.committee_validation(params, data.stats, data.val, activation)
    e_rmse, f_rmse = m["mean_energy_rmse_mev_atom"], m["mean_force_rmse_ev_a"]
    return {EF_OBJECTIVE_NAME: (e_rmse / 1e3) ** 2 + float(force_weight) * f_rmse ** 2,
            "val_energy_rmse_mev_atom": e_rmse, "val_energy_mae_mev_atom": m["mean_energy_mae_mev_atom"],
            "val_force_rmse_ev_a": f_rmse}


def _slug(values: Mapping) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", grid_label(values).replace(" ", "_"))


class EFGridSearch(BPNNGridSearch):
    """The resumable KerasTuner grid search of :class:`~bpnn_jax.training.tuning.BPNNGridSearch` over E+F committees.

    ``search(data, epochs=..., ...)`` trains each grid point once (see
    :meth:`train_trial`); each trial keeps its resume state in
    ``trials_dir/<grid point>/``.

    Args:
        results: :func:`ef_results_table`.
        hyperparameters: :func:`ef_grid_hyperparameters`.
        trials_dir: where the trials' run directories go.
        **kwargs: as for :class:`~bpnn_jax.training.tuning.BPNNGridSearch`.
    """

    objective_name = EF_OBJECTIVE_NAME
    metric_names = (EF_OBJECTIVE_NAME, "val_energy_rmse_mev_atom", "val_energy_mae_mev_atom", "val_force_rmse_ev_a")

    def __init__(self, *, results: ResultsTable, hyperparameters: keras_tuner.HyperParameters, trials_dir,
                 **kwargs):
        super().__init__(None, results=results, hyperparameters=hyperparameters,
                         objective=keras_tuner.Objective(EF_OBJECTIVE_NAME, direction="min"), **kwargs)
        self.trials_dir = Path(trials_dir)

    def describe_metrics(self, metrics: Mapping) -> str:
        return (f"val objective {metrics[EF_OBJECTIVE_NAME]:.4g}, energy {metrics['val_energy_rmse_mev_atom']:.2f} "
                f"meV/atom (MAE {metrics['val_energy_mae_mev_atom']:.2f}), forces {metrics['val_force_rmse_ev_a']:.4f} eV/Å")

    def train_trial(self, trial, data: EFTuningData, *, epochs: int, members: int = 1, force_weight: float = 1.5e-2,
                    learning_rate: float = 2e-3, final_learning_rate: float = 1e-5, atoms_per_batch: int = 768,
                    seed: int = 0, fit_verbose: int = 2, **kwargs) -> tuple[dict, int]:
        """Train one grid point's committee (resuming its own state) and score it on validation.

        Args:
            trial: the KerasTuner trial (its ``layers``, ``nodes``,
                ``activation``, ``weight_decay``).
            data: :func:`prepare_ef_data`.
            epochs, members, force_weight, learning_rate,
                final_learning_rate, atoms_per_batch, seed: the fixed
                settings of every trial (see
                :class:`~bpnn_jax.training.jacobian.CommitteeConfig`).
            fit_verbose: :func:`~bpnn_jax.training.jacobian.fit_committee`
                verbosity.
            **kwargs: ignored (KerasTuner's ``verbose``).

        Returns:
            (validation metrics of the members' best points, epochs run).
        """
        v = {n: trial.hyperparameters.values[n] for n in EF_HP_NAMES}
        cfg = jt.CommitteeConfig(members=int(members), hidden=(int(v["nodes"]),) * int(v["layers"]),
                                 activation=str(v["activation"]), epochs=int(epochs), learning_rate=learning_rate,
                                 final_learning_rate=final_learning_rate, weight_decay=float(v["weight_decay"]),
                                 force_weight=float(force_weight), atoms_per_batch=int(atoms_per_batch), seed=seed)
        fit = jt.fit_committee(data.train, data.val, data.stats, cfg, run_dir=self.trials_dir / _slug(v), resume=True,
                               verbose=fit_verbose)
        metrics = validation_metrics(fit["params"], data, cfg.activation, force_weight)
        metrics["best_epoch"] = int(np.max(fit["best_epoch"]))
        return metrics, int(fit["epochs_run"])


def write_ef_results_markdown(rows: Sequence[dict], path, *, grid_size: int | None = None,
                              settings: Mapping | None = None) -> None:
    """``results.md`` of an E+F grid: the trials sorted by the validation objective."""
    from ..io.atomic import atomic_write

    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    rows = sorted(rows, key=lambda r: (r.get(EF_OBJECTIVE_NAME) is None, r.get(EF_OBJECTIVE_NAME) or 0.0))
    lines = ["# Energy+force grid search (committees on cached descriptor Jacobians)", "",
             f"{len(rows)} of {grid_size if grid_size is not None else len(rows)} grid points done. Objective: the "
             "validation value of mean((ΔE/n)²) + λ·mean(ΔF²) (eV²/atom²; lower is better) of each trial's "
             "committee at its members' best epochs.", "",
             "| rank | layers | nodes | activation | weight decay | objective | val E RMSE (meV/atom) | "
             "val E MAE | val F RMSE (eV/Å) | best epoch | epochs | time (s) |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rank, r in enumerate(rows, 1):
        lines.append(f"| {rank} | {r['layers']} | {r['nodes']} | {r['activation']} | {r['weight_decay']:g} | "
                     f"{num(r.get(EF_OBJECTIVE_NAME), '.4g')} | {num(r.get('val_energy_rmse_mev_atom'), '.2f')} | "
                     f"{num(r.get('val_energy_mae_mev_atom'), '.2f')} | {num(r.get('val_force_rmse_ev_a'), '.4f')} | "
                     f"{num(r.get('best_epoch'), 'd')} | {num(r.get('epochs_run'), 'd')} | {num(r.get('seconds'), '.0f')} |")
    if settings:
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + "."]
    with atomic_write(path) as fh:
        fh.write("\n".join(lines) + "\n")
