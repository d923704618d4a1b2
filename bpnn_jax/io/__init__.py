"""Input and output: structure files, labels, energy tables, atomic writes, the bundled sample.

Depends on NumPy and ASE only (no JAX, no Keras), so the command line and
data tools import it cheaply.  Units: eV, Å, eV/Å, eV/Å³.
"""

from __future__ import annotations

from .xsf import (
    DIRECTORY_SUFFIXES,
    ENERGY_CSV_COLUMNS,
    ENERGY_KEYS,
    FORCES_KEYS,
    MIN_CELL_SINE,
    MIN_CELL_VOLUME,
    REFERENCE_ENERGIES_TIO2,
    STRESS_KEYS,
    VIRIAL_KEYS,
    FrameKeys,
    atomic_write,
    energy_table,
    find_xsf_files,
    read_frames,
    read_structures,
    read_xsf,
    sample_data_dir,
    stress_voigt,
    structure_energy,
    voigt_6,
    write_energy_csv,
    write_xsf,
)

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
