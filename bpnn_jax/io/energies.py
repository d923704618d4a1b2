"""Energy tables: total, per-atom and cohesive energies of structures, as CSV (eV)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms

from ..errors import BPNNInputError
from .atomic import atomic_write
from .xsf import float_text, structure_energy

__all__ = ["ENERGY_CSV_COLUMNS", "REFERENCE_ENERGIES_TIO2", "energy_table", "write_energy_csv"]

#: Free-atom reference energies (eV) used by aenet for the TiO2 data set.
REFERENCE_ENERGIES_TIO2: dict[str, float] = {"O": -432.503149303, "Ti": -1604.604515075}

#: Column order of the CSV written by :func:`write_energy_csv`.
ENERGY_CSV_COLUMNS: tuple[str, ...] = (
    "file",
    "n_atoms",
    "composition",
    "energy_ev",
    "energy_per_atom_ev",
    "cohesive_energy_per_atom_ev",
)



def _composition(symbols: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    return "".join(f"{s}{counts[s]}" for s in sorted(counts))


def energy_table(
    structures: Iterable[Atoms],
    reference_energies: Mapping[str, float] = REFERENCE_ENERGIES_TIO2,
) -> list[dict[str, Any]]:
    """Per-structure energies, one dict per structure.

    The cohesive energy per atom is ``(E - sum_i E_ref[element_i]) / N``,
    computed in float64 with an exactly rounded sum of the references.

    Args:
        structures: structures with a total energy (``info["energy"]`` or
            calculator results), e.g. from :func:`read_structures`.
        reference_energies: free-atom energy (eV) per element symbol.

    Returns:
        Dicts with keys ``file`` (``info["file"]`` or ``"<structure i>"``),
        ``n_atoms``, ``composition`` (symbols sorted alphabetically, each
        with its count, e.g. ``"O16Ti8"``), ``energy_ev``,
        ``energy_per_atom_ev`` and ``cohesive_energy_per_atom_ev`` (floats,
        eV).

    Raises:
        BPNNInputError: a structure without energy, without atoms, or with
            an element that has no reference energy.
    """
    rows = []
    for i, atoms in enumerate(structures):
        name = str(atoms.info.get("file", f"<structure {i}>"))
        n = len(atoms)
        if n == 0:
            raise BPNNInputError(f"{name}: structure has no atoms")
        energy = structure_energy(atoms)
        if energy is None:
            raise BPNNInputError(f"{name}: structure has no total energy")
        symbols = atoms.get_chemical_symbols()
        missing = sorted({s for s in symbols if s not in reference_energies})
        if missing:
            raise BPNNInputError(
                f"{name}: no reference energy for element(s) {', '.join(missing)} "
                f"(references given for {', '.join(sorted(reference_energies)) or 'none'})"
            )
        e = np.float64(energy)
        e_ref = np.float64(math.fsum(float(reference_energies[s]) for s in symbols))
        rows.append(
            {
                "file": name,
                "n_atoms": n,
                "composition": _composition(symbols),
                "energy_ev": float(e),
                "energy_per_atom_ev": float(e / n),
                "cohesive_energy_per_atom_ev": float((e - e_ref) / n),
            }
        )
    return rows


def write_energy_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows of :func:`energy_table` as CSV, atomically.

    Columns are :data:`ENERGY_CSV_COLUMNS`; floats are written with full
    (round-trip) precision, in eV.

    Args:
        path: destination CSV file.
        rows: dicts with (at least) the keys of :data:`ENERGY_CSV_COLUMNS`.

    Raises:
        BPNNInputError: a row lacks a column, or the file cannot be created.
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = [c for c in ENERGY_CSV_COLUMNS if c not in row]
        if missing:
            raise BPNNInputError(f"energy table row {i} lacks column(s) {', '.join(missing)}")
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ENERGY_CSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [float_text(row[c]) if isinstance(row[c], (float, np.floating)) else row[c] for c in ENERGY_CSV_COLUMNS]
            )
