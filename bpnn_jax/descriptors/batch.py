"""The one batch type of bpnn_jax, and how structures are padded into it.

A :class:`Batch` holds B structures padded to N atoms and M neighbour slots
per atom.  It is a JAX pytree (a frozen dataclass registered with
``jax.tree_util.register_dataclass``), so it passes through ``jit``, ``vmap``
and ``grad`` as it is.  Host-side preparation
(:func:`prepare_structures`, :func:`plan_batches`, :func:`collate`) is NumPy.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import jax
import numpy as np

from ..errors import StructureError
from ..units import stress_voigt
from .neighbors import (
    ATOM_BUCKETS,
    MIN_DISTANCE,
    NeighborList,
    bucket_size,
    dense_neighbors,
    neighbor_list,
    round_up,
    slot_layout,
)

__all__ = [
    "Batch",
    "HostStructure",
    "prepare_structures",
    "plan_batches",
    "collate",
    "iterate_batches",
    "atoms_by_species",
    "species_atom_lists",
]


@dataclasses.dataclass(frozen=True)
class Batch:
    """B structures padded to N atoms and M neighbour slots.

    Attributes:
        positions: (B, N, 3) float, Cartesian positions in Å.  Padded atoms
            sit at the origin.
        cell: (B, 3, 3) float, lattice vectors as rows, Å.
        species: (B, N) int32, index of each atom's element in the element
            tuple the batch was built with (0 for padded atoms).
        atom_mask: (B, N) bool, True for real atoms.
        neighbors: (B, N, M) int32, index j of each neighbour slot of atom i
            (padded slots point at i itself).  Slots are sorted by element:
            ``slots[s]`` consecutive slots per element s, M = sum(slots).
        shifts: (B, N, M, 3) float, integer-valued cell shift S_ij of the
            image of j: r_ij = R[j] - R[i] + S_ij @ cell (Å).
        neighbor_mask: (B, N, M) bool, True for real neighbours.
        energy: (B,) float64 or None, target total energy in eV (on whatever
            scale the caller chose, e.g. after reference subtraction).
        forces: (B, N, 3) float or None, target forces in eV/Å.
        slots: static tuple of per-element neighbour capacities.
    """

    positions: np.ndarray
    cell: np.ndarray
    species: np.ndarray
    atom_mask: np.ndarray
    neighbors: np.ndarray
    shifts: np.ndarray
    neighbor_mask: np.ndarray
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    slots: tuple[int, ...] = ()  # static (pytree metadata)

    def replace(self, **changes) -> "Batch":
        """A copy with some fields replaced (e.g. ``positions``)."""
        return dataclasses.replace(self, **changes)

    @property
    def n_atoms(self):
        """(B,) number of real atoms per structure."""
        return self.atom_mask.sum(axis=-1)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Padded sizes (B, N, M)."""
        return tuple(int(x) for x in self.neighbors.shape)  # type: ignore[return-value]

    def inputs(self, elements: Sequence[str]) -> dict:
        """The model inputs as a dict of arrays (no targets).

        The neighbour mask is split into one ``neighbor_mask_<element>``
        block (B, N, slots[s]) per element, so the slot layout travels in
        the array shapes (static under ``jit``) rather than as a Python
        attribute.

        Args:
            elements: element symbols in species-index order.
        """
        if len(elements) != len(self.slots):
            raise ValueError(f"batch has {len(self.slots)} element slot blocks, got elements {tuple(elements)}")
        out = {
            "positions": self.positions,
            "cell": self.cell,
            "species": self.species,
            "atom_mask": self.atom_mask,
            "neighbors": self.neighbors,
            "shifts": self.shifts,
        }
        bounds = np.concatenate([[0], np.cumsum(self.slots)]).astype(int)
        for s, el in enumerate(elements):
            out[f"neighbor_mask_{el}"] = self.neighbor_mask[..., bounds[s] : bounds[s + 1]]
        return out

    def targets(self) -> dict:
        """Targets dict: ``energy`` (B,) eV and, when present, ``forces`` (B, N, 3) eV/Å."""
        out = {}
        if self.energy is not None:
            out["energy"] = self.energy
        if self.forces is not None:
            out["forces"] = self.forces
        return out


# The arrays are the pytree's leaves (None fields are empty subtrees); the slot layout is static.
jax.tree_util.register_dataclass(
    Batch,
    data_fields=["positions", "cell", "species", "atom_mask", "neighbors", "shifts", "neighbor_mask", "energy",
                 "forces"],
    meta_fields=["slots"],
)


