"""Stage 1 of the single-network run: energies on cached symmetry functions, then L-BFGS.

The descriptors do not depend on the weights, so they are computed once and
the MLPs alone are fitted (Keras ``fit`` on a :class:`~.datasets.
DescriptorDataset`), then polished by full-batch L-BFGS (:mod:`.lbfgs`),
optionally with forces from the descriptor Jacobians.  The stage's end is
recorded in ``state.json`` so that ``--resume`` goes on with stage 2.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras

from ..descriptors.neighbors import round_up
from .data import compute_statistics, featurize_host
from .datasets import DescriptorDataset
from .lbfgs import force_training_data, refine_lbfgs
from .run_state import EpochState, atomic_save, lr_callbacks, write_json


def run_energy_stage(model, config, train_s, val_s, spec, run_dir: Path, *, resume: bool, stage_done, epoch_done: int,
                     verbose: int, deadline, multiple: int) -> None:
    """Fit ``model``'s energies (in place); ``state.json`` then says stage 2 comes next.

    Args:
        model: the BPNN (statistics are set here unless resuming or
            fine-tuning).
        config: the run's :class:`~.config.TrainConfig`.
        train_s, val_s: prepared training and validation structures.
        spec: the symmetry-function set.
        run_dir: the run directory (checkpoints, ``lbfgs.json``,
            ``energy_stage.keras``, ``state.json``).
        resume, stage_done, epoch_done: where a resumed run stands.
        verbose: Keras verbosity (0, 1, 2).
        deadline: ``time.time()`` after which to stop, or None.
        multiple: batch sizes must be multiples of this (devices).
    """
    elements = list(model.elements)
    monitor = "val_energy_rmse_mev_atom"
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
                  verbose=verbose, callbacks=[EpochState(run_dir, "energy", monitor, lr_callbacks(config, monitor),
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
            on_improve=lambda: atomic_save(model, run_dir / "checkpoints" / "last.keras"),
        )
        write_json(run_dir / "lbfgs.json", result)
    # The force stage starts from the energy stage's best weights
    # (EarlyStopping restored them); record that stage 1 is complete.
    atomic_save(model, run_dir / "checkpoints" / "last.keras")
    # Kept apart: the force stage overwrites last/best with its own epochs.
    atomic_save(model, run_dir / "energy_stage.keras")
    last = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
    energy_done = {"epoch": int(last.get("epoch", initial)) if last.get("stage") == "energy" else initial,
                   "best": last.get("best", math.inf), "epochs": config.energy_epochs}
    write_json(run_dir / "state.json", {"stage": "force", "epoch": 0, "best": math.inf, "energy": energy_done})
