"""Tests of aenet's Chebyshev descriptor (float64).

* values equal a brute-force NumPy evaluation of aenet's definition (ASE
  neighbour list, explicit j < k pairs, NumPy's Chebyshev series) on TiO2
  cells and on a three-element cell (type spins −1, 0, +1), to 1e-12;
* the analytic Jacobian equals forward-mode autodiff of the values;
* invariant under rotation, translation and permutation of atoms;
* a committee on the basis: Jacobian forces equal the Keras model's
  autodiff forces; the calculator's stress equals a finite difference of
  its energy under strain; it saves and reloads with identical outputs;
  its LAMMPS bundle equals the calculator;
  the file format and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (selects the JAX backend, enables float64)
import jax
from numpy.polynomial import chebyshev as npcheb

from bpnn_jax.training import jacobian as jt
from bpnn_jax.descriptors.batch import collate, prepare_structures
from bpnn_jax.descriptors.chebyshev import ChebyshevBasis, type_spins
from bpnn_jax.descriptors import (batch_descriptor_jacobian, batch_descriptors, descriptor_from_config,
                                  descriptor_preset)
from bpnn_jax.errors import BPNNInputError
from bpnn_jax.descriptors.featurize import descriptor_jacobians
from bpnn_jax.io import REFERENCE_ENERGIES_TIO2, read_xsf
from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, bucket_size

TIO2 = ("structure1632.xsf", "structure0001.xsf")  # a thin 6-atom cell, a 24-atom cell


def _cupt(seed=0):
    """A rattled 32-atom fcc cell of Cu, Ni and Au, labelled by ASE's EMT."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(seed)
    atoms.set_chemical_symbols(rng.choice(["Cu", "Ni", "Au"], len(atoms)).tolist())
    atoms.rattle(0.08, seed=seed)
    atoms.calc = EMT()
    atoms.get_forces()
    return atoms


def _brute_force(atoms, basis):
    """aenet's definition, term by term: (N, F) values."""
    from ase.neighborlist import neighbor_list

    spin = dict(zip(basis.elements, type_spins(basis.n_elements)))
    first, second, vectors = neighbor_list("ijD", atoms, basis.cutoff)
    symbols = atoms.get_chemical_symbols()
    n_r, n_a = basis.radial_order + 1, basis.angular_order + 1

    def fc(r, rc):
        return np.where(r < rc, 0.5 * (np.cos(np.pi * r / rc) + 1.0), 0.0)

    def series(x, n):
        return npcheb.chebval(x, np.eye(n + 1)[n])

    out = np.zeros((len(atoms), basis.n_functions))
    for i in range(len(atoms)):
        sel = first == i
        d = vectors[sel]
        s = np.array([spin[symbols[j]] for j in second[sel]])
        r = np.linalg.norm(d, axis=1)
        wr = fc(r, basis.radial_cutoff)
        j, k = np.triu_indices(len(r), 1)
        cos = np.einsum("pc,pc->p", d[j], d[k]) / (r[j] * r[k])
        wa = fc(r[j], basis.angular_cutoff) * fc(r[k], basis.angular_cutoff)
        for n in range(n_r):
            t = series(2.0 * r / basis.radial_cutoff - 1.0, n) * wr
            out[i, n] = t.sum()
            if basis.typed:
                out[i, n_r + n_a + n] = (t * s).sum()
        for n in range(n_a):
            t = series(cos, n) * wa
            out[i, n_r + n] = t.sum()
            if basis.typed:
                out[i, 2 * n_r + n_a + n] = (t * s[j] * s[k]).sum()
    return out


def _batch(atoms, basis):
    (h,) = prepare_structures([atoms], basis.elements, basis.cutoff)
    return collate([h], 1, h.n_atoms, h.slots, dtype=np.float64), h


def _cases(data_dir):
    tio2 = ChebyshevBasis.aenet(("O", "Ti"), radial_order=22, angular_order=6)
    cupt = ChebyshevBasis(("Au", "Cu", "Ni"), 5.0, 4.0, 10, 5)
    return [(read_xsf(data_dir / n), tio2) for n in TIO2] + [(_cupt(), cupt)]


def test_type_spins_are_aenets():
    assert type_spins(1) == (0.0,)
    assert type_spins(2) == (-1.0, 1.0)
    assert type_spins(3) == (-1.0, 0.0, 1.0)
    assert type_spins(4) == (-2.0, -1.0, 1.0, 2.0)
    assert type_spins(5) == (-2.0, -1.0, 0.0, 1.0, 2.0)


