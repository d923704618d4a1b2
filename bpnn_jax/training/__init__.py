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
     (:mod:`bpnn_jax.jacobian_training`, :mod:`bpnn_jax.jacobian_cache`);
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

from .config import PRESETS, RESUME_OPTIONS, TrainConfig
from .data import compute_statistics, featurize_host, fit_energy_references, load_training_data, split_indices
from .datasets import DescriptorDataset, GeometryDataset
from .lbfgs import force_training_data, refine_lbfgs
from .predict import predict_stress, predict_structures
from .run import build_model, train
from .run_state import data_parallel_distribution

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
    "build_model",
    "data_parallel_distribution",
    "train",
    "predict_structures",
    "predict_stress",
    "force_training_data",
    "refine_lbfgs",
]
