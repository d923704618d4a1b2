"""A committee's calibrated uncertainty: which structures are likely to be predicted worst.

The members' energy spread per atom alone ranks the per-atom energy errors of held-out TiO2 structures
with Spearman ρ 0.35–0.43; it is mis-scaled across structure sizes (too large for small cells, too
small for large ones) and blind where the members agree on the energy but not on the forces. The
score

    u = s_E · N^a + w · s_F

with s_E the standard deviation of the members' energies per atom (eV/atom), N the atom count and
s_F the mean over atoms of the members' force spread (eV/Å), has two parameters chosen on
validation data (:func:`fit_uncertainty_calibration`): a (dimensionless) and w (eV/atom per eV/Å).
It ranks errors, it is not an error estimate: ``u`` is in eV/atom but only its order is calibrated.
The extrapolation threshold (``BPNN.uncertainty_threshold``) stays on s_E alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: Grids of the calibration: the size exponent a, and w in units of the validation data's
#: median s_E / median s_F (so that w's scale follows the data).
SIZE_EXPONENTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
FORCE_FACTORS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
#: Fewest validation structures a calibration is fitted on (below it ρ is noise).
MIN_STRUCTURES = 20


def uncertainty_score(energy_std_per_atom, n_atoms, force_std_mean, calibration: Mapping | None):
    """The calibrated score u (eV/atom) per structure; s_E itself without a calibration.

    Args:
        energy_std_per_atom: (n,) members' energy standard deviation per atom, eV/atom.
        n_atoms: (n,) atom counts.
        force_std_mean: (n,) mean per-atom force spread, eV/Å (None: no force term).
        calibration: ``{"size_exponent": a, "force_weight_ev_atom_per_ev_a": w}`` or None.

    Returns:
        (n,) float64 scores.
    """
    s_e = np.asarray(energy_std_per_atom, np.float64)
    if not calibration:
        return s_e
    u = s_e * np.asarray(n_atoms, np.float64) ** float(calibration["size_exponent"])
    w = float(calibration["force_weight_ev_atom_per_ev_a"])
    if w and force_std_mean is not None:
        u = u + w * np.asarray(force_std_mean, np.float64)
    return u


def fit_uncertainty_calibration(energy_std_per_atom, n_atoms, force_std_mean, abs_error_per_atom) -> dict | None:
    """The (a, w) of :func:`uncertainty_score` whose ranking of ``abs_error_per_atom`` is best (Spearman ρ).

    A grid search on validation structures (:data:`SIZE_EXPONENTS` × :data:`FORCE_FACTORS`); ties keep the
    simpler score (smaller a, then smaller w).  None with fewer than 20 structures (ρ would be noise) or
    without a spread.

    Returns:
        ``{"size_exponent": a, "force_weight_ev_atom_per_ev_a": w, "validation_spearman": ρ,
        "validation_spearman_energy_spread": ρ of s_E alone, "structures": n}``.
    """
    from scipy.stats import spearmanr

    s_e = np.asarray(energy_std_per_atom, np.float64)
    err = np.asarray(abs_error_per_atom, np.float64)
    n = np.asarray(n_atoms, np.float64)
    s_f = None if force_std_mean is None else np.asarray(force_std_mean, np.float64)
    if len(s_e) < MIN_STRUCTURES or np.ptp(s_e) == 0 or np.ptp(err) == 0:
        return None
    scale = 0.0
    if s_f is not None and np.median(s_f) > 0:
        scale = float(np.median(s_e) / np.median(s_f))
    best = None
    for a in SIZE_EXPONENTS:
        for f in FORCE_FACTORS if scale > 0 else (0.0,):
            cal = {"size_exponent": float(a), "force_weight_ev_atom_per_ev_a": float(f * scale)}
            u = uncertainty_score(s_e, n, s_f, cal)
            rho = float(spearmanr(u, err).statistic) if np.ptp(u) > 0 else -1.0
            if best is None or rho > best[0] + 1e-9:
                best = (rho, cal)
    rho, cal = best
    return {**cal, "validation_spearman": rho, "validation_spearman_energy_spread": float(spearmanr(s_e, err).statistic),
            "structures": int(len(s_e))}
