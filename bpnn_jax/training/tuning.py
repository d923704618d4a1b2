"""The study's hyper-parameter grid search with KerasTuner, resumable, on the committee trainer.

The pieces:

* :class:`TuningData`: everything that does not depend on the trial (XSF
  files read, neighbour lists, symmetry functions of the training and
  validation structures, training-set statistics), computed once per run
  and cached on disk (:func:`prepare_tuning_data`), so every trial and a
  restarted run only group arrays already in memory.
* :class:`BPNNHyperModel`: a ``keras_tuner.HyperModel`` whose ``build(hp)``
  returns the trial's :class:`~bpnn_jax.training.jacobian.CommitteeConfig`
  and whose ``fit`` trains it with :func:`~bpnn_jax.training.jacobian.fit_committee`:
  the study's set-up (``--preset seed``: one network, energies only, MAE,
  constant learning rate), with the tuned ``layers``, ``nodes``,
  ``learning_rate`` and ``dropout`` (a rate: 0.0 = off, 0.1 = on, the rate
  of every hidden layer).
* :class:`ResultsTable`: our own record of finished trials,
  ``results.csv``, one row per grid point, rewritten atomically.
* :class:`ResumableGridSearchOracle` / :class:`BPNNGridSearch`:
  KerasTuner's ``GridSearch`` with an oracle that enumerates the grid from
  the search space and the record instead of from in-memory state.

Why our own oracle.  ``GridSearchOracle`` keeps the order of the grid in
memory only (a linked list of trial ids and a queue of trials to expand);
after a reload both are empty, so a resumed search either stops at once or,
once a retried trial ends, fails with a ``KeyError``.  The base ``Oracle``
also counts consecutive failures over the whole history, so a project that
once stopped on failures refuses to resume.  :class:`ResumableGridSearchOracle`
proposes the first grid point (in ``GridSearch``'s order) that is neither in
``results.csv`` nor running nor queued for retry, and counts failures of
the current session only.  Together with KerasTuner's own re-queueing of the
trials left running by a killed process, and with ``run_trial`` answering a
grid point that is already in ``results.csv`` from the record (no training),
every grid point ends up in ``results.csv`` exactly once however often the
run is interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import numbers
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

import keras_tuner

from ..descriptors.symmetry import SymmetryFunctionSet, descriptor_from_config
from ..io.atomic import atomic_write
from ..io.frames import find_xsf_files, read_structures
from ..model.bpnn import BPNN, load_model
from . import jacobian as jt
from .config import PRESETS, TrainConfig
from .data import compute_statistics, featurize_host, load_training_data
from .run_state import atomic_save

__all__ = [
    "OBJECTIVE_NAME",
    "grid_label",
    "merge_choices",
    "OBJECTIVE",
    "DEFAULT_CHOICES",
    "RESULT_COLUMNS",
    "SplitArrays",
    "TuningData",
    "select_files",
    "prepare_tuning_data",
    "grid_hyperparameters",
    "BPNNHyperModel",
    "ResultsTable",
    "ResumableGridSearchOracle",
    "BPNNGridSearch",
    "validation_metrics",
    "write_results_markdown",
    "plot_trials",
    "retrain",
    "evaluate_on_test",
]

#: The metric the model logs for the validation set (lower is better).
OBJECTIVE_NAME = "val_energy_rmse_mev_atom"
OBJECTIVE = keras_tuner.Objective(OBJECTIVE_NAME, direction="min")

#: The study's grid.  ``dropout`` is a rate: 0.0 = off, 0.1 = on.
DEFAULT_CHOICES: dict[str, tuple] = {
    "layers": (4, 5, 6),
    "nodes": (16, 32, 64),
    "learning_rate": (5e-4, 1e-4, 5e-5),
    "dropout": (0.0, 0.1),
}

HP_NAMES = tuple(DEFAULT_CHOICES)

RESULT_COLUMNS = (
    "trial_id",
    *HP_NAMES,
    "val_energy_rmse_mev_atom",
    "val_force_rmse_ev_a",
    "val_energy_rmse_ev_total",
    "epochs_run",
    "seconds",
)


def _log(msg: str) -> None:
    print(msg, flush=True)


def grid_label(values: Mapping) -> str:
    """``name=value ...`` of a grid point, for logs and directory names."""
    return " ".join(f"{n}={v:g}" if isinstance(v, numbers.Real) and not isinstance(v, bool) else f"{n}={v}"
                    for n, v in values.items())


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


# ------------------------------------------------------------------- data
@dataclasses.dataclass
class SplitArrays:
    """Cached descriptors and targets of one split.

    Attributes:
        sf: per structure, (n_atoms, F) float32 symmetry functions.
        species: per structure, (n_atoms,) int32 element indices.
        energy: (n_struct,) float64 energies relative to the references, eV.
    """

    sf: list
    species: list
    energy: np.ndarray

    @property
    def n_atoms(self) -> np.ndarray:
        """(n_struct,) atoms per structure."""
        return np.array([len(s) for s in self.species], np.int64)

    def __len__(self) -> int:
        return len(self.species)

    def pack(self, prefix: str) -> dict:
        """Flat arrays for ``np.savez`` (names start with ``prefix``)."""
        return {
            f"{prefix}_sf": np.concatenate(self.sf).astype(np.float32),
            f"{prefix}_species": np.concatenate(self.species).astype(np.int32),
            f"{prefix}_counts": self.n_atoms,
            f"{prefix}_energy": np.asarray(self.energy, np.float64),
        }

    @classmethod
    def unpack(cls, z, prefix: str) -> "SplitArrays":
        """Inverse of :meth:`pack`."""
        ends = np.cumsum(z[f"{prefix}_counts"])
        starts = ends - z[f"{prefix}_counts"]
        sf, sp = z[f"{prefix}_sf"], z[f"{prefix}_species"]
        return cls([sf[a:b] for a, b in zip(starts, ends)], [sp[a:b] for a, b in zip(starts, ends)],
                   np.asarray(z[f"{prefix}_energy"], np.float64))


@dataclasses.dataclass
class TuningData:
    """Trial-independent inputs of the grid search, computed once.

    Attributes:
        elements: element order of the model.
        references: free-atom reference energies (eV) subtracted from targets.
        descriptor: ``SymmetryFunctionSet.to_config()``.
        statistics: :func:`~bpnn_jax.training.compute_statistics` of the
            training split (passed to ``BPNN.set_statistics``).
        files: {"train"|"val"|"test": [file paths]}, the split.
        train, val: cached descriptors and energies.
        max_energy: the energy filter used (eV/atom), for evaluation.
        atoms: {file path: ase.Atoms} of the structures read in this
            process (reused for the test set when present).
    """

    elements: tuple
    references: dict
    descriptor: dict
    statistics: dict
    files: dict
    train: SplitArrays
    val: SplitArrays
    max_energy: float | None = 1.0
    atoms: dict | None = None
    _groups: tuple | None = dataclasses.field(default=None, repr=False, compare=False)

    def groups(self) -> tuple[jt.Groups, jt.Groups]:
        """The training and validation splits as the committee trainer's energy-only groups (made once)."""
        if self._groups is None:
            self._groups = tuple(jt.group_by_size(part.sf, part.species, part.energy) for part in (self.train, self.val))
        return self._groups

    def test_atoms(self) -> list:
        """The held-out test structures (``ase.Atoms``), read if not in memory."""
        names = self.files["test"]
        if self.atoms is not None and all(n in self.atoms for n in names):
            return [self.atoms[n] for n in names]
        if not names:
            return []
        atoms, _ = read_structures(names, require_energy=True)
        return atoms


