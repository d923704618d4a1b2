"""Tests of the host-side neighbour lists and batch planning.

:mod:`bpnn_jax.descriptors.neighbors` (vesin) is checked against a brute-force loop over
periodic images, in a cell thinner than half the cut-off and in a triclinic
cell; :func:`dense_neighbors` for its slot layout; :func:`bucket_size` for
its ladder; errors for naming the structure; :func:`plan_batches` for
coverage and the number of shapes.  No JAX computation here.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from ase import Atoms

from bpnn_jax.descriptors.batch import plan_batches, prepare_structures
from bpnn_jax.descriptors.neighbors import (
    ATOM_BUCKETS,
    NEIGHBOR_BUCKETS,
    bucket_size,
    dense_neighbors,
    neighbor_list,
    slot_layout,
    species_counts,
)
from bpnn_jax.errors import StructureError
from bpnn_jax.io import read_structures, read_xsf, sample_data_dir

RC = 6.5


def brute_force_pairs(positions: np.ndarray, cell: np.ndarray, cutoff: float) -> set[tuple[int, int, int, int, int]]:
    """Every (i, j, S0, S1, S2) with 0 < |R_j - R_i + S @ cell| < cutoff, by an image loop."""
    volume = abs(np.linalg.det(cell))
    frac = positions @ np.linalg.inv(cell)
    extent = frac.max(axis=0) - frac.min(axis=0)
    reps = [
        int(math.ceil(cutoff * np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) / volume + extent[k])) + 1
        for k in range(3)
    ]
    grid = np.array(
        [(a, b, c) for a in range(-reps[0], reps[0] + 1) for b in range(-reps[1], reps[1] + 1) for c in range(-reps[2], reps[2] + 1)]
    )
    images = grid @ cell  # (K, 3)
    pairs = set()
    for i in range(len(positions)):
        d = positions[None, :, :] - positions[i] + images[:, None, :]  # (K, N, 3)
        r = np.linalg.norm(d, axis=-1)
        for s, j in zip(*np.nonzero((r > 0) & (r < cutoff))):
            pairs.add((i, int(j), *(int(x) for x in grid[s])))
    return pairs


def _pairs_of(nl) -> set[tuple[int, int, int, int, int]]:
    return {(int(i), int(j), *(int(x) for x in s)) for i, j, s in zip(nl.centers, nl.neighbors, nl.shifts)}


def _triclinic(atoms: Atoms) -> Atoms:
    strain = np.array([[1.0, 0.12, -0.08], [0.06, 0.97, 0.10], [-0.07, 0.09, 1.03]])
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ strain, scale_atoms=False)
    out.positions = atoms.positions @ strain
    return out


@pytest.fixture(scope="module")
def thin(data_dir) -> Atoms:
    """6 atoms, shortest cell vector 2.36 Å (< RC / 2)."""
    return read_xsf(data_dir / "structure1632.xsf")


@pytest.fixture(scope="module")
def triclinic() -> Atoms:
    return _triclinic(read_xsf(sample_data_dir() / "structure0001.xsf"))


def test_fixtures_are_what_they_claim(thin, triclinic):
    assert np.linalg.norm(thin.cell.array, axis=1).min() < 2.5
    assert np.all(np.abs(triclinic.cell.angles() - 90.0) > 5.0)


# ``thin`` reads ../shared (not in the bundled sample); fetched by name, the marker must be given here.
@pytest.mark.parametrize("name", [pytest.param("thin", marks=pytest.mark.shared), "triclinic"])
def test_neighbor_list_matches_brute_force(name, request):
    atoms = request.getfixturevalue(name)
    nl = neighbor_list(atoms.positions, atoms.cell.array, True, RC, name=name)
    expected = brute_force_pairs(atoms.positions, atoms.cell.array, RC)
    got = _pairs_of(nl)
    assert len(got) == len(nl.centers), "duplicate pairs"
    assert got == expected
    # Self-images are there (one atom many times in a thin cell).
    assert any(i == j for i, j, *_ in got)
    # Sorted by centre, then neighbour; counts consistent.
    key = nl.centers * len(atoms) + nl.neighbors
    assert np.all(np.diff(key) >= 0)
    np.testing.assert_array_equal(nl.counts, np.bincount([p[0] for p in expected], minlength=len(atoms)))
    d = atoms.positions[nl.neighbors] - atoms.positions[nl.centers] + nl.shifts @ atoms.cell.array
    r = np.linalg.norm(d, axis=1)
    assert np.all((r > 0) & (r < RC))


def test_neighbor_list_thin_cell_many_self_images(thin):
    nl = neighbor_list(thin.positions, thin.cell.array, True, RC)
    self_images = np.sum(nl.centers == nl.neighbors) // len(thin)
    # A 2.36 Å vector alone gives 2 * floor(6.5 / 2.36) = 4 self-images.
    assert self_images >= 4
    assert nl.max_neighbors > 100


def test_dense_neighbors_layout(thin):
    species = np.array([0 if s == "O" else 1 for s in thin.get_chemical_symbols()], np.int32)
    nl = neighbor_list(thin.positions, thin.cell.array, True, RC)
    slots = slot_layout(nl, species, 2)
    assert all(m in NEIGHBOR_BUCKETS for m in slots)
    counts = species_counts(nl, species, 2)
    assert np.all(counts <= np.array(slots))
    n_pad = 8
    wider = (slots[0] + 16, slots[1] + 32)
    index, shifts, mask = dense_neighbors(nl, species, n_pad, wider)
    M = sum(wider)
    assert index.shape == (n_pad, M) and shifts.shape == (n_pad, M, 3) and mask.shape == (n_pad, M)
    bounds = (0, wider[0], M)
    for i in range(n_pad):
        for s in range(2):
            block = slice(bounds[s], bounds[s + 1])
            m = mask[i, block]
            n_real = int(counts[i, s]) if i < len(thin) else 0
            # Real neighbours first, all of element s, then padding.
            assert m.sum() == n_real and np.all(m[:n_real])
            assert np.all(species[index[i, block][m]] == s)
    # Padded slots (and padded atoms) point at the centre atom with zero shift.
    pad = ~mask
    rows = np.broadcast_to(np.arange(n_pad)[:, None], index.shape)
    assert np.all(index[pad] == rows[pad]) and np.all(shifts[pad] == 0)
    pos = np.zeros((n_pad, 3))
    pos[: len(thin)] = thin.positions
    disp = pos[index] - pos[:, None, :] + shifts @ thin.cell.array
    assert np.all(disp[pad] == 0.0)
    r = np.linalg.norm(disp[mask], axis=-1)
    assert np.all((r > 0) & (r < RC))
    # The same multiset of (i, j, S) as the sparse list.
    dense = Counter(
        (int(i), int(j), *(int(x) for x in s)) for i, j, s in zip(*np.nonzero(mask)[:1], index[mask], shifts[mask])
    )
    assert dense == Counter(_pairs_of(nl))
    with pytest.raises(ValueError):
        dense_neighbors(nl, species, n_pad, (slots[0] // 4, slots[1]))
    with pytest.raises(ValueError):
        dense_neighbors(nl, species, len(thin) - 1, slots)


def test_bucket_size_ladder():
    assert bucket_size(0, ATOM_BUCKETS) == ATOM_BUCKETS[0]
    assert bucket_size(6, ATOM_BUCKETS) == 8
    assert bucket_size(8, ATOM_BUCKETS) == 8
    assert bucket_size(9, ATOM_BUCKETS) == 16
    assert [bucket_size(n, ATOM_BUCKETS) for n in (22, 23, 24, 46, 47, 94, 95)] == [24, 24, 24, 48, 48, 96, 96]
    assert bucket_size(256, ATOM_BUCKETS) == 256
    assert bucket_size(257, ATOM_BUCKETS) == 384
    assert bucket_size(385, ATOM_BUCKETS) == 576
    assert bucket_size(513, NEIGHBOR_BUCKETS) == 768
    previous = 0
    for n in range(0, 3000, 7):
        size = bucket_size(n, ATOM_BUCKETS)
        assert size >= max(n, 1) and size >= previous
        if n > ATOM_BUCKETS[-1]:
            assert size % 32 == 0 and size <= 1.5 * n + 32
        else:
            assert size in ATOM_BUCKETS
        previous = size


def test_singular_cell_raises_with_name():
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    flat = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 3.0, 0.0]])
    with pytest.raises(StructureError, match=r"flat\.xsf.*singular"):
        neighbor_list(pos, flat, True, RC, name="flat.xsf")
    atoms = Atoms("OTi", positions=pos, cell=flat, pbc=True)
    atoms.info["file"] = "data/flat.xsf"
    with pytest.raises(StructureError, match=r"data/flat\.xsf"):
        prepare_structures([atoms], ("O", "Ti"), RC)


def test_nan_position_raises_with_name():
    pos = np.array([[0.0, 0.0, 0.0], [1.0, np.nan, 1.0]])
    with pytest.raises(StructureError, match=r"bad\.xsf: atom 1"):
        neighbor_list(pos, 5.0 * np.eye(3), True, RC, name="bad.xsf")
    atoms = Atoms("OTi", positions=[[0, 0, 0], [1, 1, 1]], cell=5.0 * np.eye(3), pbc=True)
    atoms.positions[1, 2] = np.inf
    atoms.info["file"] = "inf.xsf"
    with pytest.raises(StructureError, match=r"inf\.xsf: atom 1"):
        prepare_structures([atoms], ("O", "Ti"), RC)


def test_unknown_element_raises_with_name():
    atoms = Atoms("OTiN", positions=[[0, 0, 0], [1, 1, 1], [2, 2, 2]], cell=5.0 * np.eye(3), pbc=True)
    atoms.info["file"] = "n.xsf"
    with pytest.raises(StructureError, match=r"n\.xsf: atom 2 is N"):
        prepare_structures([atoms], ("O", "Ti"), RC)


@pytest.fixture(scope="module")
def sample_prepared():
    structures, _ = read_structures(sample_data_dir())
    return prepare_structures(structures, ("O", "Ti"), RC)


def _check_plan(hs, plan, atoms_per_batch):
    members = np.concatenate([m for m, *_ in plan])
    assert sorted(members.tolist()) == list(range(len(hs)))  # each structure exactly once
    for m, b, n, slots in plan:
        assert 1 <= len(m) <= b
        assert b == max(1, atoms_per_batch // n)
        for k in m:
            # Every member fits its batch's shape.
            assert hs[k].n_atoms <= n
            assert all(c <= s for c, s in zip(species_counts(hs[k].nl, hs[k].species, 2).max(0), slots))
    # At most one partly filled batch per shape.
    partial = Counter((b, n, s) for m, b, n, s in plan if len(m) < b)
    assert all(v == 1 for v in partial.values())
    return {(b, n, s) for _, b, n, s in plan}


@pytest.mark.parametrize("atoms_per_batch", [128, 256, 512])
@pytest.mark.parametrize("shuffle", [False, True])
def test_plan_batches_covers_each_structure_once(sample_prepared, atoms_per_batch, shuffle):
    hs = sample_prepared
    rng = np.random.default_rng(0) if shuffle else None
    keys = {(bucket_size(h.n_atoms, ATOM_BUCKETS), h.slots) for h in hs}
    # Without merging: one shape per (atom bucket, slots) key.
    plain = plan_batches(hs, atoms_per_batch, shuffle_rng=rng, merge_small=False)
    assert len(_check_plan(hs, plain, atoms_per_batch)) == len(keys)
    for m, b, n, slots in plain:
        assert all(bucket_size(hs[k].n_atoms, ATOM_BUCKETS) == n and hs[k].slots == slots for k in m)
    # Default: rare shapes merged, at most 8 distinct shapes for 150 structures.
    shapes = _check_plan(hs, plan_batches(hs, atoms_per_batch, shuffle_rng=rng), atoms_per_batch)
    assert len(shapes) <= 8 < len(keys)
