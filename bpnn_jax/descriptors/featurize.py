"""Symmetry-function featurisation of whole data sets.

:func:`featurize` turns a list of structures into one (n_atoms,
n_functions) array of raw (unnormalised) symmetry functions per structure,
in the input order and with the atoms in file order.  It drives the pieces
of :mod:`bpnn_jax.descriptors.batch` and :mod:`bpnn_jax.descriptors`:

1. neighbour lists on the host (:func:`~bpnn_jax.descriptors.batch.prepare_structures`),
   kept in a compact form (int32 indices, int8 cell shifts: about 7 bytes
   per neighbour pair instead of 40, ~100 MB for the 7033 TiO2 structures);
2. structures grouped by padded shape into batches
   (:func:`~bpnn_jax.descriptors.batch.plan_batches`, :func:`~bpnn_jax.descriptors.batch.collate`:
   what :func:`~bpnn_jax.descriptors.batch.iterate_batches` does, one batch at a time);
   ``plan_batches`` merges rare shapes, so the 7033 TiO2 structures need 8
   compilations per dtype;
3. one jitted :func:`~bpnn_jax.descriptors.batch_descriptors` per
   (function set, chunk size), cached at module level
   (:func:`descriptor_function`), so repeated calls do not recompile.  The
   next batch is collated on the host while the device computes the last.

:func:`featurize_files` adds XSF reading and the choice of elements, and
:func:`save_features` writes the result as an ``.npz`` file in the layout of
the aenet reference file (``shared/oracles/aenet_behler2011_tio2.npz``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Callable

import numpy as np

from ..errors import BPNNInputError, StructureError

__all__ = [
    "DEFAULT_ATOMS_PER_BATCH",
    "DEFAULT_CHUNK_SIZE",
    "CompactStructure",
    "FeatureSet",
    "SparseJacobian",
    "default_atoms_per_batch",
    "default_elements",
    "descriptor_function",
    "descriptor_jacobians",
    "feature_arrays",
    "featurize",
    "featurize_files",
    "jacobian_nbytes",
    "prepare_compact",
    "save_features",
]

#: Default padded atoms per batch on CPU (benchmarked, see
#: ``benchmarks/results/featurize_cpu.md``).
DEFAULT_ATOMS_PER_BATCH = 256
#: Default padded atoms per batch on a GPU (fewer, larger kernels).
ACCELERATOR_ATOMS_PER_BATCH = 8192
#: Default atoms per vmapped chunk inside ``lax.map``.
DEFAULT_CHUNK_SIZE = 8


def default_atoms_per_batch() -> int:
    """:data:`DEFAULT_ATOMS_PER_BATCH` on CPU, :data:`ACCELERATOR_ATOMS_PER_BATCH` on GPU/TPU."""
    import jax

    return DEFAULT_ATOMS_PER_BATCH if jax.default_backend() == "cpu" else ACCELERATOR_ATOMS_PER_BATCH

#: Structures whose full neighbour lists are built at a time before
#: compaction (bounds the transient memory).
_PREPARE_BLOCK = 256

# (batch function, spec, chunk_size) -> its jitted form.
_JIT_CACHE: dict[tuple[Callable, Any, int], Callable] = {}


def _cached_jit(batch_fn: Callable, spec, chunk_size: int) -> Callable:
    """One jit of ``batch_fn(batch, spec, chunk_size=...)`` per (function, spec, chunk size).

    A :func:`~bpnn_jax.descriptors.programs.persistent_jit`: a later process
    loads the traced programs instead of tracing them again.
    """
    from .programs import persistent_jit

    key = (batch_fn, spec, int(chunk_size))
    fn = _JIT_CACHE.get(key)
    if fn is None:
        chunk = int(chunk_size)
        fn = _JIT_CACHE[key] = persistent_jit(lambda batch: batch_fn(batch, spec, chunk_size=chunk),
                                              batch_fn.__name__, f"{spec!r} chunk_size={chunk}")
    return fn


def descriptor_function(spec, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Callable:
    """The cached, jitted batch featuriser of a function set.

    One jit object per (``spec``, ``chunk_size``): it traces and compiles
    once per distinct batch shape and dtype and keeps the compiled programs,
    so calling :func:`featurize` again with the same set reuses them; a
    later process loads the traced programs from disk
    (:mod:`~bpnn_jax.descriptors.programs`).

    Args:
        spec: a :class:`~bpnn_jax.descriptors.SymmetryFunctionSet` (hashable).
        chunk_size: atoms per vmapped chunk inside ``lax.map``.

    Returns:
        ``f(batch) -> (B, N, spec.n_functions)`` jax array, in the dtype of
        ``batch.positions``.
    """
    from .symmetry import batch_descriptors

    return _cached_jit(batch_descriptors, spec, chunk_size)


# --------------------------------------------------------------------------
# compact host structures
# --------------------------------------------------------------------------


@dataclasses.dataclass
class CompactStructure:
    """A prepared structure with its neighbour list stored compactly.

    About 7 bytes per neighbour pair (int32 index, small-int shifts) instead
    of the 40 of :class:`~bpnn_jax.descriptors.neighbors.NeighborList`; :meth:`host`
    rebuilds the full :class:`~bpnn_jax.descriptors.batch.HostStructure` for
    :func:`~bpnn_jax.descriptors.batch.collate`.

    Attributes:
        name: label for messages.
        positions: (N, 3) float64, Å.
        cell: (3, 3) float64, Å.
        species: (N,) int32 element indices.
        counts: (N,) int32 neighbours per centre (pairs sorted by centre).
        neighbors: (P,) int32 neighbour index j.
        shifts: (P, 3) smallest int dtype holding the cell shifts.
        cutoff: Å.
        slots: per-element neighbour capacities (may be raised by merging).
    """

    name: str
    positions: np.ndarray
    cell: np.ndarray
    species: np.ndarray
    counts: np.ndarray
    neighbors: np.ndarray
    shifts: np.ndarray
    cutoff: float
    slots: tuple[int, ...]

    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    @classmethod
    def from_host(cls, h) -> "CompactStructure":
        """Compact copy of a :class:`~bpnn_jax.descriptors.batch.HostStructure`."""
        nl = h.nl
        centers, neighbors, shifts = nl.centers, nl.neighbors, nl.shifts
        if np.any(np.diff(centers) < 0):  # the format needs pairs grouped by centre
            order = np.argsort(centers, kind="stable")
            centers, neighbors, shifts = centers[order], neighbors[order], shifts[order]
        peak = int(np.abs(shifts).max()) if len(shifts) else 0
        sdtype = np.int8 if peak <= 127 else (np.int16 if peak <= 32767 else np.int64)
        return cls(
            name=h.name,
            positions=h.positions,
            cell=h.cell,
            species=h.species,
            counts=np.bincount(centers, minlength=nl.n_atoms).astype(np.int32),
            neighbors=neighbors.astype(np.int32),
            shifts=shifts.astype(sdtype),
            cutoff=nl.cutoff,
            slots=tuple(h.slots),
        )

    def host(self):
        """The full :class:`~bpnn_jax.descriptors.batch.HostStructure` (for ``collate``)."""
        from .batch import HostStructure
        from .neighbors import NeighborList

        n = self.n_atoms
        nl = NeighborList(
            centers=np.repeat(np.arange(n, dtype=np.int64), self.counts),
            neighbors=self.neighbors.astype(np.int64),
            shifts=self.shifts.astype(np.int64),
            n_atoms=n,
            cutoff=self.cutoff,
        )
        return HostStructure(self.name, self.positions, self.cell, self.species, nl, self.slots)


def prepare_compact(structures: Iterable, spec, *, progress: bool = False) -> list[CompactStructure]:
    """Neighbour lists of structures, in the compact form :func:`featurize` uses.

    Args:
        structures: ``ase.Atoms``, :class:`~bpnn_jax.descriptors.batch.HostStructure`
            (prepared with ``spec.elements``) or :class:`CompactStructure`
            objects (passed through).
        spec: the function set (elements and cut-off).
        progress: tqdm progress bar on stderr.

    Returns:
        One :class:`CompactStructure` per input, in order.

    Raises:
        StructureError: see :func:`~bpnn_jax.descriptors.batch.prepare_structures`.
    """
    from .batch import HostStructure, prepare_structures

    structures = list(structures)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(structures), desc="neighbour lists", unit="struct", file=sys.stderr, leave=False)
    out: list[CompactStructure] = []
    try:
        for start in range(0, len(structures), _PREPARE_BLOCK):
            block = structures[start : start + _PREPARE_BLOCK]
            todo = [s for s in block if not isinstance(s, (HostStructure, CompactStructure))]
            prepared = iter(prepare_structures(todo, spec.elements, spec.cutoff) if todo else [])
            for s in block:
                if isinstance(s, CompactStructure):
                    out.append(s)
                elif isinstance(s, HostStructure):
                    out.append(CompactStructure.from_host(s))
                else:
                    out.append(CompactStructure.from_host(next(prepared)))
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    return out


# --------------------------------------------------------------------------
# featurisation
# --------------------------------------------------------------------------


def featurize(
    structures: Iterable,
    spec,
    *,
    dtype=np.float64,
    atoms_per_batch: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
) -> list[np.ndarray]:
    """Symmetry functions of every atom of every structure.

    Args:
        structures: ``ase.Atoms`` objects (periodic or not), or
            :class:`~bpnn_jax.descriptors.batch.HostStructure` / :class:`CompactStructure`
            objects already prepared with ``elements = spec.elements`` and
            ``cutoff >= spec.cutoff`` (their neighbour lists are used as
            they are).
        spec: the :class:`~bpnn_jax.descriptors.SymmetryFunctionSet`; its
            ``elements`` fix the species order of the columns, and every atom
            must be one of them.
        dtype: float dtype of the computation and of the result
            (``np.float64`` or ``np.float32``).
        atoms_per_batch: target padded atoms per batch (B = max(1,
            atoms_per_batch // N_pad) structures per batch); None =
            :func:`default_atoms_per_batch` (256 on CPU, 8192 on a GPU).
        chunk_size: atoms per vmapped chunk inside ``lax.map``.
        progress: show tqdm progress bars on stderr (neighbour lists,
            batches).

    Returns:
        One array of shape (n_atoms_k, spec.n_functions) and dtype ``dtype``
        per structure, in input order, atoms in the structure's order.
        Values are dimensionless.

    Raises:
        StructureError: an atom of an element not in ``spec.elements``, a
            non-finite position or a singular cell (the message names the
            structure, from ``atoms.info["file"]`` when set).
        BPNNInputError: a dtype other than float32/float64, or a size < 1.
    """
    return _map_batches(structures, spec, descriptor_function(spec, chunk_size), np.zeros((0, spec.n_functions)), dtype=dtype,
                        atoms_per_batch=atoms_per_batch, chunk_size=chunk_size, progress=progress,
                        desc="featurizing", crop=lambda v, n: v[:n])


def _map_batches(structures, spec, fn, empty, *, dtype, atoms_per_batch, chunk_size, progress, desc, crop):
    """Run a jitted batch function over structures in planned, padded batches.

    Args:
        fn: ``f(batch) -> (B, ...)`` device array.
        empty: template of the result for an empty structure list entry.
        crop: ``crop(values_b, n_atoms) -> array`` cuts one structure's
            result out of its padded row.

    Returns:
        One array per structure (dtype ``dtype``), in input order.
    """
    from .batch import collate, plan_batches

    structures = list(structures)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise BPNNInputError(f"dtype must be float32 or float64, got {dtype}")
    if atoms_per_batch is None:
        atoms_per_batch = default_atoms_per_batch()
    if atoms_per_batch < 1 or chunk_size < 1:
        raise BPNNInputError("atoms_per_batch and chunk_size must be >= 1")
    out: list[np.ndarray] = [np.asarray(empty, dtype)] * len(structures)
    if not structures:
        return out

    prepared = prepare_compact(structures, spec, progress=progress)
    plan = plan_batches(prepared, atoms_per_batch)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc=desc, unit="batch", file=sys.stderr)

    def finish(members, result) -> None:
        values = tuple(np.asarray(r) for r in result) if isinstance(result, tuple) else np.asarray(result)
        for b, k in enumerate(members):
            row = tuple(v[b] for v in values) if isinstance(values, tuple) else values[b]
            got = crop(row, prepared[int(k)].n_atoms)
            out[int(k)] = np.array(got, dtype=dtype, copy=True) if isinstance(got, np.ndarray) else got
        if bar is not None:
            bar.update(1)

    try:
        pending = None  # (members, device result): one batch of lookahead
        for members, b, n, slots in plan:
            batch = collate([prepared[int(i)].host() for i in members], b, n, slots, dtype=dtype)
            result = fn(batch)  # asynchronous dispatch; fn may pick its program by the batch's shape
            if pending is not None:
                finish(*pending)
            pending = (members, result)
        if pending is not None:
            finish(*pending)
    finally:
        if bar is not None:
            bar.close()
    return out


#: Atoms per vmapped chunk of the Jacobian (its per-atom temporaries are
#: ~20x the forward pass's; 2 was fastest on CPU).
JACOBIAN_CHUNK_SIZE = 2


@dataclasses.dataclass(frozen=True)
class SparseJacobian:
    """One structure's descriptor Jacobian over each atom's partners only.

    Attributes:
        values: (n, w, F, 3) Å⁻¹, ``values[i, q, f, c] = dG_{i,f} / dR_{partners[i, q], c}``.
        partners: (n, w) int32 atom indices, ascending per row, -1 after the
            row's last partner (with zero values).  w is the largest number
            of distinct atoms (the atom itself and the atoms of its
            neighbours' images) of any atom, at most n.
    """

    values: np.ndarray
    partners: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """The dense (n, n, F, 3) shape this Jacobian stands for."""
        n, _, F, c = self.values.shape
        return (n, n, F, c)

    @property
    def width(self) -> int:
        return int(self.values.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.partners.nbytes)

    def dense(self) -> np.ndarray:
        """The (n, n, F, 3) array of :func:`descriptor_jacobians` with ``sparse=False``."""
        out = np.zeros(self.shape, self.values.dtype)
        rows, cols = np.nonzero(self.partners >= 0)
        out[rows, self.partners[rows, cols]] = self.values[rows, cols]
        return out


#: With ``sparse=None``, a structure's Jacobian is kept sparse when its width
#: is at most this fraction of its atom count (below it the index array and
#: the scatter of the forces pay for themselves).
SPARSE_WIDTH_FRACTION = 0.75


def _stays_sparse(width: int, n_atoms: int) -> bool:
    """The automatic layout's rule: sparse storage for a width of at most :data:`SPARSE_WIDTH_FRACTION` · n."""
    return width <= SPARSE_WIDTH_FRACTION * n_atoms


def jacobian_nbytes(structure, n_functions: int, itemsize: int = 4) -> int:
    """Upper bound of the bytes of one structure's Jacobian as :func:`descriptor_jacobians` stores it (auto layout).

    Args:
        structure: a prepared structure (:class:`~bpnn_jax.descriptors.batch.HostStructure`
            or :class:`CompactStructure`).
        n_functions: symmetry functions per atom F.
        itemsize: bytes per value.
    """
    n = int(structure.n_atoms)
    counts = structure.counts if hasattr(structure, "counts") else structure.nl.counts
    w = min(n, int(np.max(counts, initial=0)) + 1)  # distinct partners <= neighbours + itself
    if _stays_sparse(w, n):
        return n * w * (n_functions * 3 * itemsize + 4)
    return n * n * n_functions * 3 * itemsize


def descriptor_jacobians(
    structures: Iterable,
    spec,
    *,
    dtype=np.float32,
    atoms_per_batch: int | None = None,
    chunk_size: int = JACOBIAN_CHUNK_SIZE,
    progress: bool = False,
    sparse: bool | None = None,
) -> list:
    """Derivatives dG_i/dR_k of every atom's symmetry functions by every position.

    With these, forces of any network on the functions are a contraction,
    F_k = -sum_i (dE/dG_i) . J[i, k], so training on forces does not have to
    differentiate the symmetry functions again at every step (see
    :mod:`bpnn_jax.training.jacobian`).  Periodic images are folded onto
    their atoms.

    Memory: dense, n_atoms² · F · 3 values per structure (a 24-atom TiO2
    cell in float32: 0.5 MB; all 7033 structures of the TiO2 set: 3.4 GB);
    sparse (:class:`SparseJacobian`), n_atoms · w · F · 3 with w the most
    distinct atoms within the cut-off of any atom, so linear in the atom
    count once a cell is wider than ~2 Rc.

    Args:
        structures: as for :func:`featurize`.
        spec: the function set.
        dtype: float dtype of the computation and the result.
        atoms_per_batch: target padded atoms per batch (None: as featurize).
        chunk_size: atoms per vmapped chunk inside ``lax.map``.
        progress: tqdm progress bars on stderr.
        sparse: False = every structure dense; True = every structure a
            :class:`SparseJacobian`; None = sparse where its width is at
            most :data:`SPARSE_WIDTH_FRACTION` of the atom count (small
            cells, where every atom sees nearly every other, stay dense).

    Returns:
        One entry per structure: an array of shape (n_k, n_k,
        spec.n_functions, 3) in Å⁻¹, J[i, k, f, c] = dG_{i,f} / dR_{k,c}, or
        a :class:`SparseJacobian` of the same values.
    """
    from .symmetry import batch_descriptor_jacobian, batch_descriptor_jacobian_sparse

    dense_fn = _cached_jit(batch_descriptor_jacobian, spec, chunk_size)
    sparse_fn = _cached_jit(batch_descriptor_jacobian_sparse, spec, chunk_size)
    np_dtype = np.dtype(dtype)

    def fn(batch):
        B, N, M = batch.neighbors.shape
        # The sparse program only when its width min(N, M + 1) can be below N (wide cells).
        return sparse_fn(batch) if sparse or (sparse is None and M + 1 < N) else dense_fn(batch)

    def crop(v, n):
        if not isinstance(v, tuple):
            return v[:n, :n]
        values, partners = v
        partners = partners[:n]
        w = max(int((partners >= 0).sum(axis=1).max(initial=0)), 1)
        out = SparseJacobian(np.array(values[:n, :w], np_dtype), np.array(partners[:, :w], np.int32))
        return out if sparse or _stays_sparse(w, n) else out.dense()

    return _map_batches(structures, spec, fn, np.zeros((0, 0, spec.n_functions, 3)), dtype=dtype,
                        atoms_per_batch=atoms_per_batch, chunk_size=chunk_size, progress=progress,
                        desc="descriptor Jacobians", crop=crop)


def descriptor_strain_jacobians(
    structures: Iterable,
    spec,
    *,
    dtype=np.float32,
    atoms_per_batch: int | None = None,
    chunk_size: int = JACOBIAN_CHUNK_SIZE,
    progress: bool = False,
) -> list[np.ndarray]:
    """Strain derivatives dG_i/dε_v of every atom's symmetry functions (for stress training).

    Returns:
        One (n_k, spec.n_functions, 6) array per structure, Voigt order
        (xx, yy, zz, yz, xz, xy); see
        :func:`bpnn_jax.descriptors.batch_descriptor_strain_jacobian`.
    """
    from .symmetry import batch_descriptor_strain_jacobian

    return _map_batches(structures, spec, _cached_jit(batch_descriptor_strain_jacobian, spec, chunk_size),
                        np.zeros((0, spec.n_functions, 6)), dtype=dtype, atoms_per_batch=atoms_per_batch,
                        chunk_size=chunk_size, progress=progress, desc="strain Jacobians", crop=lambda v, n: v[:n])


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------


def default_elements(symbols: Iterable[str], preset: str = "artrith-urban") -> tuple[str, ...]:
    """Element order used when none is given.

    If every element found is one the preset was made for (for
    ``"artrith-urban"``: O and Ti), the preset's own order is used (O, Ti:
    the column layout of aenet's TiO2 setup, 70 functions, even for data
    holding only one of them).  Otherwise the elements found, sorted by
    symbol (Python string order, e.g. ("Li", "O", "Ti")).  aenet orders
    columns by its ``TYPES`` list; pass ``elements`` explicitly to follow a
    particular one.

    Args:
        symbols: element symbols of all atoms (any iterable).
        preset: preset name.

    Returns:
        The element tuple.
    """
    from .symmetry import ARTRITH_URBAN_ELEMENTS  # the set "auto" picks for them

    found = set(symbols)
    usual = ARTRITH_URBAN_ELEMENTS if preset.lower().replace("_", "-") in ("artrith-urban", "auto") else None
    if usual is not None and found <= set(usual):
        return usual
    return tuple(sorted(found))


@dataclasses.dataclass
class FeatureSet:
    """Symmetry functions of a list of structures read from files.

    Attributes:
        files: file of each structure, as found (see
            :func:`bpnn_jax.io.find_xsf_files`).
        symbols: per structure, (n_atoms_k,) array of element symbols.
        values: per structure, (n_atoms_k, n_functions) array of raw SF
            values (dimensionless), atoms in file order.
        spec: the symmetry-function set (its ``columns()`` describe
            ``values``' columns).
        skipped: ``(file, reason)`` for each file that could not be read
            (only with ``skip_invalid=True``).
    """

    files: list[str]
    symbols: list[np.ndarray]
    values: list[np.ndarray]
    spec: Any
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def n_atoms(self) -> np.ndarray:
        """(n_structures,) int64 atom counts."""
        return np.array([len(s) for s in self.symbols], np.int64)


def featurize_files(
    paths,
    preset: str = "auto",
    elements: Sequence[str] | None = None,
    *,
    dtype=np.float64,
    progress: bool = False,
    skip_invalid: bool = False,
    atoms_per_batch: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FeatureSet:
    """Read XSF files and compute their symmetry functions.

    Args:
        paths: XSF files and/or directories of ``*.xsf`` files (a single
            path is accepted too); directories are expanded in name order.
        preset: symmetry-function set (see :meth:`SymmetryFunctionSet.preset`; default "auto").
        elements: element order of the columns; default
            :func:`default_elements` of the data.
        dtype: ``np.float64`` or ``np.float32`` (computation and result).
        progress: tqdm progress bars on stderr (reading, featurising).
        skip_invalid: skip files that cannot be read or whose structure
            cannot be featurised (listed in ``skipped``) instead of raising
            on the first one.
        atoms_per_batch, chunk_size: see :func:`featurize`.

    Returns:
        The :class:`FeatureSet`, structures in the order the files were
        found.

    Raises:
        XSFError: a bad file (unless ``skip_invalid``), a missing path.
        BPNNInputError: no readable (usable) structure, an unknown preset.
        StructureError: unless ``skip_invalid``: an atom of an element not
            in ``elements``, or a structure that cannot be featurised
            (singular cell, atoms too close; see
            :func:`~bpnn_jax.descriptors.batch.prepare_structures`).
    """
    from ..io.frames import read_structures
    from .symmetry import descriptor_preset

    structures, skipped = read_structures(paths, skip_invalid=skip_invalid, progress=progress)
    if not structures:
        raise BPNNInputError(f"no readable structures among {len(skipped)} file(s)")
    symbols = [np.array(a.get_chemical_symbols(), dtype=str) for a in structures]
    if elements is None:
        elements = default_elements((s for sym in symbols for s in sym.tolist()), preset)
    try:
        spec = descriptor_preset(preset, tuple(elements))
    except ValueError as exc:
        raise BPNNInputError(str(exc)) from None
    files = [str(a.info.get("file", "")) for a in structures]
    skipped = list(skipped)
    items: list = structures
    if skip_invalid:
        # Build the neighbour lists here, one structure at a time, so that a
        # structure that cannot be featurised (e.g. two atoms on top of each
        # other) is skipped like an unreadable file.
        items, kept = [], []
        for k, atoms in enumerate(structures):
            try:
                items.extend(prepare_compact([atoms], spec))
                kept.append(k)
            except StructureError as exc:
                reason = str(exc)
                if reason.startswith(files[k] + ": "):
                    reason = reason[len(files[k]) + 2 :]
                skipped.append((files[k], reason))
        if not kept:
            raise BPNNInputError(f"no usable structures among {len(skipped)} file(s)")
        files = [files[k] for k in kept]
        symbols = [symbols[k] for k in kept]
    values = featurize(
        items, spec, dtype=dtype, atoms_per_batch=atoms_per_batch, chunk_size=chunk_size, progress=progress
    )
    return FeatureSet(files=files, symbols=symbols, values=values, spec=spec, skipped=skipped)


def feature_arrays(features: FeatureSet) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` layout (that of the aenet reference file).

    Returns:
        ``files`` (S,) str; ``n_atoms`` (S,) int64; ``atom_offset`` (S,)
        int64, first row of each structure; ``species`` (A,) str, element
        symbol per atom; ``sf`` (A, F) float, raw SF values with atoms in
        file order and structures in order; ``elements`` (E,) str, the
        element order; ``cutoff`` () float64, Å; and per column ``fn_center``
        ('*': all centre species), ``fn_kind`` ('G2'/'G4', or
        'cheb-radial'/'cheb-angular' for the Chebyshev basis),
        ``fn_neighbors`` (e.g. 'O', 'O-Ti'; 'all'/'typespin' for
        Chebyshev), ``fn_eta`` (Å⁻²), ``fn_rs``
        (Å), ``fn_lambda``, ``fn_zeta`` (float64, 0 for G2), ``fn_rc`` (Å),
        each of shape (F,).
    """
    spec = features.spec
    n_atoms = features.n_atoms
    offset = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    n_f = spec.n_functions
    dtype = features.values[0].dtype if features.values else np.float64
    sf = np.concatenate(features.values, axis=0) if features.values else np.zeros((0, n_f), dtype)
    species = np.concatenate(features.symbols) if features.symbols else np.zeros((0,), str)
    cols = spec.columns()
    return {
        "files": np.array(features.files, dtype=str),
        "n_atoms": n_atoms,
        "atom_offset": offset,
        "species": species.astype(str),
        "sf": sf,
        "elements": np.array(spec.elements, dtype=str),
        "cutoff": np.float64(spec.cutoff),
        "fn_center": np.array(["*"] * n_f, dtype=str),
        "fn_kind": np.array([c["kind"] for c in cols], dtype=str),
        "fn_neighbors": np.array([c["neighbors"] for c in cols], dtype=str),
        "fn_eta": np.array([c["eta"] for c in cols], np.float64),
        "fn_rs": np.array([c["rs"] for c in cols], np.float64),
        "fn_lambda": np.array([c["lambda"] for c in cols], np.float64),
        "fn_zeta": np.array([c["zeta"] for c in cols], np.float64),
        "fn_rc": np.array([c.get("rc", spec.cutoff) for c in cols], np.float64),
    }


def save_features(path: str | os.PathLike, features: FeatureSet) -> None:
    """Write :func:`feature_arrays` to ``path`` as an uncompressed ``.npz``.

    The file is written atomically (temporary file + rename) and exactly at
    ``path``: no ``.npz`` suffix is appended.  It loads with
    ``np.load(path, allow_pickle=False)``.

    Raises:
        BPNNInputError: the directory does not exist or is not writable.
    """
    from ..io.atomic import atomic_write

    arrays = feature_arrays(features)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
