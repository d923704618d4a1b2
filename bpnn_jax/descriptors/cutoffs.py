"""Cut-off functions (pure JAX)."""

from __future__ import annotations

import math

import jax.numpy as jnp

__all__ = ["cosine_cutoff", "cos_0_pi"]

# Taylor coefficients of sin(y) = y * sum_n c_n y^(2n), n = 0..10.  On
# |y| <= π/2 the first omitted term is (π/2)^23 / 23! < 2e-17, below float64
# round-off, so this is cos to machine precision.
_SIN_COEFFS = tuple((-1.0) ** n / math.factorial(2 * n + 1) for n in range(11))


def cos_0_pi(x):
    """cos(x) for x in [0, π], as a polynomial (exact to float64 round-off).

    XLA's CPU ``cos`` is a scalar libm call (~6 ns per element here) while a
    Horner polynomial vectorises (~2 ns); the cut-off is evaluated on every
    neighbour pair of every angular triplet, so this matters.  Uses
    cos(x) = -sin(x - π/2) with |x - π/2| <= π/2.

    Args:
        x: angles in [0, π] (radians), any shape.

    Returns:
        cos(x), same shape and dtype.
    """
    y = x - 0.5 * jnp.pi
    y2 = y * y
    p = jnp.full_like(y, _SIN_COEFFS[-1])
    for c in _SIN_COEFFS[-2::-1]:
        p = p * y2 + c
    return -y * p


def cosine_cutoff(r, cutoff: float):
    """Behler's cosine cut-off fc(r) = ½(cos(πr/Rc) + 1) for r < Rc, else 0.

    Smooth to first order at Rc, so energies and forces are continuous.

    Args:
        r: distances in Å (>= 0), any shape.
        cutoff: Rc in Å.

    Returns:
        fc(r), same shape and dtype as ``r``.
    """
    inside = r < cutoff
    # Clamp before the cos so the masked branch is finite in value and gradient.
    rr = jnp.where(inside, r, 0.0)
    return jnp.where(inside, 0.5 * (cos_0_pi(jnp.pi * rr / cutoff) + 1.0), 0.0)
