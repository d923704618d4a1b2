"""The short-range pair baseline (bpnn_jax.model.repulsion, bpnn_jax.training.repulsion_fit), float64.

* φ(r) is zero beyond its cut-off, continuous with its derivative there,
  non-negative and decreasing; host forces are minus the gradient of the
  host energy by central finite differences;
* a model with the baseline differs from the same networks without it by
  exactly the host energy and forces (model call, calculator with stress,
  committee members, the LAMMPS program), in a compressed 6-atom cell, a
  22-atom cell with 1.2-1.5 Å contacts and a thin cell; it survives
  save/reload and a merge, and models with different baselines are not
  merged;
* the fit recovers a known baseline's energies and forces from data made
  by it, and refuses data without contacts;
* ``train --repulsion`` fits it, writes ``repulsion.json``, trains the
  networks on the rest and saves it in the model.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (JAX backend, float64)
import jax

from bpnn_jax.descriptors.batch import collate, prepare_structures
from bpnn_jax.errors import BPNNInputError, ModelError
from bpnn_jax.io import read_xsf
from bpnn_jax.model import BPNN, load_model
from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, bucket_size
from bpnn_jax.model.repulsion import PairRepulsion
from bpnn_jax.training.repulsion_fit import fit_repulsion, subtract_repulsion

COMPRESSED = "structure7065.xsf"  # 6 atoms, cohesive +0.82 eV/atom: Ti-O contacts well inside 1.6 Å
CONTACTS = "structure5710.xsf"  # 22 atoms: Ti-Ti / Ti-O at 1.35 Å, O-O at 1.23 Å
THIN = "structure1632.xsf"  # 6 atoms, shortest cell vector 2.36 Å
NAMES = (COMPRESSED, CONTACTS, THIN)
CUTOFFS = {"Ti-Ti": 2.0, "Ti-O": 1.6, "O-O": 1.8}
COEFS = {"Ti-Ti": (40.0, 0.0, 300.0, 0.0, 900.0), "O-Ti": (120.0, 15.0, 0.0, 0.0, 0.0),
         "O-O": (30.0, 0.0, 0.0, 200.0, 0.0)}


def repulsion() -> PairRepulsion:
    return PairRepulsion(("O", "Ti"), CUTOFFS, COEFS)


def host_terms(rep, h):
    nl = h.nl
    return rep.host_energy_forces(h.positions, h.cell, h.species, nl.centers, nl.neighbors, nl.shifts)


@pytest.fixture(scope="module")
def atoms(data_dir):
    return {n: read_xsf(data_dir / n) for n in NAMES}


@pytest.fixture(scope="module")
def hosts(atoms):
    return {n: prepare_structures([a], ("O", "Ti"), 6.5)[0] for n, a in atoms.items()}


@pytest.fixture(scope="module")
def pair_models(atoms, make_random_model):
    """(without, with): the same random float64 networks, the second with the baseline."""
    plain = make_random_model([atoms[n] for n in NAMES])
    config = plain.get_config()
    config.pop("name", None)
    config["repulsion"] = repulsion().to_config()
    rep = BPNN.from_config(config)
    rep.set_weights(plain.get_weights())
    return plain, rep


def test_pair_function_is_smooth_repulsive_and_zero_beyond_cutoff():
    rep = repulsion()
    r = np.linspace(0.6, 2.3, 3401)
    for a, b in (("O", "Ti"), ("Ti", "Ti"), ("O", "O")):
        s_i, s_j = ("O", "Ti").index(a), ("O", "Ti").index(b)
        disp = np.zeros((len(r), 1, 3))
        disp[:, 0, 0] = r
        phi = 2.0 * np.asarray(rep.atomic_energies(jax.numpy.asarray(disp), np.ones((len(r), 1), bool),
                                                    np.full(len(r), s_i), np.full((len(r), 1), s_j)))
        rc = CUTOFFS["Ti-O" if {a, b} == {"O", "Ti"} else f"{a}-{b}"]
        assert np.all(phi[r >= rc] == 0.0) and np.all(phi[r < rc - 1e-3] > 0)
        assert np.all(np.diff(phi) <= 1e-12)  # decreasing
        slope = np.diff(phi) / np.diff(r)
        near = (r[1:] > rc - 0.01) & (r[1:] <= rc)
        assert np.max(np.abs(slope[near])) < 0.05 * np.max(np.abs(slope))  # C¹ at the cut-off
        grad = jax.grad(lambda d: rep.atomic_energies(d, np.ones((1, 1), bool), np.full(1, s_i),
                                                     np.full((1, 1), s_j)).sum())(jax.numpy.zeros((1, 1, 3)))
        assert np.all(np.isfinite(grad))  # a padded zero displacement
    with pytest.raises(ModelError, match="Ti-Xe"):
        PairRepulsion(("O", "Ti"), {"Ti-Xe": 1.5}, {})
    with pytest.raises(ModelError, match="≥ 0"):
        PairRepulsion(("O", "Ti"), {"Ti-O": 1.5}, {"O-Ti": (-1.0, 0, 0, 0, 0)})


@pytest.mark.parametrize("name", NAMES)
def test_host_forces_are_minus_the_energy_gradient(hosts, name):
    rep = repulsion()
    h = hosts[name]
    e0, f = host_terms(rep, h)
    if name != THIN:
        assert e0 > 1.0 and np.abs(f).max() > 1.0  # the cells have contacts inside the cut-offs
    delta = 1e-6
    rng = np.random.default_rng(0)
    for atom in rng.choice(h.n_atoms, size=min(h.n_atoms, 4), replace=False):
        for x in range(3):
            plus, minus = h.positions.copy(), h.positions.copy()
            plus[atom, x] += delta
            minus[atom, x] -= delta
            nl = h.nl
            ep, _ = rep.host_energy_forces(plus, h.cell, h.species, nl.centers, nl.neighbors, nl.shifts)
            em, _ = rep.host_energy_forces(minus, h.cell, h.species, nl.centers, nl.neighbors, nl.shifts)
            assert f[atom, x] == pytest.approx(-(ep - em) / (2 * delta), rel=1e-6, abs=1e-7)


def test_model_adds_exactly_the_host_baseline(pair_models, hosts, atoms):
    from bpnn_jax.calculators.ase import BPNNCalculator

    plain, rep = pair_models
    for name in NAMES:
        h = hosts[name]
        inputs = collate([h], 1, bucket_size(h.n_atoms, ATOM_BUCKETS), h.slots, dtype=np.float64).inputs(
            plain.elements)
        out0, out1 = plain(inputs), rep(inputs)
        e_rep, f_rep = host_terms(rep.repulsion, h)
        n = h.n_atoms
        assert float(out1["energy"][0] - out0["energy"][0]) == pytest.approx(e_rep, rel=1e-12, abs=1e-10)
        np.testing.assert_allclose(np.asarray(out1["forces"][0, :n] - out0["forces"][0, :n]), f_rep,
                                   rtol=1e-10, atol=1e-10)
        # The calculator (its own strained energy function): energy, forces and a stress that moves.
        a0, a1 = atoms[name].copy(), atoms[name].copy()
        a0.calc, a1.calc = BPNNCalculator(plain), BPNNCalculator(rep)
        assert a1.get_potential_energy() - a0.get_potential_energy() == pytest.approx(e_rep, rel=1e-12,
                                                                                      abs=1e-10)
        np.testing.assert_allclose(a1.get_forces() - a0.get_forces(), f_rep, rtol=1e-10, atol=1e-10)
        if e_rep > 0:
            assert np.abs(a1.get_stress() - a0.get_stress()).max() > 1e-4


def test_stress_of_the_baseline_is_its_strain_derivative(pair_models, atoms):
    """σ from the calculator against a finite-difference strain derivative of the energy, baseline included."""
    from bpnn_jax.calculators.ase import BPNNCalculator

    _, rep = pair_models
    a = atoms[COMPRESSED].copy()
    a.calc = BPNNCalculator(rep)
    stress = a.get_stress(voigt=False)
    delta = 1e-6
    for i, j in ((0, 0), (1, 2)):
        eps = np.zeros((3, 3))
        eps[i, j] = eps[j, i] = delta
        energies = []
        for sign in (1, -1):
            b = a.copy()
            b.set_cell(a.cell @ (np.eye(3) + sign * eps), scale_atoms=True)
            b.calc = BPNNCalculator(rep)
            energies.append(b.get_potential_energy())
        d_e = (energies[0] - energies[1]) / (2 * delta) / (2 if i != j else 1)
        assert stress[i, j] == pytest.approx(d_e / a.get_volume(), rel=1e-5, abs=1e-8)


def test_committee_save_reload_and_merge_keep_the_baseline(atoms, hosts, make_random_committee, tmp_path):
    from bpnn_jax.descriptors import SymmetryFunctionSet
    from bpnn_jax.model.ensemble import merge_committees

    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    hs = [hosts[n] for n in NAMES]
    plain = make_random_committee(hs, spec, members=2)["model"]
    config = plain.get_config()
    config.pop("name", None)
    with_rep = BPNN.from_config({**config, "repulsion": repulsion().to_config()})
    with_rep.set_weights(plain.get_weights())
    h = hosts[CONTACTS]
    inputs = collate([h], 1, bucket_size(h.n_atoms, ATOM_BUCKETS), h.slots, dtype=np.float64).inputs(
        plain.elements)
    e_rep, f_rep = host_terms(with_rep.repulsion, h)
    out0, out1 = plain(inputs), with_rep(inputs)
    np.testing.assert_allclose(np.asarray(out1["energy_members"] - out0["energy_members"]), e_rep, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(out1["forces_members"] - out0["forces_members"])[:, 0, :h.n_atoms],
                               np.broadcast_to(f_rep, (2, h.n_atoms, 3)), rtol=1e-10, atol=1e-10)
    with_rep.save(tmp_path / "rep.keras")
    back = load_model(tmp_path / "rep.keras")
    assert back.repulsion == with_rep.repulsion
    np.testing.assert_array_equal(np.asarray(back(inputs)["energy"]), np.asarray(out1["energy"]))
    merged = merge_committees([with_rep, back])
    assert merged.repulsion == with_rep.repulsion
    np.testing.assert_allclose(np.asarray(merged(inputs)["energy"]), np.asarray(out1["energy"]), rtol=1e-12)
    with pytest.raises(ModelError, match="pair baseline"):
        merge_committees([with_rep, plain])
    # Another run's fit of the same data agrees to solver round-off: merged; a different baseline is not.
    for factor, ok in ((1 + 1e-12, True), (1.01, False)):
        other = BPNN.from_config({**config, "repulsion": repulsion().with_coefficients(
            {k: tuple(factor * c for c in v) for k, v in COEFS.items()}).to_config()})
        other.set_weights(plain.get_weights())
        if ok:
            assert merge_committees([with_rep, other]).repulsion == with_rep.repulsion
        else:
            with pytest.raises(ModelError, match="pair baseline"):
                merge_committees([with_rep, other])


def test_lammps_program_includes_the_baseline(pair_models, atoms):
    from bpnn_jax.calculators.lammps import lammps_layout, neighbor_matrix_energy

    plain, rep = pair_models
    a = atoms[COMPRESSED]
    layout = lammps_layout(a, ("O", "Ti"), 6.5, max_atoms=2048, max_neighbors=160, rows=96)
    e_rep, _ = host_terms(rep.repulsion, prepare_structures([a], ("O", "Ti"), 6.5)[0])
    graph = SimpleNamespace(neighbors=jax.numpy.asarray(layout.neighbors),
                            num_neighbors=jax.numpy.asarray(layout.num_neighbors))
    totals = []
    for m in (plain, rep):
        e = neighbor_matrix_energy(m)(jax.numpy.asarray(layout.positions), jax.numpy.asarray(layout.species), graph)
        totals.append(float(np.sum(np.asarray(e)[:layout.nlocal])))
    assert totals[1] - totals[0] == pytest.approx(e_rep, rel=1e-10)


def _synthetic(hosts_list, rep, mu):
    """Copies of ``hosts_list`` whose energies and forces are the baseline's plus Σ n_s μ_s."""
    out = []
    for h in hosts_list:
        e, f = host_terms(rep, h)
        out.append(dataclasses.replace(h, energy=e + float(np.sum(np.asarray(mu)[h.species])), forces=f))
    return out


