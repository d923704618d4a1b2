"""What a run keeps on disk and how it stops: atomic saves, the resolved config, the per-epoch
checkpoint/history/early-stopping callback, learning-rate schedule, device and memory checks."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import keras

from ..errors import BPNNInputError
from ..io.atomic import atomic_write
from .config import TrainConfig


def atomic_save(model: keras.Model, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    with open(tmp, "rb+") as fh:  # on disk before the rename, as io.atomic_write does
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_yaml_config(path: Path, config: TrainConfig, paths, run_dir: Path, reasons=()) -> None:
    """The fully resolved config, as ``train --config`` reads it (data and out included).

    ``reasons``: lines saying why options were derived from the data, written as comments.
    """
    import yaml

    d = {"data": [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else (paths or []))],
         "out": str(run_dir), **config.to_json()}
    if isinstance(d.get("ef_force_weight"), tuple):
        d["ef_force_weight"] = list(d["ef_force_weight"])
    with atomic_write(path) as fh:
        fh.write("# bpnn_jax train config: python -m bpnn_jax train --config THIS_FILE (flags override it)\n")
        if reasons:
            fh.write("# options derived from the data:\n" + "".join(f"#   {line}\n" for line in reasons))
        yaml.safe_dump(d, fh, sort_keys=False)


def write_json(path: Path, obj) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, default=float)


class EpochState(keras.callbacks.Callback):
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
            atomic_save(self.model, self.run_dir / "best.keras")
        atomic_save(self.model, ckdir / "last.keras")
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
        write_json(self.run_dir / "state.json", {"stage": self.stage, "epoch": epoch + 1, "best": self.best,
                                                  "schedule": self._schedule_state()})
        if self.deadline is not None and time.time() > self.deadline:
            print(f"[{self.stage}] time limit reached after epoch {epoch + 1}; the best epoch is kept")
            self.model.stop_training = True


def lr_callbacks(config: TrainConfig, monitor: str):
    return [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=max(config.patience // 4, 5),
                                          min_lr=config.min_learning_rate, mode="min", verbose=0),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True,
                                      mode="min", verbose=0),
    ]


def data_parallel_distribution() -> keras.distribution.DataParallel:
    """Keras's ``DataParallel`` over all local devices (``TrainConfig.data_parallel``)."""
    return keras.distribution.DataParallel(devices=keras.distribution.list_devices())


def batch_multiple() -> int:
    """Devices a batch is split over by the current Keras distribution (1 without one)."""
    dist = keras.distribution.distribution()
    return 1 if dist is None else int(dist.num_model_replicas)


def require_forces(structures) -> None:
    """Force training needs forces on every structure: name the first that has none."""
    missing = [s.name for s in structures if s.forces is None]
    if missing:
        raise BPNNInputError(f"{missing[0]}: no forces, needed for force training"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def physical_memory_gb() -> float:
    """The machine's memory in GB (inf where the platform does not report it)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return math.inf