def select_files(data: str | os.PathLike, subset: int | None = None, seed: int = 0) -> list[Path]:
    """The XSF files of a run: all under ``data``, or a random subset of them.

    Args:
        data: an XSF file or a directory of ``*.xsf`` files.
        subset: number of structures drawn at random (None or 0: all).
        seed: seed of the draw.

    Returns:
        Paths, in file-name order.
    """
    files = [f.resolve() for f in find_xsf_files(data)]
    if subset and subset < len(files):
        rng = np.random.default_rng(seed)
        files = [files[i] for i in np.sort(rng.choice(len(files), int(subset), replace=False))]
    return files


def _fingerprint(files: Sequence[Path], config: TrainConfig) -> str:
    h = hashlib.sha256()
    meta = {k: v for k, v in config.to_json().items()
            if k in ("preset", "max_energy", "val_fraction", "test_fraction", "seed", "reference_energies")}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _save_cache(path: Path, data: TuningData, fingerprint: str) -> None:
    meta = dict(fingerprint=fingerprint, elements=list(data.elements), references=data.references,
                descriptor=data.descriptor, files=data.files, max_energy=data.max_energy)
    arrays = {**data.train.pack("train"), **data.val.pack("val"),
              **{f"stat_{k}": np.asarray(v, np.float64) for k, v in data.statistics.items()},
              "meta": np.array(json.dumps(meta))}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def _load_cache(path: Path, fingerprint: str) -> TuningData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("fingerprint") != fingerprint:
                return None
            stats = {k[5:]: z[k] for k in z.files if k.startswith("stat_")}
            stats["energy_scale"] = float(stats["energy_scale"])
            return TuningData(
                elements=tuple(meta["elements"]), references=meta["references"], descriptor=meta["descriptor"],
                statistics=stats, files=meta["files"], train=SplitArrays.unpack(z, "train"),
                val=SplitArrays.unpack(z, "val"), max_energy=meta["max_energy"],
            )
    except (OSError, ValueError, KeyError):
        return None


