"""Host-side batch preparation: per-element atom lists (bpnn_jax.descriptors.batch)."""

from __future__ import annotations

import numpy as np
import pytest

from bpnn_jax.descriptors.batch import atoms_by_species, species_atom_lists


def _brute_force(species, mask, s):
    return [list(np.flatnonzero((species[b] == s) & mask[b])) for b in range(species.shape[0])]


@pytest.mark.parametrize("one_element_row", [False, True])
def test_atoms_by_species_equals_brute_force(one_element_row):
    rng = np.random.default_rng(0)
    species = rng.integers(0, 3, size=(7, 13)).astype(np.int32)
    mask = np.zeros((7, 13), bool)
    for b, n in enumerate(rng.integers(0, 14, size=7)):
        mask[b, :n] = True
    species[2] = np.where(species[2] == 1, 0, species[2])  # a structure without element 1
    if one_element_row:  # 13 atoms of element 0: its list is rounded up to 16, beyond N
        species[0], mask[0] = 0, True
    lists = atoms_by_species(species, mask, 4)
    assert sorted(lists) == [f"atoms_of_{s}" for s in range(4)]
    for s, idx in enumerate(species_atom_lists(lists)):
        expected = _brute_force(species, mask, s)
        m = max(len(e) for e in expected)
        width = -(-m // 4) * 4
        assert idx.shape == (7, width) and idx.dtype == np.int32
        for b in range(7):
            assert list(idx[b][idx[b] >= 0]) == expected[b]
            assert np.all(idx[b][len(expected[b]):] == -1)  # the real positions first, then padding
    assert lists["atoms_of_3"].shape == (7, 0)  # an element no structure has


def test_species_atom_lists_orders_by_element_index():
    arrays = {"atoms_of_10": np.zeros((1, 0)), "atoms_of_2": np.ones((1, 4)), "sf": None}
    out = species_atom_lists(arrays)
    assert [a.shape for a in out] == [(1, 4), (1, 0)]
    assert species_atom_lists({"sf": None}) is None
