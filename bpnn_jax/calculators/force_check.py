"""Forces and stress of a model against central finite differences of its energy.

In float64 the model's autodiff forces F = -dE/dR and stress
σ = (1/V) dE/dε must equal central differences of its energy, here the
fourth-order five-point stencil

    f'(0) ≈ (8 (f(δ) - f(-δ)) - (f(2δ) - f(-2δ))) / (12 δ)

for f(t) = E(R + t e_ac) (forces, F = -f') and f(t) = E(ε_v = t) (stress,
σ = f'/V), on the energy relative to the free-atom references (the ~-2e4 eV
totals would cost three digits of rounding).  The cosine cut-off has a
kink in its second derivative at Rc, so pairs crossing Rc within ±2δ add
an O(δ²) error; δ = 1e-4 Å keeps every term near 1e-8 relative (measured
on TiO2 cells from 6 to 95 atoms, forces and near-zero stresses alike).  Float32 networks cannot be checked this way (their energy
rounding, ~1e-5 eV, swamps the difference), so the check evaluates a float64
copy of the model (:func:`bpnn_jax.model.with_dtype`).  Errors are relative
to the largest component of the finite-difference forces (stress) of the
structure.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_structure", "check_forces"]


def _strained(atoms, voigt: int, eps: float):
    """Copy of ``atoms`` under the symmetric strain with Voigt component ``voigt`` = eps."""
    i, j = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)][voigt]
    e = np.zeros((3, 3))
    if i == j:
        e[i, i] = eps
    else:
        e[i, j] = e[j, i] = eps / 2.0  # engineering shear strain eps
    deform = np.eye(3) + e
    a = atoms.copy()
    a.set_cell(atoms.cell.array @ deform, scale_atoms=False)
    a.positions = atoms.positions @ deform
    return a


def _derivative(f, delta: float) -> float:
    """Five-point central difference f'(0)."""
    return (8.0 * (f(delta) - f(-delta)) - (f(2 * delta) - f(-2 * delta))) / (12.0 * delta)


def check_structure(calc, atoms, *, delta: float = 1e-4, max_atoms: int | None = None, seed: int = 0) -> dict:
    """Compare the calculator's forces and stress with finite differences.

    Args:
        calc: a :class:`~bpnn_jax.calculators.ase.BPNNCalculator` (float64 for a
            meaningful check).
        atoms: the structure (not modified).
        delta: finite-difference step, Å for positions and dimensionless for
            strain.
        max_atoms: check at most this many atoms (a seeded random choice);
            None checks all.
        seed: seed of that choice.

    Returns:
        dict: ``n_atoms``, ``atoms_checked``, ``max_abs_force_error_ev_a``,
        ``max_rel_force_error``, and for 3-D periodic cells
        ``max_abs_stress_error_ev_a3`` and ``max_rel_stress_error``.
    """
    a = atoms.copy()
    a.calc = calc
    forces = np.array(a.get_forces())
    n = len(a)
    idx = np.arange(n)
    if max_atoms is not None and n > max_atoms:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_atoms, replace=False))

    refs = calc.model.reference_energies
    offset = math.fsum(refs.get(sym, 0.0) for sym in a.get_chemical_symbols())

    def energy(x):
        x.calc = calc
        return x.get_potential_energy() - offset

    def moved(k, c, t):
        x = a.copy()
        x.positions[k, c] += t
        return energy(x)

    fd = np.zeros((len(idx), 3))
    for r, k in enumerate(idx):
        for c in range(3):
            fd[r, c] = -_derivative(lambda t: moved(k, c, t), delta)
    scale = max(float(np.max(np.abs(fd))), 1e-12)
    err = float(np.max(np.abs(forces[idx] - fd))) if len(idx) else 0.0
    out = {"n_atoms": n, "atoms_checked": [int(k) for k in idx], "max_abs_force_error_ev_a": err,
           "max_rel_force_error": err / scale}
    if a.cell.rank == 3 and all(a.pbc):
        stress = np.array(a.get_stress(voigt=True))
        vol = a.get_volume()
        fd_s = np.array([_derivative(lambda t: energy(_strained(a, v, t)), delta) / vol for v in range(6)])
        s_err = float(np.max(np.abs(stress - fd_s)))
        out.update(max_abs_stress_error_ev_a3=s_err,
                   max_rel_stress_error=s_err / max(float(np.max(np.abs(fd_s))), 1e-12))
    return out


def check_forces(model, atoms_list, *, delta: float = 1e-4, max_atoms: int | None = None,
                 dtype="float64") -> dict:
    """:func:`check_structure` for every structure, with a float64 calculator of ``model``.

    Returns:
        dict: ``max_rel_force_error``, ``max_rel_stress_error`` (None when no
        structure has a 3-D cell), ``delta``, ``dtype`` and ``structures``
        (one row per structure, with its ``file``).
    """
    from .ase import BPNNCalculator

    calc = BPNNCalculator(model, dtype=dtype, warn_extrapolation=False)
    rows = []
    for k, atoms in enumerate(atoms_list):
        row = {"file": str(atoms.info.get("file", k))}
        row.update(check_structure(calc, atoms, delta=delta, max_atoms=max_atoms, seed=k))
        rows.append(row)
    stress = [r["max_rel_stress_error"] for r in rows if "max_rel_stress_error" in r]
    return {"max_rel_force_error": max((r["max_rel_force_error"] for r in rows), default=0.0),
            "max_rel_stress_error": max(stress) if stress else None, "delta": delta, "dtype": str(dtype),
            "structures": rows}
