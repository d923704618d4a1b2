"""Evaluation of a model on labelled structures: metrics, residual statistics, plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..descriptors.batch import prepare_structures
from ..io.atomic import atomic_write

__all__ = ["energy_metrics", "evaluate_structures", "spread_error_spearman", "stress_metrics", "write_plots",
           "write_report"]


def stress_metrics(pred_gpa, true_gpa) -> dict:
    """stress_rmse_gpa, stress_mae_gpa, n_stress_components of (n, 6) stresses in GPa (NaN rows skipped)."""
    pred = np.asarray(pred_gpa, np.float64).reshape(-1, 6)
    true = np.asarray(true_gpa, np.float64).reshape(-1, 6)
    ok = np.all(np.isfinite(pred), axis=1) & np.all(np.isfinite(true), axis=1)
    if not ok.any():
        return {}
    d = pred[ok] - true[ok]
    return {"stress_rmse_gpa": float(np.sqrt(np.mean(d**2))), "stress_mae_gpa": float(np.mean(np.abs(d))),
            "n_stress_components": int(d.size)}


def energy_metrics(pred_total_ev, true_total_ev, n_atoms, pred_forces=None, true_forces=None) -> dict:
    """Accuracy metrics.

    Args:
        pred_total_ev, true_total_ev: (n,) total energies, eV.
        n_atoms: (n,) atoms per structure.
        pred_forces, true_forces: optional lists of (n_i, 3) arrays, eV/Å.

    Returns:
        dict with n_structures, energy_rmse_mev_atom, energy_mae_mev_atom,
        energy_rmse_ev (total-energy RMSE, the original study's unit),
        residual_mean_mev_atom, residual_std_mev_atom,
        fraction_beyond_1p5_sigma, max_abs_error_mev_atom and, with forces,
        force_rmse_ev_a, force_mae_ev_a, n_force_components.
    """
    pred = np.asarray(pred_total_ev, np.float64)
    true = np.asarray(true_total_ev, np.float64)
    n = np.asarray(n_atoms, np.float64)
    if len(pred) == 0:
        return {"n_structures": 0}
    d_atom = (pred - true) / n
    sigma = float(d_atom.std())
    out = {
        "n_structures": int(len(pred)),
        "n_atoms": int(n.sum()),
        "energy_rmse_mev_atom": 1e3 * float(np.sqrt(np.mean(d_atom**2))),
        "energy_mae_mev_atom": 1e3 * float(np.mean(np.abs(d_atom))),
        "energy_rmse_ev": float(np.sqrt(np.mean((pred - true) ** 2))),
        "residual_mean_mev_atom": 1e3 * float(d_atom.mean()),
        "residual_std_mev_atom": 1e3 * sigma,
        "fraction_beyond_1p5_sigma": float(np.mean(np.abs(d_atom - d_atom.mean()) > 1.5 * sigma)) if sigma > 0 else 0.0,
        "max_abs_error_mev_atom": 1e3 * float(np.max(np.abs(d_atom))),
    }
    if pred_forces is not None and true_forces is not None:
        pf = np.concatenate([np.ravel(f) for f in pred_forces])
        tf = np.concatenate([np.ravel(f) for f in true_forces])
        out.update(
            force_rmse_ev_a=float(np.sqrt(np.mean((pf - tf) ** 2))),
            force_mae_ev_a=float(np.mean(np.abs(pf - tf))),
            n_force_components=int(pf.size),
        )
    return out


def spread_error_spearman(spread, abs_error) -> float | None:
    """Spearman rank correlation of a committee's spread with the absolute errors (None below 3 values).

    Args:
        spread: (n,) per-atom energy spread of the committee, eV/atom.
        abs_error: (n,) absolute per-atom energy errors, eV/atom.

    1 means the spread ranks the structures exactly as their errors; 0, not
    at all.
    """
    from scipy.stats import spearmanr

    spread, abs_error = np.asarray(spread, np.float64), np.asarray(abs_error, np.float64)
    if len(spread) < 3 or np.ptp(spread) == 0 or np.ptp(abs_error) == 0:
        return None
    return float(spearmanr(spread, abs_error).statistic)


def evaluate_structures(model, atoms_list: Sequence, *, forces=True, max_energy: float | None = 1.0,
                        progress=False, dtype=None) -> dict:
    """Predict and score labelled structures.

    Args:
        model: a :class:`bpnn_jax.model.BPNN`.
        atoms_list: ``ase.Atoms`` with energies (and forces) attached.
        forces: also predict and score forces.
        max_energy: also report metrics on the structures whose DFT
            cohesive energy (relative to the model's references) is at most
            this many eV/atom (aenet's MAXENERGY); None skips that.
        progress: progress bar.
        dtype: float dtype of the inputs (None: the model's compute dtype).

    Returns:
        dict with "all" (metrics), "within_max_energy" (metrics, when
        max_energy is set), "max_energy", and "per_structure" (list of dicts:
        file, n_atoms, energy_dft_ev, energy_pred_ev, cohesive_dft_ev_atom
        and, for a committee, energy_std_ev (standard deviation of the
        members' total energies, eV) and, with forces, force_std_max_ev_a
        and force_std_mean_ev_a (largest and mean per-atom force spread)).
        When structures carry a stress (ASE's results, eV/Å³), the metrics
        also hold stress_rmse_gpa, stress_mae_gpa over the structures that
        have one, and their rows stress_dft_gpa / stress_pred_gpa (Voigt xx,
        yy, zz, yz, xz, xy; ASE's sign, tensile positive).  For a
        committee the metrics hold spread_error_spearman
        (:func:`spread_error_spearman` of the per-atom energy spread and
        absolute error over the structures).
    """
    from ..model.bpnn import total_energy
    from ..units import EV_PER_A3_IN_GPA
    from .predict import predict_stress, predict_structures

    hs = prepare_structures(atoms_list, model.elements, model.spec.cutoff, progress=progress)
    dtype = np.dtype(dtype or model.compute_dtype or "float32")
    e_rel, f_pred, e_std, f_std = predict_structures(model, hs, forces=forces, progress=progress,
                                                     uncertainty=True, dtype=dtype)
    symbols = [a.get_chemical_symbols() for a in atoms_list]
    e_pred = total_energy(model, e_rel, symbols)
    e_true = np.array([a.info["energy"] for a in atoms_list], np.float64)
    n = np.array([len(a) for a in atoms_list])
    f_true = None
    if forces and all(a.calc is not None and a.calc.results.get("forces") is not None for a in atoms_list):
        f_true = [np.asarray(a.calc.results["forces"]) for a in atoms_list]
    else:
        f_pred = None if not forces else f_pred
    refs = model.reference_energies
    cohesive = (e_true - np.array([math.fsum(refs.get(s, 0.0) for s in sy) for sy in symbols])) / n
    s_true = np.full((len(atoms_list), 6), np.nan)
    for k, h in enumerate(hs):  # prepare_structures read each periodic structure's stress (Voigt, eV/Å³)
        if h.stress is not None:
            s_true[k] = h.stress * EV_PER_A3_IN_GPA
    has_stress = np.all(np.isfinite(s_true), axis=1)
    s_pred = np.full_like(s_true, np.nan)
    if has_stress.any():
        sel = np.flatnonzero(has_stress)
        s_pred[sel] = predict_stress(model, [hs[k] for k in sel], dtype=dtype, progress=progress)
    report = {"all": energy_metrics(e_pred, e_true, n, f_pred if f_true else None, f_true)}
    report["all"].update(stress_metrics(s_pred, s_true))
    if max_energy is not None:
        keep = cohesive <= max_energy
        report["max_energy"] = max_energy
        report["within_max_energy"] = energy_metrics(
            e_pred[keep], e_true[keep], n[keep],
            [f for f, k in zip(f_pred, keep) if k] if (f_true and f_pred) else None,
            [f for f, k in zip(f_true, keep) if k] if f_true else None,
        )
        report["within_max_energy"].update(stress_metrics(s_pred[keep], s_true[keep]))
    rows = []
    for k, a in enumerate(atoms_list):
        row = dict(file=a.info.get("file", str(k)), n_atoms=int(n[k]), energy_dft_ev=float(e_true[k]),
                   energy_pred_ev=float(e_pred[k]), cohesive_dft_ev_atom=float(cohesive[k]))
        if has_stress[k]:
            row["stress_dft_gpa"] = s_true[k].tolist()
            row["stress_pred_gpa"] = s_pred[k].tolist()
        if getattr(model, "members", 1) > 1:
            row["energy_std_ev"] = float(e_std[k])
            if f_std is not None and len(f_std[k]):
                row["force_std_max_ev_a"] = float(np.max(f_std[k]))
                row["force_std_mean_ev_a"] = float(np.mean(f_std[k]))
        rows.append(row)
    if getattr(model, "members", 1) > 1:
        abs_err = np.abs(e_pred - e_true) / n
        spread = np.asarray(e_std, np.float64) / n
        report["all"]["spread_error_spearman"] = spread_error_spearman(spread, abs_err)
        calibration = getattr(model, "uncertainty_calibration", None)
        if calibration:
            from ..model.uncertainty import uncertainty_score

            f_mean = None if not forces else np.array([float(np.mean(f)) for f in f_std])
            score = uncertainty_score(spread, n, f_mean, calibration)
            for row, u in zip(rows, score):
                row["uncertainty_ev_atom"] = float(u)
            report["all"]["uncertainty_error_spearman"] = spread_error_spearman(score, abs_err)
        if max_energy is not None:
            report["within_max_energy"]["spread_error_spearman"] = spread_error_spearman(spread[keep], abs_err[keep])
    report["per_structure"] = rows
    report["_forces"] = (f_pred, f_true)
    return report


def write_report(report: dict, path) -> dict:
    """Write the JSON report (metrics at top level for ``all``), atomically; return what was written."""
    out = {**report["all"]}
    for key in ("max_energy", "within_max_energy"):
        if key in report:
            out[key] = report[key]
    out["per_structure"] = report["per_structure"]
    with atomic_write(path) as fh:
        json.dump(out, fh, indent=2)
    return out


def write_plots(report: dict, out_dir, history_csv=None) -> list[Path]:
    """PNG plots: energy parity, force parity, residual histogram, energy distribution, history.

    Args:
        report: output of :func:`evaluate_structures`.
        out_dir: directory for the PNG files.
        history_csv: optional training ``history.csv``.

    Returns:
        Paths of the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report["per_structure"]
    n = np.array([r["n_atoms"] for r in rows], float)
    et = np.array([r["energy_dft_ev"] for r in rows]) / n
    ep = np.array([r["energy_pred_ev"] for r in rows]) / n
    written = []

    def save(fig, name):
        p = out_dir / name
        fig.tight_layout()
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)

    m = report["all"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(et, ep, s=4, alpha=0.6)
    lo, hi = min(et.min(), ep.min()), max(et.max(), ep.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("DFT energy (eV/atom)")
    ax.set_ylabel("BPNN energy (eV/atom)")
    ax.set_title(f"RMSE {m['energy_rmse_mev_atom']:.2f} meV/atom (n={m['n_structures']})")
    save(fig, "parity_energy.png")

    f_pred, f_true = report.get("_forces", (None, None))
    if f_pred is not None and f_true is not None:
        pf = np.concatenate([np.ravel(f) for f in f_pred])
        tf = np.concatenate([np.ravel(f) for f in f_true])
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(tf, pf, s=2, alpha=0.3)
        lim = max(np.abs(tf).max(), np.abs(pf).max())
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set_xlabel("DFT force component (eV/Å)")
        ax.set_ylabel("BPNN force component (eV/Å)")
        ax.set_title(f"RMSE {m.get('force_rmse_ev_a', float('nan')):.3f} eV/Å")
        save(fig, "parity_forces.png")

    res = 1e3 * (ep - et)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(res, bins=80)
    s = res.std()
    for k in (-1.5, 1.5):
        ax.axvline(res.mean() + k * s, color="r", ls="--", lw=0.8)
    ax.set_xlabel("residual (meV/atom)")
    ax.set_ylabel("structures")
    ax.set_title(f"mean {res.mean():.2f}, std {s:.2f} meV/atom; beyond 1.5σ: {m['fraction_beyond_1p5_sigma']:.1%}")
    save(fig, "residuals.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    coh = np.array([r["cohesive_dft_ev_atom"] for r in rows])
    ax.hist(coh, bins=80)
    ax.set_xlabel("DFT cohesive energy (eV/atom)")
    ax.set_ylabel("structures")
    ax.set_yscale("log")
    save(fig, "energy_distribution.png")

    if history_csv is not None and Path(history_csv).exists():
        with open(history_csv, newline="") as fh:
            hist = list(csv.DictReader(fh))
        if hist:
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            x = np.arange(1, len(hist) + 1)
            keys = [k for k in ("energy_rmse_mev_atom", "val_energy_rmse_mev_atom",
                                "val_committee_energy_rmse_mev_atom") if k in hist[0]]
            for key in keys:
                axes[0].plot(x, [float(h.get(key) or "nan") for h in hist], label=key)
            axes[0].set_yscale("log")
            axes[0].set_xlabel("epoch (both stages)")
            axes[0].set_ylabel("meV/atom")
            axes[0].legend()
            keys = [k for k in ("force_rmse_ev_a", "val_force_rmse_ev_a", "val_committee_force_rmse_ev_a")
                    if k in hist[0]]
            for key in keys:
                axes[1].plot(x, [float(h.get(key) or "nan") for h in hist], label=key)
            axes[1].set_xlabel("epoch (both stages)")
            axes[1].set_ylabel("eV/Å")
            axes[1].legend()
            save(fig, "history.png")
    return written
