"""An on-disk cache of descriptor Jacobians dG_i/dR_k, keyed by data and descriptor set.

Computing the Jacobians of the TiO2 training set takes ~10 minutes on a
2-core CPU; they depend only on the geometry and the symmetry-function set,
so a run stores them once in its run directory and resume, fine-tunes,
committee members and grid trials that point at the same cache reuse them.

Layout in ``cache_dir``: ``jacobians-KEY.npy`` (all structures' values
flattened and concatenated, float32 or float64: (n, n, F, 3) for a dense
structure, (n, w, F, 3) for a :class:`~bpnn_jax.descriptors.featurize.SparseJacobian`),
``partners-KEY.npy`` (the sparse structures' (n, w) int32 partner indices,
concatenated; only when there are any) and ``jacobians-KEY.json`` (atom
counts, widths (0 = dense), F, dtype; written last, so its presence means
the set is complete).  KEY is a SHA-256 over the descriptor set, the dtype,
the layout choice and every structure's species, positions and cell
(bytes), so changed data or a changed descriptor set gives a new key and a
recomputation; the ``.npy`` files are memory-mapped when read.  Every file
is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["jacobian_key", "cached_jacobians"]


def jacobian_key(structures: Sequence, spec, dtype=np.float32, sparse: bool | None = None) -> str:
    """Hex key of the Jacobians of ``structures`` under ``spec``, ``dtype`` and layout choice ``sparse``."""
    h = hashlib.sha256()
    params = {k: v for k, v in spec.to_config().items() if k != "name"}  # the parameters, not their label
    h.update(json.dumps(params, sort_keys=True, default=float).encode())
    h.update(np.dtype(dtype).str.encode())
    if sparse is not None:  # the automatic layout keeps the keys of caches written before sparse storage
        h.update(f"sparse={bool(sparse)}".encode())
    for s in structures:
        for arr in (np.asarray(s.species, np.int32), np.asarray(s.positions, np.float64),
                    np.asarray(s.cell, np.float64)):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:24]


def cached_jacobians(structures: Sequence, spec, cache_dir, *, dtype=np.float32, progress: bool = False,
                     verbose: bool = False, sparse: bool | None = None) -> tuple[list, bool]:
    """Jacobians of ``structures`` (as :func:`bpnn_jax.descriptors.featurize.descriptor_jacobians`), from or into a cache.

    Args:
        structures: prepared structures (positions, cell, species, neighbour list).
        spec: the symmetry-function set.
        cache_dir: directory of the cache (created if needed); None computes
            without caching.
        dtype: float dtype of the values.
        progress: progress bars while computing.
        verbose: print what was done and how long it took.
        sparse: layout, as for :func:`~bpnn_jax.descriptors.featurize.descriptor_jacobians`.

    Returns:
        (list of (n, n, F, 3) arrays or
        :class:`~bpnn_jax.descriptors.featurize.SparseJacobian`, read-only views of the
        memory-mapped cache when it was hit; True when the cache was hit).
    """
    from .featurize import SparseJacobian, descriptor_jacobians

    if cache_dir is None:
        return descriptor_jacobians(structures, spec, dtype=dtype, progress=progress, sparse=sparse), False
    cache_dir = Path(cache_dir)
    key = jacobian_key(structures, spec, dtype, sparse)
    data_path = cache_dir / f"jacobians-{key}.npy"
    partners_path = cache_dir / f"partners-{key}.npy"
    meta_path = cache_dir / f"jacobians-{key}.json"
    F = spec.n_functions
    if meta_path.exists() and data_path.exists():
        meta = json.loads(meta_path.read_text())
        flat = np.load(data_path, mmap_mode="r")
        counts = [int(n) for n in meta["n_atoms"]]
        widths = [int(w) for w in meta.get("widths", [0] * len(counts))]  # no widths: written all dense
        sizes = [n * (w or n) * F * 3 for n, w in zip(counts, widths)]
        n_partners = sum(n * w for n, w in zip(counts, widths))
        partners = np.load(partners_path, mmap_mode="r") if n_partners else np.zeros(0, np.int32)
        if meta.get("n_functions") == F and flat.size == sum(sizes) and partners.size == n_partners:
            if verbose:
                print(f"descriptor Jacobians of {len(counts)} structures: read from {data_path}", flush=True)
            return _split(flat, partners, counts, widths, F), True
    t0 = time.time()
    jac = descriptor_jacobians(structures, spec, dtype=dtype, progress=progress, sparse=sparse)
    counts = [int(j.shape[0]) for j in jac]
    widths = [j.width if isinstance(j, SparseJacobian) else 0 for j in jac]
    cache_dir.mkdir(parents=True, exist_ok=True)
    sparse_parts = [j.partners for j in jac if isinstance(j, SparseJacobian)]
    if sparse_parts:
        _write_flat(partners_path, sparse_parts, np.int32)
    _write_flat(data_path, [j.values if isinstance(j, SparseJacobian) else j for j in jac], dtype)
    from ..io.atomic import atomic_write

    with atomic_write(meta_path) as fh:
        json.dump({"n_atoms": counts, "widths": widths, "n_functions": F, "dtype": np.dtype(dtype).str,
                   "descriptor": spec.to_config()}, fh, default=float)
    if verbose:
        n_sparse = len(sparse_parts)
        print(f"descriptor Jacobians of {len(jac)} structures ({n_sparse} sparse): {time.time() - t0:.0f} s, "
              f"cached in {data_path}", flush=True)
    return jac, False


def _write_flat(path: Path, arrays: Sequence[np.ndarray], dtype) -> None:
    """Concatenate ``arrays`` flattened into the ``.npy`` at ``path``, atomically (fsynced, then renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(sum(a.size for a in arrays),))
        pos = 0
        for a in arrays:
            mm[pos:pos + a.size] = np.asarray(a, dtype).ravel()
            pos += a.size
        mm.flush()
        del mm
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _split(flat: np.ndarray, partners: np.ndarray, counts: Sequence[int], widths: Sequence[int], F: int) -> list:
    from .featurize import SparseJacobian

    out, pos, ppos = [], 0, 0
    for n, w in zip(counts, widths):
        size = n * (w or n) * F * 3
        values = flat[pos:pos + size].reshape(n, w or n, F, 3)
        pos += size
        if w:
            out.append(SparseJacobian(values, partners[ppos:ppos + n * w].reshape(n, w)))
            ppos += n * w
        else:
            out.append(values)
    return out