@dataclasses.dataclass
class HostStructure:
    """One structure prepared on the host: geometry, species and neighbour list.

    Attributes:
        name: label for messages (file name).
        positions: (N, 3) float64, Å.
        cell: (3, 3) float64, Å (rows).
        species: (N,) int32, index into the element tuple.
        nl: the structure's neighbour list.
        slots: bucketed per-element neighbour capacities.
        energy: total energy in eV, or None.
        forces: (N, 3) float64 eV/Å, or None.
        stress: (6,) float64 eV/Å³ (Voigt xx, yy, zz, yz, xz, xy; ASE's
            sign), or None.
    """

    name: str
    positions: np.ndarray
    cell: np.ndarray
    species: np.ndarray
    nl: NeighborList
    slots: tuple[int, ...]
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        return len(self.positions)


def _species_indices(symbols: Sequence[str], elements: Sequence[str], name: str) -> np.ndarray:
    lookup = {el: k for k, el in enumerate(elements)}
    out = np.empty(len(symbols), np.int32)
    for a, sym in enumerate(symbols):
        k = lookup.get(sym)
        if k is None:
            raise StructureError(
                f"{name}: atom {a} is {sym}, which is not one of the elements {tuple(elements)}"
            )
        out[a] = k
    return out


def prepare_structures(
    structures: Iterable,
    elements: Sequence[str],
    cutoff: float,
    *,
    progress: bool = False,
    energy_offsets: dict[str, float] | None = None,
    min_distance: float | None = MIN_DISTANCE,
) -> list[HostStructure]:
    """Neighbour lists and species indices for ASE structures.

    Every structure is checked on the way (see :func:`bpnn_jax.descriptors.neighbors.
    neighbor_list`): known elements, finite positions, a usable cell, no two
    atoms closer than ``min_distance``, finite targets.  Structures larger
    than the largest atom bucket are fine (the buckets grow, see
    :func:`bpnn_jax.descriptors.neighbors.bucket_size`).

    Args:
        structures: ``ase.Atoms`` objects.  Energies and forces are taken from
            an attached calculator's results or ``atoms.info["energy"]`` when
            present.  ``atoms.info["file"]`` names the structure in messages.
        elements: element symbols; species indices refer to this order.
        cutoff: neighbour cut-off, Å.
        progress: show a progress bar.
        energy_offsets: if given, per-element energies (eV) subtracted from
            the total energy in float64, e.g. free-atom reference energies.
        min_distance: smallest accepted interatomic distance, Å, periodic
            images included (default
            :data:`~bpnn_jax.descriptors.neighbors.MIN_DISTANCE`, 0.5 Å; None: no check).

    Returns:
        One :class:`HostStructure` per input, in order.

    Raises:
        StructureError: unknown element, non-finite positions, singular or
            degenerate cell, atoms closer than ``min_distance``, a non-finite
            energy or force, forces of the wrong shape.  The message starts
            with the structure's file name.
    """
    structures = list(structures)
    it = structures
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(structures, desc="neighbour lists", unit="struct", leave=False)
    out = []
    for k, atoms in enumerate(it):
        name = str(atoms.info.get("file", f"structure {k}"))
        symbols = atoms.get_chemical_symbols()
        species = _species_indices(symbols, elements, name)
        nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff, name=name,
                           min_distance=min_distance, symbols=symbols)
        energy, forces = _targets(atoms, name)
        if energy is not None and energy_offsets is not None:
            energy = float(np.float64(energy) - sum(np.float64(energy_offsets[s]) for s in symbols))
        out.append(
            HostStructure(
                name=name,
                positions=np.asarray(atoms.positions, np.float64),
                cell=np.asarray(atoms.cell.array, np.float64),
                species=species,
                nl=nl,
                slots=slot_layout(nl, species, len(elements)),
                energy=energy,
                forces=forces,
                stress=_stress_target(atoms, name),
            )
        )
    return out


def _stress_target(atoms, name: str) -> np.ndarray | None:
    """(6,) Voigt stress in eV/Å³ from the attached results (periodic cells only), or None."""
    calc = getattr(atoms, "calc", None)
    st = (getattr(calc, "results", {}) if calc is not None else {}).get("stress")
    if st is None or not np.all(atoms.pbc):
        return None
    return stress_voigt(st, name)


