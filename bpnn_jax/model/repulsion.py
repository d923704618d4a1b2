"""A short-range repulsive pair baseline under the networks (pure JAX, and NumPy on the host).

Behler-Parrinello symmetry functions are built for bond lengths; atoms
pushed much closer (in the TiO2 data, displaced Ti8O14 cells with Ti-Ti,
Ti-O and O-O contacts of 1.0-1.5 Å, cohesive energies 3-6 eV/atom above
the crystals) are barely resolved by them, so the networks learn the
repulsive wall point by point.  A pair term that is exactly zero beyond a
short cut-off per element pair carries that wall instead (as ZBL does
under ACE and NequIP fits, but fitted to the data, since ZBL's screened
nuclear repulsion is far too strong at 1-1.5 Å):

    E_rep = ½ Σ_i Σ_{j≠i} φ_{s_i s_j}(r_ij),
    φ_ab(r) = Σ_k c_abk (1 - r / rc_ab)^p_k  for r < rc_ab, else 0,

with c_abk ≥ 0 and powers p_k ≥ 2, so φ is non-negative, decreasing,
convex and continuous with its first derivative at rc_ab.  The sum runs
over a full (both-direction) neighbour list, hence the ½.  The
coefficients are fitted to DFT energies and forces before the networks
are trained (:mod:`bpnn_jax.training.repulsion_fit`); the networks learn
E - E_rep and F - F_rep, and the model adds E_rep back.

Units: Å, eV, eV/Å.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from ..descriptors.geometry import safe_norm
from ..errors import ModelError

__all__ = ["PairRepulsion", "pair_key", "parse_pair_cutoffs"]

#: Powers p_k of the basis (1 - r/rc)^p.
DEFAULT_POWERS = (2, 3, 4, 5, 6)


def pair_key(a: str, b: str, elements: Sequence[str]) -> str:
    """Canonical name of an unordered element pair, in the elements' order ("Ti-O" for O, Ti → "O-Ti")."""
    ia, ib = elements.index(a), elements.index(b)
    return f"{a}-{b}" if ia <= ib else f"{b}-{a}"


def _canonical(key, elements: Sequence[str]) -> str | None:
    """``pair_key`` of an "A-B" string, or None when it does not name two of ``elements``."""
    parts = str(key).split("-")
    if len(parts) != 2 or any(p not in elements for p in parts):
        return None
    return pair_key(parts[0], parts[1], elements)


def parse_pair_cutoffs(cutoffs: dict, elements: Sequence[str]) -> dict[str, float]:
    """Validate ``{"A-B": rc}`` (Å) for ``elements``; keys in canonical order.

    Raises:
        ModelError: an unknown element or malformed key, a non-positive or
            duplicated cut-off.
    """
    out: dict[str, float] = {}
    for key, value in dict(cutoffs).items():
        canon = _canonical(key, elements)
        if canon is None:
            raise ModelError(f"repulsion cut-off {key!r}: expected 'A-B' with A and B among {tuple(elements)}")
        rc = float(value)
        if not rc > 0:
            raise ModelError(f"repulsion cut-off {key!r}: {value!r} Å is not positive")
        if canon in out:
            raise ModelError(f"repulsion cut-off for {canon} given twice")
        out[canon] = rc
    return out


