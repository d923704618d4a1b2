"""Tests of bpnn_jax.io.sample_data: the bundled quick-start sample."""

from __future__ import annotations

from bpnn_jax.io import energy_table, read_structures, sample_data_dir


def test_sample_data(data_dir):
    d = sample_data_dir()
    files = sorted(d.glob("*.xsf"))
    assert 100 <= len(files) <= 200
    structures, skipped = read_structures(d, require_energy=True)
    assert not skipped
    assert {len(a) for a in structures} == {6, 22, 23, 24, 46, 47, 94, 95}
    for row in energy_table(structures):
        if row["n_atoms"] == 6:
            assert row["cohesive_energy_per_atom_ev"] < 1.0
    for f in files:  # unchanged copies of the data set
        assert f.read_bytes() == (data_dir / f.name).read_bytes(), f.name
    assert (d.parent / "README.md").is_file()
