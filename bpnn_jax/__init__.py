"""bpnn_jax: differentiable Behler-Parrinello neural-network potentials in JAX.

Importing the package selects the JAX backend for Keras 3 (unless the user
chose one already) and enables 64-bit types in JAX, so that float64
featurisation and float64 reference-energy subtraction are available, and
sets full float32 matmul precision (no TF32 on GPUs; set
``BPNN_MATMUL_PRECISION=default`` to keep JAX's default).  All model weights
stay float32 unless asked otherwise.

It also turns on JAX's persistent compilation cache, so a second process
(``featurize``, ``evaluate``, the ASE calculator, ...) loads its compiled
programs instead of compiling them again: in ``$XDG_CACHE_HOME/bpnn_jax/xla``
(``~/.cache/bpnn_jax/xla``) by default; JAX's own ``JAX_COMPILATION_CACHE_DIR``
wins when set, ``BPNN_COMPILATION_CACHE=DIR`` chooses another directory and
``BPNN_COMPILATION_CACHE=0`` switches it off.  See :func:`compilation_cache_dir`.
The traced programs are kept there too (``bpnn_exported/``), so that a
second process does not trace them again either
(:mod:`bpnn_jax.descriptors.programs`; ``BPNN_EXPORTED_PROGRAMS=0`` turns
that alone off).
"""

from __future__ import annotations

import os

# Keras 3 picks its backend once, at first import: set it before anything
# below (or the user) imports keras.  TensorFlow is not a dependency.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
# On Ampere/Hopper GPUs JAX's default float32 matmuls use TF32 (10-bit
# mantissa): forces would then no longer be the exact gradient of the
# energy to float32 round-off, which shows as energy drift in NVE.  The
# networks are small, so full float32 costs little.  No effect on CPU.
_MATMUL_PRECISION = os.environ.get("BPNN_MATMUL_PRECISION", "highest")
if _MATMUL_PRECISION != "default":
    jax.config.update("jax_default_matmul_precision", _MATMUL_PRECISION)


def _default_cache_dir() -> str | None:
    choice = os.environ.get("BPNN_COMPILATION_CACHE", "")
    if choice.lower() in ("0", "off", "false", "no"):
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if choice:
        return choice
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bpnn_jax", "xla")


_CACHE_DIR = _default_cache_dir()
if _CACHE_DIR is not None:
    try:
        os.makedirs(_CACHE_DIR, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
        # Cache every program: the many sub-second compiles of a short
        # command add up to most of its run time.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except OSError:  # a read-only home: run without the cache
        _CACHE_DIR = None


def compilation_cache_dir() -> str | None:
    """Directory of the persistent XLA compilation cache in use (None: off)."""
    return _CACHE_DIR


from .errors import BPNNError, BPNNInputError, ModelError, StructureError, XSFError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BPNNCalculator",
    "BPNNError",
    "BPNNInputError",
    "ModelError",
    "StructureError",
    "XSFError",
    "__version__",
    "compilation_cache_dir",
    "load_model",
]

#: Names exported lazily (their modules import Keras), name -> submodule.
_LAZY = {"load_model": ".model.bpnn", "BPNNCalculator": ".calculators.ase"}


from .lazy import lazy_attributes  # noqa: E402

# ``load_model`` and ``BPNNCalculator`` are imported on first use (they pull in Keras).
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
