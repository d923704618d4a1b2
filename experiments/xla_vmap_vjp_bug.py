"""Minimal reproduction of the XLA:CPU bug behind ``bpnn_jax.model.member_backward``.

A float32 VJP of u(x) = x / |x| (the unit vectors of the descriptors),
``jax.vmap``-ed over 4 cotangents of shape (3072, 3), returns a wrong last
lane on XLA:CPU (jaxlib 0.10.2, 2-core AMD EPYC with AVX-512): every
component off by O(1), the same on every run, while the first three lanes,
float64 and the same passes one by one are right (12 lanes of 1000 vectors:
the last two wrong).  The optimised HLO
puts the backward pass's broadcast-multiply-reduce in one ``__ynn_fusion``
(XLA's YNNPACK library fusions); disabling only the reduce kind,

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_REDUCE

gives right values (so does ``--xla_cpu_enable_platform_dependent_math=false``).
The size matters: 4 × 3000 vectors fail, 4 × 2560 pass; 8 × 1024 and 2 × 4096
pass.  Codegen flags (``--xla_cpu_max_isa=AVX2``, optimisation level 0,
vector width 128, fast math off, ``--xla_cpu_use_xnnpack=false``) change
nothing.

bpnn_jax does not set the flag: without YNNPACK's reduce fusions the
float32 featurisation ran 17x slower on that machine (forward 77 -> 1361
µs/atom, 782 structures) and the shipped model's energy 16x slower (191 ->
3132 µs/atom, rutile, 1050 atoms).  Instead no
program of the package vmaps a backward pass over cotangents (committee
members' forces are ``jax.lax.map``-ed, see ``member_backward``), and the
tests compare float32 against float64 on the production shapes.

Usage::

    python experiments/xla_vmap_vjp_bug.py [N] [K]     # exit status 1 when the bug shows

Prints the largest |float32 − float64| per lane.
"""

from __future__ import annotations

import sys

import numpy as np
import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)


def unit(x):
    """(..., 3) vectors -> unit vectors."""
    return x * (1.0 / jnp.sqrt(jnp.sum(x * x, axis=-1)))[..., None]


def lane_errors(n: int = 3072, k: int = 4) -> np.ndarray:
    """Largest |float32 − float64| of each of ``k`` vmapped VJP lanes (values are O(1))."""
    x = np.random.default_rng(0).normal(size=(n, 3))
    ct = np.random.default_rng(1).normal(size=(k, n, 3))
    out = {}
    for dtype in (np.float32, np.float64):
        _, vjp = jax.vjp(unit, jnp.asarray(x, dtype))
        out[dtype] = np.asarray(jax.jit(jax.vmap(lambda c: vjp(c)[0]))(jnp.asarray(ct, dtype)), np.float64)
    return np.abs(out[np.float32] - out[np.float64]).reshape(k, -1).max(axis=1)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3072
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    err = lane_errors(n, k)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}: {k} lanes of {n} vectors, "
          f"max |float32 - float64| per lane: {np.array2string(err, precision=2)}")
    return int(err.max() > 1e-3)


if __name__ == "__main__":
    sys.exit(main())
