"""Tests of the E+F committee stage on cached descriptor Jacobians (float64).

* Jacobian forces of every member equal the autodiff forces of the Keras
  committee model, on thin 6-atom cells and the 95-atom cells (1e-10),
  with dense and with sparse storage (and on a 256-atom Cu supercell,
  where sparse storage keeps 19 of 256 partners per atom), each element's
  network run on every atom or on its own atoms only (as training does);
* the loss gradient of the Jacobian path equals that of the end-to-end path
  (positions -> descriptors -> energies, forces by autodiff);
* a committee's mean and spread equal those of its members evaluated one
  by one (predict and the ASE calculator); it saves and reloads exactly;
* a killed E+F stage resumes bit-exactly (also inside an energy-weighted
  final phase, which leaves the run before it unchanged); the Jacobian cache is reused, and
  rebuilt when the data or the descriptor set change;
* ``train --members`` and ``evaluate --json`` (``energy_std_ev``) end to end.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (selects the JAX backend, enables float64)
import jax
import jax.numpy as jnp

from bpnn_jax.training import jacobian as jt
from bpnn_jax.descriptors.batch import collate, prepare_structures, species_atom_lists
from bpnn_jax.calculators.ase import BPNNCalculator
from bpnn_jax.descriptors import SymmetryFunctionSet
from bpnn_jax.descriptors.featurize import SparseJacobian, descriptor_jacobians
from bpnn_jax.io import REFERENCE_ENERGIES_TIO2, read_xsf
from bpnn_jax.descriptors.jacobian_cache import cached_jacobians
from bpnn_jax.model import load_model
from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, bucket_size
from bpnn_jax.training import compute_statistics, featurize_host, predict_structures

K = 3
HIDDEN = (8, 8)
NAMES = ("structure1632.xsf", "structure1061.xsf", "structure0001.xsf", "structure7513.xsf")


@pytest.fixture(scope="module")
def setup(data_dir, make_random_committee):
    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    atoms = [read_xsf(data_dir / n) for n in NAMES]
    hosts = prepare_structures(atoms, spec.elements, spec.cutoff, energy_offsets=REFERENCE_ENERGIES_TIO2)
    c = make_random_committee(hosts, spec, members=K, seed=3, hidden=HIDDEN, pooled_std_floor=True)
    sf, stats, params, model = c["sf"], c["stats"], c["params"], c["model"]
    jac = descriptor_jacobians(hosts, spec, dtype=np.float64)
    groups = jt.group_by_size(sf, [h.species for h in hosts], [h.energy for h in hosts],
                              [h.forces for h in hosts], tuple(jac), dtype=np.float64)
    cfg = jt.CommitteeConfig(members=K, hidden=HIDDEN)
    return dict(spec=spec, atoms=atoms, hosts=hosts, stats=stats, groups=groups, params=params, model=model,
                cfg=cfg, st=_model_stats(model))


def _model_stats(model):
    return {k: np.asarray(getattr(model, k).value, np.float64)
            for k in ("sf_mean", "sf_std", "energy_shift", "energy_scale")}


def _single_inputs(model, h):
    return collate([h], 1, bucket_size(h.n_atoms, ATOM_BUCKETS), h.slots, dtype=np.float64).inputs(model.elements)


def test_atoms_by_species_lists_each_elements_atoms(setup):
    for g in setup["groups"].arrays:
        lists = species_atom_lists(g)
        assert len(lists) == 2  # O, Ti
        for b, k in enumerate(g["index"]):
            species = setup["hosts"][k].species
            for s, idx in enumerate(lists):
                assert idx.shape[1] % 4 == 0 and idx.shape[1] >= np.sum(species == s)
                assert list(idx[b][idx[b] >= 0]) == list(np.flatnonzero(species == s))


@pytest.mark.parametrize("by_species", [False, True])
def test_jacobian_forces_equal_autodiff_forces(setup, by_species):
    """Jacobian forces and energies = the Keras model's, each element's network run on every atom (masked) or,
    as training does, on its own atoms only (``species_atoms``)."""
    model, params, st = setup["model"], setup["params"], setup["st"]
    for g in setup["groups"].arrays:
        out = jt.committee_outputs(params, st, g["sf"], g["species"], g["mask"], "tanh", g["jac"],
                                   species_atoms=species_atom_lists(g) if by_species else None)
        for b, k in enumerate(g["index"]):
            h = setup["hosts"][k]
            ref = model(_single_inputs(model, h))
            n = h.n_atoms
            f_ref = np.asarray(ref["forces_members"])[:, 0, :n]
            f_jac = np.asarray(out["forces"])[:, b, :n]
            assert np.max(np.abs(f_jac - f_ref)) <= 1e-10 * np.max(np.abs(f_ref)), h.name
            np.testing.assert_allclose(np.asarray(out["energy"])[:, b], np.asarray(ref["energy_members"])[:, 0],
                                       rtol=1e-12)
            # padding of the group holds exact zeros
            assert np.all(np.asarray(out["forces"])[:, b, n:] == 0)


def _copper(rep, seed=None):
    """An fcc Cu supercell labelled by ASE's EMT (rattled when ``seed`` is given)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(rep)
    if seed is not None:
        atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_forces()
    return atoms


