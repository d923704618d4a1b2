"""Descriptors: from atomic positions to per-atom descriptor vectors, in NumPy and JAX (no Keras, no ASE).

* :mod:`.symmetry` — Behler-Parrinello G2/G4 symmetry functions, combined
  sets and presets, their batched evaluation and Jacobians;
* :mod:`.chebyshev` — aenet's Chebyshev basis;
* :mod:`.cutoffs`, :mod:`.geometry` — cut-off functions, safe norms and
  periodic displacements;
* :mod:`.neighbors` — periodic neighbour lists on the host and the
  padding ladders;
* :mod:`.batch` — structures prepared on the host and the padded
  :class:`~.batch.Batch`;
* :mod:`.featurize` — descriptors and Jacobians of many structures, the
  ``featurize`` command's file format;
* :mod:`.jacobian_cache` — descriptor Jacobians cached on disk.

The names of :mod:`.symmetry` are importable from here.
"""

from __future__ import annotations

from .symmetry import (
    ChebyshevBasis,
    CombinedDescriptors,
    SymmetryFunctionSet,
    atom_descriptor_jacobian,
    atom_descriptors,
    atoms_descriptors,
    batch_descriptor_jacobian,
    batch_descriptor_jacobian_sparse,
    batch_descriptor_strain_jacobian,
    batch_descriptors,
    descriptor_from_config,
    descriptor_preset,
    structure_descriptor_jacobian,
    structure_descriptors,
)

__all__ = [
    "ChebyshevBasis",
    "CombinedDescriptors",
    "SymmetryFunctionSet",
    "atom_descriptor_jacobian",
    "atom_descriptors",
    "atoms_descriptors",
    "batch_descriptor_jacobian",
    "batch_descriptor_jacobian_sparse",
    "batch_descriptor_strain_jacobian",
    "batch_descriptors",
    "descriptor_from_config",
    "descriptor_preset",
    "structure_descriptor_jacobian",
    "structure_descriptors",
]