def test_fit_recovers_known_coefficients(hosts, data_dir):
    more = prepare_structures([read_xsf(data_dir / n) for n in ("structure7158.xsf", "structure5664.xsf",
                                                                "structure7056.xsf", "structure0001.xsf")],
                              ("O", "Ti"), 6.5)
    true = repulsion()
    data = _synthetic([hosts[n] for n in NAMES] + more, true, mu=(-4.0, -9.0))
    fitted, report = fit_repulsion(data, ("O", "Ti"), CUTOFFS, force_weight=0.01)
    assert report["structures_with_contacts"] == 5  # all but the thin cell and the crystal
    assert report["force_rms_ev_a_after"] < 1e-6 * report["force_rms_ev_a_before"]
    # The powers are nearly collinear over the few distances sampled (so the coefficients are not unique):
    # what must be recovered is what they predict.  Forces left: none; energies left: linear in the
    # composition (a pair with no net force on any atom trades with μ).
    rest = subtract_repulsion(data, fitted)
    assert max(np.abs(s.forces).max() for s in rest) < 1e-5
    comp = np.array([np.bincount(s.species, minlength=2) for s in rest], float)
    mu, *_ = np.linalg.lstsq(comp, [s.energy for s in rest], rcond=None)
    np.testing.assert_allclose(comp @ mu, [s.energy for s in rest], rtol=0, atol=1e-6)
    with pytest.raises(BPNNInputError, match="nothing to fit"):
        fit_repulsion([hosts[THIN]], ("O", "Ti"), {"Ti-Ti": 1.0})


