"""Training, as its recipe reads: data, descriptors, stages, model.

A run (:func:`train`, ``python -m bpnn_jax train``) goes

1. :mod:`.config` — the options (:class:`TrainConfig`, named set-ups,
   ``--config`` files resolved into ``RUN_DIR/config.yaml``);
2. :mod:`.data` — structures read and filtered by energy, reference
   energies (given or fitted), the split, symmetry functions and the
   training-set statistics;
3. one of
   * :mod:`.committee_stage` (``--members K``): K networks on energies,
     forces (and stress) from scratch, on cached descriptor Jacobians
     (:mod:`bpnn_jax.training.jacobian`, :mod:`bpnn_jax.descriptors.jacobian_cache`);
   * or the single-network stages: :mod:`.energy_stage` (energies on
     cached descriptors, then full-batch L-BFGS, :mod:`.lbfgs`) and
     :mod:`.force_stage` (energies and forces end to end);
4. the model saved to ``RUN_DIR/model.keras`` (:mod:`.run`).

:mod:`.run_state` holds what a run keeps on disk (atomic saves,
checkpoints, history, ``state.json`` for ``--resume``, the time limit);
:mod:`.datasets` the Keras datasets; :mod:`.predict` the predictions of a
trained model (energies, forces, committee spread, stress).

Everything a run writes goes to its run directory: ``config.json``,
``config.yaml``, ``split.json``, ``checkpoints/last.keras`` (every epoch,
atomic), ``best.keras``, ``history.csv`` / ``ef_history.csv``,
``state.json`` / ``ef_state.npz`` (for ``--resume``), ``cache/``
(descriptor Jacobians) and ``model.keras``.
"""

from __future__ import annotations

from ..lazy import lazy_attributes
from .config import PRESETS, RESUME_OPTIONS, TrainConfig

# Everything but the options is imported on first use (PEP 562): the
# datasets import Keras (~1-2 s), which commands such as ``featurize`` or
# ``energies`` never need, and the CLI reads TrainConfig's defaults for
# every command.
_LAZY = {
    "compute_statistics": ".data", "featurize_host": ".data", "fit_energy_references": ".data",
    "load_training_data": ".data", "split_indices": ".data",
    "DescriptorDataset": ".datasets", "GeometryDataset": ".datasets",
    "force_training_data": ".lbfgs", "refine_lbfgs": ".lbfgs",
    "predict_stress": ".predict", "predict_structures": ".predict", "spread_threshold": ".predict",
    "train": ".run",
    "data_parallel_distribution": ".run_state",
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
    "GeometryDataset",
    "DescriptorDataset",
    "data_parallel_distribution",
    "train",
    "predict_structures",
    "predict_stress",
    "spread_threshold",
    "force_training_data",
    "refine_lbfgs",
]
