"""aenet's Chebyshev descriptor (Artrith, Urban & Ceder 2017) in pure JAX.

For a centre atom i with neighbours j (periodic images included), R in Å,
fc the cosine cut-off of :mod:`.cutoffs`:

    radial   c_n = Σ_j        fc(R_ij; Rc_r) T_n(2 R_ij / Rc_r − 1),     n = 0 … radial_order
    angular  a_n = Σ_{j<k}    fc(R_ij; Rc_a) fc(R_ik; Rc_a) T_n(cos θ_ijk), n = 0 … angular_order

with T_n the Chebyshev polynomials of the first kind.  With more than one
element each sum is taken twice: once with every neighbour weighted 1 (the
structure) and once with neighbour j weighted by its element's "type spin"
s_j (the composition; radial s_j, angular s_j s_k).  The spins are aenet's:
−1, +1 for two elements, −1, 0, +1 for three, −2, −1, +1, +2 for four, and
so on.  Columns, aenet's order: radial, angular, typed radial, typed
angular, so 2 · (radial_order + angular_order + 2) functions for any number
of elements (the Behler–Parrinello sets grow with the square of it).

The angular sum runs over unordered neighbour pairs with no cut-off on
R_jk, unlike G4, so it factorises: T_n is rewritten in Legendre polynomials
and the addition theorem turns Σ_jk w_j w_k P_l(cos θ_jk) into squared sums
over single neighbours (:func:`chebyshev_atom_descriptors`), O(M) work per
atom for M neighbour slots instead of O(M²) pairs (7× faster than a pair
loop at 8 Å for TiO2), and so is the Jacobian (each slot enters only
through its own terms: ~7× faster than the per-pair derivatives of aenet's
formulas).  Padded slots have fc = 0 and add exactly zero.

Ref: N. Artrith, A. Urban, G. Ceder, Phys. Rev. B 96, 014112 (2017).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import chebyshev as npcheb
from numpy.polynomial import legendre as npleg

from .cutoffs import cosine_cutoff
from .geometry import safe_inverse, safe_norm

__all__ = ["ChebyshevBasis", "type_spins", "chebyshev_atom_descriptors", "chebyshev_atom_jacobian"]


def type_spins(n_elements: int) -> tuple[float, ...]:
    """aenet's type spins of ``n_elements`` elements, in element order.

    Integers centred on zero, skipping zero for an even count:
    2 → (−1, 1), 3 → (−1, 0, 1), 4 → (−2, −1, 1, 2).
    """
    spins, s = [], -(n_elements // 2)
    for _ in range(n_elements):
        if s == 0 and n_elements % 2 == 0:
            s += 1
        spins.append(float(s))
        s += 1
    return tuple(spins)


@dataclasses.dataclass(frozen=True)
class ChebyshevBasis:
    """aenet's Chebyshev expansion of the radial and angular distribution functions.

    Attributes:
        elements: neighbour elements; their order sets the type spins.
        radial_cutoff: Rc of the radial sums, Å.
        angular_cutoff: Rc of the angular sums, Å (at most ``radial_cutoff``
            is usual, but not required).
        radial_order: highest radial polynomial order (order + 1 functions).
        angular_order: highest angular polynomial order.
        name: where the set came from, for messages; not part of equality.
    """

    elements: tuple[str, ...]
    radial_cutoff: float
    angular_cutoff: float
    radial_order: int
    angular_order: int
    name: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "elements", tuple(str(e) for e in self.elements))
        for key in ("radial_cutoff", "angular_cutoff"):
            value = float(getattr(self, key))
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{key} must be positive, got {value}")
            object.__setattr__(self, key, value)
        for key in ("radial_order", "angular_order"):
            value = getattr(self, key)
            if int(value) != value or value < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {value}")
            object.__setattr__(self, key, int(value))
        if not self.elements or len(set(self.elements)) != len(self.elements):
            raise ValueError(f"elements must be unique and non-empty, got {self.elements}")

    @classmethod
    def aenet(cls, elements: Sequence[str], radial_cutoff: float = 8.0, angular_cutoff: float = 6.5,
              radial_order: int = 16, angular_order: int = 4) -> "ChebyshevBasis":
        """The basis of aenet's TiO2 Chebyshev example (Rc 8.0 / 6.5 Å, orders 16 / 4).

        With two or more elements: 2 · (17 + 5) = 44 functions.
        """
        return cls(tuple(elements), radial_cutoff, angular_cutoff, radial_order, angular_order, name="chebyshev")

    # ------------------------------------------------------------- description
    @property
    def cutoff(self) -> float:
        """The neighbour-list radius: the larger of the two cut-offs, Å."""
        return max(self.radial_cutoff, self.angular_cutoff)

    @property
    def n_elements(self) -> int:
        return len(self.elements)

    @property
    def typed(self) -> bool:
        """Whether the type-spin weighted copy is present (more than one element)."""
        return self.n_elements > 1

    @property
    def n_functions(self) -> int:
        base = self.radial_order + self.angular_order + 2
        return 2 * base if self.typed else base

    def columns(self) -> list[dict]:
        """Description of every column (keys as :meth:`SymmetryFunctionSet.columns`, plus ``order`` and ``rc``, Å)."""
        def col(kind, neighbors, n):
            rc = self.radial_cutoff if kind == "cheb-radial" else self.angular_cutoff
            return dict(kind=kind, neighbors=neighbors, eta=0.0, rs=0.0, **{"lambda": 0.0}, zeta=0, order=n, rc=rc)

        weights = ("all", "typespin") if self.typed else ("all",)
        cols = []
        for w in weights:
            cols += [col("cheb-radial", w, n) for n in range(self.radial_order + 1)]
            cols += [col("cheb-angular", w, n) for n in range(self.angular_order + 1)]
        return cols

    def to_config(self) -> dict:
        """JSON-serialisable description; ``kind`` tells the sets apart."""
        config = {"kind": "chebyshev", "elements": list(self.elements), "radial_cutoff": self.radial_cutoff,
                  "angular_cutoff": self.angular_cutoff, "radial_order": self.radial_order,
                  "angular_order": self.angular_order}
        if self.name:
            config["name"] = self.name
        return config

    @classmethod
    def from_config(cls, config: dict) -> "ChebyshevBasis":
        return cls(tuple(config["elements"]), config["radial_cutoff"], config["angular_cutoff"],
                   config["radial_order"], config["angular_order"], name=str(config.get("name", "")))

    def describe(self) -> str:
        spins = ", ".join(f"{e} {s:+g}" for e, s in zip(self.elements, type_spins(self.n_elements)))
        return (f"{self.name or 'custom'} Chebyshev descriptor: {self.n_functions} per atom (radial order "
                f"{self.radial_order}, Rc = {self.radial_cutoff:g} Å; angular order {self.angular_order}, "
                f"Rc = {self.angular_cutoff:g} Å" + (f"; type spins {spins})" if self.typed else ")"))


# --------------------------------------------------------------------- kernel
def _chebyshev(x, order: int):
    """T_0 … T_order at x by the three-term recurrence: (order + 1, *x.shape)."""
    t = [jnp.ones_like(x), x]
    for _ in range(2, order + 1):
        t.append(2.0 * x * t[-1] - t[-2])
    return jnp.stack(t[:order + 1])


def _slot_spins(basis: ChebyshevBasis, slots: Sequence[int], dtype):
    """(M,) type spin of every neighbour slot (slots are element-sorted blocks)."""
    spins = np.repeat(np.asarray(type_spins(basis.n_elements)), np.asarray(slots, int))
    return jnp.asarray(spins, dtype)


@functools.lru_cache(maxsize=None)
def _legendre_tables(order: int):
    """Static tables of the addition theorem for l <= ``order``.

    Returns:
        ``b`` (order + 1, order + 1): T_n(x) = Σ_l b[n, l] P_l(x);
        ``harmonics``: the (l, m) pairs, m = 0 … l, in the order of
        :func:`_harmonics`; ``norm`` (len(harmonics),): (2 − δ_m0) (l − m)!
        / (l + m)!, so that for unit vectors u, v
        P_l(u · v) = Σ_m norm_lm Q_lm(u_z) Q_lm(v_z) Re[(u_x + i u_y)^m (v_x − i v_y)^m],
        Q_lm = P_l^m / sin^m θ (a polynomial in z); ``degree`` (len(harmonics),
        order + 1): 1 where the pair's l is the column.
    """
    n = order + 1
    b = np.zeros((n, n))
    for k in range(n):
        leg = npleg.poly2leg(npcheb.cheb2poly(np.eye(n)[k]))
        b[k, :len(leg)] = leg
    harmonics = tuple((l, m) for m in range(n) for l in range(m, n))
    norm = np.array([(1.0 if m == 0 else 2.0) * math.factorial(l - m) / math.factorial(l + m) for l, m in harmonics])
    degree = np.zeros((len(harmonics), n))
    degree[np.arange(len(harmonics)), [l for l, _ in harmonics]] = 1.0
    return b, harmonics, norm, degree


def _harmonics(unit, order: int):
    """Q_lm(z) Re/Im[(x + i y)^m] of unit vectors for the pairs of :func:`_legendre_tables`.

    Args:
        unit: (..., 3) unit vectors (zero rows give finite values).

    Returns:
        (2, H, ...) real and imaginary parts, H the number of (l, m) pairs.
    """
    x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]
    re, im = [jnp.ones_like(x)], [jnp.zeros_like(x)]
    for _ in range(order):  # (x + iy)^m
        re, im = re + [re[-1] * x - im[-1] * y], im + [im[-1] * x + re[-1] * y]
    out_re, out_im = [], []
    for m in range(order + 1):
        # Q_mm = (2m - 1)!!, Q_(m+1)m = (2m + 1) z Q_mm, then the three-term recurrence in l.
        q = [jnp.full_like(z, float(np.prod(np.arange(2 * m - 1, 0, -2))) if m else 1.0)]
        if m < order:
            q.append((2 * m + 1) * z * q[0])
        for l in range(m + 2, order + 1):
            q.append(((2 * l - 1) * z * q[-1] - (l + m - 1) * q[-2]) / (l - m))
        out_re += [ql * re[m] for ql in q]
        out_im += [ql * im[m] for ql in q]
    return jnp.stack([jnp.stack(out_re), jnp.stack(out_im)])


def _slot_terms(disp, mask, basis: ChebyshevBasis):
    """Per-slot radial terms fc_r(R) T_n(x) (Nr, M) and angular terms fc_a(R) Y_lm(û) (2, H, M)."""
    w = mask.astype(disp.dtype)
    r = safe_norm(disp)
    fr = cosine_cutoff(r, basis.radial_cutoff) * w
    fa = cosine_cutoff(r, basis.angular_cutoff) * w
    t_r = _chebyshev(2.0 * r / basis.radial_cutoff - 1.0, basis.radial_order)
    unit = disp * safe_inverse(r)[:, None]
    return t_r * fr[None], _harmonics(unit, basis.angular_order) * fa, fa


def _spin_sets(basis, slots, dtype):
    """(W, M) neighbour weights: all ones, and the type spins when typed."""
    ones = jnp.ones((int(sum(slots)),), dtype)
    return jnp.stack([ones, _slot_spins(basis, slots, dtype)]) if basis.typed else ones[None]


def chebyshev_atom_descriptors(disp, mask, basis: ChebyshevBasis, slots: Sequence[int]):
    """The Chebyshev descriptor of one centre atom, in O(M) work.

    The angular sums are taken in the Legendre basis by the addition
    theorem: with A_lm = Σ_j w_j fc(R_j) Y_lm(û_j) (j = k included),
    Σ_{j<k} w_j w_k fc_j fc_k T_n(cos θ_jk) = ½ [Σ_l b_nl Σ_m norm_lm |A_lm|²
    − Σ_j (w_j fc_j)²] (T_n(1) = 1 on the diagonal); every |A_lm|² is
    non-negative, so nothing cancels badly (float32 agrees with float64 to
    ~6e-6 of each column's spread on TiO2).

    Args:
        disp: (M, 3) displacements r_ij to the neighbour slots, Å, in
            element-sorted blocks of ``slots[s]`` slots.
        mask: (M,) bool, True for real neighbours.
        basis: the basis.
        slots: per-element slot counts (static).

    Returns:
        (basis.n_functions,) values (dimensionless); zero without neighbours.
    """
    b, _, norm, degree = _legendre_tables(basis.angular_order)
    dtype = disp.dtype
    radial, harm, fa = _slot_terms(disp, mask, basis)
    spins = _spin_sets(basis, slots, dtype)  # (W, M)
    amp = jnp.einsum("wm,chm->wch", spins, harm)  # (W, 2, H)
    power = (amp * amp).sum(axis=1) * jnp.asarray(norm, dtype)  # (W, H)
    legendre = power @ jnp.asarray(degree, dtype)  # (W, L): Σ_jk w_j w_k fc_j fc_k P_l
    diagonal = (spins * fa[None]) ** 2
    angular = 0.5 * (legendre @ jnp.asarray(b.T, dtype) - diagonal.sum(axis=1)[:, None])
    return jnp.concatenate([spins @ radial.T, angular], axis=1).reshape(-1)


def chebyshev_atom_jacobian(disp, mask, basis: ChebyshevBasis, slots: Sequence[int]):
    """Derivatives of one centre atom's Chebyshev descriptor by its neighbour vectors, in O(M) work.

    Every output is a function of single-slot sums, so slot m enters only
    through its own terms: radial d/dr_m [fc T_n] per slot; angular
    d/dr_m ½[Σ_l b_nl Σ_h norm_h |A_h|² − Σ_j (w_j fc_j)²] = Σ_l b_nl Σ_h
    norm_h w_m Re[A_h* d(fc Y_h)(r_m)/dr_m] − w_m² fc_m dfc_m/dr_m.  The
    per-slot derivatives (3 directions) are taken in forward mode.

    Returns:
        (M, basis.n_functions, 3) array J[m, f] = dG_f / dr_m in Å⁻¹, zero
        for padded slots.
    """
    b, _, norm, degree = _legendre_tables(basis.angular_order)
    dtype = disp.dtype
    spins = _spin_sets(basis, slots, dtype)  # (W, M)

    def terms(d, m):  # one slot: radial (Nr,), angular (2, H), fc_a ()
        radial, harm, fa = _slot_terms(d[None], m[None], basis)
        return radial[:, 0], harm[..., 0], fa[0]

    def slot(d, m):  # values, and their derivatives along x, y, z (trailing axis)
        return jax.vmap(lambda e: jax.jvp(lambda x: terms(x, m), (d,), (e,)), out_axes=(None, -1))(
            jnp.eye(3, dtype=dtype))

    (radial, harm, fa), (d_radial, d_harm, d_fa) = jax.vmap(slot)(disp, mask)
    # radial (M, Nr), harm (M, 2, H), fa (M,); tangents with a trailing (3,)
    amp = jnp.einsum("wm,mch->wch", spins, harm)  # (W, 2, H)
    weighted = amp * jnp.asarray(norm, dtype)  # (W, 2, H)
    # d legendre_l / dr_m = 2 Σ_h∈l norm_h w_m Σ_c A_ch dY_ch(m): then ½ b.
    d_leg = jnp.einsum("wch,mchx,hl->wmlx", weighted, d_harm, jnp.asarray(degree, dtype)) * spins[:, :, None, None]
    d_diag = (spins * spins)[:, :, None] * (fa[:, None] * d_fa)[None]  # (W, M, 3): ½ d(w fc)² / dr
    d_ang = jnp.einsum("wmlx,nl->wmnx", d_leg, jnp.asarray(b, dtype)) - d_diag[:, :, None, :]
    d_rad = spins[:, :, None, None] * d_radial[None]  # (W, M, Nr, 3)
    out = jnp.concatenate([d_rad, d_ang], axis=2)  # (W, M, Nr + Na, 3)
    return jnp.transpose(out, (1, 0, 2, 3)).reshape(disp.shape[0], -1, 3)