def _sparse_setup(make_committee, hosts, spec, references, seed=5):
    """Sparse-storage groups, a float64 committee and its Keras model for ``hosts``."""
    built = make_committee(hosts, spec, members=K, seed=seed, hidden=HIDDEN, references=references)
    jac = descriptor_jacobians(hosts, spec, dtype=np.float64, sparse=True)
    assert all(isinstance(j, SparseJacobian) for j in jac)
    groups = jt.group_by_size(built["sf"], [h.species for h in hosts], [h.energy for h in hosts],
                              [h.forces for h in hosts], tuple(jac), dtype=np.float64)
    assert all("jac_values" in g and "jac" not in g for g in groups.arrays)
    return groups, built["params"], built["model"], jac


@pytest.mark.parametrize("by_species", [False, True])
@pytest.mark.parametrize("case", ["tio2", "copper"])
def test_sparse_jacobian_forces_equal_autodiff_forces(setup, case, by_species, make_random_committee):
    """Sparse storage (each atom's partners only): Jacobian forces = the Keras model's autodiff forces (1e-10).

    TiO2: the thin 6-atom cells and the 95-atom cells (every partner of every
    atom stored, images folded); copper: a 256-atom EMT supercell at
    Rc = 4 Å, where each atom has 19 of the 256 as partners, next to a
    72-atom and a 4-atom cell.
    """
    if case == "tio2":
        hosts, spec, refs = setup["hosts"], setup["spec"], REFERENCE_ENERGIES_TIO2
    else:
        spec = SymmetryFunctionSet.imbalzano(("Cu",), cutoff=4.0)
        refs = {"Cu": 0.0}
        hosts = prepare_structures([_copper((4, 4, 4), 1), _copper((3, 3, 2), 2), _copper((1, 1, 1), 3)],
                                   spec.elements, spec.cutoff, energy_offsets=refs)
    groups, params, model, jac = _sparse_setup(make_random_committee, hosts, spec, refs)
    st = _model_stats(model)
    if case == "copper":
        assert jac[0].width < len(hosts[0].positions) // 10, jac[0].width
    for g in groups.arrays:
        out = jt.committee_outputs(params, st, g["sf"], g["species"], g["mask"], "tanh", g["jac_values"],
                                   partners=g["jac_partners"],
                                   species_atoms=species_atom_lists(g) if by_species else None)
        for b, k in enumerate(g["index"]):
            h = hosts[k]
            ref = model(_single_inputs(model, h))
            n = h.n_atoms
            f_ref = np.asarray(ref["forces_members"])[:, 0, :n]
            f_jac = np.asarray(out["forces"])[:, b, :n]
            assert np.max(np.abs(f_jac - f_ref)) <= 1e-10 * np.max(np.abs(f_ref)), h.name
            assert np.all(np.asarray(out["forces"])[:, b, n:] == 0)


def test_sparse_jacobians_hold_the_dense_values_in_linear_memory(setup):
    """Same values as the dense n² blocks; partners are exactly the atoms within the cut-off; memory ∝ atoms."""
    hosts, spec = setup["hosts"], setup["spec"]
    dense = descriptor_jacobians(hosts, spec, dtype=np.float64, sparse=False)
    sparse = descriptor_jacobians(hosts, spec, dtype=np.float64, sparse=True)
    for h, d, s in zip(hosts, dense, sparse):
        np.testing.assert_allclose(s.dense(), d, rtol=0, atol=1e-13 * np.abs(d).max())
        # Brute force: the partners of i are i and the atoms of its neighbours' images, ascending.
        for i in range(h.n_atoms):
            want = np.unique(np.append(h.nl.neighbors[h.nl.centers == i], i))
            got = s.partners[i][s.partners[i] >= 0]
            np.testing.assert_array_equal(got, want)
            assert np.all(s.values[i][s.partners[i] < 0] == 0)
    # The automatic layout keeps small TiO2 cells dense (every atom sees nearly every other) ...
    auto = descriptor_jacobians(hosts, spec, dtype=np.float64)
    assert all(isinstance(a, np.ndarray) for a in auto)
    # ... and stores a crystal twice as long in twice the bytes (dense would be four times).
    cu = SymmetryFunctionSet.imbalzano(("Cu",), cutoff=4.0)
    small, big = (descriptor_jacobians([_copper(rep)], cu, dtype=np.float32)[0] for rep in ((4, 4, 4), (4, 4, 8)))
    assert isinstance(small, SparseJacobian) and isinstance(big, SparseJacobian)
    assert big.width == small.width and big.nbytes == 2 * small.nbytes


def test_training_on_sparse_groups_equals_training_on_dense_groups():
    """The E+F Adam stage gives the same losses and parameters whichever storage the Jacobians have (float64)."""
    spec = SymmetryFunctionSet.imbalzano(("Cu",), cutoff=4.0)
    hosts = prepare_structures([_copper((4, 4, 4), 1), _copper((1, 1, 1), 3), _copper((1, 1, 1), 4)],
                               spec.elements, spec.cutoff, energy_offsets={"Cu": 0.0})
    sf = featurize_host(hosts, spec, dtype=np.float64)
    stats = compute_statistics(sf, [h.species for h in hosts], [h.energy for h in hosts], 1)
    cfg = jt.CommitteeConfig(members=2, hidden=(6,), epochs=3, warmup_epochs=1, atoms_per_batch=300,
                             learning_rate=1e-2, force_weight=(1e-2, 3e-2))
    runs = []
    for sparse in (True, False):
        jac = descriptor_jacobians(hosts, spec, dtype=np.float64, sparse=sparse)
        g = jt.group_by_size(sf, [h.species for h in hosts], [h.energy for h in hosts], [h.forces for h in hosts],
                             tuple(jac), dtype=np.float64)
        assert all(("jac_values" in a) == sparse for a in g.arrays)
        runs.append(jt.fit_committee(g, g, stats, cfg, verbose=0, dtype="float64"))
    a, b = runs
    np.testing.assert_allclose([r["train_loss"] for r in a["history"]], [r["train_loss"] for r in b["history"]],
                               rtol=1e-10)
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-8, atol=1e-12)