def _targets(atoms, name: str = "structure") -> tuple[float | None, np.ndarray | None]:
    energy = atoms.info.get("energy")
    forces = None
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", {}) if calc is not None else {}
    if energy is None and results.get("energy") is not None:
        energy = results["energy"]
    if energy is not None and not np.isfinite(float(energy)):
        raise StructureError(f"{name}: non-finite energy {energy}")
    if results.get("forces") is not None:
        forces = np.asarray(results["forces"], np.float64)
        if forces.shape != (len(atoms), 3):
            raise StructureError(f"{name}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
        if not np.all(np.isfinite(forces)):
            bad = int(np.argwhere(~np.isfinite(forces))[0, 0])
            raise StructureError(f"{name}: atom {bad} has a non-finite force")
    return (None if energy is None else float(energy)), forces


def plan_batches(
    structures: Sequence[HostStructure],
    atoms_per_batch: int = 256,
    *,
    batch_size: int | None = None,
    shuffle_rng: np.random.Generator | None = None,
    merge_small: bool = True,
    max_shapes: int | None = 8,
) -> list[tuple[np.ndarray, int, int, int]]:
    """Group structures by padded shape into batches.

    Structures are keyed by their bucketed atom count and per-element
    neighbour capacities (the element-wise max within a group); each
    key gets a fixed batch size so every batch of a key has the same shape
    (the last batch of a key is padded with empty structures).

    Args:
        structures: prepared structures.
        atoms_per_batch: target number of padded atoms per batch, used when
            ``batch_size`` is None (B = max(1, atoms_per_batch // N)).
        batch_size: fixed number of structures per batch (overrides).
        shuffle_rng: if given, shuffle members within each key and the batch
            order (for training).
        merge_small: move the members of a key that fills less than one
            batch into the smallest larger key that can hold them (more
            atoms and at least as many slots per element).  Every distinct
            shape costs an XLA compilation, which dwarfs a little padding.
        max_shapes: if given, keep merging (cheapest extra padding first)
            until at most this many shapes remain, where possible.  The
            default 8 costs ~20 % extra pair work on the TiO2 set (19
            shapes → 8) and saves minutes of compilation for force training.

    Returns:
        List of (indices into ``structures``, B, N, slots) per batch.
    """
    groups: dict[tuple, list[int]] = {}
    for k, s in enumerate(structures):
        key = (bucket_size(s.n_atoms, ATOM_BUCKETS), s.slots)
        groups.setdefault(key, []).append(k)
    if merge_small:
        groups = _merge_small_groups(groups, atoms_per_batch, batch_size, max_shapes)
    plan = []
    for (n_pad, m_pad), members in sorted(groups.items()):
        members = np.asarray(members)
        if shuffle_rng is not None:
            members = shuffle_rng.permutation(members)
        b = batch_size or max(1, atoms_per_batch // n_pad)
        for start in range(0, len(members), b):
            plan.append((members[start : start + b], b, n_pad, m_pad))
    if shuffle_rng is not None:
        order = shuffle_rng.permutation(len(plan))
        plan = [plan[i] for i in order]
    return plan


def _merge_small_groups(groups: dict, atoms_per_batch: int, batch_size: int | None,
                        max_shapes: int | None = None) -> dict:
    """Fold under-filled shape groups into the cheapest group that dominates them,
    then, while there are more than ``max_shapes`` groups, the cheapest merges."""
    groups = {k: list(v) for k, v in groups.items()}

    def volume(key):
        n, slots = key
        return n * sum(m * m for m in slots)  # ~ pair work per structure

    def dominates(big, small):
        return big != small and big[0] >= small[0] and all(x >= y for x, y in zip(big[1], small[1]))

    for key in sorted(groups, key=volume):
        if key not in groups:
            continue
        b = batch_size or max(1, atoms_per_batch // key[0])
        if len(groups[key]) >= b:
            continue
        hosts = [k for k in groups if dominates(k, key)]
        if hosts:
            target = min(hosts, key=volume)
            groups[target].extend(groups.pop(key))
    while max_shapes is not None and len(groups) > max_shapes:
        # Merge the pair (small -> dominating) that adds the least padded work.
        best = None
        for small in groups:
            for big in groups:
                if dominates(big, small):
                    cost = len(groups[small]) * (volume(big) - volume(small))
                    if best is None or cost < best[0]:
                        best = (cost, small, big)
        if best is None:
            break
        groups[best[2]].extend(groups.pop(best[1]))
    return groups


def collate(
    structures: Sequence[HostStructure],
    batch_size: int,
    n_atoms: int,
    slots: Sequence[int],
    *,
    dtype=np.float64,
) -> Batch:
    """Pad structures into one :class:`Batch` of shape (B, N, M = sum(slots)).

    Args:
        structures: at most ``batch_size`` prepared structures.
        batch_size: B; missing structures are empty (all masks False).
        n_atoms: N, padded atom count.
        slots: per-element neighbour capacities, each at least the
            structures' own (``HostStructure.slots``).
        dtype: float dtype of positions, cell, shifts and targets (energies
            are always float64 so reference subtraction stays exact).

    Returns:
        The padded batch (NumPy arrays).  ``energy``/``forces`` are None
        unless every structure has them.
    """
    if len(structures) > batch_size:
        raise ValueError(f"{len(structures)} structures do not fit a batch of {batch_size}")
    slots = tuple(int(m) for m in slots)
    B, N, M = batch_size, n_atoms, sum(slots)
    pos = np.zeros((B, N, 3), dtype)
    cell = np.broadcast_to(np.eye(3, dtype=dtype), (B, 3, 3)).copy()
    species = np.zeros((B, N), np.int32)
    amask = np.zeros((B, N), bool)
    nbr = np.broadcast_to(np.arange(N, dtype=np.int32)[None, :, None], (B, N, M)).copy()
    shifts = np.zeros((B, N, M, 3), dtype)
    nmask = np.zeros((B, N, M), bool)
    have_e = all(s.energy is not None for s in structures) and len(structures) > 0
    have_f = all(s.forces is not None for s in structures) and len(structures) > 0
    energy = np.zeros((B,), np.float64) if have_e else None
    forces = np.zeros((B, N, 3), dtype) if have_f else None
    for b, s in enumerate(structures):
        n = s.n_atoms
        if n > N:
            raise ValueError(f"{s.name}: {n} atoms do not fit a batch padded to {N}")
        pos[b, :n] = s.positions
        cell[b] = s.cell
        species[b, :n] = s.species
        amask[b, :n] = True
        idx, sh, m = dense_neighbors(s.nl, s.species, N, slots)
        nbr[b], shifts[b], nmask[b] = idx, sh, m
        if have_e:
            energy[b] = s.energy
        if have_f:
            forces[b, :n] = s.forces
    return Batch(pos, cell, species, amask, nbr, shifts, nmask, energy, forces, slots)


def iterate_batches(
    structures: Sequence[HostStructure],
    atoms_per_batch: int = 256,
    *,
    batch_size: int | None = None,
    dtype=np.float64,
    shuffle_rng: np.random.Generator | None = None,
):
    """Yield ``(indices, Batch)`` for all structures, grouped by padded shape.

    Args: see :func:`plan_batches` and :func:`collate`.

    Yields:
        (indices into ``structures`` of the batch's real members, Batch).
    """
    for members, b, n, m in plan_batches(
        structures, atoms_per_batch, batch_size=batch_size, shuffle_rng=shuffle_rng
    ):
        yield members, collate([structures[i] for i in members], b, n, m, dtype=dtype)


def atoms_by_species(species: np.ndarray, mask: np.ndarray, n_species: int) -> dict[str, np.ndarray]:
    """Positions of each element's atoms, padded per element: one network per element runs on its atoms only.

    Args:
        species: (B, N) element indices.
        mask: (B, N) real atoms.
        n_species: number of element indices (the model's elements).

    Returns:
        ``{f"atoms_of_{s}": (B, M_s) int32}`` for s < ``n_species``: the
        positions of the real atoms of element s in increasing order, then
        -1; M_s is the largest count of element s in a structure, rounded
        up to a multiple of 4 (few shapes; 0 when no structure has it).
    """
    species, mask = np.asarray(species), np.asarray(mask, bool)
    out = {}
    for s in range(n_species):
        is_s = (species == s) & mask
        count = is_s.sum(axis=1)
        m = round_up(count.max(initial=0), 4)
        # A stable sort puts element s's positions first, in order.
        order = np.argsort(~is_s, axis=1, kind="stable")[:, :m].astype(np.int32)
        if order.shape[1] < m:  # rounded up beyond N
            order = np.pad(order, ((0, 0), (0, m - order.shape[1])))
        out[f"atoms_of_{s}"] = np.where(np.arange(m)[None, :] < count[:, None], order, -1).astype(np.int32)
    return out


def species_atom_lists(arrays: dict) -> tuple | None:
    """The ``atoms_of_s`` arrays of a dict (a training group, model inputs) in element order, or None."""
    keys = sorted((k for k in arrays if k.startswith("atoms_of_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return tuple(arrays[k] for k in keys) or None