@dataclasses.dataclass(frozen=True)
class PairRepulsion:
    """Fitted short-range pair repulsion (see module doc).

    Attributes:
        elements: element symbols in species-index order (the model's).
        cutoffs: {"A-B": rc} Å per unordered pair (canonical keys); pairs
            not listed have no term.
        coefficients: {"A-B": (c_1, ..., c_K)} eV, one per power, ≥ 0.
        powers: the powers p_k (≥ 2).
    """

    elements: tuple[str, ...]
    cutoffs: dict
    coefficients: dict
    powers: tuple[int, ...] = DEFAULT_POWERS

    def __post_init__(self):
        object.__setattr__(self, "elements", tuple(self.elements))
        object.__setattr__(self, "powers", tuple(int(p) for p in self.powers))
        object.__setattr__(self, "cutoffs", parse_pair_cutoffs(self.cutoffs, self.elements))
        if any(p < 2 for p in self.powers):
            raise ModelError(f"repulsion powers must be ≥ 2 (a smooth cut-off), got {self.powers}")
        coefs = {}
        for key, c in dict(self.coefficients).items():
            canon = _canonical(key, self.elements)
            if canon not in self.cutoffs:
                raise ModelError(f"repulsion coefficients for {key!r}, which has no cut-off")
            c = tuple(float(x) for x in c)
            if len(c) != len(self.powers) or any(not np.isfinite(x) or x < 0 for x in c):
                raise ModelError(f"repulsion coefficients for {key}: need {len(self.powers)} finite values ≥ 0, "
                                 f"got {c}")
            coefs[canon] = c
        for key in self.cutoffs:
            coefs.setdefault(key, (0.0,) * len(self.powers))
        object.__setattr__(self, "coefficients", coefs)

    # ------------------------------------------------------------ config
    def to_config(self) -> dict:
        return {"elements": list(self.elements), "cutoffs": dict(self.cutoffs),
                "coefficients": {k: list(v) for k, v in self.coefficients.items()}, "powers": list(self.powers)}

    @classmethod
    def from_config(cls, config: dict) -> "PairRepulsion":
        return cls(elements=tuple(config["elements"]), cutoffs=config["cutoffs"],
                   coefficients=config["coefficients"], powers=tuple(config.get("powers", DEFAULT_POWERS)))

    def with_coefficients(self, coefficients: dict) -> "PairRepulsion":
        return dataclasses.replace(self, coefficients=coefficients)

    # ------------------------------------------------------------ tables
    def _tables(self, dtype=np.float64):
        """(S, S) cut-offs (0 = no term) and (S, S, K) coefficients, symmetric."""
        S, K = len(self.elements), len(self.powers)
        rc = np.zeros((S, S), dtype)
        c = np.zeros((S, S, K), dtype)
        for key, r in self.cutoffs.items():
            a, b = (self.elements.index(x) for x in key.split("-"))
            rc[a, b] = rc[b, a] = r
            c[a, b] = c[b, a] = self.coefficients[key]
        return rc, c

    def pair_index(self) -> np.ndarray:
        """(S, S) index of each ordered pair's unordered pair in ``cutoffs`` order (-1: no term)."""
        S = len(self.elements)
        idx = -np.ones((S, S), np.int64)
        for p, key in enumerate(self.cutoffs):
            a, b = (self.elements.index(x) for x in key.split("-"))
            idx[a, b] = idx[b, a] = p
        return idx

    def matches(self, other: "PairRepulsion | None", rtol: float = 1e-8, atol: float = 1e-8) -> bool:
        """The same baseline up to fitting round-off: equal elements, cut-offs and powers, and
        coefficients within ``rtol`` / ``atol`` (eV), so that energies agree to ~1e-8 eV per pair."""
        if other is None or (self.elements, self.cutoffs, self.powers) != (other.elements, other.cutoffs,
                                                                          other.powers):
            return False
        return all(np.allclose(self.coefficients[k], other.coefficients[k], rtol=rtol, atol=atol)
                   for k in self.cutoffs)

    @property
    def max_cutoff(self) -> float:
        return max(self.cutoffs.values(), default=0.0)

    # ------------------------------------------------------------ JAX
    def atomic_energies(self, disp, nmask, species_i, species_j):
        """½ Σ_j φ(r_ij) per centre atom, eV (differentiable in ``disp``).

        Args:
            disp: (..., M, 3) displacements r_j - r_i of the neighbour slots, Å.
            nmask: (..., M) bool, real neighbours.
            species_i: (...) int, the centre's species index.
            species_j: (..., M) int, the neighbours' species indices (any
                value where ``nmask`` is False).

        Returns:
            (...) energies, eV, in ``disp``'s dtype.
        """
        dtype = disp.dtype
        rc_t, c_t = self._tables()
        S = len(self.elements)
        si = jnp.clip(species_i, 0, S - 1)[..., None]
        sj = jnp.clip(species_j, 0, S - 1)
        rc = jnp.asarray(rc_t, dtype)[si, sj]  # (..., M)
        c = jnp.asarray(c_t, dtype)[si, sj]  # (..., M, K)
        r = safe_norm(disp)
        inside = nmask & (r < rc) & (rc > 0)
        x = jnp.where(inside, 1.0 - r / jnp.where(rc > 0, rc, 1.0), 0.0)
        basis = jnp.stack([x ** p for p in self.powers], axis=-1)  # (..., M, K)
        phi = jnp.sum(c * basis, axis=-1)
        return 0.5 * jnp.sum(jnp.where(inside, phi, 0.0), axis=-1)

    # ------------------------------------------------------------ host
    def host_pairs(self, positions, cell, species, centers, neighbors, shifts):
        """The directed pairs inside their cut-off, in float64 on the host.

        Args:
            positions: (N, 3) Å; cell: (3, 3) Å rows; species: (N,) int.
            centers, neighbors: (P,) int, a full neighbour list; shifts: (P, 3) int cell shifts.

        Returns:
            ``(i, j, vec, r, pair, x)``: centre and neighbour indices, (Q, 3)
            vectors r_j - r_i + S·cell (Å), (Q,) distances, (Q,) unordered
            pair index (``cutoffs`` order) and x = 1 - r/rc.
        """
        positions = np.asarray(positions, np.float64)
        cell = np.asarray(cell, np.float64)
        species = np.asarray(species)
        rc_t, _ = self._tables()
        pidx = self.pair_index()
        i, j = np.asarray(centers), np.asarray(neighbors)
        vec = positions[j] - positions[i] + np.asarray(shifts, np.float64) @ cell
        r = np.sqrt(np.sum(vec * vec, axis=-1))
        rc = rc_t[species[i], species[j]]
        keep = (rc > 0) & (r < rc) & (r > 0)
        i, j, vec, r, rc = i[keep], j[keep], vec[keep], r[keep], rc[keep]
        return i, j, vec, r, pidx[species[i], species[j]], 1.0 - r / rc

    def host_design(self, positions, cell, species, centers, neighbors, shifts):
        """Basis sums of one structure, linear in the coefficients (float64).

        Returns:
            ``(e, f)``: e (P, K), the energy ½ Σ_pairs b_k(r) of each
            unordered pair type and power (eV per unit coefficient); f
            (N, 3, P, K), the forces -∂e/∂R (eV/Å per unit coefficient).
            E_rep = Σ e·c and F_rep = Σ f·c.
        """
        n = len(positions)
        P, K = len(self.cutoffs), len(self.powers)
        rc_by_pair = np.array(list(self.cutoffs.values()), np.float64)
        i, j, vec, r, pair, x = self.host_pairs(positions, cell, species, centers, neighbors, shifts)
        pw = np.asarray(self.powers, np.float64)
        b = x[:, None] ** pw  # (Q, K)
        # d b / d r = -p x^(p-1) / rc; the pair term ½ b(r_ij) moves R_j along +r̂ and R_i along -r̂.
        db = -pw * x[:, None] ** (pw - 1) / rc_by_pair[pair][:, None]  # (Q, K)
        e = np.zeros((P, K))
        np.add.at(e, pair, 0.5 * b)
        unit = vec / r[:, None]
        g = 0.5 * db[:, None, :] * unit[:, :, None]  # (Q, 3, K): ∂(½ b)/∂R_j
        f = np.zeros((n, 3, P, K))
        np.add.at(f, (j, slice(None), pair), -g)
        np.add.at(f, (i, slice(None), pair), g)
        return e, f

    def host_energy_forces(self, positions, cell, species, centers, neighbors, shifts):
        """E_rep (eV) and F_rep (N, 3) eV/Å of one structure, float64."""
        e, f = self.host_design(positions, cell, species, centers, neighbors, shifts)
        c = np.array([self.coefficients[k] for k in self.cutoffs], np.float64)  # (P, K)
        return float(np.sum(e * c)), np.einsum("nxpk,pk->nx", f, c)