def test_sparse_jacobian_cache_round_trip(tmp_path):
    """A cache holding dense and sparse structures returns both as computed; the layout choice is in the key."""
    spec = SymmetryFunctionSet.imbalzano(("Cu",), cutoff=4.0)
    hosts = prepare_structures([_copper((4, 4, 4), 1), _copper((1, 1, 1), 3)], spec.elements, spec.cutoff,
                               energy_offsets={"Cu": 0.0})
    a, hit = cached_jacobians(hosts, spec, tmp_path)
    assert not hit and isinstance(a[0], SparseJacobian) and isinstance(a[1], np.ndarray)
    b, hit = cached_jacobians(hosts, spec, tmp_path)
    assert hit and isinstance(b[0], SparseJacobian) and isinstance(b[1], np.ndarray)
    np.testing.assert_array_equal(a[0].values, b[0].values)
    np.testing.assert_array_equal(a[0].partners, b[0].partners)
    np.testing.assert_array_equal(a[1], b[1])
    c, hit = cached_jacobians(hosts, spec, tmp_path, sparse=False)
    assert not hit and all(isinstance(x, np.ndarray) for x in c)
    np.testing.assert_array_equal(c[0], a[0].dense())


def test_loss_gradient_matches_end_to_end_path(setup):
    """d(loss)/d(params): Jacobian contraction vs autodiff through the descriptors."""
    model, params, st = setup["model"], setup["params"], setup["st"]
    lam = jnp.asarray([1e-3, 3e-3, 1e-2])

    def jacobian_loss(p):
        return sum(jnp.sum(jt.member_losses(p, st, g, lam)) for g in setup["groups"].arrays)

    def end_to_end_loss(p):
        total = 0.0
        for g in setup["groups"].arrays:
            se = sf = 0.0
            for k in g["index"]:
                h = setup["hosts"][k]
                inputs = _single_inputs(model, h)

                def energies(pos):
                    desc = model.descriptors(pos, inputs["cell"], inputs)
                    return jt.committee_outputs(p, st, desc, inputs["species"], inputs["atom_mask"])["energy"][:, 0]

                e, vjp = jax.vjp(energies, jnp.asarray(inputs["positions"]))
                forces = -jax.vmap(vjp)(jnp.eye(K))[0][:, 0, :h.n_atoms]
                se = se + ((e - h.energy) / h.n_atoms) ** 2
                sf = sf + jnp.sum((forces - h.forces) ** 2, axis=(1, 2))
            total = total + jnp.sum(se / len(g["index"]) + lam * sf / (3.0 * g["n"].sum()))
        return total

    v1, g1 = jax.value_and_grad(jacobian_loss)(params)
    v2, g2 = jax.value_and_grad(end_to_end_loss)(params)
    assert abs(float(v1) - float(v2)) <= 1e-11 * abs(float(v2))
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 1e-9 * (np.max(np.abs(np.asarray(b))) + 1e-30)


def _numpy_losses(out, g, weights, lam, energy_loss, force_loss, huber_delta, energy_huber_delta):
    """(K,) member objectives, structure by structure and component by component, in NumPy float64."""

    def pen(x, kind, delta):
        a = abs(x)
        if kind == "mse":
            return x * x
        if kind == "mae":
            return a
        return a * a if a <= delta else delta * (2.0 * a - delta)

    E, F = np.asarray(out["energy"], np.float64), np.asarray(out["forces"], np.float64)
    K = E.shape[0]
    loss = np.zeros(K)
    for k in range(K):
        se = sf = ns = nf = 0.0
        for b in range(len(g["energy"])):
            n, w = int(g["n"][b]), float(weights[k, b])
            se += w * pen((E[k, b] - g["energy"][b]) / n, energy_loss, energy_huber_delta)
            for a in range(n):
                for c in range(3):
                    sf += w * pen(F[k, b, a, c] - g["forces"][b, a, c], force_loss, huber_delta)
            ns += w
            nf += 3.0 * n * w
        loss[k] = se / ns + lam[k] * sf / nf
    return loss


@pytest.mark.parametrize("energy_loss,force_loss", [("mse", "mse"), ("mae", "huber"), ("huber", "mse"),
                                                    ("huber", "huber")])
def test_member_losses_equal_a_brute_force_numpy_computation(setup, energy_loss, force_loss):
    """Every penalty, with bootstrap weights and per-atom normalisation: values against NumPy, and the gradient
    against central differences of the NumPy loss along random directions (float64)."""
    params, st = setup["params"], setup["st"]
    lam = np.array([1e-3, 3e-3, 1e-2])
    g = max(setup["groups"].arrays, key=lambda a: len(a["energy"]))  # several structures
    weights = np.random.default_rng(5).poisson(1.0, (K, len(g["energy"]))).astype(np.float64) + 0.5
    out = jt.committee_outputs(params, st, g["sf"], g["species"], g["mask"], jac=g["jac"])
    # Deltas at the median error: both sides of every Huber penalty are exercised.
    mask = g["mask"][None, ..., None]
    df = np.abs(np.asarray(out["forces"]) - g["forces"])[np.broadcast_to(mask, out["forces"].shape)]
    de = np.abs((np.asarray(out["energy"]) - g["energy"]) / g["n"])
    opts = dict(energy_loss=energy_loss, force_loss=force_loss, huber_delta=float(np.median(df)),
                energy_huber_delta=float(np.median(de)))

    def jax_loss(p):
        return jt.member_losses(p, st, g, jnp.asarray(lam), weights=jnp.asarray(weights), **opts)

    def numpy_loss(p):
        o = jt.committee_outputs(p, st, g["sf"], g["species"], g["mask"], jac=g["jac"])
        return _numpy_losses(o, g, weights, lam, **opts)

    np.testing.assert_allclose(np.asarray(jax_loss(params)), numpy_loss(params), rtol=1e-12)
    grads = jax.grad(lambda p: jnp.sum(jax_loss(p)))(params)
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape), params)
        eps = 1e-6
        plus = jax.tree_util.tree_map(lambda x, y: x + eps * y, params, d)
        minus = jax.tree_util.tree_map(lambda x, y: x - eps * y, params, d)
        fd = (numpy_loss(plus).sum() - numpy_loss(minus).sum()) / (2 * eps)
        analytic = sum(float(np.sum(np.asarray(a) * b)) for a, b in
                       zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(d)))
        assert abs(fd - analytic) <= 1e-6 * abs(analytic), (fd, analytic)


