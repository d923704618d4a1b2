"""Tests of merged committees and combined descriptor sets (float64).

* a CombinedDescriptors set's values and Jacobians are its parts', side by
  side; it round-trips through its config; parts must share elements;
* a committee merged from committees on different descriptor sets (and
  different energy shifts and scales) gives every member's energy and
  forces exactly as before: its mean is the mean over all members, its
  spread their standard deviation; it saves and reloads; the Jacobian path
  (E+F training) agrees with its autodiff forces;
* incompatible models are refused with the reason; ``merge`` on the command
  line calibrates the threshold by the training rule.
"""

from __future__ import annotations

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (selects the JAX backend, enables float64)
import jax

from bpnn_jax.training import jacobian as jt
from bpnn_jax.descriptors.batch import collate, prepare_structures
from bpnn_jax.descriptors.chebyshev import ChebyshevBasis
from bpnn_jax.descriptors import (CombinedDescriptors, SymmetryFunctionSet, batch_descriptor_jacobian,
                                  batch_descriptors, descriptor_from_config)
from bpnn_jax.model.ensemble import merge_committees
from bpnn_jax.errors import ModelError
from bpnn_jax.descriptors.featurize import descriptor_jacobians
from bpnn_jax.io import REFERENCE_ENERGIES_TIO2, read_xsf
from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, bucket_size
from bpnn_jax.training import featurize_host, predict_structures

NAMES = ("structure1632.xsf", "structure0001.xsf", "structure7513.xsf")  # 6, 24 and 95 atoms


def _sets():
    return (SymmetryFunctionSet.artrith_urban(("O", "Ti")),
            ChebyshevBasis.aenet(("O", "Ti"), radial_cutoff=7.0, radial_order=8, angular_order=3))


@pytest.fixture(scope="module")
def models(data_dir, make_random_committee):
    """Two float64 committees (3 and 2 members) on different sets, with different energy shifts and scales."""
    atoms = [read_xsf(data_dir / n) for n in NAMES]
    out = []
    for k, (spec, members, scale) in enumerate(zip(_sets(), (3, 2), (0.5, 0.8))):
        hosts = prepare_structures(atoms, spec.elements, spec.cutoff, energy_offsets=REFERENCE_ENERGIES_TIO2)
        out.append(make_random_committee(hosts, spec, members=members, seed=10 + k, energy_scale=scale,
                                         shift_offset=0.3 * k)["model"])
    return atoms, out


