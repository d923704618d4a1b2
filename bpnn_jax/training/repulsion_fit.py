"""The repulsion stage: fit the short-range pair baseline (:mod:`bpnn_jax.model.repulsion`) to the
training data and take it out of the targets the networks learn."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from ..descriptors.batch import HostStructure
from ..errors import BPNNInputError
from ..model.repulsion import DEFAULT_POWERS, PairRepulsion, parse_pair_cutoffs
from .run_state import write_json


def _geometry(rep: PairRepulsion, s: HostStructure) -> tuple:
    """The arguments of the baseline's host functions for ``s``, whose neighbour list must reach its cut-offs."""
    nl = s.nl
    if nl.cutoff < rep.max_cutoff:
        raise BPNNInputError(f"{s.name}: the neighbour list's cut-off {nl.cutoff} Å is shorter than the "
                             f"repulsion's {rep.max_cutoff} Å")
    return s.positions, s.cell, s.species, nl.centers, nl.neighbors, nl.shifts


def fit_repulsion(structures: Sequence[HostStructure], elements: Sequence[str], cutoffs: dict, *,
                  force_weight: float = 0.01, powers: Sequence[int] = DEFAULT_POWERS) -> tuple[PairRepulsion, dict]:
    """Fit the pair baseline's coefficients to energies and forces, in float64.

    Bounded linear least squares (coefficients ≥ 0, so the baseline is
    repulsive everywhere) over per-atom energy rows of every structure,
    (E - e·c - Σ_s n_s μ_s) / n with free per-element constants μ (which
    absorb the mean bonding energy and are discarded: the networks' energy
    shift takes their place), and force rows √w (F - f·c) for the atoms
    that have a pair inside a cut-off.

    Args:
        structures: training structures with energies (relative to the
            references, eV) and forces (eV/Å).
        elements: the model's elements.
        cutoffs: {"A-B": rc} Å per element pair.
        force_weight: w, the weight of a squared force error (eV/Å)²
            relative to a squared per-atom energy error (eV/atom)².
        powers: the basis powers.

    Returns:
        ``(repulsion, report)``: the fitted baseline, and a dict with the
        number of structures and pairs inside the cut-offs, the energy and
        force RMS before and after subtracting it over those structures.

    Raises:
        BPNNInputError: structures without energies or forces, or no pair
            inside any cut-off (nothing to fit).
    """
    from scipy.optimize import lsq_linear

    elements = tuple(elements)
    cutoffs = parse_pair_cutoffs(cutoffs, elements)
    rep = PairRepulsion(elements, cutoffs, {}, tuple(powers))
    P, K, S = len(cutoffs), len(rep.powers), len(elements)
    e_rows, comp, e_target, f_rows, f_target = [], [], [], [], []
    touched = []
    for s in structures:
        if s.energy is None or s.forces is None:
            raise BPNNInputError(f"{s.name}: the repulsion fit needs energies and forces")
        e, f = rep.host_design(*_geometry(rep, s))
        n = s.n_atoms
        e_rows.append(e.reshape(-1) / n)
        comp.append(np.bincount(s.species, minlength=S) / n)
        e_target.append(s.energy / n)
        if np.any(e):
            touched.append(len(e_rows) - 1)
            f = f.reshape(n * 3, P * K)
            rows = np.any(f != 0, axis=1)
            f_rows.append(f[rows])
            f_target.append(np.asarray(s.forces, np.float64).reshape(-1)[rows])
    if not touched:
        raise BPNNInputError(f"no pair of atoms in {len(structures)} structures lies inside the repulsion "
                             f"cut-offs {cutoffs}: nothing to fit")
    sw = np.sqrt(force_weight)
    A_e = np.hstack([np.asarray(e_rows), np.asarray(comp)])
    A_f = np.hstack([np.vstack(f_rows), np.zeros((sum(len(r) for r in f_rows), S))])
    A = np.vstack([A_e, sw * A_f])
    b = np.concatenate([np.asarray(e_target), sw * np.concatenate(f_target)])
    # Column scaling: the basis sums span orders of magnitude between powers.
    scale = np.maximum(np.abs(A).max(axis=0), 1e-300)
    lower = np.concatenate([np.zeros(P * K), np.full(S, -np.inf)])
    # A is small and dense (rows: structures + fitted force components; columns P·K + S): an exact active-set solve.
    sol = lsq_linear(A / scale, b, bounds=(lower, np.full(P * K + S, np.inf)), method="bvls", tol=1e-14)
    x = sol.x / scale
    c = np.maximum(x[:P * K].reshape(P, K), 0.0)
    fitted = rep.with_coefficients({key: tuple(c[p]) for p, key in enumerate(cutoffs)})
    # What it explains, on the structures it touches.
    e_pred = np.asarray(e_rows)[touched] @ c.reshape(-1)
    mu_part = np.asarray(comp)[touched] @ x[P * K:]
    e_t = np.asarray(e_target)[touched]
    f_all, f_pred = np.concatenate(f_target), np.vstack(f_rows) @ c.reshape(-1)
    report = {
        "structures": len(structures), "structures_with_contacts": len(touched),
        "force_components_fitted": int(len(f_all)), "force_weight": float(force_weight),
        "energy_rms_ev_atom_before": float(np.sqrt(np.mean((e_t - mu_part - np.mean(e_t - mu_part)) ** 2))),
        "energy_rms_ev_atom_after": float(np.sqrt(np.mean((e_t - mu_part - e_pred
                                                           - np.mean(e_t - mu_part - e_pred)) ** 2))),
        "force_rms_ev_a_before": float(np.sqrt(np.mean(f_all ** 2))),
        "force_rms_ev_a_after": float(np.sqrt(np.mean((f_all - f_pred) ** 2))),
        "solver_status": int(sol.status),
    }
    return fitted, report


