"""Traced programs kept across processes (``jax.export``), so a warm process does not trace again.

The persistent XLA compilation cache (turned on in :mod:`bpnn_jax`) saves a
second process XLA's compile, but not the Python tracing and the lowering to
StableHLO that come before its lookup: 2-3 s of a warm ``featurize`` of 782
TiO2 structures on a 2-core CPU.  :func:`persistent_jit` wraps a function
like ``jax.jit`` and, per input signature, serialises its lowered program
with :mod:`jax.export` the first time and deserialises it in later
processes (milliseconds); the compile of that program is then a hit of the
compilation cache.  Both the first process and the later ones run the
exported program, so their results are bit-identical.

Files: ``<compilation cache>/bpnn_exported/<name>-<key>.jaxexp``, written
atomically, each a header (magic, SHA-256 of the key, SHA-256 of the
payload) and the serialised program.  The key hashes the function's name,
its configuration (e.g. the descriptor set), the input tree, shapes and
dtypes, the JAX and jaxlib versions, the backend, the x64 and matmul
precision settings and the package's own source: a change of any of them
gives another file.  A file that is unreadable, truncated, corrupted or
does not match falls back to tracing (and is replaced).

Off with the compilation cache (``BPNN_COMPILATION_CACHE=0``), or alone
with ``BPNN_EXPORTED_PROGRAMS=0``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

__all__ = ["STATS", "persistent_jit", "program_dir"]

#: Counts in this process: programs ``traced`` (and exported), ``loaded``
#: from a file, files ``rejected`` (corrupted, stale or unreadable), and
#: ``unsaved`` programs (not exported, or their file could not be written:
#: a later process traces them again).  For tests and benchmarks.
STATS = {"traced": 0, "loaded": 0, "rejected": 0, "unsaved": 0}

_MAGIC = b"BPNNEXP1"
_SUBDIR = "bpnn_exported"
_OFF = ("0", "off", "false", "no")
_SOURCE_DIGEST: list[str] = []  # computed once per process


def program_dir() -> Path | None:
    """Directory of the exported programs (None: switched off, or no compilation cache)."""
    from .. import compilation_cache_dir

    base = compilation_cache_dir()
    if base is None or os.environ.get("BPNN_EXPORTED_PROGRAMS", "").lower() in _OFF:
        return None
    return Path(base) / _SUBDIR


def _source_digest() -> str:
    """SHA-256 of the package's Python sources: an edited package never loads an older program."""
    if not _SOURCE_DIGEST:
        h = hashlib.sha256()
        root = Path(__file__).resolve().parent.parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _SOURCE_DIGEST.append(h.hexdigest())
    return _SOURCE_DIGEST[0]


def _program_key(name: str, config: str, treedef, avals) -> str:
    import jaxlib

    parts = [
        name, config, str(treedef), repr(avals), jax.__version__, jaxlib.__version__, jax.default_backend(),
        str(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision), _source_digest(),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _read_program(path: Path, key: str):
    """The exported program in ``path`` when the file is whole and is the one of ``key``, else None."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        STATS["rejected"] += 1
        return None
    head = len(_MAGIC) + 64
    payload = blob[head:]
    if (blob[: len(_MAGIC)] != _MAGIC or blob[len(_MAGIC) : len(_MAGIC) + 32] != bytes.fromhex(key)
            or blob[len(_MAGIC) + 32 : head] != hashlib.sha256(payload).digest()):
        STATS["rejected"] += 1
        return None
    try:
        return jax.export.deserialize(bytearray(payload))
    except Exception:  # a program of another jax.export version, no flatbuffers: trace again
        STATS["rejected"] += 1
        return None


def _write_program(path: Path, key: str, exported) -> None:
    from ..errors import BPNNInputError
    from ..io.atomic import atomic_write

    try:
        payload = bytes(exported.serialize())
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as fh:
            fh.write(_MAGIC + bytes.fromhex(key) + hashlib.sha256(payload).digest() + payload)
    except (OSError, BPNNInputError, ValueError, TypeError, ImportError):
        # A read-only cache, an output tree jax.export cannot serialise, no flatbuffers: the next
        # process traces again.
        STATS["unsaved"] += 1


class _PersistentJit:
    """``jax.jit(fn)`` whose programs are exported to and loaded from :func:`program_dir`."""

    def __init__(self, fn: Callable, name: str, config: str):
        self._fn = fn
        self._name = name
        self._config = config
        self._jit = jax.jit(fn)
        self._programs: dict = {}  # (treedef, (shape, dtype) per leaf) -> jitted call of the exported program

    def __call__(self, *args):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        # Per call (an MD step calls this): a cheap signature, and the plain jit inside another
        # transformation, for Python scalars and for weakly typed arrays (an exported program's inputs
        # are strongly typed and could promote differently).
        if not all(type(x) is np.ndarray or not (isinstance(x, jax.core.Tracer) or getattr(x, "weak_type", True))
                   for x in leaves):
            return self._jit(*args)
        signature = (treedef, *[(x.shape, x.dtype) for x in leaves])
        call = self._programs.get(signature)
        if call is None:
            directory = program_dir()
            if directory is None:
                return self._jit(*args)
            avals = tuple((tuple(x.shape), np.dtype(x.dtype).name) for x in leaves)
            call = self._programs[signature] = self._load_or_export(directory, treedef, avals)
        return self._jit(*args) if call is self._jit else call(*leaves)

    def _load_or_export(self, directory: Path, treedef, avals):
        key = _program_key(self._name, self._config, treedef, avals)
        path = directory / f"{self._name}-{key[:32]}.jaxexp"
        exported = _read_program(path, key)
        if exported is not None and [(tuple(a.shape), np.dtype(a.dtype).name) for a in exported.in_avals] \
                != list(avals):
            STATS["rejected"] += 1
            exported = None
        if exported is not None:
            STATS["loaded"] += 1
        else:
            def flat(*leaves):
                return self._fn(*jax.tree_util.tree_unflatten(treedef, leaves))

            try:
                exported = jax.export.export(jax.jit(flat))(*[jax.ShapeDtypeStruct(s, d) for s, d in avals])
            except Exception:
                # What jax.export does not support (e.g. host callbacks): the plain jit, which also raises
                # a genuine error of ``fn`` again.
                STATS["unsaved"] += 1
                return self._jit
            STATS["traced"] += 1
            _write_program(path, key, exported)
        return jax.jit(exported.call)


def persistent_jit(fn: Callable, name: str, config: str) -> Callable:
    """``jax.jit(fn)`` whose traced programs persist across processes (see the module docstring).

    Args:
        fn: a function of arrays (any pytree of array arguments); its output
            an array or tuples, lists and dicts of arrays (other containers
            cannot be serialised: such programs are traced in every process).
        name: the function's stable name (file names and key), e.g.
            ``"batch_descriptors"``.
        config: everything the trace bakes in besides the inputs' shapes
            and dtypes (e.g. the ``repr`` of the descriptor set and the chunk
            size); it is part of the key.

    Returns:
        ``f(*args)``, called like ``jax.jit(fn)``.  Inside another
        transformation (tracer arguments) or with non-array arguments it is
        the plain ``jax.jit(fn)``.
    """
    return _PersistentJit(fn, name, config)
