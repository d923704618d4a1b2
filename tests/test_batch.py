"""Host-side batch preparation: per-element atom lists (bpnn_jax.batch)."""

from __future__ import annotations

import numpy as np
import pytest

from bpnn_jax.batch import atoms_by_species, species_atom_lists


def _brute_force(species, mask, s):
    return [list(np.flatnonzero((species[b] == s) & mask[b])) for b in range(species.shape[0])]


@pytest.mark.parametrize("pad", [None, lambda m: 2 * m + 3])
def test_atoms_by_species_equals_brute_force(pad):
    rng = np.random.default_rng(0)
    species = rng.integers(0, 3, size=(7, 13)).astype(np.int32)
    mask = np.zeros((7, 13), bool)
    for b, n in enumerate(rng.integers(0, 14, size=7)):
        mask[b, :n] = True
    species[2] = np.where(species[2] == 1, 0, species[2])  # a structure without element 1
    lists = atoms_by_species(species, mask, 4, pad=pad)
    assert sorted(lists) == [f"atoms_of_{s}" for s in range(4)]
    for s, idx in enumerate(species_atom_lists(lists)):
        expected = _brute_force(species, mask, s)
        m = max(len(e) for e in expected)
        width = 0 if m == 0 else (-(-m // 4) * 4 if pad is None else pad(m))
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