def test_penalties_differ_from_the_squared_error_where_they_should(setup):
    """MAE and Huber losses are not the MSE one (the options reach the loss), and a Huber delta above every
    error gives the MSE loss exactly."""
    params, st, g = setup["params"], setup["st"], setup["groups"].arrays[0]
    lam = jnp.asarray([1e-2] * K)
    mse = np.asarray(jt.member_losses(params, st, g, lam))
    huge = np.asarray(jt.member_losses(params, st, g, lam, energy_loss="huber", force_loss="huber",
                                       huber_delta=1e9, energy_huber_delta=1e9))
    np.testing.assert_array_equal(mse, huge)
    for kw in (dict(energy_loss="mae"), dict(force_loss="huber", huber_delta=1e-3)):
        assert np.all(np.abs(np.asarray(jt.member_losses(params, st, g, lam, **kw)) - mse) > 1e-9 * mse)
    with pytest.raises(ValueError, match="energy_loss"):
        jt.CommitteeConfig(energy_loss="l1")
    with pytest.raises(ValueError, match="force_loss"):
        jt.CommitteeConfig(force_loss="mae")


def _member_model(setup, k):
    p = jax.tree_util.tree_map(lambda x: x[:, k:k + 1], setup["params"])
    cfg = dataclasses.replace(setup["cfg"], members=1)
    single = jt.to_model(p, setup["stats"], setup["spec"], cfg, REFERENCE_ENERGIES_TIO2, dtype="float64")
    assert single.members == 1
    return single


def test_committee_mean_and_spread_equal_its_members_one_by_one(setup):
    model, hosts = setup["model"], setup["hosts"]
    e, f, e_std, f_std = predict_structures(model, hosts, dtype=np.float64, uncertainty=True)
    members = [predict_structures(_member_model(setup, k), hosts, dtype=np.float64) for k in range(K)]
    e_k = np.stack([m[0] for m in members])
    np.testing.assert_allclose(e, e_k.mean(0), rtol=1e-12)
    np.testing.assert_allclose(e_std, e_k.std(0), rtol=1e-8, atol=1e-12)
    for s in range(len(hosts)):
        f_k = np.stack([m[1][s] for m in members])
        np.testing.assert_allclose(f[s], f_k.mean(0), atol=1e-11)
        spread = np.sqrt(np.mean(np.sum((f_k - f_k.mean(0)) ** 2, -1), 0))
        np.testing.assert_allclose(f_std[s], spread, rtol=1e-8, atol=1e-12)
    # The calculator reports the same mean and spread.
    atoms = setup["atoms"][0].copy()
    atoms.calc = BPNNCalculator(model, warn_extrapolation=False)
    energy = atoms.get_potential_energy()
    res = atoms.calc.results
    tot = sum(REFERENCE_ENERGIES_TIO2[s] for s in atoms.get_chemical_symbols())
    assert abs(energy - tot - e[0]) < 1e-9
    assert abs(res["energy_std"] - e_std[0]) < 1e-9
    np.testing.assert_allclose(res["forces"], f[0], atol=1e-10)
    # The members' forces are computed when forces_std is asked for (or always with member_forces=True).
    assert "forces_std" not in res
    assert {e for e, _ in atoms.calc.compiled_programs} == {"mean_forces"}
    np.testing.assert_allclose(atoms.calc.get_property("forces_std", atoms), f_std[0], atol=1e-10)
    # Two programs for one shape: the mean's forces, then every member's (compiled_shapes alone undercounts).
    assert {e for e, _ in atoms.calc.compiled_programs} == {"mean_forces", "member_forces"}
    assert len(atoms.calc.compiled_shapes) == 1
    np.testing.assert_allclose(atoms.calc.results["forces"], f[0], atol=1e-10)
    always = setup["atoms"][0].copy()
    always.calc = BPNNCalculator(model, warn_extrapolation=False, member_forces=True)
    always.get_forces()
    np.testing.assert_allclose(always.calc.results["forces_std"], f_std[0], atol=1e-10)
    single = [BPNNCalculator(_member_model(setup, k), warn_extrapolation=False) for k in range(K)]
    stress = []
    for c in single:
        a = setup["atoms"][0].copy()
        a.calc = c
        stress.append(a.get_stress())
    np.testing.assert_allclose(res["stress"], np.mean(stress, 0), atol=1e-12)
    # member_forces=False: the same mean results, never forces_std.
    b = setup["atoms"][0].copy()
    b.calc = BPNNCalculator(model, warn_extrapolation=False, member_forces=False)
    assert abs(b.get_potential_energy() - energy) < 1e-9
    fast = b.calc.results
    assert abs(fast["energy_std"] - res["energy_std"]) < 1e-12
    np.testing.assert_allclose(fast["forces"], res["forces"], atol=1e-10)
    np.testing.assert_allclose(fast["stress"], res["stress"], atol=1e-12)
    assert "forces_std" not in fast


