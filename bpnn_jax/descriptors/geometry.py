"""Differentiable geometry in JAX: displacement vectors and safe norms."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["safe_norm", "safe_inverse", "displacements"]


def safe_norm(x, axis: int = -1):
    """Euclidean norm with a finite (zero) gradient at the zero vector.

    ``jnp.linalg.norm`` has gradient x/|x|, which is NaN at x = 0 (padded
    neighbours).  The double ``where`` keeps both the value and the gradient
    finite: the inner one makes the sqrt argument positive, the outer one
    selects zero.

    Args:
        x: (..., 3) vectors.
        axis: axis to reduce.

    Returns:
        (...) norms, same dtype as ``x``.
    """
    sq = jnp.sum(x * x, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def safe_inverse(x):
    """1/x where x > 0, else 0, with finite gradients (double ``where``): inverse distances of padded slots."""
    ok = x > 0
    return jnp.where(ok, 1.0 / jnp.where(ok, x, 1.0), 0.0)


def displacements(positions, cell, neighbors, shifts):
    """Displacement vectors r_ij = R[j] - R[i] + S_ij @ cell of one structure.

    Args:
        positions: (N, 3) positions, Å.
        cell: (3, 3) lattice vectors as rows, Å.
        neighbors: (N, M) int neighbour indices j.
        shifts: (N, M, 3) integer-valued cell shifts S_ij.

    Returns:
        (N, M, 3) displacement vectors in Å (zero for padded slots, which
        point at the centre atom with zero shift).
    """
    rj = positions[neighbors]  # (N, M, 3)
    return rj - positions[:, None, :] + jnp.einsum("nmk,kl->nml", shifts.astype(cell.dtype), cell)
