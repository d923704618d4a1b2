"""An ASE calculator for BPNN models: energy, per-atom energies, forces, stress.

One JAX function gives everything (:func:`bpnn_jax.model.potential.
evaluate_potential`, shared with ``BPNN.call`` and the predictions): the
energy E(R(I+ε), C(I+ε)) of the structure under a homogeneous (symmetric)
strain ε, differentiated once with respect to the positions R and the strain
ε at ε = 0:

    forces  F = -dE/dR                                  (eV/Å)
    stress  σ = (1/V) dE/dε                             (eV/Å³)

which is ASE's definition and sign convention (tensile stress positive, a
compressed cell has negative diagonal stress) and is returned in ASE's Voigt
order (xx, yy, zz, yz, xz, xy).  Energies are on the scale of the DFT data:
the model's energy (relative to the free-atom references) plus the sum of
``model.reference_energies`` over the atoms, added in float64.

The neighbour list is built on the host with cut-off Rc + ``skin`` and reused
until an atom has moved more than skin/2 from where it was at the last build
(or the cell, periodicity or atoms change).  Pairs in the list that are
farther apart than Rc add exactly zero: every term carries fc(R_ij) (and the
angular ones fc(R_ik) fc(R_jk)), and fc(r >= Rc) = 0 with zero gradient.

Structures are padded to neighbour slots on a ladder of multiples of
:data:`SLOT_MULTIPLE` (finer than the data-set ladder of
:mod:`bpnn_jax.descriptors.neighbors`: an MD run keeps one shape, and G4 work grows as
the square of the slots; rutile at Rc + skin = 7 Å needs 102 O and 52 Ti
slots, padded to 104 and 56 instead of 128 and 64: a 16–21 % faster step),
kept from one neighbour-list build to the next while they hold the new
counts and exceed them by less than :data:`SLOT_SHRINK`, so a fluctuating
count does not recompile; and to an atom count from
:func:`calculator_padding` (the bucket ladder up to 256 atoms, then the next
multiple of 64: an MD run keeps its atom count, so the x1.5 ladder would only
waste up to a third of every step on large cells), and the evaluation
function is compiled once per padded shape (XLA caches it; the model's variables are arguments, not baked-in
constants, so a model whose weights change is not served stale results).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import keras
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ..descriptors.batch import HostStructure, collate
from ..descriptors.neighbors import (
    ATOM_BUCKETS,
    bucket_size,
    neighbor_list,
    peak_counts,
    round_up,
)
from ..errors import StructureError
from ..model.bpnn import BPNN, load_model, with_dtype
from ..model.potential import potential_function

__all__ = ["BPNNCalculator", "ExtrapolationWarning", "extrapolation_report"]


class ExtrapolationWarning(UserWarning):
    """Symmetry functions of some atoms lie outside the training-set range."""


# ------------------------------------------------------------ extrapolation
def extrapolation_report(model: BPNN, sf, species, *, tolerance: float = 0.05) -> list[tuple[int, int]]:
    """Atoms whose symmetry functions leave the model's training range.

    For an atom of element s, function f is outside when it is below
    ``sf_min[s, f] - tolerance * (sf_max[s, f] - sf_min[s, f])`` or above
    ``sf_max[s, f] + tolerance * (sf_max[s, f] - sf_min[s, f])`` (plus a
    relative 1e-6 for the float32 storage of the ranges).  An element
    whose stored ranges are all zero (statistics never set, or no atoms of it
    in the training set) is not checked.

    Args:
        model: the model (its ``sf_min`` and ``sf_max``, shape (S, F)).
        sf: (N, F) symmetry functions of the real atoms of one structure
            (dimensionless, unstandardised, as from ``model.descriptors``).
        species: (N,) int element indices into ``model.elements``.
        tolerance: allowed excess, as a fraction of each function's range.

    Returns:
        (atom index, number of functions outside) for every atom with at
        least one function outside, in atom order; empty when all inside.
    """
    sf = np.asarray(sf, np.float64)
    species = np.asarray(species, np.int64)
    lo = np.asarray(keras.ops.convert_to_numpy(model.sf_min), np.float64)
    hi = np.asarray(keras.ops.convert_to_numpy(model.sf_max), np.float64)
    if sf.ndim != 2 or sf.shape[1] != lo.shape[1] or species.shape != (sf.shape[0],):
        raise ValueError(
            f"expected sf (N, {lo.shape[1]}) and species (N,), got {sf.shape} and {species.shape}"
        )
    # The ranges are stored in float32: allow for that rounding too, so a
    # function that was constant in training is not flagged for round-off.
    slack = tolerance * (hi - lo) + 1e-6 * np.maximum(np.abs(lo), np.abs(hi))
    lower, upper = lo - slack, hi + slack
    known = np.any(lo != 0, axis=1) | np.any(hi != 0, axis=1)  # (S,)
    outside = (sf < lower[species]) | (sf > upper[species])
    counts = np.where(known[species], outside.sum(axis=1), 0)
    return [(int(a), int(counts[a])) for a in np.flatnonzero(counts)]


def _format_report(report: Sequence[tuple[int, int]], n_atoms: int, tolerance: float, name: str) -> str:
    shown = ", ".join(f"atom {a} ({k} functions)" for a, k in report[:5])
    more = f", and {len(report) - 5} more" if len(report) > 5 else ""
    worst = max(k for _, k in report)
    return (
        f"{name}: {len(report)} of {n_atoms} atoms have symmetry functions outside the training range "
        f"(by more than {100 * tolerance:g}% of a range; up to {worst} functions per atom): {shown}{more}. "
        "The model is extrapolating; its energies and forces there are not reliable."
    )


# ------------------------------------------------------------ the function
def _evaluator(model: BPNN, member_forces: bool = True):
    """Jitted ``f(values, inputs)`` for ``model``, and its variables.

    :func:`~bpnn_jax.model.potential.potential_function` with forces and
    the strain derivative (one backward pass, or one per member with
    ``member_forces`` for a committee); ``values`` are the current values of
    ``variables`` (``model.variables``), in that order.  Shared by all
    calculators of a model.
    """
    return potential_function(model, forces=True, stress=True, member_forces=member_forces)


# ----------------------------------------------------------------- the calc
#: Beyond the atom ladder, the calculator pads atom counts to a multiple of this.
LARGE_CELL_PAD = 64
#: The calculator's neighbour slots per element are multiples of this.
SLOT_MULTIPLE = 8
#: A rebuilt neighbour list keeps the previous slots unless they are short,
#: or this many (or more) above the new counts' own slots.
SLOT_SHRINK = 16
#: The slot ladder: multiples of SLOT_MULTIPLE up to 512, then x1.5.
SLOT_LADDER = tuple(range(SLOT_MULTIPLE, 513, SLOT_MULTIPLE))


def calculator_slots(nl, species, n_species: int, previous=None) -> tuple[int, ...]:
    """Neighbour slots per element for :class:`BPNNCalculator`.

    Args:
        nl: the structure's neighbour list (at Rc + skin).
        species: (N,) element indices.
        n_species: number of elements.
        previous: the slots of the last build of the same atoms, or None.

    Returns:
        ``previous`` if it holds every element's peak count and no entry
        exceeds the new slots by :data:`SLOT_SHRINK` or more; else the peak
        counts rounded up on :data:`SLOT_LADDER`.
    """
    peak = peak_counts(nl, species, n_species)
    slots = tuple(bucket_size(int(c), SLOT_LADDER) for c in peak)
    if previous is not None and len(previous) == len(slots) and all(
            c <= p < s + SLOT_SHRINK for c, p, s in zip(peak, previous, slots)):
        return tuple(int(p) for p in previous)
    return slots


def calculator_padding(n_atoms: int) -> int:
    """Padded atom count of a structure in :class:`BPNNCalculator`.

    The bucket ladder (:data:`~bpnn_jax.descriptors.neighbors.ATOM_BUCKETS`) up to its
    last size, then the next multiple of :data:`LARGE_CELL_PAD` (a 10 200-atom
    cell pads to 10 240 instead of 15 136).
    """
    if n_atoms <= ATOM_BUCKETS[-1]:
        return bucket_size(n_atoms, ATOM_BUCKETS)
    return round_up(n_atoms, LARGE_CELL_PAD)


class BPNNCalculator(Calculator):
    """ASE calculator for a :class:`~bpnn_jax.model.BPNN`.

    Results (ASE units): ``energy`` and ``free_energy`` (eV, DFT scale),
    ``energies`` (N,) per-atom energies (eV, summing to ``energy``),
    ``forces`` (N, 3) eV/Å and, for cells of full rank, ``stress`` (6,)
    eV/Å³ in Voigt order (xx, yy, zz, yz, xz, xy).  For a committee
    (``model.members > 1``) these are the members' means, and the results
    also hold ``energy_std`` (eV, standard deviation of the members' total
    energies) and ``forces_std`` (N,) eV/Å (per atom, sqrt(mean_k |F_k -
    F_mean|²)); the extrapolation warning also fires when ``energy_std``
    per atom exceeds ``model.uncertainty_threshold``.  The members' forces
    cost one backward pass each, so by default they are computed only when
    ``forces_std`` is asked for (``calc.get_property("forces_std", atoms)``,
    or ``member_forces=True``); otherwise (MD, relaxations, where
    ``energy_std`` is the monitor) the forces of the mean energy take one
    pass, about 4x less work for 5 members.

    Args:
        model: a BPNN, or a path / shipped name for :func:`~bpnn_jax.model.
            load_model`.
        skin: neighbour-list skin in Å; the list (cut-off Rc + skin) is
            rebuilt only when an atom has moved more than skin/2 since the
            last build (measured in the build's cell, with a changed cell's
            strain taking its share of the skin; see ``_needs_rebuild``),
            or pbc or atomic numbers changed.  0 rebuilds on every move.
        dtype: float dtype of the whole evaluation (positions, cell,
            descriptors and networks); None uses the model's compute dtype.
            ``"float64"`` on a float32 model evaluates a float64 copy of it
            (:func:`~bpnn_jax.model.with_dtype`): the same weights, forces
            and stress equal to finite differences of the energy to ~1e-9.
        warn_extrapolation: issue an :class:`ExtrapolationWarning` when some
            atom's symmetry functions leave the training range (see
            :func:`extrapolation_report`).  One warning per structure, naming
            the atoms; it is not repeated while consecutive calculations
            stay outside for the same system (same atomic numbers, pbc and
            cell), e.g. along an NVE trajectory.
        tolerance: allowed excess beyond each function's [min, max] range,
            as a fraction of the range.
        member_forces: for a committee: True = every member's forces at
            every calculation (``forces_std`` always in the results);
            False = never (the forces of the mean only); None (default) =
            when the requested properties include ``forces_std``.  Ignored
            for a single model.
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Attributes:
        nl_builds: number of neighbour-list builds so far.
        last_extrapolation: :func:`extrapolation_report` of the latest
            calculation.
        compiled_shapes: padded shapes (B, N, slots) evaluated so far.
        compiled_programs: (evaluator, shape) pairs evaluated so far, each
            one XLA compilation (at most): a committee has two evaluators,
            ``"mean_forces"`` and ``"member_forces"`` (when ``forces_std``
            is asked for); a single network only ``"forces"``.

    Raises:
        StructureError: (from a calculation) an atom of an element the model
            does not know, non-finite positions or a singular periodic cell.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "energy_std", "forces_std"]

    def __init__(
        self,
        model,
        *,
        skin: float = 0.5,
        dtype=None,
        warn_extrapolation: bool = True,
        tolerance: float = 0.05,
        member_forces: bool | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, BPNN):
            model = load_model(model)
        if not (skin >= 0 and math.isfinite(skin)):
            raise ValueError(f"skin must be a finite length >= 0 Å, got {skin}")
        self.dtype = np.dtype(dtype if dtype is not None else (model.compute_dtype or "float32"))
        if dtype is not None:
            model = with_dtype(model, self.dtype)
        self.model = model
        self.skin = float(skin)
        self.warn_extrapolation = bool(warn_extrapolation)
        self.tolerance = float(tolerance)
        self.cutoff = float(model.spec.cutoff)
        self.nl_builds = 0
        self.last_extrapolation: list[tuple[int, int]] = []
        self.compiled_shapes: set = set()
        self.compiled_programs: set = set()
        self.member_forces = None if member_forces is None else bool(member_forces)
        self._fn, self._variables = _evaluator(model, bool(self.member_forces))
        self._nl = None  # state of the current neighbour list (dict)
        self._warned_key = None

    # ------------------------------------------------------- neighbour list
    def _species(self, atoms) -> np.ndarray:
        lookup = {el: k for k, el in enumerate(self.model.elements)}
        symbols = atoms.get_chemical_symbols()
        species = np.fromiter((lookup.get(s, -1) for s in symbols), np.int32, len(symbols))
        if np.any(species < 0):
            bad = sorted({s for s, k in zip(symbols, species) if k < 0})
            first = [int(a) for a in np.flatnonzero(species < 0)[:5]]
            raise StructureError(
                f"{self._name(atoms)}: element{'s' if len(bad) > 1 else ''} {', '.join(bad)} "
                f"(atom {', '.join(map(str, first))}{' ...' if (species < 0).sum() > 5 else ''}) "
                f"not known to the model, whose elements are {', '.join(self.model.elements)}"
            )
        return species

    @staticmethod
    def _name(atoms) -> str:
        return str(atoms.info.get("file", atoms.get_chemical_formula()))

    def _needs_rebuild(self, atoms) -> bool:
        """Whether the list built at (R0, h0) may miss a pair within Rc of (R, h).

        Without a cell change: some atom moved more than skin/2.  With one
        (a relaxation with a cell filter, NPT), positions are mapped back to
        the build cell, R~ = R h⁻¹ h0, and the pair vectors are r = r~ F
        with F = h0⁻¹ h, so |r| < Rc needs |r~| < Rc / σ_min(F); the list
        holds every pair within Rc + skin at the build, so it stays valid
        while Rc / σ_min(F) + 2 max|R~ − R0| <= Rc + skin.
        """
        st = self._nl
        if st is None or len(atoms) != len(st["numbers"]):
            return True
        if not (np.array_equal(atoms.numbers, st["numbers"]) and np.array_equal(atoms.pbc, st["pbc"])):
            return True
        if len(atoms) == 0:
            return not np.array_equal(atoms.cell.array, st["cell"])
        positions, reach = atoms.positions, self.cutoff
        if not np.array_equal(atoms.cell.array, st["cell"]):
            cell, cell0 = np.asarray(atoms.cell.array, np.float64), st["cell"]
            if atoms.cell.rank < 3 or abs(np.linalg.det(cell0)) < 1e-12:
                return True
            deform = np.linalg.solve(cell0, cell)  # F = h0⁻¹ h
            reach = self.cutoff / np.linalg.svd(deform, compute_uv=False)[-1]
            positions = np.linalg.solve(cell.T, positions.T).T @ cell0  # R h⁻¹ h0
        moved = np.sqrt(np.max(np.sum((positions - st["positions"]) ** 2, axis=1)))
        return bool(reach + 2.0 * moved > self.cutoff + self.skin)

    def _build(self, atoms) -> None:
        species = self._species(atoms)
        name = self._name(atoms)
        positions = np.array(atoms.positions, np.float64)
        cell = np.array(atoms.cell.array, np.float64)
        nl = neighbor_list(positions, cell, atoms.pbc, self.cutoff + self.skin, name=name)
        n_pad = calculator_padding(len(atoms))
        st = self._nl
        previous = st["shape"][2] if st is not None and st["shape"][1] == n_pad else None
        slots = calculator_slots(nl, species, len(self.model.elements), previous)
        host = HostStructure(name=name, positions=positions, cell=cell, species=species, nl=nl, slots=slots)
        batch = collate([host], 1, n_pad, slots, dtype=self.dtype)
        self._nl = dict(
            numbers=atoms.numbers.copy(), pbc=atoms.pbc.copy(), cell=cell, positions=positions,
            species=species, inputs=batch.inputs(self.model.elements), shape=(1, n_pad, slots),
        )
        self.nl_builds += 1

    # ----------------------------------------------------------- calculate
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute all implemented properties of ``atoms`` (see class doc)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if self._needs_rebuild(atoms):
            self._build(atoms)
        st = self._nl
        n = len(atoms)
        inputs = dict(st["inputs"])
        positions = np.zeros_like(inputs["positions"])
        positions[0, :n] = atoms.positions
        inputs["positions"] = positions
        # The current cell: the list may outlive small cell changes (see _needs_rebuild).
        cell = np.array(atoms.cell.array, dtype=inputs["cell"].dtype)[None]
        inputs["cell"] = cell
        values = [v.value for v in self._variables]
        fn, members = self._fn, bool(self.member_forces)
        if self.member_forces is None and "forces_std" in properties:
            fn, _ = _evaluator(self.model, True)
            members = True
        out = fn(values, inputs)
        self.compiled_shapes.add(st["shape"])
        committee = getattr(self.model, "members", 1) > 1
        self.compiled_programs.add(
            (("member_forces" if members else "mean_forces") if committee else "forces", st["shape"]))

        refs = self.model.reference_energies
        ref_atoms = np.array([refs.get(s, 0.0) for s in atoms.get_chemical_symbols()], np.float64)
        e_rel = np.asarray(out["atomic_energies"][0, :n], np.float64)
        energy = math.fsum(e_rel) + math.fsum(ref_atoms)
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": e_rel + ref_atoms,
            "forces": np.array(out["forces"][0, :n], np.float64),
        }
        if atoms.cell.rank == 3:
            de_dstrain = np.asarray(out["de_dstrain"][0], np.float64)
            self.results["stress"] = full_3x3_to_voigt_6_stress(de_dstrain / atoms.get_volume())
        if "energy_members" in out:
            e_k = np.asarray(out["energy_members"], np.float64)
            self.results["energy_std"] = float(e_k.std())
        if "forces_members" in out:
            f_k = np.asarray(out["forces_members"][:, 0, :n], np.float64)
            self.results["forces_std"] = np.sqrt(np.mean(np.sum((f_k - self.results["forces"]) ** 2, -1), 0))

        sf = np.asarray(out["descriptors"][0, :n])
        self.last_extrapolation = extrapolation_report(self.model, sf, st["species"], tolerance=self.tolerance)
        self._maybe_warn(atoms)

    def _maybe_warn(self, atoms) -> None:
        threshold = getattr(self.model, "uncertainty_threshold", None)
        spread = self.results.get("energy_std")
        too_uncertain = (threshold is not None and spread is not None and len(atoms) > 0
                         and spread / len(atoms) > threshold)
        if not self.last_extrapolation and not too_uncertain:
            self._warned_key = None
            return
        key = (atoms.numbers.tobytes(), atoms.pbc.tobytes(), np.asarray(atoms.cell.array).tobytes())
        if not self.warn_extrapolation or key == self._warned_key:
            return
        self._warned_key = key
        parts = []
        if self.last_extrapolation:
            parts.append(_format_report(self.last_extrapolation, len(atoms), self.tolerance, self._name(atoms)))
        if too_uncertain:
            parts.append(
                f"{self._name(atoms)}: committee energy spread {1e3 * spread / len(atoms):.1f} meV/atom exceeds "
                f"the validation-calibrated threshold {1e3 * threshold:.1f} meV/atom; the model is extrapolating "
                f"(see {'energy_std and forces_std' if 'forces_std' in self.results else 'energy_std'} in the results).")
        warnings.warn(" ".join(parts), ExtrapolationWarning, stacklevel=2)
