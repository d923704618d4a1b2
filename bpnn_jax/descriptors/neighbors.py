"""Periodic neighbour lists on the host, as dense padded tensors.

The neighbour search runs in NumPy/C (vesin) on the host and returns only
*integer* information: for atom ``i`` the index ``j`` of each neighbour and
the integer cell shift ``S_ij`` of the periodic image, such that

    r_ij = R[j] - R[i] + S_ij @ cell          (Å)

Positions and cell stay inputs of the JAX functions downstream, so energies
are differentiable with respect to both.  Every periodic image within the
cut-off is listed, including images of the centre atom itself: cells here
are thinner than the 6.5 Å cut-off (down to 2.4 Å), so one atom can appear
many times in a neighbour list.

Structures are then padded to a small ladder of sizes (:func:`bucket_size`)
so that XLA compiles a handful of shapes rather than one per structure; see
:mod:`bpnn_jax.descriptors.batch`.

Geometry checks.  :func:`neighbor_list` (and :func:`check_geometry`, the
same checks without the full list) reject, with a
:class:`~bpnn_jax.errors.StructureError` naming the structure:

* non-finite positions, a non-finite, singular or degenerate cell;
* two atoms closer than :data:`MIN_DISTANCE` (0.5 Å), periodic images
  included; the message names both atoms (0-based indices), the distance
  and the image shift.  An atom closer than that to its own image means a
  lattice vector shorter than :data:`MIN_DISTANCE`; this is detected from
  the reduced cell before any search, so such cells fail at once instead of
  making the search enumerate millions of images.

Pass ``min_distance=None`` to skip the distance checks.  Left-handed cells
(negative determinant) are fine.  A periodic cell given by a very skewed
basis is searched in its Minkowski-reduced basis (same lattice, few
images); shifts are always returned in the basis given.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ..errors import StructureError

__all__ = [
    "ATOM_BUCKETS",
    "MIN_DISTANCE",
    "NEIGHBOR_BUCKETS",
    "NeighborList",
    "bucket_size",
    "check_geometry",
    "neighbor_list",
    "dense_neighbors",
    "slot_layout",
    "peak_counts",
    "species_counts",
]

#: Ladder of padded atom counts.  TiO2 structures have 6, 22-24, 46-47 and
#: 94-95 atoms, which land in 8, 24, 48 and 96.  Larger systems follow a
#: geometric ladder (x1.5) beyond the list.
ATOM_BUCKETS: tuple[int, ...] = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)

#: Ladder of padded neighbour counts per atom and neighbour element.  Bulk
#: TiO2 within 6.5 Å: ~55-80 O and ~30-45 Ti neighbours; compressed cells
#: up to ~125 O / ~70 Ti.
NEIGHBOR_BUCKETS: tuple[int, ...] = (16, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512)

#: Smallest accepted distance between two atoms (periodic images included),
#: Å.  The shortest bond in nature (H2) is 0.74 Å; the most compressed TiO2
#: structure of the data set has 0.98 Å.  Closer atoms mean a broken file
#: (duplicated atom, wrong units, fractional coordinates read as Cartesian).
MIN_DISTANCE: float = 0.5

#: Periodic cells whose volume divided by the product of their (reduced)
#: vector lengths is below this are rejected as degenerate.
MIN_CELL_SINE: float = 1e-6


def bucket_size(n: int, ladder: Sequence[int]) -> int:
    """Smallest size of ``ladder`` that holds ``n``; beyond it, grow by x1.5.

    Args:
        n: number of items to hold (>= 0).
        ladder: increasing padded sizes.

    Returns:
        Padded size >= max(n, 1).
    """
    n = max(int(n), 1)
    for size in ladder:
        if n <= size:
            return int(size)
    size = int(ladder[-1])
    while size < n:
        # Round to a multiple of 32 so large shapes stay vector-friendly.
        size = int(math.ceil(size * 1.5 / 32.0) * 32)
    return size


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-int(n) // int(multiple)) * int(multiple)


@dataclasses.dataclass(frozen=True)
class NeighborList:
    """Full (both directions) neighbour list of one structure, sorted by centre.

    Attributes:
        centers: (P,) int64, index i of the centre atom.
        neighbors: (P,) int64, index j of the neighbour atom.
        shifts: (P, 3) int64, integer cell shift S_ij of the image of j.
        n_atoms: number of atoms N of the structure.
        cutoff: cut-off radius in Å.
    """

    centers: np.ndarray
    neighbors: np.ndarray
    shifts: np.ndarray
    n_atoms: int
    cutoff: float

    @property
    def counts(self) -> np.ndarray:
        """(N,) number of neighbours of each atom."""
        return np.bincount(self.centers, minlength=self.n_atoms)

    @property
    def max_neighbors(self) -> int:
        """Largest neighbour count over the atoms (0 for an empty list)."""
        return int(self.counts.max()) if self.n_atoms else 0


def _check_geometry(positions: np.ndarray, cell: np.ndarray, pbc, name: str) -> None:
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise StructureError(f"{name}: positions must have shape (N, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise StructureError(f"{name}: atom {bad} has a non-finite position")
    if np.any(pbc):
        if cell.shape != (3, 3) or not np.all(np.isfinite(cell)):
            raise StructureError(f"{name}: cell must be a finite 3x3 matrix")
        vol = abs(float(np.linalg.det(cell)))
        if vol < 1e-6:
            raise StructureError(f"{name}: the cell is singular (volume {vol:.3g} Å^3)")


#: A periodic cell whose search visits more images than this is searched in
#: its reduced basis if that halves the count.
_MAX_IMAGES_AS_GIVEN = 10_000
#: Cells needing more images than this, even reduced, are rejected (they
#: would take minutes and gigabytes; only reachable with min_distance=None).
_MAX_IMAGES = 1_000_000


def _heights(cell: np.ndarray) -> np.ndarray:
    """(3,) distances between opposite faces of the cell, Å."""
    vol = abs(float(np.linalg.det(cell)))
    return np.array([vol / float(np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))) for k in range(3)])


def _n_images(cell: np.ndarray, cutoff: float) -> float:
    """Number of cell images a search within ``cutoff`` visits, roughly."""
    return float(np.prod([2 * math.ceil(cutoff / h) + 1 for h in _heights(cell)]))


def _search_cell(cell: np.ndarray, cutoff: float, name: str, min_distance: float | None):
    """The basis to search a fully periodic cell in, and the map back.

    Returns ``(search_cell, op)`` with ``search_cell = op @ cell`` (``op``
    integer, unimodular; None when the given basis is used): shifts found in
    ``search_cell`` convert back as ``S = S_search @ op``.

    Raises:
        StructureError: a degenerate lattice, a lattice vector shorter than
            ``min_distance`` (when set), or a cell needing more than
            ``_MAX_IMAGES`` images.
    """
    # Every lattice vector is at least as long as the smallest height, so
    # for ordinary cells neither the reduction nor the checks are needed.
    if (min_distance is None or _heights(cell).min() >= min_distance) and _n_images(cell, cutoff) <= _MAX_IMAGES_AS_GIVEN:
        return cell, None
    from ase.geometry import minkowski_reduce

    reduced, op = minkowski_reduce(cell)
    reduced = np.asarray(reduced, np.float64)
    lengths = np.linalg.norm(reduced, axis=1)
    shortest = int(np.argmin(lengths))
    vol = abs(float(np.linalg.det(reduced)))
    if vol / float(np.prod(lengths)) < MIN_CELL_SINE:
        raise StructureError(
            f"{name}: degenerate cell (lattice vectors almost coplanar; reduced vector lengths "
            f"{', '.join(f'{x:.3g}' for x in lengths)} Å, volume {vol:.3g} Å^3)"
        )
    if min_distance is not None and lengths[shortest] < min_distance:
        vec = np.asarray(op[shortest], np.int64)
        raise StructureError(
            f"{name}: the lattice vector {vec.tolist()} (in units of the cell vectors) is "
            f"{lengths[shortest]:.3g} Å long, so every atom is {lengths[shortest]:.3g} Å from its own "
            f"periodic image; atoms must be at least {min_distance} Å apart"
        )
    n_reduced = _n_images(reduced, cutoff)
    if n_reduced > _MAX_IMAGES:
        raise StructureError(
            f"{name}: the cell is too small for a neighbour search within {cutoff} Å (about {n_reduced:.3g} "
            f"periodic images; shortest lattice vector {lengths[shortest]:.3g} Å)"
        )
    if n_reduced * 2 < _n_images(cell, cutoff):
        return reduced, np.asarray(op, np.int64)
    return cell, None


def _raise_if_too_close(i, j, s, d, min_distance: float, name: str, symbols) -> None:
    """Raise for the closest pair with distance below ``min_distance``, if any."""
    close = d < min_distance
    if not np.any(close):
        return
    n_close = int(close.sum()) // 2  # each pair is listed in both directions
    close &= i <= j  # report each pair once, from its lower index
    k = int(np.flatnonzero(close)[np.argmin(d[close])])
    a, b = int(i[k]), int(j[k])
    shift = np.asarray(s[k], np.int64)

    def label(x):
        return f"{x} ({symbols[x]})" if symbols is not None else str(x)

    if a == b:
        what = (f"atom {label(a)} is {d[k]:.3g} Å from its own periodic image (shifted by {shift.tolist()} "
                "cell vectors)")
    else:
        image = "" if not shift.any() else f" (atom {b} in the image shifted by {shift.tolist()} cell vectors)"
        what = f"atoms {label(a)} and {label(b)} are {d[k]:.3g} Å apart{image}"
    more = f"; {n_close - 1} more pair(s) closer than that" if n_close > 1 else ""
    raise StructureError(
        f"{name}: {what}, closer than the minimum {min_distance} Å (atom indices count from 0){more}"
    )


def _vesin_pairs(positions, cell_arr, pbc_arr, cutoff, name, min_distance):
    """Raw vesin pairs (i, j, S, d) in the given basis, and the basis checks."""
    import vesin  # host-side C++ library; imported lazily to keep import light

    op = None
    if not pbc_arr.any():
        cell_arr = np.zeros((3, 3))
    elif not pbc_arr.all():
        # vesin needs a usable box in the non-periodic directions too.
        lo = positions.min(axis=0) - cutoff
        span = positions.max(axis=0) - lo + cutoff
        cell_arr = cell_arr.copy()
        for ax in np.flatnonzero(~pbc_arr):
            cell_arr[ax] = 0.0
            cell_arr[ax, ax] = span[ax]
    else:
        cell_arr, op = _search_cell(cell_arr, cutoff, name, min_distance)
    calc = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s, d = calc.compute(positions, cell_arr, pbc_arr.tolist() if pbc_arr.any() else False, "ijSd")
    s = np.asarray(s, np.int64)
    if op is not None and len(s):
        s = s @ op
    return np.asarray(i, np.int64), np.asarray(j, np.int64), s, np.asarray(d, np.float64)


def _prepare_inputs(positions, cell, pbc, name):
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc_arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    cell_arr = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    _check_geometry(positions, cell_arr, pbc_arr, name)
    return positions, cell_arr, pbc_arr


def check_geometry(
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc: bool | Sequence[bool],
    *,
    min_distance: float | None = MIN_DISTANCE,
    name: str = "structure",
    symbols: Sequence[str] | None = None,
) -> None:
    """The checks of :func:`neighbor_list`, without building the list.

    Cheap (a neighbour search within ``min_distance`` only): used to
    validate many structures before a long computation.

    Args:
        positions: (N, 3) Cartesian positions, Å.
        cell: (3, 3) lattice vectors as rows, Å (ignored where not periodic).
        pbc: periodicity, one bool or three.
        min_distance: smallest accepted interatomic distance, Å (None: no
            distance check).
        name: label used in error messages (usually the file name).
        symbols: element symbols of the atoms, for messages.

    Raises:
        StructureError: non-finite positions, a singular or degenerate cell,
            two atoms (or an atom and an image) closer than ``min_distance``.
    """
    positions, cell_arr, pbc_arr = _prepare_inputs(positions, cell, pbc, name)
    if len(positions) == 0 or min_distance is None:
        if len(positions) and pbc_arr.all():
            _search_cell(cell_arr, MIN_DISTANCE, name, None)
        return
    i, j, s, d = _vesin_pairs(positions, cell_arr, pbc_arr, float(min_distance), name, min_distance)
    _raise_if_too_close(i, j, s, d, float(min_distance), name, symbols)


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc: bool | Sequence[bool],
    cutoff: float,
    *,
    name: str = "structure",
    min_distance: float | None = MIN_DISTANCE,
    symbols: Sequence[str] | None = None,
) -> NeighborList:
    """All pairs (i, j, S) with 0 < |R[j] - R[i] + S @ cell| < cutoff.

    Uses vesin (C++, cell lists) on the host.  Periodic images of the centre
    atom itself are included (i == j with S != 0).  The distance check costs
    nothing extra: the distances come with the list.

    Args:
        positions: (N, 3) Cartesian positions, Å.
        cell: (3, 3) lattice vectors as rows, Å (ignored where not periodic;
            either handedness).
        pbc: periodicity, one bool or three.
        cutoff: cut-off radius, Å.
        name: label used in error messages (usually the file name).
        min_distance: smallest accepted interatomic distance, Å, periodic
            images included (default :data:`MIN_DISTANCE`; None: no check).
        symbols: element symbols of the atoms, for messages.

    Returns:
        The neighbour list, sorted by centre atom then neighbour index.

    Raises:
        StructureError: non-finite positions, a singular or degenerate
            periodic cell, or two atoms closer than ``min_distance`` (the
            message names both atoms, the distance and the image shift).
    """
    positions, cell_arr, pbc_arr = _prepare_inputs(positions, cell, pbc, name)
    n = len(positions)
    if n == 0:
        empty = np.zeros((0,), np.int64)
        return NeighborList(empty, empty, np.zeros((0, 3), np.int64), 0, float(cutoff))
    i, j, s, d = _vesin_pairs(positions, cell_arr, pbc_arr, float(cutoff), name, min_distance)
    if min_distance is not None:
        if cutoff >= min_distance:
            _raise_if_too_close(i, j, s, d, float(min_distance), name, symbols)
        else:
            check_geometry(positions, cell_arr, pbc_arr, min_distance=min_distance, name=name, symbols=symbols)
    keep = d > 0.0  # an exact self-pair at zero distance is not a neighbour
    i, j, s = i[keep], j[keep], s[keep]
    order = np.lexsort((j, i))
    return NeighborList(
        centers=i[order].astype(np.int64),
        neighbors=j[order].astype(np.int64),
        shifts=s[order].astype(np.int64),
        n_atoms=n,
        cutoff=float(cutoff),
    )


def species_counts(nl: NeighborList, species: np.ndarray, n_species: int) -> np.ndarray:
    """(N, S) number of neighbours of each element around each atom."""
    counts = np.zeros((nl.n_atoms, n_species), np.int64)
    np.add.at(counts, (nl.centers, species[nl.neighbors]), 1)
    return counts


def peak_counts(nl: NeighborList, species: np.ndarray, n_species: int) -> np.ndarray:
    """(n_species,) the largest number of neighbours of each element around any one atom."""
    counts = species_counts(nl, species, n_species)
    return counts.max(axis=0) if nl.n_atoms else np.zeros(n_species, np.int64)


def slot_layout(nl: NeighborList, species: np.ndarray, n_species: int) -> tuple[int, ...]:
    """Bucketed per-element neighbour capacities (M_0, ..., M_{S-1}) of a structure."""
    return tuple(bucket_size(int(c), NEIGHBOR_BUCKETS) for c in peak_counts(nl, species, n_species))


def dense_neighbors(
    nl: NeighborList, species: np.ndarray, n_atoms_padded: int, slots: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scatter a sparse neighbour list into dense, padded, element-sorted slots.

    The M = sum(slots) slots of each atom are split into one contiguous block
    per element: slots [o_s, o_s + slots[s]) hold the neighbours of element s
    (o_s = sum(slots[:s])).  Each element pair of the angular functions is
    then a dense sub-block, with no gather over triplet lists.  Padded slots
    point at the centre atom itself with zero shift (zero displacement) and
    are masked out.

    Args:
        nl: the neighbour list of a structure with N atoms.
        species: (N,) element index of each atom.
        n_atoms_padded: padded atom count N_pad >= N.
        slots: per-element neighbour capacities.

    Returns:
        index: (N_pad, M) int32 neighbour index j.
        shifts: (N_pad, M, 3) int32 cell shifts S_ij.
        mask: (N_pad, M) bool, True for real neighbours.
    """
    slots = tuple(int(m) for m in slots)
    n_species = len(slots)
    M = sum(slots)
    if n_atoms_padded < nl.n_atoms:
        raise ValueError(f"padding to {n_atoms_padded} atoms is smaller than the structure ({nl.n_atoms})")
    index = np.broadcast_to(np.arange(n_atoms_padded, dtype=np.int32)[:, None], (n_atoms_padded, M)).copy()
    shifts = np.zeros((n_atoms_padded, M, 3), np.int32)
    mask = np.zeros((n_atoms_padded, M), bool)
    if len(nl.centers):
        sj = np.asarray(species)[nl.neighbors]
        counts = species_counts(nl, np.asarray(species), n_species)
        if np.any(counts > np.asarray(slots)[None, :]):
            raise ValueError(f"neighbour slots {slots} smaller than the structure's {tuple(counts.max(0))}")
        order = np.lexsort((nl.neighbors, sj, nl.centers))
        ci, cj, cs, csp = nl.centers[order], nl.neighbors[order], nl.shifts[order], sj[order]
        # Rank of each pair within its (centre, element) group.
        group = ci * n_species + csp
        first = np.searchsorted(group, group, side="left")
        rank = np.arange(len(group)) - first
        offsets = np.concatenate([[0], np.cumsum(slots)[:-1]])
        slot = offsets[csp] + rank
        index[ci, slot] = cj
        shifts[ci, slot] = cs
        mask[ci, slot] = True
    return index, shifts, mask
