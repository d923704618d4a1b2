"""bpnn_jax: differentiable Behler-Parrinello neural-network potentials in JAX.

Importing the package selects the JAX backend for Keras 3 (unless the user
chose one already) and enables 64-bit types in JAX, so that float64
featurisation and float64 reference-energy subtraction are available.  All
model weights stay float32 unless asked otherwise.
"""

from __future__ import annotations

import os

# Keras 3 picks its backend once, at first import: set it before anything
# below (or the user) imports keras.  TensorFlow is not a dependency.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

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
    "load_model",
]

#: Names exported lazily (their modules import Keras), name -> submodule.
_LAZY = {"load_model": ".model", "BPNNCalculator": ".calculator"}


def __getattr__(name: str):
    """Import ``load_model`` and ``BPNNCalculator`` on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