def cached_strain_jacobians(structures: Sequence, spec, cache_dir, *, dtype=np.float32, progress: bool = False,
                            verbose: bool = False) -> list[np.ndarray]:
    """Strain Jacobians (n, F, 6) of ``structures`` (for stress training), from or into the cache.

    Small next to the position Jacobians (n·F·6 values per structure), kept
    in one ``.npz`` (``strain-<key>.npz``) under the same key.
    """
    from ..io.atomic import atomic_write
    from .featurize import descriptor_strain_jacobians

    if cache_dir is None:
        return descriptor_strain_jacobians(structures, spec, dtype=dtype, progress=progress)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"strain-{jacobian_key(structures, spec, dtype)}.npz"
    F = spec.n_functions
    if path.exists():
        with np.load(path) as data:
            counts, flat = data["n_atoms"], data["values"]
        if flat.size == int(counts.sum()) * F * 6:
            if verbose:
                print(f"strain Jacobians of {len(counts)} structures: read from {path}", flush=True)
            return list(np.split(flat.reshape(-1, F, 6), np.cumsum(counts)[:-1]))
    t0 = time.time()
    out = descriptor_strain_jacobians(structures, spec, dtype=dtype, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    counts = np.array([len(x) for x in out], np.int64)
    with atomic_write(path, mode="wb") as fh:
        np.savez(fh, n_atoms=counts, values=np.concatenate([np.asarray(x, dtype).reshape(-1) for x in out])
                 if out else np.zeros(0, dtype))
    if verbose:
        print(f"strain Jacobians of {len(out)} structures: {time.time() - t0:.0f} s, cached in {path}", flush=True)
    return out
