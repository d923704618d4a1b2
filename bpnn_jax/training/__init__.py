"""Training, as its recipe reads: data, descriptors, stages, model.

A run (:func:`train`, ``python -m bpnn_jax train``) goes

1. :mod:`.config` — the options (:class:`TrainConfig`, named set-ups,
   ``--config`` files resolved into ``RUN_DIR/config.yaml``);
2. :mod:`.data` — structures read and filtered by energy, reference
   energies (given or fitted), the split, symmetry functions and the
   training-set statistics;
3. the training:
   :mod:`.committee_stage`, the one trainer (``--members K``, K >= 1): K
   networks on energies, forces (and stress), from scratch or from a
   model, on cached descriptor Jacobians (:mod:`bpnn_jax.training.jacobian`,
   :mod:`bpnn_jax.descriptors.jacobian_cache`);
4. the model saved to ``RUN_DIR/model.keras`` (:mod:`.run`).

:mod:`.run_state` holds what a run keeps on disk (atomic saves, the
resolved config) and the checks before it starts; :mod:`.predict` the
predictions of a trained model (energies, forces, committee spread,
stress); :mod:`.tuning`, :mod:`.tuning_ef` and :mod:`.tuning_train` the
hyper-parameter searches.

Everything a run writes goes to its run directory: ``config.json``,
``config.yaml``, ``split.json``, ``ef_history.csv``, ``ef_state.npz`` (for
``--resume``), ``ef.json`` (the run's summary), ``cache/`` (descriptor
Jacobians) and ``model.keras`` (``checkpoints/last.keras`` when a time
limit stopped the run).
"""

from __future__ import annotations

from ..lazy import lazy_attributes
from .config import PRESETS, RESUME_OPTIONS, TrainConfig

# Everything but the options is imported on first use (PEP 562): the
# model imports Keras (~1-2 s), which commands such as ``featurize`` or
# ``energies`` never need, and the CLI reads TrainConfig's defaults for
# every command.
_LAZY = {
    "compute_statistics": ".data", "featurize_host": ".data", "fit_energy_references": ".data",
    "load_training_data": ".data", "split_indices": ".data",
    "predict_stress": ".predict", "predict_structures": ".predict", "spread_threshold": ".predict",
    "train": ".run",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "TrainConfig",
    "PRESETS",
    "RESUME_OPTIONS",
    "split_indices",
    "fit_energy_references",
    "compute_statistics",
    "featurize_host",
    "load_training_data",
    "train",
    "predict_structures",
    "predict_stress",
    "spread_threshold",
]
