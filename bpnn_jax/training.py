"""Training: data split, statistics, energy pre-training, energy+force fitting.

Two stages, both with Keras's stock ``fit``:

1. **Energy stage** on symmetry functions computed once and cached (the
   descriptor is fixed, so only the MLPs are evaluated): hundreds of
   epochs in minutes on a CPU, then full-batch L-BFGS.  With
   ``lbfgs_force_weight > 0`` the L-BFGS objective includes forces,
   F_k = -sum_i (dE/dG_i) . dG_i/dR_k, with the descriptor Jacobians
   dG_i/dR_k also computed once (:func:`refine_lbfgs`): force training at
   the cost of energy training, which is what makes an accurate E+F fit
   practical on a CPU.
2. **Force stage**: end to end from positions and cell, loss on per-atom
   energies plus weighted forces (forces by autodiff inside the model).  On
   a CPU each epoch can draw a random subset of the training structures
   (``force_subset``); on a GPU use them all.

Everything a run writes goes to its run directory: ``config.json``,
``split.json``, ``checkpoints/last.keras`` (every epoch, atomic),
``best.keras`` (best validation energy RMSE), ``history.csv``,
``state.json`` (stage and epoch, for ``--resume``) and ``model.keras``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

import keras

from .batch import HostStructure, collate, plan_batches, prepare_structures
from .descriptors import SymmetryFunctionSet
from .errors import BPNNInputError
from .io import EV_PER_A3_IN_GPA, REFERENCE_ENERGIES_TIO2, atomic_write, read_structures
from .model import BPNN
from .neighbors import round_up

__all__ = [
    "TrainConfig",
    "PRESETS",
    "split_indices",
    "fit_energy_references",
    "compute_statistics",
    "GeometryDataset",
    "DescriptorDataset",
    "build_model",
    "data_parallel_distribution",
    "train",
    "predict_structures",
    "force_training_data",
    "refine_lbfgs",
]


@dataclasses.dataclass
class TrainConfig:
    """All settings of a training run (saved as ``config.json``).

    Attributes:
        preset: symmetry-function set: "auto" (artrith-urban for O/Ti
            data, imbalzano otherwise), "artrith-urban", "imbalzano", or a
            JSON/YAML parameter file (see :meth:`~bpnn_jax.descriptors.
            SymmetryFunctionSet.preset`).
        cutoff: Rc in Å of the imbalzano set (default 6.0; the others fix
            their own).
        stress_weight: weight of the mean squared stress error (GPa² per
            Voigt component, structures with a stress) against the energy
            term (eV²/atom²) in the committee stage; 0 = no stress term.
            Strain Jacobians are then computed and cached too.
        energy_key, forces_key, stress_key: where extended XYZ / ASE frames
            keep their labels (:class:`~bpnn_jax.io.FrameKeys`; None: ASE's
            results, then the usual keys).
        hidden: nodes per hidden layer.
        activation: hidden activation.
        dropout: dropout rate.
        learning_rate: initial Adam learning rate.
        min_learning_rate: floor of the plateau schedule.
        batch_size: structures per batch (None: ``atoms_per_batch`` decides).
        atoms_per_batch: padded atoms per batch when batch_size is None.
        energy_epochs: epochs of the energy stage on cached descriptors.
        lbfgs_steps: full-batch L-BFGS iterations on energies after the
            Adam epochs of the energy stage (0 = none).
        lbfgs_force_weight: weight of the force MSE (eV²/Å²) in those
            L-BFGS iterations; > 0 trains energies and forces jointly on
            cached descriptor Jacobians (:func:`refine_lbfgs`), which costs
            a one-off ~5 ms per atom on a CPU and n_atoms² · F · 12 bytes of
            memory per structure (TiO2 set: ~3 GB).  0 = energies only.
            The default, 1e-4, trained the shipped ``tio2`` (test forces
            1.25 -> 0.47 eV/Å for energies 6.2 -> 6.5 meV/atom).
        force_epochs: epochs of the end-to-end energy+force stage.
        force_weight: weight of the force MSE (eV²/Å²) against the per-atom
            energy MSE (eV²/atom²) in the force stage; 0 = energies only.
            With energy errors ~0.01 eV/atom and force errors ~0.5 eV/Å,
            3e-4 gives the two terms similar size; 1e-2 let forces swamp
            the energies.
        force_lr_factor: learning rate of the force stage relative to
            ``learning_rate`` when it follows an energy stage.
        force_subset: training structures drawn per force epoch (None: all).
        energy_loss: "mse" or "mae".
        force_loss: "mse" or "huber" (see :class:`~bpnn_jax.model.BPNN`).
        huber_delta: eV/Å where the Huber force loss turns linear.
        init_model: start from this trained model (a ``.keras`` path or a
            shipped name such as "tio2") instead of a fresh network: its
            architecture, statistics and reference energies are kept, and
            with ``energy_epochs=0`` training goes straight to the
            energy+force stage at ``learning_rate`` (fine-tuning).
        time_limit_minutes: stop after the epoch that crosses this wall
            time (whole run); the best epoch so far is kept.  None = no limit.
        max_energy: structures with cohesive energy above this (eV/atom) are
            excluded from training and validation (aenet's MAXENERGY);
            None keeps everything.
        val_fraction, test_fraction: split fractions.
        seed: split, initialisation and shuffling seed.
        patience: early-stopping patience (epochs) per stage.
        reference_energies: free-atom energies (eV); None = fitted by least
            squares on composition.
        members: committee size K of the E+F stage on cached descriptor
            Jacobians (:mod:`bpnn_jax.jacobian_training`); 0 = the
            energy-then-L-BFGS stages above instead.  With K >= 1 the run is:
            descriptors, Jacobians (cached in ``RUN_DIR/cache``), mini-batch
            Adam on energies and forces for every member at once, optional
            L-BFGS polish, a BPNN with ``members=K``.
        ef_epochs: Adam epochs of that stage.
        ef_learning_rate, ef_final_learning_rate: peak and final learning
            rate (linear warm-up over ``ef_warmup_epochs``, cosine decay).
        ef_warmup_epochs: warm-up epochs.
        ef_force_weight: force weight lambda of that stage (eV²/Å²
            against eV²/atom²).
        weight_decay: decoupled weight decay of the kernels (AdamW).
        ema_decay: per-step decay of the validated weight average.
        ef_atoms_per_batch: padded atoms per mini-batch.
        bootstrap: Poisson bootstrap of the training structures per member.
        ef_lbfgs_steps: full-batch L-BFGS polish iterations (all members
            at once) after Adam.
        data_parallel: train with ``keras.distribution.DataParallel`` over
            all local devices (:func:`data_parallel_distribution`): weights
            replicated, every batch split over the devices.  Batch sizes
            must then be multiples of the device count (automatic ones are
            rounded up).  A property of the machine, not of the model: on
            ``resume`` the caller's value wins over the saved one.
    """

    preset: str = "auto"
    cutoff: float | None = None
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    stress_weight: float = 0.0
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    dropout: float = 0.0
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    batch_size: int | None = None
    atoms_per_batch: int = 256
    energy_epochs: int = 1000
    lbfgs_steps: int = 1000
    lbfgs_force_weight: float = 1e-4
    force_epochs: int = 0
    force_weight: float = 3e-4
    force_lr_factor: float = 0.05
    force_subset: int | None = None
    energy_loss: str = "mse"
    force_loss: str = "mse"
    huber_delta: float = 1.0
    init_model: str | None = None
    time_limit_minutes: float | None = None
    max_energy: float | None = 1.0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    patience: int = 100
    reference_energies: dict | None = dataclasses.field(default_factory=lambda: dict(REFERENCE_ENERGIES_TIO2))
    members: int = 0
    ef_epochs: int = 300
    ef_learning_rate: float = 2e-3
    ef_final_learning_rate: float = 2e-5
    ef_warmup_epochs: int = 5
    ef_force_weight: float | tuple = 1e-3
    weight_decay: float = 1e-5
    ema_decay: float = 0.99
    ef_atoms_per_batch: int = 768
    bootstrap: bool = False
    ef_lbfgs_steps: int = 0
    data_parallel: bool = False

    def committee_config(self):
        """The :class:`~bpnn_jax.jacobian_training.CommitteeConfig` of the E+F stage."""
        from .jacobian_training import CommitteeConfig

        return CommitteeConfig(
            members=self.members, hidden=tuple(self.hidden), activation=self.activation, epochs=self.ef_epochs,
            learning_rate=self.ef_learning_rate, final_learning_rate=self.ef_final_learning_rate,
            warmup_epochs=self.ef_warmup_epochs, weight_decay=self.weight_decay, force_weight=self.ef_force_weight,
            ema_decay=self.ema_decay, atoms_per_batch=self.ef_atoms_per_batch, bootstrap=self.bootstrap,
            patience=self.patience, seed=self.seed, lbfgs_steps=self.ef_lbfgs_steps,
            stress_weight=self.stress_weight)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["hidden"] = tuple(d["hidden"])
        if isinstance(d.get("ef_force_weight"), list):
            d["ef_force_weight"] = tuple(d["ef_force_weight"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: Named set-ups.  "seed" reproduces the original student study (MAE loss,
#: Adam lr 1e-4, batch 20, 80 epochs, 5 x 64 nodes, no dropout), energies
#: only; "default" is the most accurate set-up we found.
PRESETS: dict[str, dict] = {
    "seed": dict(
        hidden=(64, 64, 64, 64, 64), learning_rate=1e-4, batch_size=20, energy_epochs=80, force_epochs=0,
        energy_loss="mae", patience=1000, min_learning_rate=1e-4, lbfgs_steps=0,
    ),
    "default": dict(),
}


# ------------------------------------------------------------------- split
def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Reproducible random split of ``range(n)`` into train/val/test."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


def fit_energy_references(structures: Sequence, elements: Sequence[str]) -> dict[str, float]:
    """Per-element energies (eV) by least squares: E_total ≈ Σ_s n_s μ_s.

    Used when no free-atom references are given; in float64.
    """
    comp = np.zeros((len(structures), len(elements)))
    energy = np.zeros(len(structures))
    for k, atoms in enumerate(structures):
        symbols = atoms.get_chemical_symbols()
        for s, el in enumerate(elements):
            comp[k, s] = symbols.count(el)
        energy[k] = atoms.info["energy"]
    mu, *_ = np.linalg.lstsq(comp, energy, rcond=None)
    return {el: float(m) for el, m in zip(elements, mu)}


# --------------------------------------------------------------- datasets
class GeometryDataset(keras.utils.PyDataset):
    """Batches of geometry inputs and (energy, forces) targets for ``fit``.

    Args:
        structures: prepared structures (energies relative to references).
        elements: element order of the model.
        atoms_per_batch / batch_size: see :func:`bpnn_jax.batch.plan_batches`.
        shuffle: reshuffle batches (and draw a new subset) every epoch.
        subset: number of structures drawn per epoch (None: all).
        seed: shuffling seed.
        dtype: float dtype of positions/cell.
        with_forces: include force targets.
        batch_multiple: batch sizes are rounded up to a multiple of this
            (the device count of data-parallel training).
    """

    def __init__(self, structures, elements, *, atoms_per_batch=256, batch_size=None, shuffle=False,
                 subset=None, seed=0, dtype=np.float32, with_forces=True, batch_multiple=1):
        super().__init__()
        self.structures = list(structures)
        self.elements = tuple(elements)
        self.atoms_per_batch = atoms_per_batch
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.subset = subset
        self.seed = seed
        self.epoch = 0
        self.dtype = dtype
        self.with_forces = with_forces
        self.batch_multiple = int(batch_multiple)
        self._plan()

    def set_epoch(self, epoch: int) -> None:
        """Start at ``epoch`` (resume): the order of each epoch depends only on (seed, epoch)."""
        self.epoch = int(epoch)
        self._plan()

    def _plan(self):
        # A fresh generator per epoch, so a resumed run sees the same batches.
        self.rng = np.random.default_rng([self.seed, self.epoch])
        members = np.arange(len(self.structures))
        if self.subset is not None and self.subset < len(members):
            members = np.sort(self.rng.choice(members, self.subset, replace=False))
        sub = [self.structures[i] for i in members]
        plan = plan_batches(sub, self.atoms_per_batch, batch_size=self.batch_size,
                            shuffle_rng=self.rng if self.shuffle else None, batch_multiple=self.batch_multiple)
        plan = [(members[idx], b, n, m) for idx, b, n, m in plan]
        # Keras fixes the number of steps per epoch from the first epoch; a
        # new random subset can pack into a different number of batches, so
        # keep the count (repeat the first batches or drop the last ones).
        if getattr(self, "n_batches", None) is None:
            self.n_batches = len(plan)
        while len(plan) < self.n_batches:
            plan.extend(plan[: self.n_batches - len(plan)])
        self.plan = plan[: self.n_batches]

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, i):
        idx, b, n, slots = self.plan[i]
        batch = collate([self.structures[k] for k in idx], b, n, slots, dtype=self.dtype)
        y = {"energy": batch.energy.astype(np.float32)}
        if self.with_forces and batch.forces is not None:
            y["forces"] = batch.forces.astype(np.float32)
        return batch.inputs(self.elements), y

    def on_epoch_end(self):
        self.epoch += 1
        if self.shuffle or self.subset is not None:
            self._plan()


class DescriptorDataset(keras.utils.PyDataset):
    """Batches of cached symmetry functions and energy targets (energy stage).

    Args:
        sf: list of (n_atoms, F) float32 arrays.
        species: list of (n_atoms,) int arrays.
        energy: (n_struct,) energies relative to references, eV.
        batch_size: structures per batch.
        shuffle: reshuffle every epoch.
        seed: shuffling seed.
    """

    def __init__(self, sf, species, energy, *, batch_size=32, shuffle=False, seed=0):
        super().__init__()
        self.sf, self.species = sf, species
        self.energy = np.asarray(energy, np.float64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.n_max = max(len(s) for s in species)
        # Pad every batch to the largest structure: the MLP is cheap, and one
        # shape means one compilation.
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Start at ``epoch`` (resume): the order of each epoch depends only on (seed, epoch)."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(len(self.sf)) if self.shuffle else np.arange(len(self.sf))

    def __len__(self):
        return int(math.ceil(len(self.sf) / self.batch_size))

    def __getitem__(self, i):
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        B, N, F = self.batch_size, self.n_max, self.sf[0].shape[1]
        sf = np.zeros((B, N, F), np.float32)
        species = np.zeros((B, N), np.int32)
        mask = np.zeros((B, N), bool)
        energy = np.zeros((B,), np.float32)
        for b, k in enumerate(idx):
            n = len(self.species[k])
            sf[b, :n] = self.sf[k]
            species[b, :n] = self.species[k]
            mask[b, :n] = True
            energy[b] = self.energy[k]
        return {"sf": sf, "species": species, "atom_mask": mask}, {"energy": energy}

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)


# ------------------------------------------------------------- statistics
def compute_statistics(sf_list, species_list, energies, n_elements):
    """Per-element SF mean/std/min/max and the energy shift/scale.

    Args:
        sf_list: per structure (n, F) descriptors.
        species_list: per structure (n,) element indices.
        energies: (n_struct,) energies relative to references, eV.
        n_elements: S.

    Returns:
        dict with sf_mean, sf_std, sf_min, sf_max (S, F), energy_shift (S,)
        eV/atom (least squares on composition), energy_scale (eV, the std of
        the per-atom residual, at least 0.01).
    """
    sf = np.concatenate(sf_list).astype(np.float64)
    sp = np.concatenate(species_list)
    F = sf.shape[1]
    mean = np.zeros((n_elements, F)); std = np.ones((n_elements, F))
    lo = np.zeros((n_elements, F)); hi = np.zeros((n_elements, F))
    for s in range(n_elements):
        rows = sf[sp == s]
        if len(rows):
            mean[s], std[s] = rows.mean(0), rows.std(0)
            lo[s], hi[s] = rows.min(0), rows.max(0)
    comp = np.stack([np.bincount(s, minlength=n_elements) for s in species_list]).astype(np.float64)
    shift, *_ = np.linalg.lstsq(comp, np.asarray(energies, np.float64), rcond=None)
    resid = (np.asarray(energies) - comp @ shift) / comp.sum(1)
    return dict(sf_mean=mean, sf_std=std, sf_min=lo, sf_max=hi, energy_shift=shift,
                energy_scale=max(float(resid.std()), 0.01))


def build_model(config: TrainConfig, elements: Sequence[str], reference_energies: dict) -> BPNN:
    """A fresh, uncompiled model for ``config``."""
    spec = SymmetryFunctionSet.preset(config.preset, elements, config.cutoff)
    keras.utils.set_random_seed(config.seed)
    return BPNN(
        spec.to_config(), hidden=config.hidden, activation=config.activation, dropout=config.dropout,
        reference_energies=reference_energies, compute_forces=True, energy_weight=1.0,
        force_weight=config.force_weight, energy_loss=config.energy_loss, force_loss=config.force_loss,
        huber_delta=config.huber_delta, seed=config.seed,
    )


def _init_model(config: TrainConfig) -> tuple[BPNN, TrainConfig]:
    """Load ``config.init_model`` and make ``config`` describe it."""
    from .model import load_model

    model = load_model(config.init_model)
    model.force_weight = config.force_weight
    model.force_loss = config.force_loss
    model.huber_delta = float(config.huber_delta)
    model.energy_loss = config.energy_loss
    config = dataclasses.replace(config, hidden=tuple(model.hidden), activation=model.activation,
                                 dropout=model.dropout, reference_energies=dict(model.reference_energies))
    return model, config


# ---------------------------------------------------------------- helpers
def _atomic_save(model: keras.Model, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    with open(tmp, "rb+") as fh:  # on disk before the rename, as io.atomic_write does
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_yaml_config(path: Path, config: TrainConfig, paths, run_dir: Path) -> None:
    """The fully resolved config, as ``train --config`` reads it (data and out included)."""
    import yaml

    d = {"data": [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else (paths or []))],
         "out": str(run_dir), **config.to_json()}
    if isinstance(d.get("ef_force_weight"), tuple):
        d["ef_force_weight"] = list(d["ef_force_weight"])
    with atomic_write(path) as fh:
        fh.write("# bpnn_jax train config: python -m bpnn_jax train --config THIS_FILE (flags override it)\n")
        yaml.safe_dump(d, fh, sort_keys=False)


def _write_json(path: Path, obj) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, default=float)


class _EpochState(keras.callbacks.Callback):
    """Checkpoint every epoch (atomically), keep the best, log history, stop on NaN.

    A non-finite loss or metric stops training and restores the weights and
    optimizer state of the last good epoch, so a NaN model is never saved.

    The learning-rate schedule and early stopping (``schedule``, Keras
    callbacks such as ``ReduceLROnPlateau`` and ``EarlyStopping``) run inside
    this callback, after the NaN check and before the checkpoint, so that
    their counters (``wait``, ``best``, ``cooldown_counter``, ``best_epoch``)
    are saved in ``state.json`` with the epoch they belong to and restored on
    resume; ``EarlyStopping``'s best weights are restored from
    ``best.keras``.  A resumed run then takes the same decisions as an
    uninterrupted one.
    """

    #: Attributes of the schedule callbacks saved in ``state.json``.
    SCHEDULE_STATE = ("wait", "best", "cooldown_counter", "best_epoch")

    def __init__(self, run_dir: Path, stage: str, monitor: str, schedule: Sequence = (),
                 deadline: float | None = None):
        super().__init__()
        self.deadline = deadline
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.monitor = monitor
        self.schedule = list(schedule)
        self.best = math.inf
        self.t0 = time.time()
        state = self._read_state()
        self._saved_schedule = []
        if state.get("stage") == stage:
            self.best = state.get("best", math.inf)
            self._saved_schedule = state.get("schedule") or []
        self._good_weights = None
        self._good_optimizer = None

    def _read_state(self):
        p = self.run_dir / "state.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def set_model(self, model):
        super().set_model(model)
        for cb in self.schedule:
            cb.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for cb in self.schedule:
            cb.set_params(params)

    def _schedule_state(self) -> list[dict]:
        out = []
        for cb in self.schedule:
            d = {"class": type(cb).__name__}
            for key in self.SCHEDULE_STATE:
                if hasattr(cb, key):
                    value = getattr(cb, key)
                    d[key] = None if value is None else (int(value) if key != "best" else float(value))
            out.append(d)
        return out

    def _restore_schedule(self) -> None:
        saved = self._saved_schedule
        if len(saved) != len(self.schedule) or any(d.get("class") != type(cb).__name__
                                                   for d, cb in zip(saved, self.schedule)):
            return
        for d, cb in zip(saved, self.schedule):
            for key in self.SCHEDULE_STATE:
                if key in d and hasattr(cb, key):
                    setattr(cb, key, d[key])
            if getattr(cb, "restore_best_weights", False) and d.get("best") is not None:
                best = self.run_dir / "best.keras"
                if best.exists():
                    cb.best_weights = keras.saving.load_model(best, compile=False).get_weights()

    def on_train_begin(self, logs=None):
        for cb in self.schedule:
            cb.on_train_begin(logs)
        self._restore_schedule()

    def on_train_end(self, logs=None):
        for cb in self.schedule:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()
        self._good_weights = self.model.get_weights()
        opt = getattr(self.model, "optimizer", None)
        self._good_optimizer = ([np.array(keras.ops.convert_to_numpy(v)) for v in opt.variables]
                                if opt is not None and opt.built else None)

    def _restore_good_state(self) -> None:
        if self._good_weights is not None:
            self.model.set_weights(self._good_weights)
        opt = getattr(self.model, "optimizer", None)
        if opt is None:
            return
        if self._good_optimizer is not None and len(self._good_optimizer) == len(opt.variables):
            for var, value in zip(opt.variables, self._good_optimizer):
                var.assign(value)
        else:  # built during the bad epoch: clear what is not finite (moments -> 0)
            for var in opt.variables:
                value = np.asarray(keras.ops.convert_to_numpy(var))
                if not np.all(np.isfinite(value)):
                    var.assign(np.zeros_like(value))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        # (A metric with nothing to measure, e.g. force RMSE in the energy
        # stage, is NaN by design: only the losses and the monitor count.)
        bad = {k: logs[k] for k in dict.fromkeys(("loss", "val_loss", self.monitor))
               if k in logs and not math.isfinite(float(logs[k]))}
        if bad:
            shown = ", ".join(f"{k}={float(v)}" for k, v in bad.items())
            print(f"[{self.stage}] epoch {epoch + 1}: non-finite {shown}; restored the weights of the last good "
                  f"epoch ({epoch}) and stopped this stage (try a lower learning rate)")
            self._restore_good_state()
            self.model.stop_training = True
            return
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["seconds"] = time.time() - self.t0
        for cb in self.schedule:  # may lower the learning rate for the next epoch, or stop
            cb.on_epoch_end(epoch, dict(logs))
        value = float(logs.get(self.monitor, logs.get("loss")))
        ckdir = self.run_dir / "checkpoints"
        ckdir.mkdir(parents=True, exist_ok=True)
        if value < self.best:
            self.best = value
            _atomic_save(self.model, self.run_dir / "best.keras")
        _atomic_save(self.model, ckdir / "last.keras")
        hist = self.run_dir / "history.csv"
        row = {"stage": self.stage, "epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        rows = []
        if hist.exists():
            with open(hist, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if not (r["stage"] == self.stage and int(r["epoch"]) >= epoch + 1)]
        rows.append(row)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_write(hist, newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        _write_json(self.run_dir / "state.json", {"stage": self.stage, "epoch": epoch + 1, "best": self.best,
                                                  "schedule": self._schedule_state()})
        if self.deadline is not None and time.time() > self.deadline:
            print(f"[{self.stage}] time limit reached after epoch {epoch + 1}; the best epoch is kept")
            self.model.stop_training = True


def featurize_host(structures: Sequence[HostStructure], spec: SymmetryFunctionSet, *, atoms_per_batch=256,
                   dtype=np.float32, progress=False) -> list[np.ndarray]:
    """Descriptors of prepared structures: list of (n_atoms, F) arrays.

    A thin wrapper of :func:`bpnn_jax.featurize.featurize`, whose jitted
    function is cached per spec, so the training and validation sets (and
    later calls) share one compilation per shape.
    """
    from .featurize import featurize

    return featurize(structures, spec, dtype=dtype, atoms_per_batch=atoms_per_batch, progress=progress)


#: model -> {forces: (jitted predict, variables)}; see :func:`_predict_function`.
_PREDICT_FUNCTIONS: "weakref.WeakKeyDictionary[BPNN, dict]" = weakref.WeakKeyDictionary()


def _predict_function(model: BPNN, forces: bool):
    """Cached ``(jit f(values, inputs) -> model outputs, variables)`` of a model.

    The variable values are arguments, not constants baked into the trace,
    so one compiled program per batch shape serves every call (also after
    the weights change, e.g. between epochs).  Cached per model in a weak
    dictionary, as the calculator caches its evaluators.
    """
    import jax

    cache = _PREDICT_FUNCTIONS.setdefault(model, {})
    if forces not in cache:
        variables = list(model.variables)
        ref = weakref.ref(model)

        def predict(values, inputs):
            m = ref()
            saved = m.compute_forces
            m.compute_forces = forces  # read while tracing
            try:
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return m(inputs, training=False)
            finally:
                m.compute_forces = saved

        cache[forces] = (jax.jit(predict), variables)
    return cache[forces]


#: model -> (jitted strain derivative, variables); see :func:`predict_stress`.
_STRESS_FUNCTIONS: "weakref.WeakKeyDictionary[BPNN, tuple]" = weakref.WeakKeyDictionary()



def _stress_function(model: BPNN):
    import jax
    import jax.numpy as jnp

    if model not in _STRESS_FUNCTIONS:
        variables = list(model.variables)
        ref = weakref.ref(model)

        def de_dstrain(values, inputs):
            m = ref()

            def energy(strain):
                sym = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
                deform = jnp.eye(3, dtype=strain.dtype) + sym  # rows: r -> r (I + eps)
                pos = jnp.einsum("bni,bij->bnj", inputs["positions"], deform)
                cell = jnp.einsum("bki,bij->bkj", inputs["cell"], deform)
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return jnp.sum(m.structure_energies(pos, cell, inputs))

            return jax.grad(energy)(jnp.zeros_like(inputs["cell"]))

        _STRESS_FUNCTIONS[model] = (jax.jit(de_dstrain), variables)
    return _STRESS_FUNCTIONS[model]


def predict_stress(model: BPNN, structures: Sequence[HostStructure], *, atoms_per_batch=None, dtype=np.float32,
                   progress=False) -> np.ndarray:
    """Model stress (n_struct, 6) in GPa, Voigt order (xx, yy, zz, yz, xz, xy), ASE's sign.

    σ = (1/V) dE/dε at ε = 0 under a homogeneous symmetric strain of
    positions and cell (the calculator's definition).  Rows of structures
    without a periodic cell of full rank are NaN.
    """
    fn, variables = _stress_function(model)
    out = np.full((len(structures), 6), np.nan)
    if atoms_per_batch is None:
        from .featurize import default_atoms_per_batch

        atoms_per_batch = default_atoms_per_batch()
    plan = plan_batches(structures, atoms_per_batch)
    if progress:
        from tqdm.auto import tqdm

        plan = tqdm(plan, desc="stress", unit="batch", leave=False)
    values = [v.value for v in variables]
    for idx, b, n, slots in plan:
        batch = collate([structures[k] for k in idx], b, n, slots, dtype=dtype)
        g = np.asarray(fn(values, batch.inputs(model.elements)), np.float64)
        for j, k in enumerate(idx):
            volume = abs(float(np.linalg.det(np.asarray(structures[k].cell, np.float64))))
            if volume > 1e-9:
                m = g[j] / volume * EV_PER_A3_IN_GPA
                out[k] = [m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]]
    return out


def predict_structures(model: BPNN, structures: Sequence[HostStructure], *, forces=True, atoms_per_batch=None,
                       dtype=np.float32, progress=False, uncertainty=False):
    """Model energies (relative to references, eV) and forces for prepared structures.

    ``atoms_per_batch`` None: 256 on CPU, 8192 on a GPU
    (:func:`bpnn_jax.featurize.default_atoms_per_batch`).  For a committee
    (``model.members > 1``) energies and forces are the members' means.

    Args:
        uncertainty: also return the committee spread (zeros for a single
            network).

    Returns:
        (energies (n_struct,) float64, list of (n_atoms, 3) force arrays or
        None); with ``uncertainty`` also energy_std (n_struct,) eV (standard
        deviation of the members' total energies) and a list of (n_atoms,)
        force spreads eV/Å (per atom, sqrt(mean_k |F_k - F_mean|²)), or
        None without forces.
    """
    fn, variables = _predict_function(model, bool(forces))
    energies = np.zeros(len(structures))
    e_std = np.zeros(len(structures))
    out_f: list = [None] * len(structures)
    f_std: list = [None] * len(structures)
    if atoms_per_batch is None:
        from .featurize import default_atoms_per_batch

        atoms_per_batch = default_atoms_per_batch()
    plan = plan_batches(structures, atoms_per_batch)
    it = plan
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(plan, desc="predict", unit="batch", leave=False)
    values = [v.value for v in variables]
    for idx, b, n, slots in it:
        batch = collate([structures[k] for k in idx], b, n, slots, dtype=dtype)
        res = fn(values, batch.inputs(model.elements))
        e = np.asarray(res["energy"], np.float64)
        em = np.asarray(res["energy_members"], np.float64) if "energy_members" in res else None
        fm = np.asarray(res["forces_members"], np.float64) if (forces and "forces_members" in res) else None
        for j, k in enumerate(idx):
            n_k = structures[k].n_atoms
            energies[k] = e[j]
            if em is not None:
                e_std[k] = float(em[:, j].std())
            if forces:
                out_f[k] = np.asarray(res["forces"][j, :n_k], np.float64)
                f_std[k] = (np.zeros(n_k) if fm is None else
                            np.sqrt(np.mean(np.sum((fm[:, j, :n_k] - out_f[k]) ** 2, axis=-1), axis=0)))
    if uncertainty:
        return energies, (out_f if forces else None), e_std, (f_std if forces else None)
    return energies, (out_f if forces else None)


# ------------------------------------------------------------------ train
def load_training_data(paths, config: TrainConfig, *, progress=True):
    """Read structures, choose references, filter by energy, prepare, split.

    Returns:
        dict with elements, references, structures (HostStructure, energies
        relative to references), atoms, split (indices into the kept
        structures), files, excluded (file names above ``max_energy``).
    """
    from .io import FrameKeys

    keys = FrameKeys(config.energy_key, config.forces_key, config.stress_key)
    atoms, _ = read_structures(paths, require_energy=True, progress=progress, keys=keys)
    elements = sorted({s for a in atoms for s in a.get_chemical_symbols()})
    refs = config.reference_energies
    if refs is None or any(el not in refs for el in elements):
        missing = [el for el in elements if refs is None or el not in refs]
        fitted = fit_energy_references(atoms, elements)
        refs = {**(refs or {}), **{el: fitted[el] for el in missing}}
    cohesive = np.array([
        (a.info["energy"] - math.fsum(refs[s] for s in a.get_chemical_symbols())) / len(a) for a in atoms
    ])
    keep = np.ones(len(atoms), bool) if config.max_energy is None else cohesive <= config.max_energy
    excluded = [a.info["file"] for a, k in zip(atoms, keep) if not k]
    atoms = [a for a, k in zip(atoms, keep) if k]
    spec = SymmetryFunctionSet.preset(config.preset, elements, config.cutoff)
    structures = prepare_structures(atoms, elements, spec.cutoff, progress=progress, energy_offsets=refs)
    split = split_indices(len(structures), config.val_fraction, config.test_fraction, config.seed)
    return dict(elements=elements, references=refs, structures=structures, atoms=atoms, split=split,
                files=[a.info["file"] for a in atoms], excluded=excluded, spec=spec)


def _lr_callbacks(config: TrainConfig, monitor: str):
    return [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=max(config.patience // 4, 5),
                                          min_lr=config.min_learning_rate, mode="min", verbose=0),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True,
                                      mode="min", verbose=0),
    ]


def data_parallel_distribution() -> keras.distribution.DataParallel:
    """Keras's ``DataParallel`` over all local devices (``TrainConfig.data_parallel``)."""
    return keras.distribution.DataParallel(devices=keras.distribution.list_devices())


def _batch_multiple() -> int:
    """Devices a batch is split over by the current Keras distribution (1 without one)."""
    dist = keras.distribution.distribution()
    return 1 if dist is None else int(dist.num_model_replicas)


#: Options that ``--resume`` takes from the command line (the rest come from the run's config.json).
RESUME_OPTIONS = ("time_limit_minutes", "ef_lbfgs_steps", "lbfgs_steps")


def train(paths, run_dir, config: TrainConfig, *, resume: bool = False, verbose: int = 1, data=None,
          resume_overrides: dict | None = None) -> BPNN:
    """Train a model and save everything to ``run_dir`` (see module doc).

    With ``config.data_parallel`` the model is built (or loaded) and fitted
    under :func:`data_parallel_distribution`: weights are replicated on
    every local device and each batch is split over them, so the gradient
    step is the same as on one device (up to the order of floating-point
    sums).  The L-BFGS refinement then runs replicated, not split.

    Args:
        paths: XSF files or directories.
        run_dir: output directory.
        config: settings.
        resume: continue from ``run_dir/checkpoints/last.keras`` and
            ``state.json`` (stage and epoch) instead of starting over.
        verbose: Keras verbosity (1 = progress bars, also for reading and
            featurising; 2 = one line per epoch, no bars; 0 = silent).
        data: optional output of :func:`load_training_data` (reuse).
        resume_overrides: with ``resume``, values of :data:`RESUME_OPTIONS`
            that replace the saved ones (e.g. more polish iterations after
            a finished Adam stage, or a new time limit).

    Returns:
        The trained model (also saved as ``run_dir/model.keras``).

    Raises:
        BPNNInputError: bad input, nothing to resume, or (data-parallel) a
            batch size that is not a multiple of the device count.
    """
    scope = data_parallel_distribution().scope() if config.data_parallel else contextlib.nullcontext()
    with scope:
        return _train(paths, run_dir, config, resume=resume, verbose=verbose, data=data,
                      resume_overrides=resume_overrides)


def _train(paths, run_dir, config: TrainConfig, *, resume: bool, verbose: int, data, resume_overrides=None) -> BPNN:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if config.time_limit_minutes is None else time.time() + 60.0 * config.time_limit_minutes
    state = {}
    if resume:
        if not (run_dir / "state.json").exists() and not (run_dir / "ef_state.npz").exists():
            raise BPNNInputError(f"{run_dir}: nothing to resume (no state.json or ef_state.npz); start without "
                                 f"--resume")
        state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
        saved = TrainConfig.from_json(json.loads((run_dir / "config.json").read_text()))
        config = dataclasses.replace(saved, data_parallel=config.data_parallel, **(resume_overrides or {}))
        if resume_overrides:
            _write_json(run_dir / "config.json", config.to_json())
    if config.members > 0 and config.init_model:
        raise BPNNInputError("--init cannot be combined with --members: a committee is trained from scratch "
                             "(fine-tuning one is not supported yet)")
    multiple = _batch_multiple()
    if config.batch_size is not None and config.batch_size % multiple:
        raise BPNNInputError(
            f"batch size {config.batch_size} is not a multiple of the {multiple} devices that data-parallel "
            f"training splits each batch over; choose a multiple of {multiple}, or no batch size (it is then "
            f"rounded up to one)")
    init = None
    if config.init_model and not (resume and (run_dir / "checkpoints" / "last.keras").exists()):
        init, config = _init_model(config)  # its references define the targets
    if data is None:
        # Before anything in run_dir changes: bad input leaves an earlier run intact.
        data = load_training_data(paths, config, progress=verbose == 1)
    if not resume:
        _write_json(run_dir / "config.json", config.to_json())
        _write_yaml_config(run_dir / "config.yaml", config, paths, run_dir)
        for stale in ("state.json", "history.csv"):
            (run_dir / stale).unlink(missing_ok=True)
    S = data["structures"]
    split = data["split"]
    elements = data["elements"]
    spec = data["spec"]
    if verbose:
        refs = ", ".join(f"{el} {data['references'][el]:.6f}" for el in elements)
        print(f"{len(S)} structures, elements {', '.join(elements)}; {spec.describe()}; reference energies (eV): "
              f"{refs}", flush=True)
    if not resume:
        _write_json(run_dir / "split.json", {
            "seed": config.seed, "references": data["references"], "excluded_above_max_energy": data["excluded"],
            **{k: [data["files"][i] for i in v] for k, v in split.items()},
        })
    train_s = [S[i] for i in split["train"]]
    val_s = [S[i] for i in split["val"]]
    if not train_s or not val_s:
        raise BPNNInputError(f"too few structures ({len(S)}) for a train/validation split")

    if config.members > 0:
        return _train_committee(data, train_s, val_s, run_dir, config, resume=resume, verbose=verbose,
                                deadline=deadline)
    if resume and (run_dir / "checkpoints" / "last.keras").exists():
        try:
            model = keras.saving.load_model(run_dir / "checkpoints" / "last.keras", compile=True)
        except Exception as exc:  # a checkpoint damaged outside bpnn_jax (writes are atomic)
            raise BPNNInputError(f"{run_dir / 'checkpoints' / 'last.keras'}: cannot resume from this checkpoint "
                                 f"({type(exc).__name__}: {exc})") from None
    elif init is not None:
        if list(init.elements) != list(elements):
            raise BPNNInputError(f"{config.init_model}: model elements {list(init.elements)} differ from the "
                                 f"data's {elements}")
        model = init
    else:
        model = build_model(config, elements, data["references"])
    monitor = "val_energy_rmse_mev_atom"
    stage_done = state.get("stage")
    epoch_done = int(state.get("epoch", 0))
    energy_done = state.get("energy") or {}
    if (resume and stage_done == "force" and epoch_done == 0 and energy_done
            and config.energy_epochs > int(energy_done.get("epochs", config.energy_epochs))):
        # Stage 1 had finished, and config.json now asks for more energy
        # epochs: continue stage 1 where it ended.
        stage_done, epoch_done = "energy", int(energy_done["epoch"])
        _write_json(run_dir / "state.json", {"stage": "energy", "epoch": epoch_done, "best": energy_done["best"]})

    # ---- stage 1: energies on cached descriptors
    if (config.energy_epochs > 0 or config.lbfgs_steps > 0) and stage_done != "force":
        t0 = time.time()
        sf_train = featurize_host(train_s, spec, atoms_per_batch=config.atoms_per_batch, progress=verbose == 1)
        sf_val = featurize_host(val_s, spec, atoms_per_batch=config.atoms_per_batch, progress=verbose == 1)
        if (not resume or stage_done is None) and not config.init_model:
            stats = compute_statistics(sf_train, [s.species for s in train_s], [s.energy for s in train_s],
                                       len(elements))
            model.set_statistics(**stats)
        if verbose:
            print(f"descriptors of {len(train_s)} + {len(val_s)} structures: {time.time() - t0:.1f} s")
        bs = config.batch_size or round_up(32, multiple)
        ds_train = DescriptorDataset(sf_train, [s.species for s in train_s], [s.energy for s in train_s],
                                     batch_size=bs, shuffle=True, seed=config.seed)
        ds_val = DescriptorDataset(sf_val, [s.species for s in val_s], [s.energy for s in val_s], batch_size=bs)
        if not model.compiled:
            model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
        initial = epoch_done if stage_done == "energy" else 0
        ds_train.set_epoch(initial)
        if initial < config.energy_epochs:
            model.fit(ds_train, validation_data=ds_val, epochs=config.energy_epochs, initial_epoch=initial,
                      verbose=verbose, callbacks=[_EpochState(run_dir, "energy", monitor, _lr_callbacks(config, monitor),
                                             deadline=deadline)],
                      shuffle=False)  # the dataset shuffles, seeded by epoch; Keras's own batch shuffle is not
        if config.lbfgs_steps > 0:
            train_data = (sf_train, [s.species for s in train_s], [s.energy for s in train_s])
            val_data = (sf_val, [s.species for s in val_s], [s.energy for s in val_s])
            if config.lbfgs_force_weight > 0:
                train_data += force_training_data(train_s, spec, verbose)
                val_data += force_training_data(val_s, spec, verbose)
            result = refine_lbfgs(
                model, train_data, val_data, force_weight=config.lbfgs_force_weight,
                steps=config.lbfgs_steps, verbose=verbose > 0, deadline=deadline,
                log_every=10 if config.lbfgs_force_weight > 0 else 25,
                on_improve=lambda: _atomic_save(model, run_dir / "checkpoints" / "last.keras"),
            )
            _write_json(run_dir / "lbfgs.json", result)
        # The force stage starts from the energy stage's best weights
        # (EarlyStopping restored them); record that stage 1 is complete.
        _atomic_save(model, run_dir / "checkpoints" / "last.keras")
        # Kept apart: the force stage overwrites last/best with its own epochs.
        _atomic_save(model, run_dir / "energy_stage.keras")
        last = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
        energy_done = {"epoch": int(last.get("epoch", initial)) if last.get("stage") == "energy" else initial,
                       "best": last.get("best", math.inf), "epochs": config.energy_epochs}
        _write_json(run_dir / "state.json", {"stage": "force", "epoch": 0, "best": math.inf, "energy": energy_done})
        state = {"stage": "force", "epoch": 0}
        epoch_done, stage_done = 0, "force"
    # ---- stage 2: energies and forces, end to end
    if config.force_epochs > 0:
        if config.energy_epochs == 0 and not resume and not config.init_model:
            sf_train = featurize_host(train_s, spec, atoms_per_batch=config.atoms_per_batch)
            model.set_statistics(**compute_statistics(sf_train, [s.species for s in train_s],
                                                      [s.energy for s in train_s], len(elements)))
        # Fine-tuning a converged energy fit: a fresh Adam at the stage-1 rate
        # throws the energies far off (seen: 9 -> 100 meV/atom in one epoch).
        lr = config.learning_rate if config.energy_epochs == 0 else config.learning_rate * config.force_lr_factor
        if not (resume and state.get("stage") == "force" and epoch_done > 0):
            model.compile(optimizer=keras.optimizers.Adam(lr))
        model.force_weight = config.force_weight
        ds_train = GeometryDataset(train_s, elements, atoms_per_batch=config.atoms_per_batch,
                                   batch_size=config.batch_size, shuffle=True, subset=config.force_subset,
                                   seed=config.seed + 1, batch_multiple=multiple)
        ds_val = GeometryDataset(val_s, elements, atoms_per_batch=config.atoms_per_batch,
                                 batch_size=config.batch_size, batch_multiple=multiple)
        initial = epoch_done if state.get("stage") == "force" else 0
        ds_train.set_epoch(initial)
        # The joint objective decides which epoch is best: monitoring the
        # energy alone would keep the starting point of a fine-tune.
        f_monitor = "val_loss" if config.force_weight > 0 else monitor
        if initial < config.force_epochs:
            model.fit(ds_train, validation_data=ds_val, epochs=config.force_epochs, initial_epoch=initial,
                      verbose=verbose, callbacks=[_EpochState(run_dir, "force", f_monitor,
                                                              _lr_callbacks(config, f_monitor), deadline=deadline)],
                      shuffle=False)  # the dataset shuffles, seeded by epoch; Keras's own batch shuffle is not
        if (run_dir / "best.keras").exists():
            # best.keras holds this stage's best epoch (its first epoch
            # overwrites any earlier one).  Stopped by the epoch count or the
            # time limit rather than by early stopping: keep it, not the last.
            model.set_weights(keras.saving.load_model(run_dir / "best.keras", compile=False).get_weights())
    _atomic_save(model, run_dir / "model.keras")
    return model


# ------------------------------------------------ committee on Jacobians
def _require_forces(structures) -> None:
    """Force training needs forces on every structure: name the first that has none."""
    missing = [s.name for s in structures if s.forces is None]
    if missing:
        raise BPNNInputError(f"{missing[0]}: no forces, needed for force training"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def _physical_memory_gb() -> float:
    """The machine's memory in GB (inf where the platform does not report it)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return math.inf


def _train_committee(data, train_s, val_s, run_dir: Path, config: TrainConfig, *, resume: bool, verbose: int,
                     deadline) -> BPNN:
    """The E+F committee stage (``config.members >= 1``); see :mod:`bpnn_jax.jacobian_training`."""
    from . import jacobian_training as jt
    from .jacobian_cache import cached_jacobians

    spec = data["spec"]
    cfg = config.committee_config()
    _require_forces(train_s + val_s)
    t0 = time.time()
    sf_train = featurize_host(train_s, spec, atoms_per_batch=config.atoms_per_batch, progress=verbose == 1)
    sf_val = featurize_host(val_s, spec, atoms_per_batch=config.atoms_per_batch, progress=verbose == 1)
    stats = compute_statistics(sf_train, [s.species for s in train_s], [s.energy for s in train_s],
                               len(data["elements"]))
    if verbose:
        print(f"descriptors of {len(train_s)} + {len(val_s)} structures: {time.time() - t0:.1f} s", flush=True)
    gb = sum(s.n_atoms ** 2 for s in train_s + val_s) * spec.n_functions * 3 * 4 / 1e9
    ram = _physical_memory_gb()
    if 2.2 * gb > 0.9 * ram:
        raise BPNNInputError(
            f"the descriptor Jacobians of {len(train_s) + len(val_s)} structures need ~{2.2 * gb:.0f} GB "
            f"(n_atoms² · {spec.n_functions} · 3 floats each, grouped); this machine has {ram:.0f} GB: use "
            f"fewer or smaller structures, or --members 0 for the energy stages")
    jac, _ = cached_jacobians(train_s + val_s, spec, run_dir / "cache", progress=verbose == 1, verbose=verbose > 0)
    jac_train, jac_val = jac[:len(train_s)], jac[len(train_s):]
    del jac
    stress_kw = {"train": {}, "val": {}}
    if cfg.stress_weight > 0:
        from .jacobian_cache import cached_strain_jacobians

        if not any(s.stress is not None for s in train_s):
            raise BPNNInputError("--stress-weight > 0 but no training structure has a stress (ASE's results, "
                                 "an info 'stress'/'virial' key, or --stress-key)")
        sj = cached_strain_jacobians(train_s + val_s, spec, run_dir / "cache", progress=verbose == 1,
                                     verbose=verbose > 0)
        for name, part, jacs in (("train", train_s, sj[:len(train_s)]), ("val", val_s, sj[len(train_s):])):
            stress_kw[name] = dict(
                strain_list=jacs,
                stress_list=[None if s.stress is None else s.stress * EV_PER_A3_IN_GPA for s in part],
                volumes=[abs(float(np.linalg.det(s.cell))) for s in part])
    train_g = jt.group_by_size(sf_train, [s.species for s in train_s], [s.energy for s in train_s],
                               [s.forces for s in train_s], jac_train, **stress_kw["train"])
    val_g = jt.group_by_size(sf_val, [s.species for s in val_s], [s.energy for s in val_s],
                             [s.forces for s in val_s], jac_val, **stress_kw["val"])
    del jac_train, jac_val
    if verbose:
        print(f"E+F committee of {cfg.members}: {train_g.n_structures} training structures "
              f"({train_g.n_atoms} atoms), {val_g.n_structures} validation; {train_g.nbytes / 1e9:.2f} + "
              f"{val_g.nbytes / 1e9:.2f} GB", flush=True)
    result = jt.fit_committee(train_g, val_g, stats, cfg, run_dir=run_dir, resume=resume, verbose=verbose,
                              deadline=deadline)
    params = result["params"]
    summary = {k: v for k, v in result.items() if k not in ("params", "history")}
    if result["complete"] and cfg.lbfgs_steps > 0:
        polish = jt.polish_lbfgs(params, train_g, val_g, stats, cfg, steps=cfg.lbfgs_steps, verbose=verbose,
                                 deadline=deadline)
        params = polish["params"]
        summary["lbfgs"] = {k: v for k, v in polish.items() if k != "params"}
    model = jt.to_model(params, stats, spec, cfg, data["references"])
    model.uncertainty_threshold = jt.calibrate_threshold(model, val_g)
    summary["uncertainty_threshold_ev_atom"] = model.uncertainty_threshold
    _write_json(run_dir / "ef.json", summary)
    _atomic_save(model, run_dir / "model.keras" if result["complete"] else run_dir / "checkpoints" / "last.keras")
    if not result["complete"]:
        print(f"E+F stage stopped before its last epoch; the best point so far is in "
              f"{run_dir / 'checkpoints' / 'last.keras'}; continue with --resume", flush=True)
    return model


# ------------------------------------------------------- L-BFGS refinement
def force_training_data(structures, spec, verbose) -> tuple[list, list]:
    """(target forces, descriptor Jacobians) of prepared structures, for :func:`refine_lbfgs`."""
    from .featurize import descriptor_jacobians

    _require_forces(structures)
    t0 = time.time()
    gb = sum(s.n_atoms ** 2 for s in structures) * spec.n_functions * 12 / 1e9
    ram = _physical_memory_gb()
    # The per-structure arrays, their padded groups and the device copy
    # coexist for a moment: about three times the Jacobians' size.
    if 3 * gb > 0.9 * ram:
        raise BPNNInputError(
            f"force L-BFGS needs ~{3 * gb:.0f} GB for the descriptor Jacobians of {len(structures)} structures "
            f"(n_atoms² · {spec.n_functions} · 3 floats each), this machine has {ram:.0f} GB; train energies only "
            f"in L-BFGS (--lbfgs-force-weight 0) and forces end to end (--force-epochs), or use fewer or smaller "
            f"structures")
    jac = descriptor_jacobians(structures, spec, dtype=np.float32, progress=verbose == 1)
    if verbose:
        print(f"descriptor Jacobians of {len(structures)} structures ({gb:.2f} GB): {time.time() - t0:.0f} s",
              flush=True)
    return [np.asarray(s.forces, np.float32) for s in structures], jac


def _size_groups(sf_list, species_list, energies, forces_list=None, jac_list=None):
    """Full-batch arrays grouped by padded atom count, as :func:`refine_lbfgs` takes them.

    :func:`bpnn_jax.jacobian_training.group_by_size` in tuples
    ``(inputs, energies, n_atoms[, forces, jacobians])``; the per-structure
    Jacobians are released as they are copied.
    """
    from .jacobian_training import group_by_size

    groups = group_by_size(sf_list, species_list, energies, forces_list, jac_list)
    out = []
    for g in groups.arrays:
        group = ({"sf": g["sf"], "species": g["species"], "atom_mask": g["mask"]}, g["energy"], g["n"])
        if jac_list is not None:
            group = group + (g["forces"], g["jac"])
        out.append(group)
    return out


def refine_lbfgs(model: BPNN, train_data, val_data, *, force_weight: float = 0.0, steps: int = 500,
                 log_every: int = 25, verbose: bool = True, on_improve=None, deadline: float | None = None) -> dict:
    """Full-batch L-BFGS on cached descriptors: per-atom energy MSE (+ forces).

    Adam on mini-batches stalls at a noise floor; a full-batch quasi-Newton
    method (what aenet uses for energies) goes further for networks of this
    size.  With ``force_weight > 0`` the objective is

        mean_s ((E_s - E_s^DFT) / n_s)²  +  force_weight · mean_{k,c} (F_kc - F_kc^DFT)²

    (eV²/atom² and eV²/Å²), with forces F_k = -sum_i (dE/dG_i) · dG_i/dR_k
    from the network's input gradient and the cached descriptor Jacobians
    (:func:`bpnn_jax.featurize.descriptor_jacobians`): exactly the model's
    autodiff forces, without differentiating the symmetry functions at
    every step.  The best parameters by the validation objective are kept.

    Args:
        model: a model whose statistics are set.
        train_data, val_data: tuples (sf_list, species_list, energies) and,
            when ``force_weight > 0``, also (forces_list, jacobian_list)
            (the Jacobian list is emptied to save memory).
        force_weight: weight of the force MSE (eV²/Å²) against the per-atom
            energy MSE (eV²/atom²); 0 = energies only.
        steps: L-BFGS iterations (each a full pass plus line search).
        log_every: validation interval in iterations.
        on_improve: optional callable run after the model's weights are set
            to a new best (e.g. to checkpoint, so an interruption loses
            at most ``log_every`` iterations).
        deadline: ``time.time()`` after which to stop at the next
            validation (None = run all steps).

    Returns:
        dict with ``best_val_rmse_mev_atom`` (energy), ``best_val_force_rmse_ev_a``
        (None without forces), ``steps``, ``iterations_run``, ``force_weight``,
        ``seconds`` (the iterations, validation included),
        ``first_step_seconds`` (compilation included) and ``history`` (list
        of (step, train objective, val energy RMSE meV/atom, val force RMSE
        eV/Å or None)).
    """
    import jax
    import jax.numpy as jnp
    import optax

    with_forces = force_weight > 0
    if with_forces and (len(train_data) < 5 or len(val_data) < 5):
        raise ValueError("force_weight > 0 needs forces and descriptor Jacobians in train_data and val_data")
    if not with_forces:
        train_data, val_data = train_data[:3], val_data[:3]
    train_g = _size_groups(*train_data)
    val_g = _size_groups(*val_data)
    non_trainable = [v.value for v in model.non_trainable_variables]
    n_train = sum(len(e) for _, e, *_ in train_g)
    n_val = sum(len(e) for _, e, *_ in val_g)
    f_train = 3.0 * sum(float(g[0]["atom_mask"].sum()) for g in train_g)
    f_val = 3.0 * sum(float(g[0]["atom_mask"].sum()) for g in val_g)

    def energies(params, x):
        out, _ = model.stateless_call(params, non_trainable, x, training=False)
        return out["energy"]

    def sq_errs(params, groups):
        """(sum of squared per-atom energy errors, sum of squared force-component errors)."""
        se, sf = 0.0, 0.0
        for g in groups:
            x, e, n = g[:3]
            if with_forces:
                f_ref, jac = g[3:]
                pred, vjp = jax.vjp(lambda d: energies(params, {**x, "sf": d}), x["sf"])
                (dedg,) = vjp(jnp.ones_like(pred))  # dE_s/dG_i, (B, N, F)
                B, N, F = dedg.shape
                forces = -jnp.matmul(jac, dedg.reshape(B, N * F, 1)).reshape(B, N, 3)
                sf = sf + jnp.sum(jnp.where(x["atom_mask"][..., None], forces - f_ref, 0.0) ** 2)
            else:
                pred = energies(params, x)
            de = (pred - e) / n
            se = se + jnp.sum(de * de)
        return se, sf

    def objective(se, sf, n_s, n_f):
        return se / n_s + (force_weight * sf / n_f if with_forces else 0.0)

    opt = optax.lbfgs()

    # The data are jit arguments, not closure constants: XLA would otherwise
    # try to constant-fold through hundreds of MB of descriptors.
    @jax.jit
    def step(params, state, groups):
        def loss(p):
            return objective(*sq_errs(p, groups), n_train, f_train)

        value, grad = optax.value_and_grad_from_state(loss)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state, value

    val_fn = jax.jit(sq_errs)
    train_g = jax.device_put(train_g)
    val_g = jax.device_put(val_g)

    def validate(p):
        se, sf = (float(v) for v in val_fn(p, val_g))
        rmse_e = 1e3 * math.sqrt(se / n_val)
        rmse_f = math.sqrt(sf / f_val) if with_forces else None
        return objective(se, sf, n_val, f_val), rmse_e, rmse_f

    params = [v.value for v in model.trainable_variables]
    state = opt.init(params)
    obj, rmse_e, rmse_f = validate(params)
    best = (obj, rmse_e, rmse_f, params)
    history = [(0, float("nan"), rmse_e, rmse_f)]
    t0 = time.time()
    first_step_s = None
    for it in range(1, steps + 1):
        params, state, value = step(params, state, train_g)
        if first_step_s is None:
            jax.block_until_ready(value)
            first_step_s = time.time() - t0  # compilation included
        if it % log_every == 0 or it == steps:
            obj, rmse_e, rmse_f = validate(params)
            history.append((it, float(value), rmse_e, rmse_f))
            if verbose:
                fpart = f", forces {rmse_f:.3f} eV/Å" if with_forces else ""
                print(f"L-BFGS {it}/{steps}: train objective {float(value):.4g}, val energy {rmse_e:.2f} meV/atom"
                      f"{fpart} ({time.time() - t0:.0f} s)", flush=True)
            if not math.isfinite(obj):
                break
            stop = deadline is not None and time.time() > deadline
            if obj < best[0]:
                best = (obj, rmse_e, rmse_f, params)
                if on_improve is not None:
                    for var, p in zip(model.trainable_variables, params):
                        var.assign(p)
                    on_improve()
            if stop:
                if verbose:
                    print(f"L-BFGS: time limit reached after {it} iterations", flush=True)
                break
    for var, p in zip(model.trainable_variables, best[3]):
        var.assign(p)
    return {"best_val_rmse_mev_atom": best[1], "best_val_force_rmse_ev_a": best[2], "steps": steps,
            "force_weight": force_weight, "history": history, "seconds": time.time() - t0,
            "first_step_seconds": first_step_s, "iterations_run": it if steps else 0}

