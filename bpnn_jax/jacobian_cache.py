"""An on-disk cache of descriptor Jacobians dG_i/dR_k, keyed by data and descriptor set.

Computing the Jacobians of the TiO2 training set takes ~10 minutes on a
2-core CPU; they depend only on the geometry and the symmetry-function set,
so a run stores them once in its run directory and resume, fine-tunes,
committee members and grid trials that point at the same cache reuse them.

Layout in ``cache_dir``: ``jacobians-KEY.npy`` (all structures' arrays
(n, n, F, 3) flattened and concatenated, float32 or float64) and
``jacobians-KEY.json`` (atom counts, F, dtype; written last, so its presence
means the pair is complete).  KEY is a SHA-256 over the descriptor set, the
dtype and every structure's species, positions and cell (bytes), so changed
data or a changed descriptor set gives a new key and a recomputation; the
``.npy`` is memory-mapped when read.  Both files are written atomically.
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


def jacobian_key(structures: Sequence, spec, dtype=np.float32) -> str:
    """Hex key of the Jacobians of ``structures`` under ``spec`` and ``dtype``."""
    h = hashlib.sha256()
    params = {k: v for k, v in spec.to_config().items() if k != "name"}  # the parameters, not their label
    h.update(json.dumps(params, sort_keys=True, default=float).encode())
    h.update(np.dtype(dtype).str.encode())
    for s in structures:
        for arr in (np.asarray(s.species, np.int32), np.asarray(s.positions, np.float64),
                    np.asarray(s.cell, np.float64)):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:24]


def cached_jacobians(structures: Sequence, spec, cache_dir, *, dtype=np.float32, progress: bool = False,
                     verbose: bool = False) -> tuple[list[np.ndarray], bool]:
    """Jacobians of ``structures`` (as :func:`bpnn_jax.featurize.descriptor_jacobians`), from or into a cache.

    Args:
        structures: prepared structures (positions, cell, species, neighbour list).
        spec: the symmetry-function set.
        cache_dir: directory of the cache (created if needed); None computes
            without caching.
        dtype: float dtype of the values.
        progress: progress bars while computing.
        verbose: print what was done and how long it took.

    Returns:
        (list of (n, n, F, 3) arrays, read-only views of the memory-mapped
        cache when it was hit; True when the cache was hit).
    """
    from .featurize import descriptor_jacobians

    if cache_dir is None:
        return descriptor_jacobians(structures, spec, dtype=dtype, progress=progress), False
    cache_dir = Path(cache_dir)
    key = jacobian_key(structures, spec, dtype)
    data_path = cache_dir / f"jacobians-{key}.npy"
    meta_path = cache_dir / f"jacobians-{key}.json"
    F = spec.n_functions
    if meta_path.exists() and data_path.exists():
        meta = json.loads(meta_path.read_text())
        flat = np.load(data_path, mmap_mode="r")
        counts = [int(n) for n in meta["n_atoms"]]
        if meta.get("n_functions") == F and flat.size == sum(n * n * F * 3 for n in counts):
            if verbose:
                print(f"descriptor Jacobians of {len(counts)} structures: read from {data_path}", flush=True)
            return _split(flat, counts, F), True
    t0 = time.time()
    jac = descriptor_jacobians(structures, spec, dtype=dtype, progress=progress)
    counts = [int(j.shape[0]) for j in jac]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(sum(j.size for j in jac),))
        pos = 0
        for j in jac:
            mm[pos:pos + j.size] = np.asarray(j, dtype).ravel()
            pos += j.size
        mm.flush()
        del mm
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    from .io import atomic_write

    with atomic_write(meta_path) as fh:
        json.dump({"n_atoms": counts, "n_functions": F, "dtype": np.dtype(dtype).str,
                   "descriptor": spec.to_config()}, fh, default=float)
    if verbose:
        print(f"descriptor Jacobians of {len(jac)} structures: {time.time() - t0:.0f} s, cached in {data_path}",
              flush=True)
    return jac, False


def _split(flat: np.ndarray, counts: Sequence[int], F: int) -> list[np.ndarray]:
    out, pos = [], 0
    for n in counts:
        size = n * n * F * 3
        out.append(flat[pos:pos + size].reshape(n, n, F, 3))
        pos += size
    return out


def cached_strain_jacobians(structures: Sequence, spec, cache_dir, *, dtype=np.float32, progress: bool = False,
                            verbose: bool = False) -> list[np.ndarray]:
    """Strain Jacobians (n, F, 6) of ``structures`` (for stress training), from or into the cache.

    Small next to the position Jacobians (n·F·6 values per structure), kept
    in one ``.npz`` (``strain-<key>.npz``) under the same key.
    """
    from .featurize import descriptor_strain_jacobians
    from .io import atomic_write

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
