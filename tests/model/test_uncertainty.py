"""The committee's calibrated uncertainty score (:mod:`bpnn_jax.model.uncertainty`).

* the score is the documented formula, and the energy spread alone without a calibration;
* the calibration finds the size exponent and the force term that rank synthetic errors built from
  them, and does not depend on the units of the force spread;
* training stores it in the model and the saved model keeps it; ``evaluate`` reports every
  structure's score and its rank correlation with the errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from bpnn_jax.model.uncertainty import fit_uncertainty_calibration, uncertainty_score


def synthetic(seed=0, n=300):
    """Spreads and sizes, and errors that grow with s_E * sqrt(N) + 0.02 * s_F (eV/atom, eV/Å), noisy."""
    rng = np.random.default_rng(seed)
    s_e = rng.lognormal(np.log(2e-3), 0.6, n)
    size = rng.choice([6, 12, 24, 46, 95], n).astype(float)
    s_f = rng.lognormal(np.log(0.05), 0.6, n)
    err = (s_e * np.sqrt(size) + 0.02 * s_f) * rng.lognormal(0.0, 0.15, n)
    return s_e, size, s_f, err


def test_score_is_the_formula_and_the_energy_spread_without_a_calibration():
    s_e, size, s_f, _ = synthetic()
    np.testing.assert_array_equal(uncertainty_score(s_e, size, s_f, None), s_e)
    cal = {"size_exponent": 0.3, "force_weight_ev_atom_per_ev_a": 0.01}
    np.testing.assert_allclose(uncertainty_score(s_e, size, s_f, cal), s_e * size ** 0.3 + 0.01 * s_f, rtol=1e-15)
    np.testing.assert_allclose(uncertainty_score(s_e, size, None, cal), s_e * size ** 0.3, rtol=1e-15)


def test_calibration_recovers_what_ranks_the_errors_in_any_force_units():
    s_e, size, s_f, err = synthetic()
    cal = fit_uncertainty_calibration(s_e, size, s_f, err)
    assert cal["size_exponent"] == pytest.approx(0.5, abs=0.11)
    assert cal["force_weight_ev_atom_per_ev_a"] > 0
    assert cal["validation_spearman"] > cal["validation_spearman_energy_spread"] + 0.1
    assert cal["validation_spearman"] == pytest.approx(spearmanr(uncertainty_score(s_e, size, s_f, cal), err)[0])
    # The same data with forces in other units: the same ranking, the weight rescaled.
    cal_scaled = fit_uncertainty_calibration(s_e, size, 10.0 * s_f, err)
    assert cal_scaled["size_exponent"] == cal["size_exponent"]
    assert cal_scaled["force_weight_ev_atom_per_ev_a"] == pytest.approx(cal["force_weight_ev_atom_per_ev_a"] / 10)
    # It generalises: a second draw is ranked as well as the one it was fitted on.
    s_e2, size2, s_f2, err2 = synthetic(seed=1)
    assert spearmanr(uncertainty_score(s_e2, size2, s_f2, cal), err2)[0] > cal["validation_spearman"] - 0.05
    # Too few structures to choose anything.
    assert fit_uncertainty_calibration(s_e[:19], size[:19], s_f[:19], err[:19]) is None


def test_evaluate_reports_the_score_and_the_model_keeps_its_calibration(make_random_committee, tmp_path):
    import keras

    from bpnn_jax.descriptors import SymmetryFunctionSet
    from bpnn_jax.descriptors.batch import prepare_structures
    from bpnn_jax.io import read_structures, sample_data_dir
    from bpnn_jax.training.committee_stage import calibrate_uncertainty
    from bpnn_jax.training.evaluation import evaluate_structures

    atoms = read_structures([sample_data_dir()], require_energy=True)[0][:40]
    spec = SymmetryFunctionSet.imbalzano(["O", "Ti"], 5.0)
    hosts = prepare_structures(atoms, ["O", "Ti"], spec.cutoff)
    model = make_random_committee(hosts, spec, members=3, seed=4)["model"]
    cal = calibrate_uncertainty(model, hosts, verbose=0)
    assert cal is not None and cal["structures"] == 40
    model.uncertainty_calibration = cal
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.uncertainty_calibration == cal
    report = evaluate_structures(loaded, atoms, max_energy=None)
    rows = report["per_structure"]
    n = np.array([r["n_atoms"] for r in rows], float)
    expected = uncertainty_score(np.array([r["energy_std_ev"] for r in rows]) / n, n,
                                 np.array([r["force_std_mean_ev_a"] for r in rows]), cal)
    np.testing.assert_allclose([r["uncertainty_ev_atom"] for r in rows], expected, rtol=1e-6)
    err = np.abs(np.array([r["energy_pred_ev"] - r["energy_dft_ev"] for r in rows])) / n
    assert report["all"]["uncertainty_error_spearman"] == pytest.approx(spearmanr(expected, err)[0], abs=1e-6)