def prepare_tuning_data(files: Sequence[Path], config: TrainConfig, *,
                        cache: str | os.PathLike | None = None, progress: bool = True) -> TuningData:
    """Read, split and featurize the data once for all trials.

    The split is :func:`bpnn_jax.training.split_indices` with
    ``config.seed`` over the structures kept by ``config.max_energy``
    (exactly as :func:`bpnn_jax.training.train` does).

    Args:
        files: XSF files (see :func:`select_files`).
        config: preset, max_energy, split fractions, seed and references.
        cache: ``.npz`` file for the descriptors and statistics; reused
            when it was made from the same files and settings.
        progress: progress bars and timings.

    Returns:
        The :class:`TuningData`.
    """
    t0 = time.time()
    fingerprint = _fingerprint(files, config)
    cached = _load_cache(Path(cache), fingerprint) if cache is not None and Path(cache).exists() else None
    if cached is not None:
        if progress:
            _log(f"[data] descriptors of {len(cached.train)} + {len(cached.val)} structures from cache {cache}")
        return cached
    data = load_training_data(files, config, progress=progress)
    S, split, names = data["structures"], data["split"], data["files"]
    train_s = [S[i] for i in split["train"]]
    val_s = [S[i] for i in split["val"]]
    if not train_s or not val_s:
        raise ValueError(f"too few structures ({len(S)}) for a train/validation split")
    file_split = {k: [str(names[i]) for i in v] for k, v in split.items()}
    atoms_by_file = {str(a.info["file"]): a for a in data["atoms"]}
    spec: SymmetryFunctionSet = data["spec"]
    # One call for both splits: batches of equal shape share a compilation.
    sf_all = featurize_host(train_s + val_s, spec, progress=progress)
    sf_train, sf_val = sf_all[: len(train_s)], sf_all[len(train_s):]
    train = SplitArrays(sf_train, [s.species for s in train_s], np.array([s.energy for s in train_s], np.float64))
    val = SplitArrays(sf_val, [s.species for s in val_s], np.array([s.energy for s in val_s], np.float64))
    stats = compute_statistics(train.sf, train.species, train.energy, len(data["elements"]))
    out = TuningData(elements=tuple(data["elements"]), references=dict(data["references"]),
                     descriptor=spec.to_config(), statistics=stats, files=file_split, train=train, val=val,
                     max_energy=config.max_energy, atoms=atoms_by_file)
    if cache is not None:
        _save_cache(Path(cache), out, fingerprint)
    if progress:
        _log(f"[data] {len(train)} train + {len(val)} val + {len(file_split['test'])} test structures "
             f"({len(data['excluded'])} above max_energy left out); descriptors in {time.time() - t0:.1f} s")
    return out


# -------------------------------------------------------------- hypermodel
def merge_choices(defaults: Mapping[str, tuple], choices: Mapping[str, Iterable] | None,
                  types: Mapping[str, Callable]) -> dict[str, tuple]:
    """A grid's choices: ``defaults`` overridden by ``choices``, each value converted by ``types[name]``.

    Raises:
        ValueError: an unknown name, no values, a repeated value, or
            ``layers``/``nodes`` (where present) below 1.
    """
    out = dict(defaults)
    for name, values in (choices or {}).items():
        if name not in defaults:
            raise ValueError(f"unknown hyper-parameter {name!r}; expected one of {tuple(defaults)}")
        values = tuple(values)
        if not values:
            raise ValueError(f"no values given for {name!r}")
        out[name] = values
    out = {name: tuple(types[name](v) for v in values) for name, values in out.items()}
    if any(v < 1 for name in ("layers", "nodes") for v in out.get(name, ())):
        raise ValueError("layers and nodes must be at least 1")
    for name, values in out.items():
        if len(set(values)) != len(values):
            raise ValueError(f"repeated value in the choices of {name!r}: {values}")
    return out


def _choices(choices: Mapping[str, Iterable] | None) -> dict[str, tuple]:
    out = merge_choices(DEFAULT_CHOICES, choices,
                        {"layers": int, "nodes": int, "learning_rate": float, "dropout": float})
    if any(not 0.0 <= v < 1.0 for v in out["dropout"]):
        raise ValueError("dropout rates must be in [0, 1)")
    return out


def grid_hyperparameters(choices: Mapping[str, Iterable] | None = None) -> keras_tuner.HyperParameters:
    """A ``HyperParameters`` object declaring the grid (one ``Choice`` each).

    Args:
        choices: {name: values} overriding :data:`DEFAULT_CHOICES`.

    Returns:
        The search space; the first value of each choice is its default.
    """
    hp = keras_tuner.HyperParameters()
    for name, values in _choices(choices).items():
        hp.Choice(name, list(values))
    return hp


