"""Input and output: structure files, their labels, energy tables, atomic writes, the bundled sample.

* :mod:`.xsf` — the XSF reader and writer;
* :mod:`.frames` — structure files of any format ASE reads, where their
  labels are (:class:`~.frames.FrameKeys`), many files at once;
* :mod:`.energies` — energy tables (cohesive energies) and their CSV;
* :mod:`.atomic` — atomic writes;
* :mod:`.sample_data` — the bundled TiO2 sample.

This package depends on NumPy and ASE only (no JAX, no Keras), so that it
can be imported cheaply by the command-line interface and by data tools.
Units: eV, Å, eV/Å, eV/Å³.  Every public name is importable from here.
"""

from __future__ import annotations

from ..units import stress_voigt, voigt_6
from .atomic import atomic_write
from .energies import (
    ENERGY_CSV_COLUMNS,
    REFERENCE_ENERGIES_TIO2,
    energy_table,
    write_energy_csv,
)
from .frames import (
    DIRECTORY_SUFFIXES,
    ENERGY_KEYS,
    FORCES_KEYS,
    STRESS_KEYS,
    VIRIAL_KEYS,
    FrameKeys,
    find_xsf_files,
    read_frames,
    read_structures,
)
from .sample_data import sample_data_dir
from .xsf import MIN_CELL_SINE, MIN_CELL_VOLUME, read_xsf, structure_energy, write_xsf

__all__ = [
    "DIRECTORY_SUFFIXES",
    "ENERGY_CSV_COLUMNS",
    "ENERGY_KEYS",
    "FORCES_KEYS",
    "MIN_CELL_SINE",
    "MIN_CELL_VOLUME",
    "REFERENCE_ENERGIES_TIO2",
    "STRESS_KEYS",
    "VIRIAL_KEYS",
    "FrameKeys",
    "atomic_write",
    "energy_table",
    "find_xsf_files",
    "read_frames",
    "read_structures",
    "read_xsf",
    "sample_data_dir",
    "stress_voigt",
    "structure_energy",
    "voigt_6",
    "write_energy_csv",
    "write_xsf",
]
