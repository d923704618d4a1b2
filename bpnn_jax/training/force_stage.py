"""Stage 2 of the single-network run: energies and forces end to end.

Positions and cell go in, the model computes descriptors, energies and
forces by autodiff (Keras ``fit`` on a :class:`~.datasets.GeometryDataset`);
the loss is the per-atom energy MSE plus the weighted force MSE.  The
end-to-end path is the reference for the Jacobian path of the committee
stage and the way to train on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import keras

from .data import compute_statistics, featurize_host
from .datasets import GeometryDataset
from .run_state import EpochState, lr_callbacks


def run_force_stage(model, config, train_s, val_s, spec, run_dir: Path, *, resume: bool, state: dict, epoch_done: int,
                    verbose: int, deadline, multiple: int) -> None:
    """Fit ``model`` on energies and forces (in place); the best epoch's weights are kept.

    Args: as :func:`~.energy_stage.run_energy_stage`, with ``state`` the
    run's ``state.json`` contents (stage and epoch).
    """
    elements = list(model.elements)
    monitor = "val_energy_rmse_mev_atom"
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
                  verbose=verbose, callbacks=[EpochState(run_dir, "force", f_monitor,
                                                          lr_callbacks(config, f_monitor), deadline=deadline)],
                  shuffle=False)  # the dataset shuffles, seeded by epoch; Keras's own batch shuffle is not
    if (run_dir / "best.keras").exists():
        # best.keras holds this stage's best epoch (its first epoch
        # overwrites any earlier one).  Stopped by the epoch count or the
        # time limit rather than by early stopping: keep it, not the last.
        model.set_weights(keras.saving.load_model(run_dir / "best.keras", compile=False).get_weights())
