"""Tests of the JAX symmetry functions (:mod:`bpnn_jax.descriptors`).

All in float64.  References:

* the aenet values of ``shared/oracles/aenet_behler2011_tio2.npz``
  (``BPNN_ORACLE``), for every atom of a ~130-structure subset covering all
  sizes (default run) and of all 850 structures (``-m slow``);
* a brute-force NumPy implementation written here from the formulas of the
  oracle's README (explicit loop over supercell images, no neighbour list);
* invariances (translation, rotation, permutation, wrapping, supercell,
  change of cell basis) and central finite differences for gradients.

Compilation dominates the run time (one XLA program per batch shape, about
2 s each on CPU), so the tests reuse a few structures and shapes.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

import bpnn_jax  # noqa: F401  (enables float64 in JAX)
from bpnn_jax.descriptors import SymmetryFunctionSet, batch_descriptors
from bpnn_jax.descriptors.batch import collate, prepare_structures
from bpnn_jax.descriptors.cutoffs import cos_0_pi, cosine_cutoff
from bpnn_jax.descriptors.featurize import descriptor_function, featurize
from bpnn_jax.io import read_xsf, sample_data_dir

RC = 6.5
# Artrith-Urban parameters as listed in the oracle README (written out here
# independently of SymmetryFunctionSet.artrith_urban).
RADIAL_ETAS = (0.003214, 0.035711, 0.071421, 0.124987, 0.214264, 0.357106, 0.714213, 1.428426)
ANGULAR = tuple(
    (eta, lam, zeta) for zeta in (1, 2, 4) for lam in (-1.0, 1.0) for eta in (0.000357, 0.028569, 0.089277)
)
ELEMENTS = ("O", "Ti")


@pytest.fixture(scope="module")
def spec() -> SymmetryFunctionSet:
    return SymmetryFunctionSet.artrith_urban(ELEMENTS)


@pytest.fixture(scope="module")
def oracle(oracle_path):
    with np.load(oracle_path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _oracle_rows(oracle, k: int) -> np.ndarray:
    off, n = int(oracle["atom_offset"][k]), int(oracle["n_atoms"][k])
    return oracle["sf"][off : off + n]


def _check_against_oracle(oracle, data_dir, indices, spec) -> None:
    files = oracle["files"]
    atoms = [read_xsf(data_dir / str(files[k])) for k in indices]
    for k, a in zip(indices, atoms):
        off, n = int(oracle["atom_offset"][k]), int(oracle["n_atoms"][k])
        assert a.get_chemical_symbols() == oracle["species"][off : off + n].tolist(), files[k]
    values = featurize(atoms, spec, dtype=np.float64)
    worst = (0.0, None)
    for k, v in zip(indices, values):
        ref = _oracle_rows(oracle, k)
        assert v.shape == ref.shape and v.dtype == np.float64
        err = float(np.abs(v - ref).max())
        if err > worst[0]:
            worst = (err, str(files[k]))
    assert worst[0] <= 1e-10, f"largest deviation from aenet {worst[0]:.3g} in {worst[1]}"


def _subset_indices(oracle, data_dir) -> list[int]:
    """~130 oracle structures: every 8th, the 12 thinnest cells, all >= 47 atoms."""
    n_atoms = oracle["n_atoms"]
    files = oracle["files"]
    shortest = []
    for f in files:
        # Cell vectors are the 3 lines after PRIMVEC; cheap to parse here.
        lines = (data_dir / str(f)).read_text().splitlines()
        at = next(i for i, line in enumerate(lines) if line.strip().upper() == "PRIMVEC")
        cell = np.array([[float(x) for x in lines[at + r].split()] for r in (1, 2, 3)])
        shortest.append(np.linalg.norm(cell, axis=1).min())
    chosen = set(range(0, len(files), 8))
    chosen |= set(np.argsort(shortest)[:12].tolist())
    chosen |= set(np.flatnonzero(n_atoms >= 47).tolist())
    return sorted(int(k) for k in chosen)


def test_oracle_subset(oracle, data_dir, spec):
    """Every atom of ~130 structures (6 to 95 atoms, thinnest cells 2.4 Å) to 1e-10."""
    indices = _subset_indices(oracle, data_dir)
    sizes = set(oracle["n_atoms"][indices].tolist())
    assert {6, 22, 23, 24, 46, 47, 94, 95} <= sizes
    assert len(indices) >= 120
    _check_against_oracle(oracle, data_dir, indices, spec)


def test_oracle_all(oracle, data_dir, spec):
    """Every atom of all 850 oracle structures to 1e-10 (20-40 s on 2 CPU cores)."""
    _check_against_oracle(oracle, data_dir, list(range(len(oracle["files"]))), spec)


# --------------------------------------------------------------------------
# brute-force NumPy reference
# --------------------------------------------------------------------------


def _fc(r: np.ndarray) -> np.ndarray:
    return np.where(r < RC, 0.5 * (np.cos(np.pi * r / RC) + 1.0), 0.0)


def _image_vectors(positions: np.ndarray, cell: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """All r_j - r_i + S @ cell with 0 < |.| < RC, by looping over a supercell.

    Returns:
        (P, 3) vectors in Å and (P,) neighbour indices j.
    """
    volume = abs(np.linalg.det(cell))
    frac = positions @ np.linalg.inv(cell)
    extent = frac.max(axis=0) - frac.min(axis=0)
    reps = []
    for k in range(3):
        spacing = volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))
        reps.append(int(math.ceil(RC / spacing + extent[k])) + 1)
    vecs, js = [], []
    for s0 in range(-reps[0], reps[0] + 1):
        for s1 in range(-reps[1], reps[1] + 1):
            for s2 in range(-reps[2], reps[2] + 1):
                shift = np.array([s0, s1, s2], float) @ cell
                d = positions - positions[i] + shift
                r = np.linalg.norm(d, axis=1)
                keep = (r > 0) & (r < RC)
                vecs.append(d[keep])
                js.append(np.flatnonzero(keep))
    return np.concatenate(vecs), np.concatenate(js)


def brute_force_sf(atoms: Atoms) -> np.ndarray:
    """(N, 70) symmetry functions straight from the README formulas."""
    positions, cell = atoms.positions, atoms.cell.array
    symbols = np.array(atoms.get_chemical_symbols())
    out = np.zeros((len(atoms), 2 * len(RADIAL_ETAS) + 3 * len(ANGULAR)))
    for i in range(len(atoms)):
        vec, j = _image_vectors(positions, cell, i)
        species = symbols[j]
        row = []
        for a, ea in enumerate(ELEMENTS):
            va = vec[species == ea]
            ra = np.linalg.norm(va, axis=1)
            row += [np.sum(np.exp(-eta * ra**2) * _fc(ra)) for eta in RADIAL_ETAS]
            for eb in ELEMENTS[a:]:
                vb = vec[species == eb]
                if ea == eb:  # unordered pairs j < k of one element
                    jj, kk = np.triu_indices(len(va), k=1)
                else:  # every j of element a with every k of element b
                    jj, kk = (x.ravel() for x in np.meshgrid(np.arange(len(va)), np.arange(len(vb)), indexing="ij"))
                v1, v2 = va[jj], vb[kk]
                r1, r2 = np.linalg.norm(v1, axis=1), np.linalg.norm(v2, axis=1)
                r3 = np.linalg.norm(v2 - v1, axis=1)
                cos = np.sum(v1 * v2, axis=1) / (r1 * r2)
                f3 = _fc(r1) * _fc(r2) * _fc(r3)
                for eta, lam, zeta in ANGULAR:
                    terms = (1.0 + lam * cos) ** zeta * np.exp(-eta * (r1**2 + r2**2 + r3**2)) * f3
                    row.append(2.0 ** (1 - zeta) * np.sum(terms))
        out[i] = row
    return out


def _triclinic(atoms: Atoms) -> Atoms:
    """A sheared copy: genuinely triclinic cell (all angles far from 90°)."""
    strain = np.array([[1.0, 0.12, -0.08], [0.06, 0.97, 0.10], [-0.07, 0.09, 1.03]])
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ strain, scale_atoms=False)
    out.positions = atoms.positions @ strain
    out.info["file"] = "triclinic"
    return out


@pytest.fixture(scope="module")
def thin6(data_dir) -> Atoms:
    """6 atoms, shortest cell vector 2.36 Å (not in the oracle set)."""
    return read_xsf(data_dir / "structure1632.xsf")


@pytest.fixture(scope="module")
def rutile24() -> Atoms:
    """Ti8O16, 24 atoms (bundled sample)."""
    return read_xsf(sample_data_dir() / "structure0001.xsf")


@pytest.fixture(scope="module")
def tri6() -> Atoms:
    return _triclinic(read_xsf(sample_data_dir() / "structure1061.xsf"))


def test_triclinic_fixture_is_triclinic(tri6):
    angles = tri6.cell.angles()
    assert np.all(np.abs(angles - 90.0) > 5.0), angles


# ``thin6`` reads ../shared (not in the bundled sample); fetched by name, the marker must be given here.
@pytest.mark.parametrize("name", [pytest.param("thin6", marks=pytest.mark.shared), "tri6", "rutile24"])
def test_brute_force_reference(name, request, spec):
    atoms = request.getfixturevalue(name)
    ref = brute_force_sf(atoms)
    (got,) = featurize([atoms], spec)
    assert got.shape == ref.shape == (len(atoms), 70)
    assert np.abs(got - ref).max() <= 1e-10


# --------------------------------------------------------------------------
# invariances
# --------------------------------------------------------------------------


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))  # Haar-distributed orthogonal matrix (may reflect)


def _variants(atoms: Atoms, seed: int) -> dict[str, tuple[Atoms, np.ndarray | None]]:
    """Transformed copies of a structure, each with its expected row order.

    Returns:
        name -> (structure, index array such that expected = original[index]).
    """
    rng = np.random.default_rng(seed)
    n = len(atoms)
    cell = atoms.cell.array
    out = {}

    a = atoms.copy()
    a.positions = atoms.positions + rng.uniform(-7.0, 7.0, size=3)
    out["translation"] = (a, np.arange(n))

    rot = _random_rotation(rng)
    a = atoms.copy()
    a.set_cell(cell @ rot.T, scale_atoms=False)
    a.positions = atoms.positions @ rot.T
    out["rotation"] = (a, np.arange(n))

    perm = rng.permutation(n)
    out["permutation"] = (atoms[perm], perm)

    a = atoms.copy()
    a.positions = atoms.positions + rng.integers(-2, 3, size=(n, 3)) @ cell
    a.wrap()
    out["wrap"] = (a, np.arange(n))

    a = atoms.copy()
    a.positions = atoms.positions + rng.integers(-3, 4, size=(n, 3)) @ cell
    out["lattice_shift_unwrapped"] = (a, np.arange(n))

    # Same lattice, other basis: a' = a, b' = a + b, c' = c - b (unimodular).
    a = atoms.copy()
    basis = np.array([[1, 0, 0], [1, 1, 0], [0, -1, 1]], float)
    a.set_cell(basis @ cell, scale_atoms=False)
    out["cell_basis_change"] = (a, np.arange(n))

    out["supercell_2x1x1"] = (atoms.repeat((2, 1, 1)), np.concatenate([np.arange(n), np.arange(n)]))
    return out


@pytest.fixture(scope="module", params=["rutile24", "tri6"])
def invariance_case(request, spec):
    atoms = request.getfixturevalue(request.param)
    variants = _variants(atoms, seed=7)
    names = list(variants)
    values = featurize([atoms] + [variants[k][0] for k in names], spec)
    return request.param, values[0], {k: (v, variants[k][1]) for k, v in zip(names, values[1:])}


@pytest.mark.parametrize(
    "variant",
    ["translation", "rotation", "permutation", "wrap", "lattice_shift_unwrapped", "cell_basis_change", "supercell_2x1x1"],
)
def test_invariance(invariance_case, variant):
    name, base, results = invariance_case
    got, index = results[variant]
    assert got.shape == (len(index), base.shape[1])
    np.testing.assert_allclose(got, base[index], rtol=1e-12, atol=1e-11, err_msg=f"{name}: {variant}")


# --------------------------------------------------------------------------
# gradients and padding
# --------------------------------------------------------------------------
#
# One padded batch serves both: [rutile24, thin6, empty], N = 24 atoms, and
# 8 more neighbour slots per element than either structure needs.  thin6
# then has 18 padded atoms, every atom has padded slots and the third
# structure is all padding.  (A gradient compilation costs ~10 s on CPU, so
# there is only one.)


@pytest.fixture(scope="module")
def crowded(thin6, rutile24, spec):
    hy, hx = prepare_structures([rutile24, thin6], spec.elements, spec.cutoff)
    slots = tuple(max(a, b) + 8 for a, b in zip(hx.slots, hy.slots))
    return collate([hy, hx], 3, 24, slots), (hy.n_atoms, hx.n_atoms)


def _weighted_sum(spec):
    def f(batch, positions, cell, w):
        g = batch_descriptors(batch.replace(positions=positions, cell=cell), spec)
        return jnp.sum(g * w)

    return jax.jit(jax.grad(f, argnums=(1, 2)))


def test_padding_does_not_change_values(crowded, thin6, rutile24, spec):
    batch, (ny, nx) = crowded
    got = np.asarray(descriptor_function(spec)(batch))
    # Alone: featurize pads each structure only to its own bucketed shape.
    alone_y, alone_x = featurize([rutile24], spec)[0], featurize([thin6], spec)[0]
    np.testing.assert_allclose(got[0, :ny], alone_y, rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(got[1, :nx], alone_x, rtol=1e-14, atol=1e-13)
    assert np.all(got[0, ny:] == 0.0)
    assert np.all(got[1, nx:] == 0.0)
    assert np.all(got[2] == 0.0)


def test_gradient_finite_differences(crowded, spec):
    """d/d(positions, cell) of sum(w * G) vs central differences (step 1e-5 Å).

    Both structures are differenced at once: structure b's scalar
    s_b = sum_i,f w[b,i,f] G[b,i,f] depends only on its own coordinates.
    """
    batch, (ny, nx) = crowded
    sizes = (ny, nx)
    rng = np.random.default_rng(3)
    w = rng.normal(size=batch.positions.shape[:2] + (spec.n_functions,))
    pos0, cell0 = np.asarray(batch.positions), np.asarray(batch.cell)
    g_pos, g_cell = (np.asarray(x) for x in _weighted_sum(spec)(batch, pos0, cell0, w))
    assert np.all(np.isfinite(g_pos)) and np.all(np.isfinite(g_cell))
    # Exactly zero on padded atoms and on the empty structure.
    assert np.all(g_pos[0, ny:] == 0.0) and np.all(g_pos[1, nx:] == 0.0)
    assert np.all(g_pos[2] == 0.0) and np.all(g_cell[2] == 0.0)

    fn = descriptor_function(spec)

    def scalars(positions, cell):
        g = np.asarray(fn(batch.replace(positions=positions, cell=cell)))
        return np.sum(g * w, axis=(1, 2))  # (B,)

    # Components to difference: every coordinate of thin6, 8 random atoms of
    # rutile24, every cell entry of both.
    picks = {0: np.sort(rng.choice(ny, 8, replace=False)), 1: np.arange(nx)}
    comps = {b: [("pos", a, k) for a in picks[b] for k in range(3)] + [("cell", r, c) for r in range(3) for c in range(3)]
             for b in (0, 1)}
    step = 1e-5
    for t in range(max(len(c) for c in comps.values())):
        p_pos, m_pos, p_cell, m_cell = pos0.copy(), pos0.copy(), cell0.copy(), cell0.copy()
        active = {}
        for b in (0, 1):
            if t >= len(comps[b]):
                continue
            what, u, v = comps[b][t]
            active[b] = comps[b][t]
            plus, minus = (p_pos, m_pos) if what == "pos" else (p_cell, m_cell)
            plus[b, u, v] += step
            minus[b, u, v] -= step
        fd = (scalars(p_pos, p_cell) - scalars(m_pos, m_cell)) / (2 * step)
        for b, (what, u, v) in active.items():
            analytic = (g_pos if what == "pos" else g_cell)[b, u, v]
            scale = max(np.abs(g_pos[b]).max(), np.abs(g_cell[b]).max())
            assert abs(fd[b] - analytic) <= 1e-6 * abs(analytic) + 1e-6 * scale, (b, what, u, v, fd[b], analytic)
    # A translation-invariant scalar has forces summing to zero.
    for b, n in enumerate(sizes):
        assert np.abs(g_pos[b, :n].sum(axis=0)).max() <= 1e-9 * np.abs(g_pos[b]).max()


def test_jacobian_matches_autodiff_gradient(crowded, spec, rutile24, thin6):
    """Cached Jacobians: sum_if w[i,f] dG_if/dR_k equals jax.grad of sum(w * G).

    The gradient itself is checked against finite differences above.  Random
    weights probe every column; padded atoms, padded slots (the batch has
    extra ones) and the empty third structure give exact zeros, and
    descriptor_jacobians (each structure padded only to its own shape)
    gives the same values.
    """
    from bpnn_jax.descriptors import batch_descriptor_jacobian
    from bpnn_jax.descriptors.featurize import descriptor_jacobians

    batch, (ny, nx) = crowded
    jac = np.asarray(jax.jit(lambda b: batch_descriptor_jacobian(b, spec))(batch))  # (B, N, N, F, 3)
    assert jac.shape == batch.positions.shape[:2] + batch.positions.shape[1:2] + (spec.n_functions, 3)
    rng = np.random.default_rng(11)
    pos0, cell0 = np.asarray(batch.positions), np.asarray(batch.cell)
    for _ in range(3):
        w = rng.normal(size=batch.positions.shape[:2] + (spec.n_functions,))
        g_pos, _ = (np.asarray(x) for x in _weighted_sum(spec)(batch, pos0, cell0, w))
        via_jac = np.einsum("bif,bikfc->bkc", w, jac)
        np.testing.assert_allclose(via_jac, g_pos, rtol=0, atol=1e-12 * np.abs(g_pos).max())
    assert np.all(jac[0, ny:] == 0.0) and np.all(jac[0, :, ny:] == 0.0)
    assert np.all(jac[1, nx:] == 0.0) and np.all(jac[1, :, nx:] == 0.0)
    assert np.all(jac[2] == 0.0)
    # Translation invariance: the derivatives of each G_i sum to zero over k.
    assert np.abs(jac.sum(axis=2)).max() <= 1e-12 * np.abs(jac).max()
    alone = descriptor_jacobians([rutile24, thin6], spec, dtype=np.float64)
    np.testing.assert_allclose(alone[0], jac[0, :ny, :ny], rtol=0, atol=1e-13)
    np.testing.assert_allclose(alone[1], jac[1, :nx, :nx], rtol=0, atol=1e-13)


# --------------------------------------------------------------------------
# cut-off
# --------------------------------------------------------------------------


def test_cos_0_pi_matches_numpy():
    x = np.linspace(0.0, np.pi, 200_001)
    got = np.asarray(jax.jit(cos_0_pi)(x))
    assert np.abs(got - np.cos(x)).max() <= 1e-15
    assert got[0] == pytest.approx(1.0, abs=1e-16) and got[-1] == pytest.approx(-1.0, abs=1e-16)


def test_cosine_cutoff_matches_numpy():
    r = np.linspace(0.0, 8.0, 80_001)
    got = np.asarray(jax.jit(lambda x: cosine_cutoff(x, RC))(r))
    ref = np.where(r < RC, 0.5 * (np.cos(np.pi * r / RC) + 1.0), 0.0)
    assert np.abs(got - ref).max() <= 1e-15
    assert np.all(got[r >= RC] == 0.0)
    d = np.asarray(jax.vmap(jax.grad(lambda x: cosine_cutoff(x, RC)))(r))
    dref = np.where(r < RC, -0.5 * np.pi / RC * np.sin(np.pi * r / RC), 0.0)
    assert np.all(np.isfinite(d)) and np.abs(d - dref).max() <= 1e-14


# --------------------------------------------------------------------------
# SymmetryFunctionSet
# --------------------------------------------------------------------------


def test_artrith_urban_columns_match_oracle(spec, oracle):
    assert spec.n_functions == 70
    cols = spec.columns()
    assert len(cols) == 70
    assert [c["kind"] for c in cols] == oracle["fn_kind"].tolist()
    assert [c["neighbors"] for c in cols] == oracle["fn_neighbors"].tolist()
    for key, name in (("eta", "fn_eta"), ("rs", "fn_rs"), ("lambda", "fn_lambda"), ("zeta", "fn_zeta")):
        np.testing.assert_array_equal(np.array([c[key] for c in cols], float), oracle[name], err_msg=key)
    np.testing.assert_array_equal(np.full(70, spec.cutoff), oracle["fn_rc"])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(elements=()),
        dict(elements=("O", "O")),
        dict(cutoff=0.0),
        dict(cutoff=-1.0),
        dict(cutoff=float("inf")),
        dict(cutoff=float("nan")),
        dict(radial=((-0.1, 0.0),)),
        dict(radial=((0.1, -1.0),)),
        dict(angular=((-0.1, 1.0, 1),)),
        dict(angular=((0.1, 0.5, 1),)),
        dict(angular=((0.1, 1.0, 0),)),
    ],
)
def test_invalid_parameters_raise(kwargs):
    args = dict(elements=("O", "Ti"), cutoff=6.5, radial=((0.1, 0.0),), angular=((0.1, 1.0, 1),))
    args.update(kwargs)
    with pytest.raises(ValueError):
        SymmetryFunctionSet(**args)


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown"):
        SymmetryFunctionSet.preset("nonsense", ("O", "Ti"))
    assert SymmetryFunctionSet.preset("Artrith_Urban", ("O", "Ti")) == SymmetryFunctionSet.artrith_urban()


def test_config_round_trip(spec):
    config = spec.to_config()
    again = SymmetryFunctionSet.from_config(json.loads(json.dumps(config)))
    assert again == spec and hash(again) == hash(spec)
    assert again.columns() == spec.columns()


def test_three_elements():
    s3 = SymmetryFunctionSet.artrith_urban(("Li", "O", "Ti"))
    assert s3.n_functions == 3 * 8 + 6 * 18 == len(s3.columns())
    neighbours = [c["neighbors"] for c in s3.columns()]
    # Blocks: G2-Li, Li-Li, Li-O, Li-Ti, G2-O, O-O, O-Ti, G2-Ti, Ti-Ti.
    blocks = [neighbours[k] for k in range(len(neighbours)) if k == 0 or neighbours[k] != neighbours[k - 1]]
    assert blocks == ["Li", "Li-Li", "Li-O", "Li-Ti", "O", "O-O", "O-Ti", "Ti", "Ti-Ti"]


@pytest.mark.parametrize("min_block,slots", [(1, (5, 11, 17)), (3, (5, 11, 17)), (8, (5, 11, 17)),
                                             (32, (13, 37, 70))])
def test_split_same_element_blocks_equal_the_dense_block(min_block, slots):
    """Each unordered same-element pair once (halved blocks) = both orders of the dense block, halved.

    Float64, three elements, uneven slot counts (odd halves), padded and
    beyond-cut-off slots; values and the gradient by the displacements.
    The small ``min_block`` values split 33 slots (odd halves: 5 -> 2 + 3,
    11 -> 5 + 6, 17 -> 8 + 9 -> 4 + 4, 4 + 5) and share their block shapes: run
    op by op, the gradient of ``min_block=1``'s hundreds of small blocks on
    120 slots took ~50 s.  Every element's block holds padded, beyond-cut-off
    and contributing slots (asserted).
    """
    from bpnn_jax.descriptors import atom_descriptors

    spec = SymmetryFunctionSet.artrith_urban(("Li", "O", "Ti"))
    rng = np.random.default_rng(7)
    M = sum(slots)
    disp = rng.normal(size=(M, 3))
    disp *= rng.uniform(0.8, 7.0, M)[:, None] / np.linalg.norm(disp, axis=1)[:, None]
    mask = rng.uniform(size=M) < 0.8
    disp[~mask] = 0.0  # padded slots carry zero vectors, as collate writes them
    # Every element's block holds padded, beyond-cut-off and contributing slots.
    r = np.linalg.norm(disp, axis=1)
    for lo, hi in zip(np.cumsum((0,) + slots[:-1]), np.cumsum(slots)):
        block_r, block_mask = r[lo:hi], mask[lo:hi]
        assert (~block_mask).any() and (block_r[block_mask] > spec.cutoff).any()
        assert (block_r[block_mask] < spec.cutoff).sum() >= 2
    w = rng.normal(size=spec.n_functions)

    def weighted(d, block):
        return jnp.sum(w * atom_descriptors(d, jnp.asarray(mask), spec, slots, min_block=block))

    d = jnp.asarray(disp)
    dense = atom_descriptors(d, jnp.asarray(mask), spec, slots, min_block=None)
    split = atom_descriptors(d, jnp.asarray(mask), spec, slots, min_block=min_block)
    assert dense.dtype == jnp.float64 and np.any(np.asarray(dense) != 0.0)
    np.testing.assert_allclose(split, dense, rtol=1e-12, atol=1e-13)
    g_dense, g_split = jax.grad(weighted)(d, None), jax.grad(weighted)(d, min_block)
    assert np.all(np.isfinite(g_split))
    np.testing.assert_allclose(g_split, g_dense, rtol=1e-11, atol=1e-12)