def test_committee_saves_and_reloads_with_identical_outputs(setup, tmp_path):
    model = setup["model"]
    model.uncertainty_threshold = 0.0123
    path = tmp_path / "committee.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.members == K and loaded.uncertainty_threshold == pytest.approx(0.0123)
    a = predict_structures(model, setup["hosts"], dtype=np.float64, uncertainty=True)
    b = predict_structures(loaded, setup["hosts"], dtype=np.float64, uncertainty=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])
    for x, y in zip(a[1], b[1]):
        np.testing.assert_array_equal(x, y)
    p = jt.params_from_model(loaded)
    for x, y in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(setup["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _small_groups(setup):
    g = setup["groups"]
    f32 = jt.Groups([{k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in a.items()}
                     for a in g.arrays])
    return f32


def _killed_and_resumed(groups, stats, cfg, run_dir, kill_at):
    """Run the E+F stage, kill it inside epoch ``kill_at``'s callback, then resume it to the end."""

    class Killed(Exception):
        pass

    def kill(epoch, rec):
        if epoch == kill_at:
            raise Killed

    with pytest.raises(Killed):
        jt.fit_committee(groups, groups, stats, cfg, run_dir=run_dir, verbose=0, checkpoint_seconds=0.0,
                         on_epoch=kill)
    return jt.fit_committee(groups, groups, stats, cfg, run_dir=run_dir, verbose=0, resume=True,
                            checkpoint_seconds=0.0)


def test_killed_ef_stage_resumes_bit_exactly(setup, tmp_path):
    groups = _small_groups(setup)
    cfg = jt.CommitteeConfig(members=2, hidden=(6,), epochs=6, warmup_epochs=1, atoms_per_batch=24,
                             bootstrap=True, learning_rate=1e-2)
    full = jt.fit_committee(groups, groups, setup["stats"], cfg, run_dir=tmp_path / "a", verbose=0,
                            checkpoint_seconds=0.0)

    # The epoch-3 state was not yet written when the kill came: resume redoes it.
    resumed = _killed_and_resumed(groups, setup["stats"], cfg, tmp_path / "b", 3)
    assert resumed["epochs_run"] == full["epochs_run"] == 6
    for x, y in zip(jax.tree_util.tree_leaves(full["params"]), jax.tree_util.tree_leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r["train_loss"] for r in full["history"]] == [r["train_loss"] for r in resumed["history"]]
    assert full["history"][-1]["train_loss"] < full["history"][0]["train_loss"]


def test_dropout_zero_trains_bit_for_bit_as_without_dropout(setup):
    """``dropout=0`` draws no masks: the loss with a key equals the loss without one, and a run with the rate
    given as 0 is the run without it, bit for bit."""
    params, st, g = setup["params"], setup["st"], setup["groups"].arrays[0]
    lam = jnp.asarray([1e-2] * K)
    np.testing.assert_array_equal(np.asarray(jt.member_losses(params, st, g, lam)),
                                  np.asarray(jt.member_losses(params, st, g, lam, dropout=0.0,
                                                              key=jax.random.PRNGKey(3))))
    groups = _small_groups(setup)
    cfg = jt.CommitteeConfig(members=2, hidden=(6,), epochs=2, warmup_epochs=1, atoms_per_batch=24,
                             learning_rate=1e-2)
    a = jt.fit_committee(groups, groups, setup["stats"], cfg, verbose=0)
    b = jt.fit_committee(groups, groups, setup["stats"], dataclasses.replace(cfg, dropout=0.0), verbose=0)
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_dropout_changes_training_not_evaluation(setup, tmp_path):
    """Dropout > 0: other training losses and weights, masks that differ from step to step, a bit-exact resume;
    validation and the exported model run without it (the model records the rate)."""
    params, st, g = setup["params"], setup["st"], setup["groups"].arrays[0]
    lam = jnp.asarray([1e-2] * K)
    plain = np.asarray(jt.member_losses(params, st, g, lam))
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    d1 = np.asarray(jt.member_losses(params, st, g, lam, dropout=0.3, key=k1))
    assert np.all(d1 != plain)
    assert np.all(d1 != np.asarray(jt.member_losses(params, st, g, lam, dropout=0.3, key=k2)))
    np.testing.assert_array_equal(d1, np.asarray(jt.member_losses(params, st, g, lam, dropout=0.3, key=k1)))

    groups = _small_groups(setup)
    cfg = jt.CommitteeConfig(members=2, hidden=(6,), epochs=4, warmup_epochs=1, atoms_per_batch=24,
                             learning_rate=1e-2, dropout=0.3)
    off = jt.fit_committee(groups, groups, setup["stats"], dataclasses.replace(cfg, dropout=0.0), verbose=0)
    on = jt.fit_committee(groups, groups, setup["stats"], cfg, run_dir=tmp_path / "a", verbose=0,
                          checkpoint_seconds=0.0)
    assert [r["train_loss"] for r in on["history"]] != [r["train_loss"] for r in off["history"]]
    resumed = _killed_and_resumed(groups, setup["stats"], cfg, tmp_path / "b", 2)
    for x, y in zip(jax.tree_util.tree_leaves(on["params"]), jax.tree_util.tree_leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Evaluation is deterministic and dropout-free: the validation errors are those of the plain outputs.
    m1 = jt.committee_validation(on["params"], setup["stats"], groups)
    m2 = jt.committee_validation(on["params"], setup["stats"], groups)
    np.testing.assert_array_equal(m1["energy_rmse_mev_atom"], m2["energy_rmse_mev_atom"])
    model = jt.to_model(on["params"], setup["stats"], setup["spec"], cfg, REFERENCE_ENERGIES_TIO2)
    assert model.dropout == 0.3 and model.get_config()["dropout"] == 0.3
    e, _ = predict_structures(model, setup["hosts"], forces=False)
    a = groups.arrays[0]
    ref = jt.committee_outputs(jax.tree_util.tree_map(jnp.asarray, on["params"]), jt._stats_arrays(setup["stats"], "float32"),
                               a["sf"], a["species"], a["mask"])["energy"].mean(axis=0)
    np.testing.assert_allclose(e[a["index"]], np.asarray(ref, np.float64), rtol=1e-5, atol=1e-5)


def test_a_non_finite_loss_stops_training_and_keeps_finite_weights(setup, tmp_path, capsys):
    """NaN targets: the run stops at once, says so, is not complete, and every kept weight is finite."""
    groups = _small_groups(setup)
    for a in groups.arrays:
        a["energy"] = np.full_like(a["energy"], np.nan)
    cfg = jt.CommitteeConfig(members=2, hidden=(6,), epochs=4, warmup_epochs=1, atoms_per_batch=24)
    out = jt.fit_committee(groups, _small_groups(setup), setup["stats"], cfg, run_dir=tmp_path, verbose=0)
    assert "epoch 1: non-finite training loss" in capsys.readouterr().out
    assert not out["complete"] and out["epochs_run"] == 0
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(out["params"]))


def test_releasing_host_jacobians_trains_identically_and_frees_them(setup):
    """``release_host_jacobians``: the same run, and the groups' Jacobians are gone from the host after it."""
    cfg = jt.CommitteeConfig(members=2, hidden=(6,), epochs=3, warmup_epochs=1, atoms_per_batch=24,
                             learning_rate=1e-2)
    kept, released = _small_groups(setup), _small_groups(setup)
    a = jt.fit_committee(kept, kept, setup["stats"], cfg, verbose=0)
    b = jt.fit_committee(released, _small_groups(setup), setup["stats"], cfg, verbose=0, release_host_jacobians=True)
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert any("jac" in g or "jac_values" in g for g in kept.arrays)
    assert not any(k in g for g in released.arrays for k in ("jac", "jac_values", "sjac"))
    assert all("sf" in g and "forces" in g for g in released.arrays)  # the rest stays (threshold calibration)


def test_jacobian_cache_reused_and_rebuilt_when_inputs_change(setup, tmp_path, monkeypatch):
    hosts, spec = setup["hosts"][:2], setup["spec"]
    calls = []
    import bpnn_jax.descriptors.featurize as featurize

    original = featurize.descriptor_jacobians

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(featurize, "descriptor_jacobians", counting)
    a, hit = cached_jacobians(hosts, spec, tmp_path)
    assert not hit and len(calls) == 1
    b, hit = cached_jacobians(hosts, spec, tmp_path)
    assert hit and len(calls) == 1
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    moved = [dataclasses.replace(hosts[0], positions=hosts[0].positions + 1e-3), hosts[1]]
    _, hit = cached_jacobians(moved, spec, tmp_path)
    assert not hit and len(calls) == 2
    other = dataclasses.replace(spec, cutoff=6.0)
    _, hit = cached_jacobians(hosts, other, tmp_path)
    assert not hit and len(calls) == 3


def test_train_committee_cli_and_evaluate_json(six_atom_files, tmp_path):
    from bpnn_jax.cli import main

    run = tmp_path / "run"
    files = [str(p) for p in six_atom_files[:20]]
    assert main(["train", *files, "--out", str(run), "--members", "3", "--hidden", "8", "--ef-epochs", "4",
                 "--ef-force-weight", "1e-3,2e-3,3e-3", "--test-fraction", "0.1", "--quiet"]) == 0
    model = load_model(run / "model.keras")
    assert model.members == 3 and model.uncertainty_threshold > 0
    summary = json.loads((run / "ef.json").read_text())
    assert summary["epochs_run"] == 4 and summary["complete"]
    assert list((run / "cache").glob("jacobians-*.npy"))
    out = tmp_path / "m.json"
    assert main(["evaluate", str(run / "model.keras"), *files[:4], "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["per_structure"]
    assert all(r["energy_std_ev"] > 0 and r["force_std_max_ev_a"] > 0 for r in rows)
    # evaluate --split scores exactly the run's test structures
    split = json.loads((run / "split.json").read_text())
    assert main(["evaluate", str(run / "model.keras"), "--split", f"{run / 'split.json'}:test", "--json",
                 str(out), "--no-forces"]) == 0
    assert [r["file"] for r in json.loads(out.read_text())["per_structure"]] == split["test"]
    # predict writes the committee spread
    csv_path = tmp_path / "p.csv"
    assert main(["predict", str(run / "model.keras"), *files[:3], "--out", str(csv_path)]) == 0
    header, *lines = csv_path.read_text().splitlines()
    assert header.split(",")[-1] == "energy_std_ev" and len(lines) == 3 and all(float(l.split(",")[-1]) > 0 for l in lines)


def test_jacobian_stress_equals_calculator_stress(setup):
    """Strain Jacobians: the committee's stress from the Jacobian path equals the calculator's (end to end)."""
    from bpnn_jax.descriptors.featurize import descriptor_strain_jacobians
    from bpnn_jax.units import EV_PER_A3_IN_GPA

    hosts, spec = setup["hosts"], setup["spec"]
    sf = featurize_host(hosts, spec, dtype=np.float64)
    jac = descriptor_jacobians(hosts, spec, dtype=np.float64)
    sj = descriptor_strain_jacobians(hosts, spec, dtype=np.float64)
    vol = [abs(np.linalg.det(h.cell)) for h in hosts]
    groups = jt.group_by_size(sf, [h.species for h in hosts], [h.energy for h in hosts], [h.forces for h in hosts],
                              tuple(jac), dtype=np.float64, strain_list=sj, stress_list=[np.zeros(6)] * len(hosts),
                              volumes=vol)
    model, params, st = setup["model"], setup["params"], setup["st"]
    seen = 0
    for g in groups.arrays:
        out = jt.committee_outputs(params, st, g["sf"], g["species"], g["mask"], "tanh", g["jac"], g["sjac"],
                                   g["volume"])
        for b, k in enumerate(g["index"]):
            a = setup["atoms"][k].copy()
            a.calc = BPNNCalculator(model, warn_extrapolation=False)
            ref = a.get_stress() * EV_PER_A3_IN_GPA
            got = np.asarray(out["stress"])[:, b].mean(axis=0)
            np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
            seen += 1
    assert seen == len(hosts)


def test_each_member_keeps_its_best_epoch_over_the_whole_run(setup):
    """A member's best point follows its validation objective to the end, whatever the patience.

    (A member used to be frozen once it had not improved for ``patience``
    epochs, which kept points from the noisy start of long schedules.)  With
    patience 1 and a noisy learning rate, the best epoch must still be the
    argmin of each member's objective over all epochs, and the run goes on
    while any member improves.
    """
    groups = _small_groups(setup)
    lam = (1e-2, 1e-3)
    cfg = jt.CommitteeConfig(members=2, hidden=(6,), epochs=14, warmup_epochs=1, atoms_per_batch=24,
                             learning_rate=3e-2, patience=1, ema_decay=0.0, force_weight=lam)
    res = jt.fit_committee(groups, groups, setup["stats"], cfg, verbose=0)
    hist = res["history"]
    e = np.array([r["val_member_energy_rmse_mev_atom"] for r in hist]) / 1e3
    f = np.array([r["val_member_force_rmse_ev_a"] for r in hist])
    obj = e**2 + np.asarray(lam)[None, :] * f**2
    for k in range(2):
        assert res["best_epoch"][k] == int(np.argmin(obj[:, k])) + 1, (k, obj[:, k])
    # The run ended only when neither member had improved for `patience` epochs (or at the last epoch).
    last = res["epochs_run"]
    assert last == cfg.epochs or all(last - b > cfg.patience for b in res["best_epoch"])


def test_final_phase_weighs_energies_more_and_chooses_its_best_points_afresh(setup, tmp_path):
    """``final_epochs``: the last epochs train with every lambda times ``final_force_factor``.

    Before the phase the run is the plain one, bit for bit; from its first
    epoch it differs; every member's best epoch lies in the phase and is the
    argmin of the phase's own objective over the phase's epochs (a better
    earlier epoch under the first objective must not be kept); a run killed
    inside the phase resumes to the uninterrupted result.
    """
    groups = _small_groups(setup)
    lam = (1e-2, 3e-2)
    base = jt.CommitteeConfig(members=2, hidden=(6,), epochs=10, warmup_epochs=1, atoms_per_batch=24,
                              learning_rate=1e-2, ema_decay=0.0, force_weight=lam)
    # A factor > 1 makes the phase's objective values larger than the first phase's: only a fresh
    # choice of best points picks phase epochs then.
    cfg = dataclasses.replace(base, final_epochs=4, final_force_factor=20.0)
    np.testing.assert_allclose(cfg.weights(5), lam)
    np.testing.assert_allclose(cfg.weights(6), 20.0 * np.asarray(lam))
    np.testing.assert_allclose(cfg.weights(cfg.epochs), 20.0 * np.asarray(lam))  # what a polish after it uses
    np.testing.assert_allclose(dataclasses.replace(base, final_force_factor=0.05).weights(10), lam)  # no phase
    with pytest.raises(ValueError, match="final_epochs"):
        dataclasses.replace(base, final_epochs=11)
    with pytest.raises(ValueError, match="final_force_factor"):
        dataclasses.replace(base, final_epochs=2, final_force_factor=0.0)

    plain = jt.fit_committee(groups, groups, setup["stats"], base, verbose=0)
    res = jt.fit_committee(groups, groups, setup["stats"], cfg, verbose=0, run_dir=tmp_path / "a",
                           checkpoint_seconds=0.0)
    loss = lambda r: [h["train_loss"] for h in r["history"]]  # noqa: E731
    assert loss(res)[:6] == loss(plain)[:6]
    assert all(a != b for a, b in zip(loss(res)[6:], loss(plain)[6:]))
    assert [h["force_weight_factor"] for h in res["history"]] == [1.0] * 6 + [20.0] * 4
    e = np.array([r["val_member_energy_rmse_mev_atom"] for r in res["history"]]) / 1e3
    f = np.array([r["val_member_force_rmse_ev_a"] for r in res["history"]])
    obj = e**2 + 20.0 * np.asarray(lam)[None, :] * f**2
    for k in range(2):
        assert res["best_epoch"][k] == 6 + int(np.argmin(obj[6:, k])) + 1, (k, obj[:, k])
    # The first phase's state (its best points among epochs 1-6) is kept beside the run's.
    with np.load(tmp_path / "a" / "ef_state_phase1.npz") as first:
        assert np.all(first["best_epoch"] <= 6) and np.all(first["best_epoch"] >= 1)

    resumed = _killed_and_resumed(groups, setup["stats"], cfg, tmp_path / "b", 8)
    assert resumed["best_epoch"] == res["best_epoch"] and loss(resumed) == loss(res)
    for x, y in zip(jax.tree_util.tree_leaves(res["params"]), jax.tree_util.tree_leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_run_branched_at_its_final_phase_equals_the_whole_run_with_the_new_factor(setup, tmp_path):
    """The first phase's state, resumed with another final-phase factor, repeats a whole run with that factor.

    This is what ``experiments/branch_final_phase.py`` relies on: final-phase
    settings can be compared for the cost of the phase alone.
    """
    import shutil

    groups = _small_groups(setup)
    base = jt.CommitteeConfig(members=2, hidden=(6,), epochs=8, warmup_epochs=1, atoms_per_batch=24,
                              learning_rate=1e-2, ema_decay=0.9, force_weight=(1e-2, 3e-2), final_epochs=3,
                              final_force_factor=0.1)
    jt.fit_committee(groups, groups, setup["stats"], base, verbose=0, run_dir=tmp_path / "a")
    other = dataclasses.replace(base, final_force_factor=0.3)
    whole = jt.fit_committee(groups, groups, setup["stats"], other, verbose=0, run_dir=tmp_path / "b")
    (tmp_path / "c").mkdir()
    shutil.copy2(tmp_path / "a" / "ef_state_phase1.npz", tmp_path / "c" / "ef_state.npz")
    branched = jt.fit_committee(groups, groups, setup["stats"], other, verbose=0, run_dir=tmp_path / "c",
                                resume=True)
    untimed = lambda r: [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]]  # noqa: E731
    assert untimed(branched) == untimed(whole) and branched["best_epoch"] == whole["best_epoch"]
    assert [h["force_weight_factor"] for h in branched["history"]] == [1.0] * 5 + [0.3] * 3
    for x, y in zip(jax.tree_util.tree_leaves(whole["params"]), jax.tree_util.tree_leaves(branched["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_lbfgs_polish_lowers_the_objective_and_never_worsens_a_member(setup):
    """Full-batch L-BFGS of all members at once (``--ef-lbfgs-steps``), float64."""
    g, st, cfg = setup["groups"], setup["st"], dataclasses.replace(setup["cfg"], force_weight=(1e-3, 3e-3, 1e-2))
    lam = jnp.asarray(cfg.weights())
    n_s, n_f = float(g.n_structures), 3.0 * g.n_atoms

    def objective(p):  # the full-batch objective per member, written out independently
        return sum(jt.member_losses(p, st, a, lam, normalizers=(n_s, n_f)) for a in g.arrays)

    before = np.asarray(objective(setup["params"]))
    out = jt.polish_lbfgs(setup["params"], g, g, st, cfg, steps=20, log_every=5, verbose=0, dtype="float64")
    after = np.asarray(objective(out["params"]))
    assert np.all(after <= before) and np.all(after < 0.5 * before), (before, after)
    # With validation = training data, each member's kept objective is its best, here the final one.
    np.testing.assert_allclose(out["best_objective"], after, rtol=1e-6)


def test_lbfgs_polish_too_big_for_the_machine_is_refused_before_training(six_atom_files, tmp_path, monkeypatch,
                                                                         capsys):
    from bpnn_jax.cli import main
    from bpnn_jax.training import committee_stage

    monkeypatch.setattr(committee_stage, "LBFGS_MEMORY_FACTOR", 1e9)  # as if the machine were far too small
    run = tmp_path / "run"
    files = [str(p) for p in six_atom_files[:12]]
    assert main(["train", *files, "--out", str(run), "--members", "2", "--hidden", "8", "--ef-epochs", "3",
                 "--ef-lbfgs-steps", "5", "--quiet"]) == 2
    assert "--ef-lbfgs-steps 5" in capsys.readouterr().err
    assert not (run / "ef_state.npz").exists()  # no Adam epoch was spent first
    assert not list((run / "cache").glob("jacobians-*.npy"))  # nor the Jacobians


def test_float32_jacobians_equal_float64_on_the_largest_cell(data_dir):
    """Float32 descriptor Jacobians of both of tio2's descriptor sets equal float64's on a 95-atom cell.

    E+F training reads only these Jacobians.  The Chebyshev Jacobian vmaps
    forward-mode tangents over a shared primal, the pattern of an XLA:CPU
    bug that gave wrong float32 values only at large batch sizes
    (experiments/xla_vmap_vjp_bug.py); small cells would not show it.
    """
    atoms = read_xsf(data_dir / "structure7513.xsf")
    assert len(atoms) == 95
    spec = load_model("tio2").spec
    (h,) = prepare_structures([atoms], spec.elements, spec.cutoff)
    for part in spec.parts:
        j32, j64 = (descriptor_jacobians([h], part, dtype=dt, sparse=False)[0] for dt in (np.float32, np.float64))
        scale = np.abs(j64).max(axis=(0, 1, 3))  # per function, Å⁻¹
        assert scale.min() > 0
        err = np.abs(np.asarray(j32, np.float64) - j64).max(axis=(0, 1, 3)) / scale
        assert err.max() < 1e-4, (type(part).__name__, err.max())