def subtract_repulsion(structures: Sequence[HostStructure], repulsion: PairRepulsion) -> list[HostStructure]:
    """Copies of ``structures`` with the baseline's energy and forces taken out of their targets."""
    out = []
    for s in structures:
        e, f = repulsion.host_energy_forces(*_geometry(repulsion, s))
        out.append(dataclasses.replace(
            s, energy=None if s.energy is None else s.energy - e,
            forces=None if s.forces is None else np.asarray(s.forces, np.float64) - f))
    return out


def baseline_of(model_name: str, elements: Sequence[str]) -> PairRepulsion:
    """The fitted pair baseline of a saved model (path or shipped name), checked against ``elements``.

    Raises:
        BPNNInputError: the model has no baseline, or other elements.
    """
    from ..model.bpnn import load_model

    model = load_model(model_name)
    if model.repulsion is None:
        raise BPNNInputError(f"{model_name}: the model has no pair baseline to train on (--repulsion-from)")
    if tuple(model.elements) != tuple(elements):
        raise BPNNInputError(f"{model_name}: the model's elements {', '.join(model.elements)} are not the "
                             f"data's {', '.join(elements)} (--repulsion-from)")
    return model.repulsion


def run_repulsion_stage(train_s: Sequence[HostStructure], val_s: Sequence[HostStructure], elements: Sequence[str],
                        config, run_dir, *, verbose: int = 1):
    """The stage of a run with ``config.repulsion``: fit on ``train_s`` (or take ``config.repulsion_from``'s
    baseline), record, take it out of both splits.

    Writes ``run_dir/repulsion.json`` (the baseline and :func:`fit_repulsion`'s report).  Deterministic:
    a resumed run fits the same baseline again.

    Returns:
        ``(repulsion, train_rest, val_rest)``: the baseline and copies of the splits whose energies and
        forces are what it leaves (what the networks learn).
    """
    if config.repulsion_from:
        if config.repulsion:
            raise BPNNInputError("give a baseline's cut-offs to fit (--repulsion) or a model to take it from "
                                 "(--repulsion-from), not both")
        repulsion = baseline_of(config.repulsion_from, elements)
        write_json(Path(run_dir) / "repulsion.json", {"repulsion": repulsion.to_config(),
                                                      "from": str(config.repulsion_from)})
        if verbose:
            print(f"repulsion baseline of {config.repulsion_from} "
                  f"({', '.join(f'{k} < {v:g} Å' for k, v in repulsion.cutoffs.items())}), not refitted", flush=True)
        return repulsion, subtract_repulsion(train_s, repulsion), subtract_repulsion(val_s, repulsion)
    repulsion, report = fit_repulsion(train_s, elements, config.repulsion, force_weight=config.repulsion_force_weight)
    write_json(Path(run_dir) / "repulsion.json", {"repulsion": repulsion.to_config(), "fit": report})
    if verbose:
        print(f"repulsion baseline ({', '.join(f'{k} < {v:g} Å' for k, v in repulsion.cutoffs.items())}): "
              f"{report['structures_with_contacts']} training structures with contacts; their force RMS "
              f"{report['force_rms_ev_a_before']:.2f} -> {report['force_rms_ev_a_after']:.2f} eV/Å", flush=True)
    return repulsion, subtract_repulsion(train_s, repulsion), subtract_repulsion(val_s, repulsion)