def test_train_with_repulsion_fits_it_and_saves_it_in_the_model(data_dir, tmp_path, capsys):
    from bpnn_jax.cli import main

    # Compressed 6-atom cells and the 22-atom cells with short contacts (52 files; some numbers are held out).
    files = [str(p) for pattern in ("structure70[5-6]?.xsf", "structure56[4-7]?.xsf")
             for p in sorted(data_dir.glob(pattern))]
    run = tmp_path / "run"
    assert main(["train", *files, "--out", str(run), "--quiet", "--members", "2", "--hidden", "8,8",
                 "--ef-epochs", "2", "--descriptors", "artrith-urban", "--val-fraction", "0.2",
                 "--repulsion", "Ti-Ti:2.0,Ti-O:1.6,O-O:1.8"]) == 0
    fit = json.loads((run / "repulsion.json").read_text())
    assert fit["fit"]["structures_with_contacts"] > 5
    assert fit["fit"]["force_rms_ev_a_after"] < 0.6 * fit["fit"]["force_rms_ev_a_before"]
    model = load_model(run / "model.keras")
    assert model.repulsion == PairRepulsion.from_config(fit["repulsion"])
    assert set(model.repulsion.cutoffs) == {"Ti-Ti", "O-Ti", "O-O"}
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == round(0.2 * (len(split["train"]) + len(split["val"]) + len(split["test"])))
    capsys.readouterr()
    assert main(["train", *files[:3], "--out", str(tmp_path / "bad"), "--repulsion", "Ti-Ti=2"]) == 2
    assert "--repulsion" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # A refit on the test split too, on that model's baseline (not refitted): the same validation split,
    # the test structures trained on (and refused as a test set), and a model that merges with the first.
    refit = tmp_path / "refit"
    assert main(["train", *files, "--out", str(refit), "--quiet", "--members", "2", "--hidden", "8,8",
                 "--ef-epochs", "2", "--descriptors", "artrith-urban", "--val-fraction", "0.2",
                 "--repulsion-from", str(run / "model.keras"), "--train-on-test", "--member-seed", "1"]) == 0
    assert load_model(refit / "model.keras").repulsion == model.repulsion
    assert json.loads((refit / "repulsion.json").read_text())["from"] == str(run / "model.keras")
    again = json.loads((refit / "split.json").read_text())
    assert again["trained_on_test"] and not split["trained_on_test"] and again["val"] == split["val"]
    assert sorted(again["train"]) == sorted(split["train"] + split["test"]) and again["test"] == split["test"]
    capsys.readouterr()
    assert main(["evaluate", str(refit / "model.keras"), "--split", f"{refit}/split.json:test"]) == 2
    assert "trained on its test split" in capsys.readouterr().err
    assert main(["merge", str(run / "model.keras"), str(refit / "model.keras"), "--out", str(tmp_path / "m.keras")]) == 0
    assert load_model(tmp_path / "m.keras").members == 4
    assert main(["train", *files, "--out", str(tmp_path / "both"), "--quiet", "--members", "2", "--hidden", "8,8",
                 "--ef-epochs", "1", "--descriptors", "artrith-urban", "--repulsion", "Ti-Ti:2.0",
                 "--repulsion-from", str(run / "model.keras")]) == 2
    assert "not both" in capsys.readouterr().err