class BPNNHyperModel(keras_tuner.HyperModel):
    """The study's trials on the committee trainer, for KerasTuner.

    ``build(hp)`` gives the trial's
    :class:`~bpnn_jax.training.jacobian.CommitteeConfig`: ``--preset
    seed`` (one network on energies only, MAE, constant learning rate, no
    weight decay or weight average) with the tuned ``layers`` (hidden
    layers per element network), ``nodes`` (nodes per hidden layer),
    ``learning_rate`` (Adam) and ``dropout`` (rate of every hidden layer;
    the study's "dropout on" is 0.1, "off" is 0.0); ``fit`` trains it.

    Args:
        descriptor: ``SymmetryFunctionSet.to_config()`` (fixes the elements).
        statistics: shared training-set statistics (descriptor and energy,
            :func:`~bpnn_jax.training.compute_statistics`).
        reference_energies: free-atom energies (eV) stored in the model.
        choices: {name: values} overriding :data:`DEFAULT_CHOICES`.
        activation: hidden activation.
        energy_loss: "mae" (the study's), "mse" or "huber".
        seed: weight-initialisation, dropout and shuffling seed (the same
            for every trial, so a trial does not depend on when it runs).
    """

    def __init__(self, descriptor: dict, statistics: dict | None = None, *, reference_energies: dict | None = None,
                 choices: Mapping[str, Iterable] | None = None, activation: str = "tanh", energy_loss: str = "mae",
                 seed: int = 0, name: str = "bpnn"):
        super().__init__(name=name, tunable=True)
        self.descriptor = descriptor
        self.statistics = statistics
        self.reference_energies = dict(reference_energies or {})
        self.choices = _choices(choices)
        self.activation = activation
        self.energy_loss = energy_loss
        self.seed = int(seed)

    @property
    def grid_size(self) -> int:
        """Number of grid points."""
        return math.prod(len(v) for v in self.choices.values())

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Register the four choices in ``hp``."""
        for name, values in self.choices.items():
            hp.Choice(name, list(values))

    def hyperparameters_for(self, values: Mapping) -> keras_tuner.HyperParameters:
        """The search space with ``values`` selected (e.g. to rebuild the best model)."""
        hp = grid_hyperparameters(self.choices)
        for name in HP_NAMES:
            hp.values[name] = values[name]
        return hp

    def build(self, hp: keras_tuner.HyperParameters, *, epochs: int = 80,
              atoms_per_batch: int = 768) -> jt.CommitteeConfig:
        """The committee trainer's settings for the values in ``hp`` (``epochs`` Adam epochs)."""
        layers = hp.Choice("layers", list(self.choices["layers"]))
        nodes = hp.Choice("nodes", list(self.choices["nodes"]))
        learning_rate = float(hp.Choice("learning_rate", list(self.choices["learning_rate"])))
        dropout = hp.Choice("dropout", list(self.choices["dropout"]))
        config = TrainConfig(**{**PRESETS["seed"], "hidden": (int(nodes),) * int(layers), "dropout": float(dropout),
                                "ef_learning_rate": learning_rate, "ef_final_learning_rate": learning_rate,
                                "activation": self.activation, "energy_loss": self.energy_loss,
                                "ef_epochs": int(epochs), "ef_atoms_per_batch": int(atoms_per_batch),
                                "seed": self.seed})
        return config.committee_config()

    def fit(self, hp, config: jt.CommitteeConfig, data: "TuningData", **kwargs) -> dict:
        """Train: :func:`~bpnn_jax.training.jacobian.fit_committee` on ``data``'s groups (``kwargs`` passed on)."""
        train, val = data.groups()
        return jt.fit_committee(train, val, self.statistics, config, **kwargs)

    def to_model(self, params, config: jt.CommitteeConfig) -> BPNN:
        """The trained network as a :class:`~bpnn_jax.model.BPNN`."""
        return jt.to_model(params, self.statistics, descriptor_from_config(self.descriptor), config,
                           self.reference_energies)


# ----------------------------------------------------------------- record
def _parse(text: str):
    if text is None or text == "":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _norm(value):
    """A hyper-parameter value as a plain int, float or str (for comparisons)."""
    if isinstance(value, str):
        value = _parse(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


class ResultsTable:
    """``results.csv``: one row per finished grid point, written atomically.

    Every change rewrites the whole file through a temporary file and
    ``os.replace`` (:func:`bpnn_jax.io.atomic_write`), under an advisory
    lock so that several workers of one machine can share it.

    Args:
        path: the CSV file.
        hp_names: the hyper-parameters that name a grid point (default:
            the study's, :data:`HP_NAMES`).
        columns: the CSV columns, ``hp_names`` among them (default
            :data:`RESULT_COLUMNS`).
    """

    def __init__(self, path: str | os.PathLike, *, hp_names: Sequence[str] = HP_NAMES,
                 columns: Sequence[str] = RESULT_COLUMNS):
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self.hp_names = tuple(hp_names)
        self.columns = tuple(columns)
        if not set(self.hp_names) <= set(self.columns):
            raise ValueError(f"the columns {self.columns} lack hyper-parameters of {self.hp_names}")

    def key(self, values: Mapping) -> tuple:
        """The grid point of a row or of a ``HyperParameters.values`` dict."""
        return tuple(_norm(values[n]) for n in self.hp_names)

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX: single worker only
            yield
            return
        with open(self.lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return [{k: (v if k == "trial_id" else _parse(v)) for k, v in row.items()} for row in csv.DictReader(fh)]

    def rows(self) -> list[dict]:
        """All rows, values parsed (int, float or None)."""
        with self._locked():
            return self._read()

    def keys(self) -> set:
        """Grid points recorded."""
        return {self.key(r) for r in self.rows()}

    def get(self, values: Mapping) -> dict | None:
        """The row of a grid point, or None."""
        k = self.key(values)
        return next((r for r in self.rows() if self.key(r) == k), None)

    def append(self, row: Mapping) -> bool:
        """Add a row unless its grid point is recorded already.

        Returns:
            True if written, False if the grid point was there.
        """
        with self._locked():
            rows = self._read()
            if any(self.key(r) == self.key(row) for r in rows):
                return False
            rows.append({c: row.get(c) for c in self.columns})
            with atomic_write(self.path, newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(self.columns))
                w.writeheader()
                for r in rows:
                    w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in self.columns})
            return True


