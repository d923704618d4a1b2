"""Predictions of a model for prepared structures: energies, forces, committee spread, stress."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..descriptors.batch import HostStructure, collate, plan_batches
from ..model.bpnn import BPNN
from ..model.potential import potential_function
from ..units import EV_PER_A3_IN_GPA, voigt_6


def _predict_function(model: BPNN, forces: bool, uncertainty: bool = True):
    """``(jit f(values, inputs) -> outputs, variables)`` that :func:`predict_structures` calls.

    :func:`~bpnn_jax.model.potential.potential_function` (the one energy
    function, cached per model): energies, with ``forces`` the forces and,
    with ``uncertainty`` too, every member's forces (``forces_members``,
    K backward passes: only where their spread is asked for).
    """
    return potential_function(model, forces=forces, member_forces=forces and uncertainty)


def predict_stress(model: BPNN, structures: Sequence[HostStructure], *, atoms_per_batch=None, dtype=np.float32,
                   progress=False) -> np.ndarray:
    """Model stress (n_struct, 6) in GPa, Voigt order (xx, yy, zz, yz, xz, xy), ASE's sign.

    σ = (1/V) dE/dε at ε = 0 under a homogeneous symmetric strain of
    positions and cell: ``de_dstrain`` of :func:`~bpnn_jax.model.potential.
    evaluate_potential` (the calculator's function).  Rows of structures
    without a periodic cell of full rank are NaN.
    """
    fn, variables = potential_function(model, forces=False, stress=True)
    out = np.full((len(structures), 6), np.nan)
    if atoms_per_batch is None:
        from ..descriptors.featurize import default_atoms_per_batch

        atoms_per_batch = default_atoms_per_batch()
    plan = plan_batches(structures, atoms_per_batch)
    if progress:
        from tqdm.auto import tqdm

        plan = tqdm(plan, desc="stress", unit="batch", leave=False)
    values = [v.value for v in variables]
    for idx, b, n, slots in plan:
        batch = collate([structures[k] for k in idx], b, n, slots, dtype=dtype)
        g = np.asarray(fn(values, batch.inputs(model.elements))["de_dstrain"], np.float64)
        for j, k in enumerate(idx):
            volume = abs(float(np.linalg.det(np.asarray(structures[k].cell, np.float64))))
            if volume > 1e-9:
                out[k] = voigt_6(g[j]) / volume * EV_PER_A3_IN_GPA
    return out


def predict_structures(model: BPNN, structures: Sequence[HostStructure], *, forces=True, atoms_per_batch=None,
                       dtype=np.float32, progress=False, uncertainty=False):
    """Model energies (relative to references, eV) and forces for prepared structures.

    ``atoms_per_batch`` None: 256 on CPU, 8192 on a GPU
    (:func:`bpnn_jax.descriptors.featurize.default_atoms_per_batch`).  For a committee
    (``model.members > 1``) energies and forces are the members' means.

    Args:
        uncertainty: also return the committee spread (zeros for a single
            network).

    Returns:
        (energies (n_struct,) float64, list of (n_atoms, 3) force arrays or
        None); with ``uncertainty`` also energy_std (n_struct,) eV (standard
        deviation of the members' total energies) and a list of (n_atoms,)
        force spreads eV/Å (per atom, sqrt(mean_k |F_k - F_mean|²)), or
        None without forces.
    """
    fn, variables = _predict_function(model, bool(forces), bool(uncertainty))
    energies = np.zeros(len(structures))
    e_std = np.zeros(len(structures))
    out_f: list = [None] * len(structures)
    f_std: list = [None] * len(structures)
    if atoms_per_batch is None:
        from ..descriptors.featurize import default_atoms_per_batch

        atoms_per_batch = default_atoms_per_batch()
    plan = plan_batches(structures, atoms_per_batch)
    it = plan
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(plan, desc="predict", unit="batch", leave=False)
    values = [v.value for v in variables]
    for idx, b, n, slots in it:
        batch = collate([structures[k] for k in idx], b, n, slots, dtype=dtype)
        res = fn(values, batch.inputs(model.elements))
        e = np.asarray(res["energy"], np.float64)
        em = np.asarray(res["energy_members"], np.float64) if "energy_members" in res else None
        fm = np.asarray(res["forces_members"], np.float64) if (forces and "forces_members" in res) else None
        for j, k in enumerate(idx):
            n_k = structures[k].n_atoms
            energies[k] = e[j]
            if em is not None:
                e_std[k] = float(em[:, j].std())
            if forces:
                out_f[k] = np.asarray(res["forces"][j, :n_k], np.float64)
                f_std[k] = (np.zeros(n_k) if fm is None else
                            np.sqrt(np.mean(np.sum((fm[:, j, :n_k] - out_f[k]) ** 2, axis=-1), axis=0)))
    if uncertainty:
        return energies, (out_f if forces else None), e_std, (f_std if forces else None)
    return energies, (out_f if forces else None)


def spread_threshold(model: BPNN, structures: Sequence[HostStructure], *, dtype=np.float32) -> float | None:
    """A committee's extrapolation threshold (eV/atom) from its spread on ``structures`` (validation data).

    The rule of :func:`bpnn_jax.training.jacobian.calibrate_threshold`
    (:func:`~bpnn_jax.training.jacobian.threshold_from_spread` of the
    members' energy standard deviation per atom), taken from the model's own
    predictions, so it also serves committees merged after training
    (:func:`bpnn_jax.model.ensemble.merge_committees`).  None for a single network.
    """
    from .jacobian import threshold_from_spread

    if model.members < 2:
        return None
    _, _, e_std, _ = predict_structures(model, structures, forces=False, dtype=dtype, uncertainty=True)
    return threshold_from_spread(e_std / np.maximum([s.n_atoms for s in structures], 1))