def test_combined_set_is_its_parts_side_by_side(data_dir):
    parts = _sets()
    combined = CombinedDescriptors(parts)
    assert combined.n_functions == 70 + 2 * (9 + 4) and combined.cutoff == 7.0
    assert combined.column_ranges() == [(0, 70), (70, 96)]
    assert descriptor_from_config(combined.to_config()) == combined
    cols = combined.columns()
    assert [c["part"] for c in cols] == [0] * 70 + [1] * 26 and {c["rc"] for c in cols[:70]} == {6.5}
    atoms = read_xsf(data_dir / NAMES[0])
    (h,) = prepare_structures([atoms], combined.elements, combined.cutoff)
    batch = collate([h], 1, h.n_atoms, h.slots, dtype=np.float64)
    got = np.asarray(batch_descriptors(batch, combined))
    jac = np.asarray(batch_descriptor_jacobian(batch, combined))
    for spec, (a, b) in zip(parts, combined.column_ranges()):
        # each part on its own neighbour slots (its own cut-off) gives the same columns
        (hp,) = prepare_structures([atoms], spec.elements, spec.cutoff)
        bp = collate([hp], 1, hp.n_atoms, hp.slots, dtype=np.float64)
        np.testing.assert_allclose(got[..., a:b], np.asarray(batch_descriptors(bp, spec)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(jac[..., a:b, :], np.asarray(batch_descriptor_jacobian(bp, spec)), rtol=1e-11,
                                   atol=1e-12)
    with pytest.raises(ValueError, match="same elements"):
        CombinedDescriptors((parts[0], ChebyshevBasis.aenet(("Ti", "O"))))


def _member_outputs(model, atoms):
    hosts = prepare_structures(atoms, model.elements, model.spec.cutoff)
    out = []
    for h in hosts:
        inputs = collate([h], 1, bucket_size(h.n_atoms, ATOM_BUCKETS), h.slots, dtype=np.float64).inputs(
            model.elements)
        res = model(inputs)
        out.append((np.asarray(res["energy_members"])[:, 0], np.asarray(res["forces_members"])[:, 0, :h.n_atoms]))
    return out


def test_merged_committee_keeps_every_member_exactly(models, tmp_path):
    atoms, (a, b) = models
    merged = merge_committees([a, b])
    assert merged.members == 5 and isinstance(merged.spec, CombinedDescriptors)
    assert merged.spec.parts == (a.spec, b.spec)
    out_a, out_b, out_m = (_member_outputs(m, atoms) for m in (a, b, merged))
    for (ea, fa), (eb, fb), (em, fm) in zip(out_a, out_b, out_m):
        np.testing.assert_allclose(em, np.concatenate([ea, eb]), rtol=1e-12)
        np.testing.assert_allclose(fm, np.concatenate([fa, fb]), rtol=1e-9, atol=1e-10 * np.abs(fa).max())
    # the committee's mean and spread are those of all members, as predict reports them
    hosts = prepare_structures(atoms, merged.elements, merged.spec.cutoff)
    e, _, e_std, _ = predict_structures(merged, hosts, forces=False, dtype=np.float64, uncertainty=True)
    members = np.array([np.concatenate([ea, eb]) for (ea, _), (eb, _) in zip(out_a, out_b)])
    np.testing.assert_allclose(e, members.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(e_std, members.std(axis=1), rtol=1e-9)
    path = tmp_path / "merged.keras"
    merged.save(path)
    from bpnn_jax.model import load_model

    again = load_model(path)
    assert again.spec == merged.spec and again.members == 5
    (e1, f1), = _member_outputs(again, atoms[:1])
    np.testing.assert_array_equal(e1, out_m[0][0])
    np.testing.assert_array_equal(f1, out_m[0][1])


def test_a_merged_model_merges_again_as_its_parts(models, make_random_committee, data_dir):
    """merge([merge([a, b]), c]) = merge([a, b, c]): the merged model's parts are reused, not nested; c on
    a's set with a's statistics shares a's columns."""
    atoms, (a, b) = models
    spec = a.spec
    hosts = prepare_structures(atoms, spec.elements, spec.cutoff, energy_offsets=REFERENCE_ENERGIES_TIO2)
    c = make_random_committee(hosts, spec, members=2, seed=42)["model"]
    c.set_statistics(*(np.asarray(getattr(a, n).value) for n in
                       ("sf_mean", "sf_std", "sf_min", "sf_max", "energy_shift", "energy_scale")))
    twice = merge_committees([merge_committees([a, b]), c])
    once = merge_committees([a, b, c])
    assert twice.members == once.members == 7 and twice.spec == once.spec
    assert twice.spec.parts == (a.spec, b.spec)  # c shares a's columns
    out_c = _member_outputs(c, atoms)
    for (e2, f2), (e1, f1), (ec, fc) in zip(_member_outputs(twice, atoms), _member_outputs(once, atoms), out_c):
        np.testing.assert_allclose(e2, e1, rtol=1e-12)
        np.testing.assert_allclose(f2, f1, rtol=1e-9, atol=1e-10 * np.abs(f1).max())
        np.testing.assert_allclose(e2[5:], ec, rtol=1e-12)  # c's members exactly as alone


def test_a_set_standardised_otherwise_shares_its_columns(models, make_random_committee):
    """c on a's set, standardised by other data (as a committee trained on more structures is): it reads
    a's columns, a's standardisation folded into its first layer, and every member computes exactly what
    it did alone; the shared part's range (extrapolation check) is the union of both."""
    atoms, (a, b) = models
    hosts = prepare_structures(atoms[:2], a.spec.elements, a.spec.cutoff, energy_offsets=REFERENCE_ENERGIES_TIO2)
    c = make_random_committee(hosts, a.spec, members=2, seed=43, energy_scale=0.7)["model"]
    assert not np.allclose(np.asarray(a.sf_mean.value), np.asarray(c.sf_mean.value))
    assert not np.allclose(np.asarray(a.sf_std.value), np.asarray(c.sf_std.value))
    merged = merge_committees([a, b, c])
    assert merged.members == 7 and merged.spec.parts == (a.spec, b.spec)  # no third part
    out_a, out_b, out_c = (_member_outputs(m, atoms) for m in (a, b, c))
    for (ea, fa), (eb, fb), (ec, fc), (em, fm) in zip(out_a, out_b, out_c, _member_outputs(merged, atoms)):
        np.testing.assert_allclose(em, np.concatenate([ea, eb, ec]), rtol=1e-12)
        np.testing.assert_allclose(fm, np.concatenate([fa, fb, fc]), rtol=1e-9, atol=1e-10 * np.abs(fc).max())
    lo, hi = (np.asarray(getattr(merged, n).value)[:, :70] for n in ("sf_min", "sf_max"))
    np.testing.assert_array_equal(lo, np.minimum(np.asarray(a.sf_min.value), np.asarray(c.sf_min.value)))
    np.testing.assert_array_equal(hi, np.maximum(np.asarray(a.sf_max.value), np.asarray(c.sf_max.value)))


def test_selected_members_are_exactly_those_members(models):
    """select_members undoes a merge: b's members alone on b's set only (a's part dropped); any order."""
    from bpnn_jax.model.ensemble import select_members

    atoms, (a, b) = models
    merged = merge_committees([a, b])
    only_b = select_members(merged, [3, 4])
    assert only_b.members == 2 and only_b.spec == b.spec  # the part no kept member reads is gone
    mixed = select_members(merged, [4, 0])
    assert mixed.spec == merged.spec
    for (eb, fb), (ea, fa), (e1, f1), (e2, f2) in zip(*(_member_outputs(m, atoms) for m in (b, a, only_b, mixed))):
        np.testing.assert_allclose(e1, eb, rtol=1e-12)
        np.testing.assert_allclose(f1, fb, rtol=1e-9, atol=1e-10 * np.abs(fb).max())
        np.testing.assert_allclose(e2, [eb[1], ea[0]], rtol=1e-12)
    for bad in ([], [0, 0], [5], [-1]):
        with pytest.raises(ModelError, match="distinct indices"):
            select_members(merged, bad)


def test_merged_committee_jacobian_forces_equal_autodiff(models):
    """The merged model trains and evaluates on the Jacobian path too (its combined Jacobians)."""
    atoms, (a, b) = models
    merged = merge_committees([a, b])
    hosts = prepare_structures(atoms, merged.elements, merged.spec.cutoff, energy_offsets=REFERENCE_ENERGIES_TIO2)
    sf = featurize_host(hosts, merged.spec, dtype=np.float64)
    jac = descriptor_jacobians(hosts, merged.spec, dtype=np.float64)
    groups = jt.group_by_size(sf, [h.species for h in hosts], [h.energy for h in hosts], [h.forces for h in hosts],
                              tuple(jac), dtype=np.float64)
    params = jt.params_from_model(merged)
    st = {k: np.asarray(getattr(merged, k).value, np.float64)
          for k in ("sf_mean", "sf_std", "energy_shift", "energy_scale")}
    ref = _member_outputs(merged, atoms)  # autodiff forces of the Keras model
    for g in groups.arrays:
        out = jt.committee_outputs(params, st, g["sf"], g["species"], g["mask"], "tanh", g["jac"])
        for j, k in enumerate(g["index"]):
            n = hosts[k].n_atoms
            f_ref = ref[k][1]
            assert np.max(np.abs(np.asarray(out["forces"])[:, j, :n] - f_ref)) <= 1e-9 * np.abs(f_ref).max()


def test_models_trained_with_dropout_merge_as_without(models):
    """Dropout is a training setting the model records: a committee trained with it merges like the same
    weights without it."""
    atoms, (a, b) = models
    cfg = jt.CommitteeConfig(members=b.members, hidden=b.hidden, activation=b.activation, dropout=0.1)
    dropped = jt.to_model(jt.params_from_model(b), jt.stats_from_model(b), b.spec, cfg, REFERENCE_ENERGIES_TIO2,
                          dtype="float64")
    assert dropped.dropout == 0.1
    for (e1, f1), (e2, f2) in zip(_member_outputs(merge_committees([a, dropped]), atoms[:1]),
                                  _member_outputs(merge_committees([a, b]), atoms[:1])):
        np.testing.assert_array_equal(e1, e2)
        np.testing.assert_array_equal(f1, f2)


def test_incompatible_models_are_refused(models):
    _, (a, b) = models
    with pytest.raises(ModelError, match="at least two"):
        merge_committees([a])
    other = jt.to_model(jt.init_params(jax.random.PRNGKey(0), 2, 2, b.spec.n_functions, (8, 4), "float64"),
                        {k: np.asarray(getattr(b, k).value) for k in
                         ("sf_mean", "sf_std", "sf_min", "sf_max", "energy_shift", "energy_scale")},
                        b.spec, jt.CommitteeConfig(members=2, hidden=(8, 4)), REFERENCE_ENERGIES_TIO2)
    with pytest.raises(ModelError, match="hidden"):
        merge_committees([a, other])
    shifted = merge_committees([a, b])
    shifted.reference_energies = {"O": 0.0, "Ti": 0.0}
    with pytest.raises(ModelError, match="reference energies"):
        merge_committees([a, shifted])


def test_merge_cli_calibrates_the_threshold_by_the_training_rule(models, data_dir, tmp_path, capsys):
    from bpnn_jax.cli import main
    from bpnn_jax.model import load_model
    from bpnn_jax.training.jacobian import THRESHOLD_FACTOR

    atoms, (a, b) = models
    pa, pb, out = tmp_path / "a.keras", tmp_path / "b.keras", tmp_path / "m.keras"
    a.save(pa)
    b.save(pb)
    files = [str(data_dir / n) for n in NAMES]
    assert main(["merge", str(pa), str(pb), "--out", str(out), "--calibrate", *files]) == 0
    assert "5 members" in capsys.readouterr().out
    merged = load_model(out)
    hosts = prepare_structures(atoms, merged.elements, merged.spec.cutoff)
    _, _, e_std, _ = predict_structures(merged, hosts, forces=False, uncertainty=True)
    expected = THRESHOLD_FACTOR * np.percentile(e_std / np.array([h.n_atoms for h in hosts]), 99)
    assert merged.uncertainty_threshold == pytest.approx(expected, rel=1e-6)
    # --split without :NAME reads the run's validation part
    import json

    (tmp_path / "split.json").write_text(json.dumps({"train": files[:1], "val": files, "test": files[:1]}))
    assert main(["merge", str(pa), str(pb), "--out", str(out), "--split", str(tmp_path / "split.json")]) == 0
    assert load_model(out).uncertainty_threshold == merged.uncertainty_threshold
    assert main(["merge", str(pa), "--out", str(out)]) == 2
    assert "--members" in capsys.readouterr().err
    # --members: 1-based ranges of the merged committee; one MODEL is enough
    sub = tmp_path / "sub.keras"
    assert main(["merge", str(pa), str(pb), "--members", "4-5", "--out", str(sub)]) == 0
    assert load_model(sub).members == 2 and load_model(sub).spec == b.spec
    assert main(["merge", str(pa), "--members", "1,3", "--out", str(sub)]) == 0
    assert load_model(sub).members == 2
    capsys.readouterr()
    assert main(["merge", str(pa), "--members", "2-4", "--out", str(sub)]) == 2
    assert "from 1 to 3" in capsys.readouterr().err


def test_tio2_is_tio2_v8_refit_on_the_same_baseline():
    """The shipped tio2 (tio2_v8's recipe on more data) keeps tio2_v8's pair baseline and descriptor sets
    exactly; all 15 members are other networks (trained again), each half reading its own columns."""
    from bpnn_jax.model import load_model

    t, r = load_model("tio2_v8"), load_model("tio2")
    assert r.members == t.members == 15 and r.spec == t.spec and r.repulsion == t.repulsion
    assert r.hidden == t.hidden and r.uncertainty_threshold is not None
    for net_t, net_r in zip(t.nets, r.nets):
        (Wt, bt), (Wr, br) = net_t.member_weights(), net_r.member_weights()
        for a, b in zip(Wt + bt, Wr + br):
            assert a.shape == b.shape and not np.any(np.all(np.isclose(a, b), axis=tuple(range(1, a.ndim))))
        assert not np.any(Wr[0][5:, :96]) and not np.any(Wr[0][:5, 96:])  # each half reads its own columns