# ----------------------------------------------------------------- oracle
class ResumableGridSearchOracle(keras_tuner.oracles.GridSearchOracle):
    """``GridSearchOracle`` that resumes from ``results.csv`` (see module doc).

    Grid points are visited in ``GridSearch``'s order (each choice's default
    first, the last hyper-parameter varying fastest).  A point is proposed
    unless it is recorded in ``results`` (or, without a record, completed
    according to KerasTuner), running, queued for retry, or failed in this
    session (a failed point is tried again by the next session).

    Args:
        *args, **kwargs: as ``GridSearchOracle``.
        results: the :class:`ResultsTable` holding finished grid points.
    """

    def __init__(self, *args, results: ResultsTable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.results = results
        self._declared = self.hyperparameters.copy() if self.hyperparameters.space else None
        self._session_start = 0
        self._failed_this_session: set = set()

    def grid(self) -> list[dict]:
        """Every grid point, in visiting order."""
        names, lists = [], []
        for hp in self.get_space().space:
            if hp.conditions:
                raise ValueError(f"conditional hyper-parameter {hp.name!r} is not supported")
            values = list(hp.values)
            if hp.default in values:
                values.remove(hp.default)
            names.append(hp.name)
            lists.append([hp.default, *values])
        return [dict(zip(names, combo)) for combo in itertools.product(*lists)]

    def _key(self, values: Mapping) -> tuple:
        if self.results is not None:
            return self.results.key(values)
        return tuple(_norm(values[n]) for n in sorted(values))

    def _taken(self) -> set:
        if self.results is not None:
            taken = set(self.results.keys())
        else:
            taken = {self._key(t.hyperparameters.values) for t in self.trials.values()
                     if t.status == keras_tuner.engine.trial.TrialStatus.COMPLETED}
        for t in self.ongoing_trials.values():
            taken.add(self._key(t.hyperparameters.values))
        for trial_id in self._retry_queue:
            taken.add(self._key(self.trials[trial_id].hyperparameters.values))
        return taken | self._failed_this_session

    def populate_space(self, trial_id):
        """The first grid point not yet done, running or failed (see class doc)."""
        Status = keras_tuner.engine.trial.TrialStatus
        taken = self._taken()
        for values in self.grid():
            if self._key(values) not in taken:
                return {"status": Status.RUNNING, "values": values}
        if self.ongoing_trials:
            # Another worker runs the last trial(s); KerasTuner's workers ask
            # again at once, so slow the polling down a little.
            time.sleep(0.5)
            return {"status": Status.IDLE, "values": None}
        return {"status": Status.STOPPED, "values": None}

    @keras_tuner.synchronized
    def end_trial(self, trial):
        """End a trial; remember a failed grid point for the rest of the session."""
        super().end_trial(trial)
        ended = self.trials[trial.trial_id]
        if ended.status == keras_tuner.engine.trial.TrialStatus.FAILED:
            self._failed_this_session.add(self._key(ended.hyperparameters.values))

    def _check_consecutive_failures(self):
        # KerasTuner counts over the whole history, so a project that once
        # stopped on failures would stop again at once; count this session's.
        consecutive = 0
        for trial_id in self.end_order[self._session_start:]:
            trial = self.trials[trial_id]
            consecutive = consecutive + 1 if trial.status == keras_tuner.engine.trial.TrialStatus.FAILED else 0
            if consecutive >= self.max_consecutive_failed_trials:
                raise RuntimeError(
                    f"{consecutive} consecutive failed trials; the last one said:\n{trial.message or ''}")

    def set_state(self, state):
        """Reload the saved state; the declared search space stays authoritative."""
        super().set_state(state)
        self._session_start = len(self.end_order)
        if self._declared is not None:
            self.hyperparameters = self._declared.copy()


# ------------------------------------------------------------------ tuner
def validation_metrics(params, data: TuningData, config: jt.CommitteeConfig) -> dict:
    """Validation RMSEs of a trained network (the committee mean): meV/atom and total-energy eV.

    Args:
        params: :func:`~bpnn_jax.training.jacobian.init_params`-shaped weights.
        data: the shared data.
        config: the trial's settings (its activation).

    Returns:
        {"val_energy_rmse_mev_atom", "val_energy_rmse_ev_total"}.
    """
    _, val = data.groups()
    pred = jt.committee_energies(params, data.statistics, val, config.activation).mean(axis=0)
    err = pred - np.asarray(data.val.energy, np.float64)
    n = data.val.n_atoms.astype(np.float64)
    return {"val_energy_rmse_mev_atom": 1e3 * float(np.sqrt(np.mean((err / n) ** 2))),
            "val_energy_rmse_ev_total": float(np.sqrt(np.mean(err ** 2)))}


class BPNNGridSearch(keras_tuner.GridSearch):
    """KerasTuner ``GridSearch`` over :class:`BPNNHyperModel` that can be killed and resumed.

    It uses :class:`ResumableGridSearchOracle` (a ``GridSearchOracle``
    subclass) instead of the stock oracle; everything else is
    ``GridSearch``/``Tuner``.  ``search(data, epochs=..., batch_size=...)``
    trains each grid point once: a row is appended to ``results`` after
    each trial, before KerasTuner marks it complete, and a grid point that
    is in ``results`` already is answered from there without training.

    Args:
        hypermodel: the :class:`BPNNHyperModel` (None in a chief process,
            which only serves the oracle).
        results: the :class:`ResultsTable`.
        hyperparameters: the search space (default: the hypermodel's).
        objective: default :data:`OBJECTIVE`.
        max_consecutive_failed_trials: stop after this many failures in a row.
        **kwargs: ``directory``, ``project_name``, ``overwrite`` ... as for
            ``keras_tuner.Tuner``.
    """

    def __init__(self, hypermodel: BPNNHyperModel | None = None, *, results: ResultsTable,
                 hyperparameters: keras_tuner.HyperParameters | None = None, objective=OBJECTIVE, seed=None,
                 max_consecutive_failed_trials: int = 3, **kwargs):
        if hyperparameters is None:
            hyperparameters = grid_hyperparameters(hypermodel.choices if hypermodel is not None else None)
        self.seed = seed
        self.results = results
        self._grid_size = math.prod(len(hp.values) for hp in hyperparameters.space)
        oracle = ResumableGridSearchOracle(
            objective=objective, hyperparameters=hyperparameters, seed=seed, results=results,
            max_retries_per_trial=0, max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        # GridSearch.__init__ only builds a stock GridSearchOracle; build ours
        # and initialise the Tuner with it.
        keras_tuner.Tuner.__init__(self, oracle, hypermodel, **kwargs)
        self.session_seconds: list[float] = []

    #: The metric the oracle minimises, and the metrics a recorded row answers with.
    objective_name = OBJECTIVE_NAME
    metric_names = ("val_energy_rmse_mev_atom", "val_energy_rmse_ev_total", "val_force_rmse_ev_a")

    def on_search_begin(self):
        """Save the project before the first trial, so a run killed in it reloads (and numbers trials) cleanly."""
        super().on_search_begin()
        self.save()

    def run_trial(self, trial, *args, **kwargs) -> dict:
        """Train one grid point (see :meth:`train_trial`) and record it in ``results``.

        A grid point already in ``results`` (a trial that finished just
        before the process died, and that KerasTuner queues again) is
        answered from the record without training.

        Args:
            trial: the KerasTuner trial.
            *args, **kwargs: what ``search`` was given, passed on to
                :meth:`train_trial`.

        Returns:
            The validation metrics (the objective included).
        """
        values = {n: trial.hyperparameters.values[n] for n in self.results.hp_names}
        label = grid_label(values)
        recorded = self.results.get(values)
        if recorded is not None:
            _log(f"[grid] {label}: recorded already (trial {recorded['trial_id']}), not trained again")
            return {k: float(recorded[k]) for k in self.metric_names if recorded.get(k) is not None}
        rows = self.results.rows()
        done, total = len(rows), self._grid_size
        times = [float(r["seconds"]) for r in rows if r.get("seconds") is not None]
        eta = f", ETA {_fmt_duration(np.mean(times) * (total - done))}" if times else ""
        _log(f"[grid] trial {done + 1}/{total} (id {trial.trial_id}): {label}{eta}")
        t0 = time.time()
        try:
            metrics, epochs_run = self.train_trial(trial, *args, **kwargs)
            if not math.isfinite(metrics[self.objective_name]):
                raise FloatingPointError(f"{label}: non-finite validation error")
        except Exception as exc:  # KerasTuner marks the trial failed; say why
            _log(f"[grid] trial {done + 1}/{total} ({label}) failed: {type(exc).__name__}: {exc}")
            raise
        seconds = time.time() - t0
        self.results.append({"trial_id": trial.trial_id, **values, **metrics, "epochs_run": epochs_run,
                             "seconds": round(seconds, 2)})
        self.session_seconds.append(seconds)
        _log(f"[grid] trial {done + 1}/{total} done in {seconds:.0f} s: {self.describe_metrics(metrics)}")
        return metrics

    def describe_metrics(self, metrics: Mapping) -> str:
        """One line of a trial's validation metrics, for the log."""
        force = f", {metrics['val_force_rmse_ev_a']:.4f} eV/Å" if "val_force_rmse_ev_a" in metrics else ""
        return (f"val {metrics[OBJECTIVE_NAME]:.2f} meV/atom, {metrics['val_energy_rmse_ev_total']:.3f} eV "
                f"total{force}")

    def train_trial(self, trial, data: TuningData, *, epochs: int, batch_size: int, fit_verbose: int = 0,
                    **kwargs) -> tuple[dict, int]:
        """Train and score one grid point (no bookkeeping; nothing on disk, so a killed trial starts over).

        Args:
            trial: the KerasTuner trial.
            data: the shared :class:`TuningData`.
            epochs: epochs per trial.
            batch_size: structures per batch, about (turned into padded
                atoms per batch by
                :func:`~bpnn_jax.training.jacobian.atoms_per_batch_for`).
            fit_verbose: :func:`~bpnn_jax.training.jacobian.fit_committee`
                verbosity.
            **kwargs: ignored (KerasTuner's ``verbose``, the former
                ``seed``: the hypermodel's seed is every trial's).

        Returns:
            (validation metrics of the best epoch's weights, epochs run).
        """
        import jax

        jax.clear_caches()  # free the last trial's programs: each holds ~18 memory maps (vm.max_map_count)
        hp = trial.hyperparameters
        config = self.hypermodel.build(hp, epochs=epochs,
                                       atoms_per_batch=jt.atoms_per_batch_for(batch_size, data.train.n_atoms))
        fit = self.hypermodel.fit(hp, config, data, verbose=fit_verbose)
        return validation_metrics(fit["params"], data, config), int(fit["epochs_run"])


# ---------------------------------------------------------------- reports
def _sorted_rows(rows: Sequence[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r.get(OBJECTIVE_NAME) is None, r.get(OBJECTIVE_NAME) or 0.0))


def _num(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def write_results_markdown(rows: Sequence[dict], path: str | os.PathLike, *, grid_size: int | None = None,
                           settings: Mapping | None = None, test_metrics: Mapping | None = None) -> None:
    """``results.md``: the trials as a table sorted by validation energy RMSE.

    Args:
        rows: :class:`ResultsTable` rows.
        path: output file.
        grid_size: number of grid points (to say how many are missing).
        settings: run settings listed under the table.
        test_metrics: metrics of the retrained best model on the test split.
    """
    rows = _sorted_rows(rows)
    lines = ["# BPNN hyper-parameter grid search", ""]
    n = len(rows)
    lines.append(f"{n} of {grid_size if grid_size is not None else n} grid points done. Objective: validation "
                 "energy RMSE (meV/atom, lower is better), weights of each trial's best epoch. "
                 "Total-energy RMSE in eV for comparison with the original study (594.4 eV).")
    lines += ["", "| rank | trial | layers | nodes | learning rate | dropout | val RMSE (meV/atom) | "
              "val force RMSE (eV/Å) | val total-energy RMSE (eV) | epochs | time (s) |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rank, r in enumerate(rows, 1):
        lines.append(
            f"| {rank} | {r.get('trial_id')} | {r['layers']} | {r['nodes']} | {r['learning_rate']:g} | "
            f"{r['dropout']:g} | {_num(r.get(OBJECTIVE_NAME), '.2f')} | {_num(r.get('val_force_rmse_ev_a'), '.4f')} | "
            f"{_num(r.get('val_energy_rmse_ev_total'), '.3f')} | {_num(r.get('epochs_run'), 'd')} | "
            f"{_num(r.get('seconds'), '.0f')} |")
    if settings:
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + "."]
    if test_metrics:
        m = test_metrics
        lines += ["", "## Best configuration, retrained, on the test split", "",
                  f"- structures: {m.get('n_structures')}",
                  f"- energy RMSE: {_num(m.get('energy_rmse_mev_atom'), '.2f')} meV/atom "
                  f"(MAE {_num(m.get('energy_mae_mev_atom'), '.2f')})",
                  f"- total-energy RMSE: {_num(m.get('energy_rmse_ev'), '.3f')} eV (study: 594.4 eV)"]
        if m.get("force_rmse_ev_a") is not None:
            lines.append(f"- force RMSE: {m['force_rmse_ev_a']:.4f} eV/Å")
        lines.append("- details: `best/test_metrics.json`, plots in `best/plots/`")
    with atomic_write(path) as fh:
        fh.write("\n".join(lines) + "\n")


def plot_trials(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """``trials.png``: validation RMSE of every trial (sorted bars) and against learning rate.

    Args:
        rows: :class:`ResultsTable` rows.
        path: output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in _sorted_rows(rows) if r.get(OBJECTIVE_NAME) is not None]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, max(4.0, 0.25 * len(rows) + 1.5)),
                                   gridspec_kw=dict(width_ratios=(1.3, 1)))
    labels = [f"{r['layers']}×{r['nodes']}, lr {r['learning_rate']:g}, do {r['dropout']:g}" for r in rows]
    vals = [r[OBJECTIVE_NAME] for r in rows]
    ax0.barh(range(len(rows)), vals, color=["tab:red" if k == 0 else "tab:blue" for k in range(len(rows))])
    ax0.set_yticks(range(len(rows)), labels, fontsize=7)
    ax0.invert_yaxis()
    ax0.set_xlabel("validation energy RMSE (meV/atom)")
    ax0.set_title("trials, best first (layers × nodes)")
    markers = {v: m for v, m in zip(sorted({r["layers"] for r in rows}), "osD^v<>ph*")}
    cmap = plt.get_cmap("viridis")
    nodes = sorted({r["nodes"] for r in rows})
    layers = sorted(markers)
    for r in rows:
        c = cmap(nodes.index(r["nodes"]) / max(len(nodes) - 1, 1))
        # Spread the points of one learning rate a little (log axis) so they do not hide each other.
        shift = 0.08 * (nodes.index(r["nodes"]) - (len(nodes) - 1) / 2) + 0.025 * (
            layers.index(r["layers"]) - (len(layers) - 1) / 2)
        ax1.scatter(r["learning_rate"] * 10**shift, r[OBJECTIVE_NAME], marker=markers[r["layers"]], s=45,
                    facecolors=c if r["dropout"] == 0 else "none", edgecolors=c)
    for v, m in markers.items():
        ax1.scatter([], [], marker=m, color="gray", label=f"{v} layers")
    for k, nd in enumerate(nodes):
        ax1.scatter([], [], marker="s", color=cmap(k / max(len(nodes) - 1, 1)), label=f"{nd} nodes")
    ax1.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="dropout on (hollow)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax1.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax1.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax1.set_xticks(sorted({r["learning_rate"] for r in rows}), [f"{v:g}" for v in sorted({r["learning_rate"] for r in rows})])
    ax1.set_xlabel("learning rate")
    ax1.set_ylabel("validation energy RMSE (meV/atom)")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------- retrain and test
def retrain(hypermodel: BPNNHyperModel, data: TuningData, values: Mapping, run_dir: str | os.PathLike, *,
            epochs: int = 80, batch_size: int = 20, seed: int = 0, verbose: int = 2) -> BPNN:
    """Train one configuration from scratch (resumable) and save ``run_dir/model.keras``.

    Writes ``retrain.json`` (the settings), and, as the committee trainer
    does, ``ef_state.npz`` (the resume state) and ``ef_history.csv``.
    Started again with the same settings it continues from its last saved
    epoch (or returns the finished model); with other settings it starts
    over.

    Args:
        hypermodel: builds the settings.
        data: the shared data.
        values: {layers, nodes, learning_rate, dropout}.
        run_dir: output directory.
        epochs: training epochs (the study's set-up: 80).
        batch_size: structures per batch, about (the study's set-up: 20).
        seed: recorded in ``retrain.json``; the hypermodel's seed is the one used.
        verbose: :func:`~bpnn_jax.training.jacobian.fit_committee` verbosity.

    Returns:
        The model of the best epoch.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atoms = jt.atoms_per_batch_for(batch_size, data.train.n_atoms)
    settings = {"hyperparameters": {n: values[n] for n in HP_NAMES}, "epochs": int(epochs),
                "batch_size": int(batch_size), "atoms_per_batch": atoms, "seed": int(seed),
                "trainer": "committee", "energy_loss": hypermodel.energy_loss,
                "train_files": len(data.files["train"])}
    cfg_path = run_dir / "retrain.json"
    if not (cfg_path.exists() and json.loads(cfg_path.read_text()) == settings):
        for stale in ("ef_state.npz", "ef_history.csv", "model.keras", "test_metrics.json", "state.json",
                      "history.csv", "best.keras"):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "plots", ignore_errors=True)
        with atomic_write(cfg_path) as fh:
            json.dump(settings, fh, indent=2)
    if (run_dir / "model.keras").exists():  # written last, once training has ended
        _log(f"[retrain] {run_dir / 'model.keras'} finished already")
        return load_model(run_dir / "model.keras")
    config = hypermodel.build(hypermodel.hyperparameters_for(values), epochs=epochs, atoms_per_batch=atoms)
    _log(f"[retrain] {grid_label({n: values[n] for n in HP_NAMES})}: {epochs} epochs, ~{batch_size} structures "
         f"({atoms} padded atoms) per batch, {len(data.files['train'])} training structures")
    train, val = data.groups()
    # Not hypermodel.fit: that is the trials' (and what tests count as trials).
    fit = jt.fit_committee(train, val, hypermodel.statistics, config, run_dir=run_dir, resume=True, verbose=verbose)
    model = hypermodel.to_model(fit["params"], config)
    atomic_save(model, run_dir / "model.keras")
    return model


def evaluate_on_test(model: BPNN, data: TuningData, run_dir: str | os.PathLike, *, forces: bool = True) -> dict:
    """Score a model on the held-out test split: ``test_metrics.json`` and ``plots/``.

    Args:
        model: the model.
        data: the shared data (its ``files["test"]``).
        run_dir: directory of ``test_metrics.json`` and ``plots/``
            (``ef_history.csv`` there is plotted too).
        forces: also predict and score forces.

    Returns:
        What :func:`bpnn_jax.training.evaluation.write_report` wrote.
    """
    from .evaluation import evaluate_structures, write_plots, write_report

    run_dir = Path(run_dir)
    atoms = data.test_atoms()
    if not atoms:
        raise ValueError("the test split is empty")
    report = evaluate_structures(model, atoms, forces=forces, max_energy=data.max_energy)
    written = write_report(report, run_dir / "test_metrics.json")
    write_plots(report, run_dir / "plots", history_csv=run_dir / "ef_history.csv")
    return written