def test_values_equal_brute_force(data_dir):
    for atoms, basis in _cases(data_dir):
        batch, _ = _batch(atoms, basis)
        got = np.asarray(batch_descriptors(batch, basis))[0, :len(atoms)]
        ref = _brute_force(atoms, basis)
        assert got.shape == (len(atoms), basis.n_functions)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
        assert np.abs(ref[:, basis.n_functions // 2:]).max() > 1.0  # the typed half is exercised


def test_single_element_has_no_typed_copy():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    basis = ChebyshevBasis(("Cu",), 5.0, 4.0, 6, 3)
    assert basis.n_functions == 11 and not basis.typed
    batch, _ = _batch(atoms, basis)
    np.testing.assert_allclose(np.asarray(batch_descriptors(batch, basis))[0, :len(atoms)],
                               _brute_force(atoms, basis), rtol=1e-12, atol=1e-12)


def test_jacobian_equals_forward_mode_autodiff(data_dir):
    for atoms, basis in _cases(data_dir)[::2]:  # the thin TiO2 cell and the three-element cell
        batch, h = _batch(atoms, basis)
        jac = np.asarray(batch_descriptor_jacobian(batch, basis))[0]  # (N, N, F, 3)

        def values(positions):
            return batch_descriptors(batch.replace(positions=positions), basis)[0]

        ref = np.asarray(jax.jacfwd(values)(batch.positions))[:, :, 0]  # (N, F, N, 3)
        ref = np.transpose(ref, (0, 2, 1, 3))
        assert np.abs(ref).max() > 0.1
        np.testing.assert_allclose(jac, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_invariant_under_rotation_translation_and_permutation(data_dir):
    atoms, basis = _cases(data_dir)[2]
    batch, _ = _batch(atoms, basis)
    ref = np.asarray(batch_descriptors(batch, basis))[0, :len(atoms)]
    moved = atoms.copy()
    moved.rotate(37.0, (1.0, 2.0, 0.5), rotate_cell=True)
    moved.translate((0.3, -1.1, 2.0))
    perm = np.random.default_rng(2).permutation(len(atoms))
    moved = moved[perm]
    got = np.asarray(batch_descriptors(_batch(moved, basis)[0], basis))[0, :len(atoms)]
    np.testing.assert_allclose(got, ref[perm], rtol=0, atol=1e-11 * np.abs(ref).max())


@pytest.fixture(scope="module")
def committee(data_dir, make_random_committee):
    basis = ChebyshevBasis.aenet(("O", "Ti"), radial_order=10, angular_order=4)
    atoms = [read_xsf(data_dir / n) for n in TIO2]
    hosts = prepare_structures(atoms, basis.elements, basis.cutoff, energy_offsets=REFERENCE_ENERGIES_TIO2)
    built = make_random_committee(hosts, basis, members=2, seed=4)
    jac = descriptor_jacobians(hosts, basis, dtype=np.float64)
    groups = jt.group_by_size(built["sf"], [h.species for h in hosts], [h.energy for h in hosts],
                              [h.forces for h in hosts], tuple(jac), dtype=np.float64)
    model = built["model"]
    st = {k: np.asarray(getattr(model, k).value, np.float64)
          for k in ("sf_mean", "sf_std", "energy_shift", "energy_scale")}
    return dict(basis=basis, atoms=atoms, hosts=hosts, groups=groups, params=built["params"], model=model, st=st)


def test_committee_jacobian_forces_equal_autodiff_forces(committee):
    model, seen = committee["model"], 0
    assert model.spec == committee["basis"]
    for g in committee["groups"].arrays:
        out = jt.committee_outputs(committee["params"], committee["st"], g["sf"], g["species"], g["mask"], "tanh",
                                   g["jac"])
        for b, k in enumerate(g["index"]):
            h = committee["hosts"][k]
            inputs = collate([h], 1, bucket_size(h.n_atoms, ATOM_BUCKETS), h.slots,
                             dtype=np.float64).inputs(model.elements)
            ref = model(inputs)
            f_ref = np.asarray(ref["forces_members"])[:, 0, :h.n_atoms]
            f_jac = np.asarray(out["forces"])[:, b, :h.n_atoms]
            assert np.max(np.abs(f_jac - f_ref)) <= 1e-10 * np.max(np.abs(f_ref)), h.name
            np.testing.assert_allclose(np.asarray(out["energy"])[:, b], np.asarray(ref["energy_members"])[:, 0],
                                       rtol=1e-12)
            seen += 1
    assert seen == len(committee["hosts"])


def test_committee_on_the_basis_saves_reloads_and_gives_calculator_stress(committee, tmp_path):
    from bpnn_jax.calculators.ase import BPNNCalculator
    from bpnn_jax.model import load_model

    model = committee["model"]
    path = tmp_path / "cheb.keras"
    model.save(path)
    again = load_model(path)
    assert again.spec == committee["basis"] and again.spec.name == committee["basis"].name
    for atoms in committee["atoms"]:
        a, b = atoms.copy(), atoms.copy()
        a.calc = BPNNCalculator(model, warn_extrapolation=False)
        b.calc = BPNNCalculator(again, warn_extrapolation=False)
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
        # stress against a finite difference of the energy under strain (float64 model)
        stress = a.get_stress(voigt=False)
        eps, cell, vol = 1e-5, atoms.get_cell().array, atoms.get_volume()
        for (p, q) in ((0, 0), (1, 2)):
            e = np.zeros((3, 3))
            e[p, q] = e[q, p] = eps / (2.0 if p != q else 1.0)
            energies = []
            for sign in (1.0, -1.0):
                c = atoms.copy()
                c.set_cell(cell @ (np.eye(3) + sign * e), scale_atoms=True)
                c.calc = BPNNCalculator(model, warn_extrapolation=False)
                energies.append(c.get_potential_energy())
            fd = (energies[0] - energies[1]) / (2 * eps * vol)
            assert abs(fd - stress[p, q]) <= 1e-6 * max(1e-3, np.abs(stress).max()), (p, q, fd, stress[p, q])


def test_descriptor_files_and_errors(tmp_path):
    spec = tmp_path / "cheb.yaml"
    spec.write_text("kind: chebyshev\nradial_cutoff: 7.0\nangular_cutoff: 5.0\nradial_order: 8\n"
                    "angular_order: 3\nelements: [X, Y]\n")
    basis = descriptor_preset(str(spec), ("O", "Ti"))
    assert basis == ChebyshevBasis(("O", "Ti"), 7.0, 5.0, 8, 3)  # the data's elements win
    assert basis.n_functions == 2 * (9 + 4) and basis.cutoff == 7.0
    assert descriptor_from_config(basis.to_config()) == basis
    assert descriptor_preset("chebyshev", ("O", "Ti")).n_functions == 44
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: chebyshev\nradial_cutoff: 7.0\nangular_cutoff: 5.0\nradial_order: 8\n")
    with pytest.raises(BPNNInputError, match=r"bad\.yaml.*angular_order"):
        descriptor_preset(str(bad), ("O", "Ti"))
    bad.write_text("kind: chebyshev\nradial_cutoff: -1\nangular_cutoff: 5.0\nradial_order: 8\nangular_order: 2\n")
    with pytest.raises(BPNNInputError, match=r"bad\.yaml.*radial_cutoff must be positive"):
        descriptor_preset(str(bad), ("O", "Ti"))
    with pytest.raises(BPNNInputError, match="descriptor_preset"):
        from bpnn_jax.descriptors import SymmetryFunctionSet

        SymmetryFunctionSet.preset("chebyshev", ("O", "Ti"))


def test_featurize_cli_writes_the_chebyshev_columns(data_dir, tmp_path):
    from bpnn_jax.cli import main

    out = tmp_path / "cheb.npz"
    assert main(["featurize", str(data_dir / TIO2[0]), "--preset", "chebyshev", "--dtype", "float64",
                 "--out", str(out)]) == 0
    d = np.load(out)
    basis = ChebyshevBasis.aenet(("O", "Ti"))
    assert d["sf"].shape == (6, 44)
    assert list(d["fn_kind"][:17]) == ["cheb-radial"] * 17 and list(d["fn_kind"][17:22]) == ["cheb-angular"] * 5
    assert list(d["fn_neighbors"][[0, 21, 22, 43]]) == ["all", "all", "typespin", "typespin"]
    np.testing.assert_array_equal(d["fn_rc"][[0, 17, 22, 39]], [8.0, 6.5, 8.0, 6.5])
    np.testing.assert_allclose(d["sf"], _brute_force(read_xsf(data_dir / TIO2[0]), basis), rtol=0, atol=1e-10)


def test_lammps_bundle_of_a_chebyshev_committee_equals_the_calculator(committee, data_dir, tmp_path):
    """The LAMMPS route carries the basis: the exported program (float64) against the calculator."""
    from bpnn_jax.calculators.lammps import export_lammps, verify_bundle

    path = tmp_path / "cheb.keras"
    committee["model"].save(path)
    bundle = tmp_path / "cheb.json"
    export_lammps(str(path), bundle, precision="float64", max_atoms=2048, max_neighbors=320, max_owned=96)
    result = verify_bundle(bundle, [read_xsf(data_dir / TIO2[0]), read_xsf(data_dir / "structure7514.xsf")])
    assert result["max_rel_energy_error"] <= 1e-12
    assert result["max_abs_force_error_ev_a"] <= 1e-10
