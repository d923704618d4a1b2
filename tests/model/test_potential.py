"""The one energy function (bpnn_jax.model.potential), float64, random weights, a triclinic 6-atom cell.

* its forces are central finite differences of its energy, and its strain
  derivative finite differences under a homogeneous strain of positions and
  cell (a single network with the pair baseline, and a committee with it);
* ``BPNN.call``, the ASE calculator and ``predict_structures`` /
  ``predict_stress`` give its results (they run the same cached program),
  and the LAMMPS program's per-atom energies are its atomic energies;
* a committee's per-member forces and strain derivatives average to the
  forces and strain derivative of the mean energy, and member k's forces are
  minus the gradient of member k's energy.
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (JAX backend, float64)
from bpnn_jax.calculators.ase import BPNNCalculator
from bpnn_jax.calculators.lammps import lammps_layout, neighbor_matrix_energy
from bpnn_jax.descriptors import SymmetryFunctionSet
from bpnn_jax.descriptors.batch import collate, prepare_structures
from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, bucket_size
from bpnn_jax.io import REFERENCE_ENERGIES_TIO2, read_xsf
from bpnn_jax.io.sample_data import sample_data_dir
from bpnn_jax.model import BPNN
from bpnn_jax.model.potential import evaluate_potential, potential_function
from bpnn_jax.model.repulsion import PairRepulsion
from bpnn_jax.training import predict_structures
from bpnn_jax.training.predict import predict_stress
from bpnn_jax.units import EV_PER_A3_IN_GPA

TRICLINIC = "structure6821.xsf"  # 6 atoms, cell angles 106.6°, 112.7°, 90°
#: A baseline reaching the cell's Ti-O (~1.9 Å), O-O and Ti-Ti contacts, so it adds to forces and stress.
REPULSION = PairRepulsion(("O", "Ti"), {"Ti-Ti": 3.3, "O-Ti": 2.3, "O-O": 2.9},
                          {"Ti-Ti": (2.0, 0.0, 1.0, 0.0, 0.0), "O-Ti": (3.0, 1.0, 0.0, 0.0, 0.0),
                           "O-O": (1.0, 0.0, 0.0, 2.0, 0.0)})


def with_repulsion(model: BPNN) -> BPNN:
    config = model.get_config()
    config.pop("name", None)
    config["repulsion"] = REPULSION.to_config()
    out = BPNN.from_config(config)
    out.set_weights(model.get_weights())
    return out


@pytest.fixture(scope="module")
def atoms():
    a = read_xsf(sample_data_dir() / TRICLINIC)
    a.positions = a.positions + np.random.default_rng(7).normal(scale=0.08, size=a.positions.shape)
    return a


@pytest.fixture(scope="module")
def host(atoms):
    """The prepared structure, its neighbour list 1 Å beyond the 6.5 Å cut-off.

    The finite strains move pairs across the cut-off: a list at the cut-off
    would miss those that come inside (pairs beyond it add exactly zero).
    """
    return prepare_structures([atoms], ("O", "Ti"), 7.5)[0]


@pytest.fixture(scope="module")
def models(atoms, host, make_random_model, make_random_committee):
    """{"single": one network with the baseline, "committee": 3 members with it}, float64."""
    single = with_repulsion(make_random_model([atoms], seed=3))
    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    committee = make_random_committee([host], spec, members=3, seed=5)["model"]
    return {"single": single, "committee": with_repulsion(committee)}


def inputs_of(model, host, positions=None, cells=None) -> dict:
    """Inputs of ``host`` repeated once per row of ``positions`` (n, N, 3) / ``cells`` (n, 3, 3), float64."""
    x = collate([host], 1, bucket_size(host.n_atoms, ATOM_BUCKETS), host.slots, dtype=np.float64).inputs(
        model.elements)
    n = len(positions) if positions is not None else 1
    out = {k: np.repeat(np.asarray(v), n, axis=0) for k, v in x.items()}
    if positions is not None:
        out["positions"][:, :host.n_atoms] = positions
    if cells is not None:
        out["cell"] = np.asarray(cells, np.float64)
    return out


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("kind", ["single", "committee"])
def test_forces_and_strain_derivative_are_finite_differences_of_the_energy(models, host, kind):
    model = models[kind]
    out = jax.jit(lambda x: evaluate_potential(model, x, forces=True, stress=True))(inputs_of(model, host))
    energy = jax.jit(lambda x: evaluate_potential(model, x, forces=False)["energy"])
    n = host.n_atoms
    forces = np.asarray(out["forces"][0, :n])
    w = np.asarray(out["de_dstrain"][0])
    assert np.abs(forces).max() > 0.1 and np.abs(w).max() > 0.1  # not a trivially flat model
    assert np.all(out["forces"][0, n:] == 0)
    # Fourth-order central differences, all displacements in one batch.
    h, steps, weights = 1e-3, np.array([-2, -1, 1, 2]), np.array([1.0, -8.0, 8.0, -1.0]) / 12.0
    p0 = np.asarray(host.positions, np.float64)
    pos = np.repeat(p0[None], n * 3 * 4, axis=0).reshape(n, 3, 4, n, 3)
    for a in range(n):
        for c in range(3):
            pos[a, c, :, a, c] += steps * h
    e = np.asarray(energy(inputs_of(model, host, positions=pos.reshape(-1, n, 3))), np.float64).reshape(n, 3, 4)
    fd_forces = -(e @ weights) / h
    scale = np.abs(forces).max()
    np.testing.assert_allclose(forces, fd_forces, rtol=0, atol=1e-8 * scale)
    # Strain: positions and cell (rows) times (I + ε), ε symmetric; dE/dδ = W_ij + W_ji off the diagonal.
    # E(ε) of these random networks is strongly curved along the diagonal (the committee's fourth-order
    # truncation error: 5e-2 relative at a step of 1e-3, 1e-5 at 1e-4, 2e-9 at 1e-5): step 1e-5.
    h = 1e-5
    cell0 = np.asarray(host.cell, np.float64)
    strains, positions, cells = [], [], []
    for i in range(3):
        for j in range(i, 3):
            for s in steps:
                eps = np.zeros((3, 3))
                eps[i, j] = eps[j, i] = s * h
                positions.append(p0 @ (np.eye(3) + eps))
                cells.append(cell0 @ (np.eye(3) + eps))
            strains.append((i, j))
    e = np.asarray(energy(inputs_of(model, host, positions=np.array(positions), cells=np.array(cells))),
                   np.float64).reshape(6, 4)
    d = (e @ weights) / h
    expected = np.array([w[i, j] if i == j else w[i, j] + w[j, i] for i, j in strains])
    np.testing.assert_allclose(w, w.T, rtol=0, atol=1e-12 * np.abs(w).max())
    np.testing.assert_allclose(expected, d, rtol=0, atol=1e-7 * np.abs(w).max())


@pytest.mark.parametrize("kind", ["single", "committee"])
def test_call_calculator_and_predict_give_the_one_functions_results(models, atoms, host, kind):
    model = models[kind]
    committee = model.members > 1
    x = inputs_of(model, host)
    n = host.n_atoms
    ref = jax.jit(lambda x: evaluate_potential(model, x, forces=True, stress=True, member_forces=True))(x)
    refs = sum(REFERENCE_ENERGIES_TIO2[s] for s in atoms.get_chemical_symbols())
    volume = abs(np.linalg.det(host.cell))
    stress = np.asarray(ref["de_dstrain"][0]) / volume  # eV/Å³
    voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    e_scale, f_scale = abs(float(ref["energy"][0])), np.abs(np.asarray(ref["forces"])).max()

    # BPNN.call (geometry inputs) returns the function's outputs.
    out = jax.jit(lambda x: model(x, training=False))(x)
    assert set(out) == ({"energy", "forces", "energy_members", "forces_members"} if committee
                        else {"energy", "forces"})
    for key in out:
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(ref[key]), rtol=1e-13, atol=1e-13 * f_scale)

    # The calculator (its own padding and slots at Rc + skin): the same numbers.
    calc = BPNNCalculator(model, member_forces=True, warn_extrapolation=False)
    a = atoms.copy()
    a.calc = calc
    assert a.get_potential_energy() - refs == pytest.approx(float(ref["energy"][0]), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(a.get_forces(), np.asarray(ref["forces"][0, :n]), rtol=0, atol=1e-12 * f_scale)
    np.testing.assert_allclose(a.get_stress(), voigt, rtol=0, atol=1e-12 * np.abs(voigt).max())
    np.testing.assert_allclose(a.get_potential_energies() - [REFERENCE_ENERGIES_TIO2[s] for s in
                                                             a.get_chemical_symbols()],
                               np.asarray(ref["atomic_energies"][0, :n]), rtol=0, atol=1e-12 * e_scale)
    if committee:
        assert calc.results["energy_std"] == pytest.approx(float(np.std(ref["energy_members"][:, 0])), rel=1e-10)
        f_k = np.asarray(ref["forces_members"][:, 0, :n])
        f_std = np.sqrt(np.mean(np.sum((f_k - f_k.mean(axis=0)) ** 2, axis=-1), axis=0))
        np.testing.assert_allclose(calc.results["forces_std"], f_std, rtol=1e-10, atol=1e-12)

    # predict_structures / predict_stress.
    energies, forces, e_std, _ = predict_structures(model, [host], dtype=np.float64, uncertainty=True)
    assert energies[0] == pytest.approx(float(ref["energy"][0]), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(forces[0], np.asarray(ref["forces"][0, :n]), rtol=0, atol=1e-12 * f_scale)
    np.testing.assert_allclose(predict_stress(model, [host], dtype=np.float64)[0], voigt * EV_PER_A3_IN_GPA,
                               rtol=0, atol=1e-12 * np.abs(voigt).max() * EV_PER_A3_IN_GPA)
    if committee:
        assert e_std[0] == pytest.approx(float(np.std(ref["energy_members"][:, 0])), rel=1e-10)

    # One cached program per flag set, shared by the calculator and predict.
    from bpnn_jax.calculators.ase import _evaluator
    from bpnn_jax.training.predict import _predict_function

    assert _evaluator(model, True)[0] is potential_function(model, forces=True, stress=True, member_forces=True)[0]
    assert _predict_function(model, True)[0] is potential_function(model, forces=True, member_forces=True)[0]


@pytest.mark.parametrize("kind", ["single", "committee"])
def test_lammps_energy_is_the_same_site_energies(models, atoms, host, kind):
    """The neighbour-matrix program (unsorted rows, ghosts, per-element masked blocks): the same atomic energies."""
    model = models[kind]
    ref = jax.jit(lambda x: evaluate_potential(model, x, forces=False))(inputs_of(model, host))
    layout = lammps_layout(atoms, model.elements, model.spec.cutoff, max_atoms=1024, max_neighbors=128, rows=8)
    graph = SimpleNamespace(neighbors=jax.numpy.asarray(layout.neighbors),
                            num_neighbors=jax.numpy.asarray(layout.num_neighbors))
    fn = neighbor_matrix_energy(model)
    e = np.asarray(jax.jit(lambda p, s: fn(p, s, graph))(jax.numpy.asarray(layout.positions),
                                                         jax.numpy.asarray(layout.species)))
    refs = np.array([REFERENCE_ENERGIES_TIO2[s] for s in atoms.get_chemical_symbols()])
    expected = np.asarray(ref["atomic_energies"][0, :host.n_atoms]) + refs
    np.testing.assert_allclose(e[:layout.nlocal], expected, rtol=1e-13)
    rep = jax.jit(lambda x: model.repulsion_energies(x["positions"], x["cell"], x))(inputs_of(model, host))
    assert np.abs(np.asarray(rep)).max() > 0.01  # the baseline is part of what is compared


def test_member_forces_average_to_the_mean_energys_forces(models, host):
    model = models["committee"]
    x = inputs_of(model, host)
    n, K = host.n_atoms, model.members
    members = jax.jit(lambda x: evaluate_potential(model, x, forces=True, stress=True, member_forces=True))(x)
    mean = jax.jit(lambda x: evaluate_potential(model, x, forces=True, stress=True, member_forces=False))(x)
    assert "forces_members" not in mean and members["forces_members"].shape == (K, 1, x["positions"].shape[1], 3)
    f_k = np.asarray(members["forces_members"])
    scale = np.abs(f_k).max()
    spread = np.abs(f_k - f_k.mean(axis=0)).max()
    assert spread > 0.05 * scale  # the members differ: the average is a real test
    np.testing.assert_allclose(f_k.mean(axis=0), np.asarray(mean["forces"]), rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(np.asarray(members["forces"]), np.asarray(mean["forces"]), rtol=0,
                               atol=1e-13 * scale)
    np.testing.assert_allclose(np.asarray(members["de_dstrain"]), np.asarray(mean["de_dstrain"]), rtol=0,
                               atol=1e-13 * np.abs(np.asarray(mean["de_dstrain"])).max())
    np.testing.assert_allclose(np.asarray(members["energy_members"]).mean(axis=0), np.asarray(mean["energy"]),
                               rtol=1e-14)
    # Member k's forces are -d(E_k)/dR (the last member: where the vmapped float32 pass once went wrong).
    grad_last = jax.jit(jax.grad(lambda p: evaluate_potential(model, {**x, "positions": p},
                                                              forces=False)["energy_members"][K - 1, 0]))
    np.testing.assert_allclose(f_k[K - 1, 0, :n], -np.asarray(grad_last(x["positions"]))[0, :n], rtol=0,
                               atol=1e-13 * scale)
