"""Tests of bpnn_jax.io.energies: energy tables (cohesive energies) and their CSV."""

from __future__ import annotations

import csv

import pytest
from ase import Atoms

from bpnn_jax.errors import BPNNInputError
from bpnn_jax.io import (
    ENERGY_CSV_COLUMNS,
    REFERENCE_ENERGIES_TIO2,
    energy_table,
    read_structures,
    read_xsf,
    write_energy_csv,
)

S0001_ENERGY = -19960.66173260  # eV, from the file's comment line


def test_energy_table_structure0001(data_dir):
    atoms = read_xsf(data_dir / "structure0001.xsf")
    (row,) = energy_table([atoms])
    # by hand: 8 Ti, 16 O
    e_ref = 8 * -1604.604515075 + 16 * -432.503149303  # = -19756.886509448 eV
    expected = (-19960.66173260 - e_ref) / 24  # = -203.775223152 / 24 eV
    assert row["file"] == str(data_dir / "structure0001.xsf")
    assert row["n_atoms"] == 24
    assert row["composition"] == "O16Ti8"
    assert row["energy_ev"] == S0001_ENERGY
    assert row["energy_per_atom_ev"] == pytest.approx(S0001_ENERGY / 24, rel=1e-15)
    assert row["cohesive_energy_per_atom_ev"] == pytest.approx(expected, abs=1e-11)
    assert row["cohesive_energy_per_atom_ev"] == pytest.approx(-8.490634298, abs=1e-11)
    assert set(row) == set(ENERGY_CSV_COLUMNS)


def test_energy_table_errors():
    atoms = Atoms("TiN", positions=[[0, 0, 0], [1, 0, 0]])
    atoms.info["energy"] = -10.0
    atoms.info["file"] = "tin.xsf"
    with pytest.raises(BPNNInputError, match=r"tin.xsf.*element\(s\) N"):
        energy_table([atoms])
    assert energy_table([atoms], {"Ti": -1.0, "N": -2.0})[0]["cohesive_energy_per_atom_ev"] == -3.5
    no_energy = Atoms("O", positions=[[0, 0, 0]])
    with pytest.raises(BPNNInputError, match="structure 0.*no total energy"):
        energy_table([no_energy])


def test_write_energy_csv(tmp_path, small_files):
    structures, _ = read_structures(small_files[:4], require_energy=True)
    rows = energy_table(structures, REFERENCE_ENERGIES_TIO2)
    out = tmp_path / "e.csv"
    write_energy_csv(out, rows)
    with out.open(newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == list(ENERGY_CSV_COLUMNS)
    assert len(back) == 4
    for r, b in zip(rows, back):
        assert b["file"] == r["file"]
        assert int(b["n_atoms"]) == r["n_atoms"]
        assert b["composition"] == r["composition"]
        for key in ("energy_ev", "energy_per_atom_ev", "cohesive_energy_per_atom_ev"):
            assert float(b[key]) == r[key]  # full precision
    assert [p.name for p in tmp_path.iterdir()] == ["e.csv"]  # no temp files left
