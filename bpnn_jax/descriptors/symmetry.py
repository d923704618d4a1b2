"""Atom-centred symmetry functions (Behler-Parrinello G2 and G4) in pure JAX.

Definitions (R in Å, η in Å⁻², fc the cosine cut-off of :mod:`.cutoffs`):

    G2_i(B)   = Σ_{j∈B}        exp(-η (R_ij - Rs)²) fc(R_ij)
    G4_i(B,C) = 2^(1-ζ) Σ_{{j,k}} (1 + λ cos θ_ijk)^ζ
                         exp(-η (R_ij² + R_ik² + R_jk²)) fc(R_ij) fc(R_ik) fc(R_jk)

G2 is resolved by neighbour element B, G4 by the unordered element pair
{B, C}; the G4 sum runs once over each unordered pair of neighbours {j, k}
(j ≠ k, periodic images included).  This is aenet's convention.

Column layout (aenet's): for each element A in ``elements`` order, the G2
block of neighbour element A, then the G4 blocks of pairs (A, C) for every C
at or after A.  For ("O", "Ti"): G2-O, G4 O-O, G4 O-Ti, G2-Ti, G4 Ti-Ti.

How it is computed.  Neighbour slots are sorted by element (see
:func:`bpnn_jax.descriptors.neighbors.dense_neighbors`), so for one centre atom every
element pair (a, b) is a dense block of ordered neighbour pairs
(j in block a, k in block b).  On that block

    x_jk = R_ij² + R_ik² + R_jk²,   f_jk = fc(R_ij) fc(R_ik) fc(R_jk),
    E_u[j, k] = exp(-η_u x_jk) f_jk          (one per distinct η),
    P_l[j, k] = (1 + λ_l cos θ_ijk)^ζ_l      (one per distinct (λ, ζ)),
    G4(a, b; η_u, λ_l, ζ_l) = 2^(1-ζ_l) Σ_jk E_u[j, k] P_l[j, k],

a fused multiply-reduce with no gathers over triplet index lists.  A
same-element block (a = b) holds both orders of each pair (the diagonal
j = k masked, a factor ½).  With ``min_block`` it is split in halves
instead: the off-diagonal quarter (j in the first half, k in the second)
is summed once and the two diagonal quarters are split again, down to
blocks of ``min_block`` slots; for 128 slots and 32 that is 10 240 ordered
pairs instead of 16 384, all in dense rectangular blocks (gathers of the
pairs j < k were slower on XLA's CPU backend than computing both orders).
Off by default: see :data:`SAME_ELEMENT_MIN_BLOCK`.  Padded slots have fc = 0, so they add exactly
zero, and every norm and quotient uses the double-``where`` pattern so
gradients stay finite.  Atoms are processed with ``lax.map`` over small
vmapped chunks (rematerialised under differentiation), which keeps XLA's
working set in cache.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import BPNNInputError
from ..units import VOIGT
from .chebyshev import ChebyshevBasis, chebyshev_atom_descriptors, chebyshev_atom_jacobian
from .cutoffs import cosine_cutoff
from .geometry import displacements, safe_inverse, safe_norm

__all__ = [
    "SymmetryFunctionSet",
    "ChebyshevBasis",
    "CombinedDescriptors",
    "descriptor_preset",
    "descriptor_from_config",
    "atom_descriptors",
    "atoms_descriptors",
    "structure_descriptors",
    "batch_descriptors",
    "atom_descriptor_jacobian",
    "structure_descriptor_jacobian",
    "batch_descriptor_jacobian",
    "batch_descriptor_jacobian_sparse",
    "batch_descriptor_strain_jacobian",
]

_PRESETS = ("auto", "artrith-urban", "imbalzano", "dense", "chebyshev")

#: Aliases of preset names.
_PRESET_ALIASES = {"imbalzano2018": "imbalzano", "general": "imbalzano"}

#: Elements the Artrith-Urban set was made for ("auto" picks it for these).
ARTRITH_URBAN_ELEMENTS = ("O", "Ti")


def _read_parameter_file(path, what: str):
    """The parsed content of a JSON or YAML parameter file (by suffix); BPNNInputError naming it if unreadable."""
    import json

    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise BPNNInputError(f"{path}: cannot read the {what} file ({exc})") from None


@dataclasses.dataclass(frozen=True)
class SymmetryFunctionSet:
    """A set of element-resolved G2/G4 symmetry functions.

    The same functions are used for every centre element (aenet's setup).

    Attributes:
        elements: neighbour elements, in column order (e.g. ("O", "Ti")).
        cutoff: cut-off radius Rc in Å (all functions).
        radial: G2 parameters, tuples (η in Å⁻², Rs in Å), column order.
        angular: G4 parameters, tuples (η in Å⁻², λ = ±1, ζ >= 1 integer),
            column order.
        name: where the set came from (a preset name or a file), for
            messages and the model's record; not part of equality.
    """

    elements: tuple[str, ...]
    cutoff: float
    radial: tuple[tuple[float, float], ...]
    angular: tuple[tuple[float, float, int], ...]
    name: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "elements", tuple(str(e) for e in self.elements))
        object.__setattr__(self, "cutoff", float(self.cutoff))
        object.__setattr__(self, "radial", tuple((float(e), float(r)) for e, r in self.radial))
        object.__setattr__(self, "angular", tuple((float(e), float(l), int(z)) for e, l, z in self.angular))
        if not self.elements or len(set(self.elements)) != len(self.elements):
            raise ValueError(f"elements must be unique and non-empty, got {self.elements}")
        if not (self.cutoff > 0 and math.isfinite(self.cutoff)):
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        for eta, rs in self.radial:
            if eta < 0 or rs < 0:
                raise ValueError(f"G2 needs eta >= 0 and Rs >= 0, got eta={eta}, Rs={rs}")
        for eta, lam, zeta in self.angular:
            if eta < 0 or lam not in (-1.0, 1.0) or zeta < 1:
                raise ValueError(f"G4 needs eta >= 0, lambda = ±1, integer zeta >= 1; got {(eta, lam, zeta)}")

    # ----------------------------------------------------------------- presets
    @classmethod
    def artrith_urban(cls, elements: Sequence[str] = ("O", "Ti")) -> "SymmetryFunctionSet":
        """The 70-function set of Artrith & Urban for TiO2 (aenet "Behler2011").

        Rc = 6.5 Å; 8 G2 (Rs = 0) per element and 18 G4 per element pair
        (ζ ∈ {1, 2, 4} slowest, λ ∈ {-1, +1}, η ∈ {0.000357, 0.028569,
        0.089277} fastest).  With two elements: 2·8 + 3·18 = 70 functions,
        in aenet's column order.

        Ref: N. Artrith, A. Urban, Comput. Mater. Sci. 114 (2016) 135.
        """
        radial_etas = (0.003214, 0.035711, 0.071421, 0.124987, 0.214264, 0.357106, 0.714213, 1.428426)
        angular_etas = (0.000357, 0.028569, 0.089277)
        angular = tuple((eta, lam, zeta) for zeta in (1, 2, 4) for lam in (-1.0, 1.0) for eta in angular_etas)
        return cls(tuple(elements), 6.5, tuple((eta, 0.0) for eta in radial_etas), angular, name="artrith-urban")

    @classmethod
    def imbalzano(cls, elements: Sequence[str], cutoff: float = 6.0, *, n_shifted: int = 6, n_centred: int = 6,
                  n_angular_eta: int = 3, zetas: Sequence[int] = (1, 2, 4, 16)) -> "SymmetryFunctionSet":
        """A general Behler-Parrinello set for any elements (Imbalzano et al. 2018 grids).

        Radial: ``n_centred`` centred G2 (Rs = 0) with
        η_i = (m^(i/m) / Rc)², i = 0…m, m = n_centred − 1 (widths from Rc
        down to Rc/m), and ``n_shifted`` shifted G2 on the geometric grid
        r_k = Rc / n^(k/n), k = 0…n (n = n_shifted): Rs = r_(k+1) and
        η = 1/(r_k − r_(k+1))², Gaussians as wide as the grid spacing, dense
        at short range.  Angular: G4 with the centred η grid of
        ``n_angular_eta`` points, ζ ∈ ``zetas``, λ = ±1.  With the defaults,
        12 G2 per element and 24 G4 per element pair: 36 functions for one
        element, 96 for two, 180 for three.

        Ref: G. Imbalzano, A. Anelli, D. Giofré, S. Klees, J. Behler,
        M. Ceriotti, J. Chem. Phys. 148, 241730 (2018); the grids as n2p2's
        ``sfparamgen`` implements them (rule "imbalzano2018").
        """
        if n_centred < 2 or n_shifted < 1 or n_angular_eta < 1:
            raise ValueError("imbalzano needs n_centred >= 2, n_shifted >= 1, n_angular_eta >= 1")
        rc = float(cutoff)

        def centred(n):
            if n == 1:
                return [1.0 / rc**2]
            m = n - 1
            return [(m ** (i / m) / rc) ** 2 for i in range(n)]

        grid = [rc / n_shifted ** (k / n_shifted) for k in range(n_shifted + 1)]
        shifted = [(1.0 / (grid[k] - grid[k + 1]) ** 2, grid[k + 1]) for k in range(n_shifted)][::-1]
        radial = tuple((eta, 0.0) for eta in centred(n_centred)) + tuple(shifted)
        angular = tuple((eta, lam, int(z)) for z in zetas for lam in (-1.0, 1.0) for eta in centred(n_angular_eta))
        return cls(tuple(elements), rc, radial, angular, name="imbalzano")

    @classmethod
    def dense(cls, elements: Sequence[str], cutoff: float = 6.0) -> "SymmetryFunctionSet":
        """The Imbalzano grids made denser: the default set of ``train`` (any elements).

        10 shifted and 8 centred G2 per element; G4 with 4 centred widths,
        ζ ∈ {1, 2, 4, 8, 16}, λ = ±1 per element pair: 58 functions for one
        element, 156 for two.
        """
        spec = cls.imbalzano(elements, cutoff, n_shifted=10, n_centred=8, n_angular_eta=4, zetas=(1, 2, 4, 8, 16))
        return dataclasses.replace(spec, name="dense")

    @classmethod
    def preset(cls, name: str, elements: Sequence[str], cutoff: float | None = None) -> "SymmetryFunctionSet":
        """A named preset or a parameter file.

        Args:
            name: ``"artrith-urban"`` (Rc = 6.5 Å, the TiO2 set, exact
                against aenet), ``"imbalzano"`` (alias ``"general"``; any
                elements, Rc = ``cutoff`` or 6.0 Å), ``"auto"``
                (artrith-urban when every element is O or Ti, imbalzano
                otherwise), or the path of a JSON/YAML file (see
                :meth:`from_file`).
            elements: the elements, in column order.
            cutoff: Rc in Å for ``imbalzano`` (others fix their own).
        """
        key = name.lower().replace("_", "-")
        key = _PRESET_ALIASES.get(key, key)
        if key == "auto":
            key = "artrith-urban" if set(elements) <= set(ARTRITH_URBAN_ELEMENTS) else "imbalzano"
        if key == "artrith-urban":
            return cls.artrith_urban(elements)
        if key == "imbalzano":
            return cls.imbalzano(elements, 6.0 if cutoff is None else cutoff)
        if key == "dense":
            return cls.dense(elements, 6.0 if cutoff is None else cutoff)
        if key == "chebyshev":
            raise BPNNInputError("'chebyshev' is not a symmetry-function set; use descriptor_preset "
                                 "or ChebyshevBasis.aenet")
        if name.lower().endswith((".json", ".yaml", ".yml")):
            return cls.from_file(name, elements)
        raise BPNNInputError(f"unknown symmetry-function set {name!r}; known: {', '.join(_PRESETS)}, "
                             f"or a .json/.yaml parameter file")

    @classmethod
    def from_file(cls, path, elements: Sequence[str] | None = None) -> "SymmetryFunctionSet":
        """A set read from JSON or YAML.

        Either the mapping of :meth:`to_config` (``cutoff``, ``radial``:
        [[η, Rs], ...], ``angular``: [[η, λ, ζ], ...], optional
        ``elements``), or a list of functions, each ``{type: G2, eta, rs,
        cutoff}`` or ``{type: G4, eta, lambda, zeta, cutoff}`` (one cut-off
        for all).  ``elements`` (the data's) wins over the file's.

        Raises:
            BPNNInputError: unreadable file or invalid entries, naming the file
                (and the entry).
        """
        from pathlib import Path

        path = Path(path)
        data = _read_parameter_file(path, "symmetry-function")
        try:
            if isinstance(data, dict):
                els = elements if elements is not None else data.get("elements")
                if not els:
                    raise ValueError("no elements (give them in the file or take them from the data)")
                spec = cls(tuple(els), data["cutoff"], tuple(tuple(p) for p in data.get("radial", ())),
                           tuple(tuple(p) for p in data.get("angular", ())), name=str(path))
            elif isinstance(data, list) and data:
                radial, angular, cutoffs = [], [], set()
                for k, entry in enumerate(data):
                    where = f"entry {k}"
                    if not isinstance(entry, dict) or "type" not in entry or "cutoff" not in entry:
                        raise ValueError(f"{where}: expected a mapping with type (G2/G4), cutoff and parameters")
                    kind = str(entry["type"]).upper()
                    cutoffs.add(float(entry["cutoff"]))
                    if kind == "G2":
                        radial.append((float(entry["eta"]), float(entry.get("rs", 0.0))))
                    elif kind == "G4":
                        angular.append((float(entry["eta"]), float(entry["lambda"]), int(entry["zeta"])))
                    else:
                        raise ValueError(f"{where}: type must be G2 or G4, got {entry['type']!r}")
                if len(cutoffs) != 1:
                    raise ValueError(f"all functions need one cut-off, got {sorted(cutoffs)}")
                if elements is None:
                    raise ValueError("a list of functions takes its elements from the data")
                spec = cls(tuple(elements), cutoffs.pop(), tuple(radial), tuple(angular), name=str(path))
            else:
                raise ValueError("expected a mapping (cutoff, radial, angular) or a non-empty list of functions")
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BPNNInputError(f"{path}: {msg}") from None
        if not spec.radial and not spec.angular:
            raise BPNNInputError(f"{path}: no functions")
        return spec

    # ------------------------------------------------------------- description
    @property
    def n_elements(self) -> int:
        return len(self.elements)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Unordered element pairs (a <= b) in column order."""
        return [(a, b) for a in range(self.n_elements) for b in range(a, self.n_elements)]

    @property
    def n_functions(self) -> int:
        """Functions per atom: S·len(radial) + S(S+1)/2·len(angular)."""
        s = self.n_elements
        return s * len(self.radial) + s * (s + 1) // 2 * len(self.angular)

    def columns(self) -> list[dict]:
        """Description of every output column, in order.

        Returns:
            One dict per column with keys kind ("G2"/"G4"), neighbors (e.g.
            "O" or "O-Ti"), eta, rs, lambda, zeta (0 where not applicable).
        """
        cols = []
        for a, ea in enumerate(self.elements):
            for eta, rs in self.radial:
                cols.append(dict(kind="G2", neighbors=ea, eta=eta, rs=rs, **{"lambda": 0.0}, zeta=0))
            for b in range(a, self.n_elements):
                pair = f"{ea}-{self.elements[b]}"
                for eta, lam, zeta in self.angular:
                    cols.append(dict(kind="G4", neighbors=pair, eta=eta, rs=0.0, **{"lambda": lam}, zeta=zeta))
        return cols

    def to_config(self) -> dict:
        """JSON-serialisable description (inverse: :meth:`from_config`)."""
        config = {
            "elements": list(self.elements),
            "cutoff": self.cutoff,
            "radial": [list(p) for p in self.radial],
            "angular": [list(p) for p in self.angular],
        }
        if self.name:
            config["name"] = self.name
        return config

    @classmethod
    def from_config(cls, config: dict) -> "SymmetryFunctionSet":
        return cls(
            tuple(config["elements"]),
            config["cutoff"],
            tuple(tuple(p) for p in config["radial"]),
            tuple(tuple(p) for p in config["angular"]),
            name=str(config.get("name", "")),
        )

    def describe(self) -> str:
        """One line: name, function counts and cut-off."""
        s = self.n_elements
        return (f"{self.name or 'custom'} symmetry functions: {self.n_functions} per atom "
                f"({s} x {len(self.radial)} G2 + {s * (s + 1) // 2} x {len(self.angular)} G4), "
                f"Rc = {self.cutoff:g} Å, elements {', '.join(self.elements)}")

    # ------------------------------------------------------ static index maps
    def _angular_tables(self):
        etas = sorted({eta for eta, _, _ in self.angular})
        lz = sorted({(lam, zeta) for _, lam, zeta in self.angular})
        u = np.array([etas.index(eta) for eta, _, _ in self.angular], np.int32)
        l = np.array([lz.index((lam, zeta)) for _, lam, zeta in self.angular], np.int32)
        scale = np.array([2.0 ** (1 - zeta) for _, _, zeta in self.angular])
        return etas, lz, u, l, scale


@dataclasses.dataclass(frozen=True)
class CombinedDescriptors:
    """Several descriptor sets side by side: their columns concatenated, in order.

    Every part sees the same neighbour slots (built at the largest cut-off;
    each part's own cut-off function zeroes what lies beyond it), so a part
    with a smaller cut-off pays for the larger one's slots: G4 pair blocks
    grow as M² (an Imbalzano set at 6.5 Å beside a Chebyshev basis at 8 Å
    made MD 3.5× slower than either alone); parts with one cut-off cost
    what they cost alone.  Made for
    committees whose members read different sets
    (:func:`bpnn_jax.model.ensemble.merge_committees`): different descriptors
    make the members' errors less correlated.

    Attributes:
        parts: the sets (:class:`SymmetryFunctionSet` or
            :class:`ChebyshevBasis`), all with the same elements in the same order.
        name: for messages and the model's record; not part of equality.
    """

    parts: tuple
    name: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        parts = tuple(self.parts)
        if not parts:
            raise ValueError("a combined descriptor set needs at least one part")
        if any(isinstance(p, CombinedDescriptors) for p in parts):
            raise ValueError("combined descriptor sets do not nest")
        if any(p.elements != parts[0].elements for p in parts):
            raise ValueError(f"all parts need the same elements in the same order, got "
                             f"{[p.elements for p in parts]}")
        object.__setattr__(self, "parts", parts)

    @property
    def elements(self) -> tuple[str, ...]:
        return self.parts[0].elements

    @property
    def n_elements(self) -> int:
        return len(self.elements)

    @property
    def cutoff(self) -> float:
        """The neighbour-list radius: the largest of the parts', Å."""
        return max(p.cutoff for p in self.parts)

    @property
    def n_functions(self) -> int:
        return sum(p.n_functions for p in self.parts)

    def column_ranges(self) -> list[tuple[int, int]]:
        """[start, stop) of every part's columns."""
        bounds = np.cumsum([0] + [p.n_functions for p in self.parts])
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def columns(self) -> list[dict]:
        """The parts' column descriptions, each with ``part`` (its index) and ``rc`` (its cut-off, Å)."""
        return [{**c, "part": k, "rc": c.get("rc", p.cutoff)} for k, p in enumerate(self.parts) for c in p.columns()]

    def to_config(self) -> dict:
        config = {"kind": "combined", "elements": list(self.elements), "parts": [p.to_config() for p in self.parts]}
        if self.name:
            config["name"] = self.name
        return config

    @classmethod
    def from_config(cls, config: dict) -> "CombinedDescriptors":
        return cls(tuple(descriptor_from_config(c) for c in config["parts"]), name=str(config.get("name", "")))

    def describe(self) -> str:
        return (f"{self.name or 'combined'} descriptors: {self.n_functions} per atom = "
                + " + ".join(p.describe() for p in self.parts))


def descriptor_preset(name: str, elements: Sequence[str], cutoff: float | None = None):
    """The descriptor set called ``name``: symmetry functions or aenet's Chebyshev basis.

    Args:
        name: a :meth:`SymmetryFunctionSet.preset` name, ``"chebyshev"``
            (:meth:`ChebyshevBasis.aenet`: Rc 8.0 / 6.5 Å, orders 16 / 4,
            44 functions), or a JSON/YAML file: a mapping with ``kind:
            chebyshev`` and the keys of :meth:`ChebyshevBasis.to_config`
            (``elements`` optional: the data's win), or a
            symmetry-function file (:meth:`SymmetryFunctionSet.from_file`).
        elements: the elements, in column order.
        cutoff: Rc in Å of the ``imbalzano`` set (the others fix their own).

    Returns:
        A :class:`SymmetryFunctionSet` or a :class:`ChebyshevBasis`.

    Raises:
        BPNNInputError: an unknown name, an unreadable or invalid file (named).
    """
    key = name.lower().replace("_", "-")
    if key == "chebyshev":
        return ChebyshevBasis.aenet(elements)
    if key.endswith((".json", ".yaml", ".yml")):
        from pathlib import Path

        path = Path(name)
        data = _read_parameter_file(path, "descriptor")
        if isinstance(data, dict) and str(data.get("kind", "")).lower() == "chebyshev":
            try:
                return ChebyshevBasis.from_config({**data, "elements": list(elements), "name": str(path)})
            except (KeyError, TypeError, ValueError) as exc:
                msg = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
                raise BPNNInputError(f"{path}: {msg}") from None
    return SymmetryFunctionSet.preset(name, elements, cutoff)


def descriptor_from_config(config: dict):
    """Inverse of ``to_config()`` of any descriptor set (a model's record)."""
    kind = config.get("kind")
    if kind == "chebyshev":
        return ChebyshevBasis.from_config(config)
    if kind == "combined":
        return CombinedDescriptors.from_config(config)
    return SymmetryFunctionSet.from_config(config)


# --------------------------------------------------------------------- kernel
@jax.custom_vjp
def _pair_sums(E, P):
    """Q[u, l] = sum_jk E[u, j, k] P[l, j, k] for E (U, Ma, Mb), P (L, Ma, Mb).

    The forward pass is one fused multiply-reduce (XLA's CPU batched matmul
    is slow for these shapes).  The backward pass is written out as
    elementwise sums, dE[u] = sum_l dQ[u, l] P[l] and dP[l] = sum_u
    dQ[u, l] E[u]: XLA's own transpose of the broadcast product made
    gradients ~3x slower.  A custom VJP allows reverse mode to any order
    (e.g. force training) but not forward mode (``jax.jvp``/``jacfwd``).
    """
    return (E[:, None] * P[None, :]).sum(axis=(-2, -1))


def _pair_sums_fwd(E, P):
    return _pair_sums(E, P), (E, P)


def _pair_sums_bwd(residuals, dq):
    E, P = residuals
    n_u, n_l = dq.shape
    dE = jnp.stack([sum(dq[u, l] * P[l] for l in range(n_l)) for u in range(n_u)])
    dP = jnp.stack([sum(dq[u, l] * E[u] for u in range(n_u)) for l in range(n_l)])
    return dE, dP


_pair_sums.defvjp(_pair_sums_fwd, _pair_sums_bwd)


#: Same-element G4 blocks are halved down to blocks of this many slots (see
#: :func:`atom_descriptors`); None: not split (both orders of every pair).
#: Splitting at 32 made the Imbalzano kernel ~30 % faster on CPU (forward
#: and gradient), but in the full test suite a later XLA compilation of a
#: committee's per-member-forces program then segfaulted (3 of 3 runs; never
#: with the test alone, never without the split), so it stays off until
#: that is understood.  Tested either way.
SAME_ELEMENT_MIN_BLOCK: int | None = None


def atom_descriptors(disp, mask, spec: SymmetryFunctionSet, slots: Sequence[int], *,
                     min_block: int | None = SAME_ELEMENT_MIN_BLOCK):
    """Symmetry functions of one centre atom.

    Args:
        disp: (M, 3) displacement vectors r_ij to the neighbour slots, Å,
            sorted by element: ``slots[s]`` consecutive slots per element.
        mask: (M,) bool, True for real neighbours.
        spec: the function set.
        slots: per-element slot counts (static), sum(slots) = M.
        min_block: same-element blocks of neighbour pairs are split in
            halves while the halves have at least this many slots (the
            off-diagonal quarter once, the diagonal ones recursively);
            None (or a value above the slot counts): the dense block.

    Returns:
        (spec.n_functions,) symmetry-function values (dimensionless), zero
        when the atom has no neighbours (e.g. a padded atom).  A
        :class:`~bpnn_jax.descriptors.chebyshev.ChebyshevBasis` ``spec`` gives its own
        descriptor (same layout of arguments), a :class:`CombinedDescriptors`
        its parts' values side by side.
    """
    if isinstance(spec, ChebyshevBasis):
        return chebyshev_atom_descriptors(disp, mask, spec, slots)
    if isinstance(spec, CombinedDescriptors):
        return jnp.concatenate([atom_descriptors(disp, mask, p, slots, min_block=min_block) for p in spec.parts])
    dtype = disp.dtype
    rc = spec.cutoff
    r = safe_norm(disp)  # (M,)
    r2 = r * r
    fc = cosine_cutoff(r, rc) * mask.astype(dtype)
    bounds = np.concatenate([[0], np.cumsum(slots)]).astype(int)
    block = [slice(int(bounds[s]), int(bounds[s + 1])) for s in range(len(slots))]

    if spec.radial:
        eta = jnp.asarray([p[0] for p in spec.radial], dtype)
        rs = jnp.asarray([p[1] for p in spec.radial], dtype)
        g2_terms = jnp.exp(-eta[:, None] * (r[None, :] - rs[:, None]) ** 2) * fc[None, :]  # (K, M)

    if spec.angular:
        etas, lz, u_idx, l_idx, scale = spec._angular_tables()
        eta_u = jnp.asarray(etas, dtype)
        scale = jnp.asarray(scale, dtype)
        xyz = disp.T  # (3, M): coordinate-major keeps the pair loops contiguous

    def pair_sums(sa, sb, diagonal: bool):
        # Q[u, l] = sum over the ordered pairs (j in sa, k in sb) of E_u P_l: (U, L).
        xa, xb = xyz[:, sa], xyz[:, sb]
        diff = xb[:, None, :] - xa[:, :, None]
        rjk = safe_norm(diff, axis=0)
        fcjk = cosine_cutoff(rjk, rc)
        if diagonal:  # sa == sb: j != k
            fcjk = fcjk * (1.0 - jnp.eye(fcjk.shape[0], dtype=dtype))
        f3 = fc[sa][:, None] * fc[sb][None, :] * fcjk
        rr = r[sa][:, None] * r[sb][None, :]
        ok = rr > 0
        cos = jnp.where(ok, (xa.T @ xb) / jnp.where(ok, rr, 1.0), 0.0)
        x = r2[sa][:, None] + r2[sb][None, :] + rjk * rjk
        E = jnp.exp(-eta_u[:, None, None] * x[None]) * f3[None]  # (U, Ma, Mb)
        P = jnp.stack([jax.lax.integer_pow(1.0 + lam * cos, zeta) for lam, zeta in lz])  # (L, Ma, Mb)
        return _pair_sums(E, P)

    def same_sums(lo: int, hi: int):
        # Sum over unordered pairs {j, k} of slots lo..hi-1.  A dense block
        # holds both orders of each pair; split in halves, the two diagonal
        # quarters recurse and the off-diagonal quarter is summed once (its
        # mirror image is the same pairs), so a block of 128 slots costs
        # 10 240 ordered pairs instead of 16 384.
        h = lo + (hi - lo) // 2
        if min_block is None or h - lo < min_block:
            return 0.5 * pair_sums(slice(lo, hi), slice(lo, hi), True)
        return same_sums(lo, h) + same_sums(h, hi) + pair_sums(slice(lo, h), slice(h, hi), False)

    out = []
    for a in range(spec.n_elements):
        sa = block[a]
        if spec.radial:
            out.append(g2_terms[:, sa].sum(axis=1))
        if not spec.angular:
            continue
        for b in range(a, spec.n_elements):
            if bounds[a + 1] == bounds[a] or bounds[b + 1] == bounds[b]:
                out.append(jnp.zeros((len(spec.angular),), dtype))
                continue
            if a == b:  # both orders, halved (or each pair once: min_block)
                Q = same_sums(int(bounds[a]), int(bounds[a + 1]))
            else:
                Q = pair_sums(block[a], block[b], False)
            out.append(Q[u_idx, l_idx] * scale)
    return jnp.concatenate(out)


#: Smallest chunk on an accelerator: CPU wants cache-sized chunks (a few
#: atoms), a GPU wants enough atoms per kernel to fill its multiprocessors.
ACCELERATOR_MIN_CHUNK = 1024


#: A Chebyshev basis's chunks are this many times the model's chunk size.
CHEBYSHEV_CHUNK_FACTOR = 4


def effective_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` on CPU; at least :data:`ACCELERATOR_MIN_CHUNK` on GPU/TPU."""
    if jax.default_backend() == "cpu":
        return int(chunk_size)
    return max(int(chunk_size), ACCELERATOR_MIN_CHUNK)


def atoms_descriptors(disp, mask, spec, slots, chunk_size):
    """Map :func:`atom_descriptors` over atoms (A, M, ...) in vmapped chunks: (A, F).

    Args:
        disp: (A, M, 3) displacements r_ij (Å) of every atom's neighbour slots.
        mask: (A, M) real neighbours.
        spec, slots: the function set and the per-element slot layout.
        chunk_size: atoms per vmapped chunk (see :func:`effective_chunk_size`).

    A :class:`~bpnn_jax.descriptors.chebyshev.ChebyshevBasis` (O(M) work per atom, small
    temporaries) runs in chunks :data:`CHEBYSHEV_CHUNK_FACTOR` times larger
    (2x faster on CPU than the G4 kernel's chunk), and each part of a
    :class:`CombinedDescriptors` in chunks of its own size.

    Each chunk is rematerialised (``jax.checkpoint``) when differentiated:
    without it, reverse mode stores every chunk's (Ma, Mb) pair temporaries
    for the backward scan, which made gradients ~5x slower (and ~3x slower
    to compile) on CPU.  Forward values are unchanged.
    """

    if isinstance(spec, CombinedDescriptors):  # each part in chunks of its own size
        return jnp.concatenate([atoms_descriptors(disp, mask, p, slots, chunk_size) for p in spec.parts], axis=-1)
    if isinstance(spec, ChebyshevBasis):
        chunk_size = CHEBYSHEV_CHUNK_FACTOR * int(chunk_size)

    @jax.checkpoint
    def one(args):
        return atom_descriptors(*args, spec, slots)

    n = disp.shape[0]
    chunk = max(1, min(effective_chunk_size(chunk_size), n))
    return jax.lax.map(one, (disp, mask), batch_size=chunk)


def structure_descriptors(positions, cell, neighbors, shifts, neighbor_mask, spec, slots, *, chunk_size: int = 8):
    """Symmetry functions of every atom of one (padded) structure.

    Args:
        positions: (N, 3) positions, Å.
        cell: (3, 3) lattice vectors as rows, Å.
        neighbors: (N, M) int neighbour indices, element-sorted slots.
        shifts: (N, M, 3) integer-valued cell shifts.
        neighbor_mask: (N, M) bool.
        spec: the function set.
        slots: per-element slot counts (static).
        chunk_size: atoms per vmapped chunk inside ``lax.map``.

    Returns:
        (N, spec.n_functions) values; rows of atoms without neighbours are 0.
    """
    disp = displacements(positions, cell, neighbors, shifts)
    return atoms_descriptors(disp, neighbor_mask, spec, slots, chunk_size)


def batch_descriptors(batch, spec: SymmetryFunctionSet, *, chunk_size: int = 8):
    """Symmetry functions for a :class:`~bpnn_jax.descriptors.batch.Batch`.

    Displacements are formed per structure (vmapped), then all B·N atoms are
    processed in chunks, so XLA's temporaries stay small whatever B is.

    Args:
        batch: Batch of shape (B, N, M); positions/cell dtype sets the
            precision; its element-sorted slots must follow ``spec.elements``.
        spec: the function set.
        chunk_size: atoms per vmapped chunk.

    Returns:
        (B, N, spec.n_functions) values, zero for padded atoms.
    """
    B, N, M = batch.neighbors.shape
    disp = jax.vmap(displacements)(batch.positions, batch.cell, batch.neighbors, batch.shifts)
    g = atoms_descriptors(
        disp.reshape(B * N, M, 3), batch.neighbor_mask.reshape(B * N, M), spec, batch.slots, chunk_size
    )
    return g.reshape(B, N, -1)


# ------------------------------------------------------------- Jacobians
# Force training on a CPU re-differentiates the symmetry functions at every
# step, although they do not depend on the network.  The chain rule
# F_k = -sum_i (dE/dG_i) . dG_i/dR_k separates the two: the Jacobian
# dG_i/dR_k is computed once per structure and a training step only needs
# the network's input gradient (see bpnn_jax.training).  It is written out
# analytically, pair by pair: autodiff of the whole atom costs ~70 reverse
# passes (one per output), and forward mode over each pair's 6 coordinates
# (vmapped jacfwd) measured ~5x slower than the closed form.


def _cutoff_and_slope(r, rc):
    """fc(r) and dfc/dr (elementwise, same shape as r)."""
    return jax.jvp(lambda x: cosine_cutoff(x, rc), (r,), (jnp.ones_like(r),))


def atom_descriptor_jacobian(disp, mask, spec: SymmetryFunctionSet, slots: Sequence[int]):
    """Derivatives of one centre atom's symmetry functions by its neighbour vectors.

    Analytic, in the layout of :func:`atom_descriptors`.  Every gradient of
    a G4 term T(r_ij, r_ik) lies in the plane of r_ij and r_ik, so per
    ordered pair it is stored as two scalar coefficients per vector:
    dT/dr_ij = A r_ij + B r_ik and dT/dr_ik = C r_ik + D r_ij, with

        x = R_ij² + R_ik² + R_jk²,  F = fc(R_ij) fc(R_ik) fc(R_jk),
        ∇_j x = 4 r_ij - 2 r_ik,    ∇_j cos = r_ik/(R_ij R_ik) - cos r_ij/R_ij²,
        ∇_j fc(R) = fc'(R)/R · r for R = R_ij, and -fc'(R_jk)/R_jk · (r_ik - r_ij).

    The sums over partners are then row/column sums and one small matrix
    product per element pair.

    Args:
        disp: (M, 3) displacement vectors r_ij to the neighbour slots, Å,
            element-sorted as for :func:`atom_descriptors`.
        mask: (M,) bool, True for real neighbours.
        spec: the function set.
        slots: per-element slot counts (static), sum(slots) = M.

    Returns:
        (M, spec.n_functions, 3) array J with J[m, f] = dG_f / dr_m in Å⁻¹;
        zero for padded slots.  A :class:`~bpnn_jax.descriptors.chebyshev.ChebyshevBasis`
        ``spec`` gives its own descriptor's derivatives.
    """
    if isinstance(spec, ChebyshevBasis):
        return chebyshev_atom_jacobian(disp, mask, spec, slots)
    if isinstance(spec, CombinedDescriptors):
        return jnp.concatenate([atom_descriptor_jacobian(disp, mask, p, slots) for p in spec.parts], axis=1)
    dtype = disp.dtype
    rc = spec.cutoff
    M = disp.shape[0]
    w = mask.astype(dtype)
    r = safe_norm(disp)  # (M,)
    inv_r = safe_inverse(r)
    fc, dfc = _cutoff_and_slope(r, rc)
    bounds = np.concatenate([[0], np.cumsum(slots)]).astype(int)
    block = [slice(int(bounds[s]), int(bounds[s + 1])) for s in range(len(slots))]

    if spec.radial:
        eta = jnp.asarray([p[0] for p in spec.radial], dtype)[:, None]
        rs = jnp.asarray([p[1] for p in spec.radial], dtype)[:, None]
        e = jnp.exp(-eta * (r[None] - rs) ** 2)  # (K, M)
        # dG2/dr_m = [fc'(R) - 2 eta (R - Rs) fc(R)] e / R · r_m
        coef = (dfc[None] - 2.0 * eta * (r[None] - rs) * fc[None]) * e * (inv_r * w)[None]
        jr = coef.T[:, :, None] * disp[:, None, :]  # (M, K, 3)

    if spec.angular:
        etas, lz, u_idx, l_idx, scale = spec._angular_tables()
        eta_u = jnp.asarray(etas, dtype)[u_idx][:, None, None]  # (A, 1, 1) per function
        lam = jnp.asarray([lz[l][0] for l in l_idx], dtype)[:, None, None]
        zeta = [lz[l][1] for l in l_idx]
        scale = jnp.asarray(scale, dtype)[:, None, None]
        n_ang = len(spec.angular)

    out = []
    for a in range(spec.n_elements):
        sa = block[a]
        if spec.radial:
            keep = np.zeros((M, 1, 1))
            keep[sa] = 1.0
            out.append(jr * jnp.asarray(keep, dtype))
        if not spec.angular:
            continue
        for b in range(a, spec.n_elements):
            sb = block[b]
            ja = jnp.zeros((M, n_ang, 3), dtype)
            if bounds[a + 1] == bounds[a] or bounds[b + 1] == bounds[b]:
                out.append(ja)
                continue
            dj, dk = disp[sa], disp[sb]  # (Ma, 3), (Mb, 3)
            d = dk[None, :, :] - dj[:, None, :]  # (Ma, Mb, 3)
            rjk = safe_norm(d)
            inv_rjk = safe_inverse(rjk)
            fjk, dfjk = _cutoff_and_slope(rjk, rc)
            wjk = w[sa][:, None] * w[sb][None, :]
            if a == b:  # j != k, and both orders of each pair are present
                wjk = 0.5 * wjk * (1.0 - jnp.eye(wjk.shape[0], dtype=dtype))
            fj, fk = fc[sa][:, None], fc[sb][None, :]
            gj, gk = (dfc * inv_r)[sa][:, None], (dfc * inv_r)[sb][None, :]
            gjk = dfjk * inv_rjk
            F = fj * fk * fjk
            # grad_j F = Fa_j r_ij + Fb_j r_ik ;  grad_k F = Fb_k r_ik + Fa_k r_ij
            Fa_j = fk * (fjk * gj + fj * gjk)
            Fb_j = -fj * fk * gjk
            Fb_k = fj * (fjk * gk + fk * gjk)
            rj2, rk2 = (r * r)[sa][:, None], (r * r)[sb][None, :]
            inv_rr = inv_r[sa][:, None] * inv_r[sb][None, :]
            cos = (dj @ dk.T) * inv_rr
            x = rj2 + rk2 + rjk * rjk
            e = jnp.exp(-eta_u * x[None])  # (A, Ma, Mb)
            base = 1.0 + lam * cos[None]
            P = jnp.stack([jax.lax.integer_pow(base[f], z) for f, z in enumerate(zeta)])
            dP = jnp.stack([z * jax.lax.integer_pow(base[f], z - 1) for f, z in enumerate(zeta)]) * lam
            PE = P * e
            FdP = (e * F[None]) * dP
            sw = scale * wjk[None]
            eF = eta_u * F[None]
            # dT/dr_ij = A r_ij + B r_ik and dT/dr_ik = C r_ik + B r_ij: the
            # cross coefficients agree because grad_k F and grad_k x mirror
            # grad_j F and grad_j x.
            A = sw * (PE * (Fa_j[None] - 4.0 * eF) - FdP * (cos * inv_r[sa][:, None] ** 2)[None])
            B = sw * (PE * (Fb_j[None] + 2.0 * eF) + FdP * inv_rr[None])
            C = sw * (PE * (Fb_k[None] - 4.0 * eF) - FdP * (cos * inv_r[sb][None, :] ** 2)[None])
            # Partner sums as broadcast multiply-reduces (XLA's CPU dot is
            # slow for a minor dimension of 3), coordinate by coordinate.
            row_a, col_c = A.sum(axis=2), C.sum(axis=1)  # (A, Ma), (A, Mb)
            jj = jnp.stack([row_a * dj[:, c][None] + (B * dk[:, c][None, None, :]).sum(axis=2) for c in range(3)], -1)
            jk = jnp.stack([col_c * dk[:, c][None] + (B * dj[:, c][None, :, None]).sum(axis=1) for c in range(3)], -1)
            ja = ja.at[sa].add(jnp.swapaxes(jj, 0, 1))  # (Ma, A, 3)
            ja = ja.at[sb].add(jnp.swapaxes(jk, 0, 1))
            out.append(ja)
    return jnp.concatenate(out, axis=1)


def structure_descriptor_jacobian(positions, cell, neighbors, shifts, neighbor_mask, spec, slots, *,
                                  chunk_size: int = 2):
    """Jacobian of every atom's symmetry functions by every atom's position.

    Periodic images are folded onto their atoms: with r_ij = R[j] - R[i] +
    S_ij @ cell, dG_i/dR_k sums the slot derivatives of every image of k
    and subtracts all of them for k = i.

    Args:
        positions: (N, 3) positions, Å.
        cell: (3, 3) lattice vectors as rows, Å.
        neighbors: (N, M) int neighbour indices, element-sorted slots.
        shifts: (N, M, 3) integer-valued cell shifts.
        neighbor_mask: (N, M) bool.
        spec: the function set.
        slots: per-element slot counts (static).
        chunk_size: atoms per vmapped chunk inside ``lax.map``.

    Returns:
        (N, N, spec.n_functions, 3) array J with J[i, k, f] = dG_{i,f} / dR_k
        in Å⁻¹; zero rows and columns for padded atoms.
    """
    disp = displacements(positions, cell, neighbors, shifts)
    js = _atoms_jacobian(disp, neighbor_mask, spec, slots, chunk_size)
    return _fold_images(js, neighbors)


def _atoms_jacobian(disp, mask, spec, slots, chunk_size):
    """Map :func:`atom_descriptor_jacobian` over atoms (A, M, ...) in vmapped chunks."""
    n = disp.shape[0]
    chunk = max(1, min(effective_chunk_size(chunk_size), n))
    return jax.lax.map(lambda args: atom_descriptor_jacobian(*args, spec, slots), (disp, mask), batch_size=chunk)


def _fold_images(js, neighbors):
    """(N, M, F, 3) slot derivatives -> (N, N, F, 3) derivatives by atom position."""
    N = js.shape[0]
    rows = jnp.arange(N)
    jac = jnp.zeros((N, N) + js.shape[2:], js.dtype).at[rows[:, None], neighbors].add(js)
    return jac.at[rows, rows].add(-js.sum(axis=1))


def batch_descriptor_jacobian(batch, spec: SymmetryFunctionSet, *, chunk_size: int = 2):
    """Descriptor Jacobians for a :class:`~bpnn_jax.descriptors.batch.Batch`.

    Args:
        batch: Batch of shape (B, N, M); positions/cell dtype sets the
            precision.
        spec: the function set.
        chunk_size: atoms per vmapped chunk (2 was fastest on CPU: the
            per-atom pair temporaries are ~20 times those of the forward
            pass).

    Returns:
        (B, N, N, spec.n_functions, 3) array, J[b, i, k, f] = dG_{i,f}/dR_k
        in Å⁻¹, zero for padded atoms.
    """
    B, N, M = batch.neighbors.shape
    disp = jax.vmap(displacements)(batch.positions, batch.cell, batch.neighbors, batch.shifts)
    js = _atoms_jacobian(disp.reshape(B * N, M, 3), batch.neighbor_mask.reshape(B * N, M), spec, batch.slots,
                         chunk_size)
    return jax.vmap(_fold_images)(js.reshape((B, N) + js.shape[1:]), batch.neighbors)


def _partner_columns(neighbors, mask):
    """Each atom's distinct partners (itself and its neighbours' atoms) and every slot's column among them.

    Args:
        neighbors: (N, M) int neighbour atom indices.
        mask: (N, M) bool, real neighbours.

    Returns:
        ``partners`` (N, W) int32, W = min(N, M + 1): the distinct atoms k
        with dG_i/dR_k != 0 in ascending order, -1 after them; ``columns``
        (N, M + 1) int32: the column of the atom itself (column 0 of this
        array) and of every slot's atom in ``partners[i]`` (padded slots
        point at some column; their derivatives are zero).
    """
    N, M = neighbors.shape
    W = min(N, M + 1)
    cand = jnp.concatenate([jnp.arange(N, dtype=neighbors.dtype)[:, None], jnp.where(mask, neighbors, N)], axis=1)

    def row(c):
        order = jnp.argsort(c)
        srt = c[order]
        first = jnp.concatenate([jnp.ones((1,), bool), srt[1:] != srt[:-1]]) & (srt < N)
        rank = (jnp.cumsum(first) - 1).astype(c.dtype)  # duplicates share their first occurrence's rank
        cols = jnp.zeros_like(c).at[order].set(jnp.minimum(rank, W - 1))
        partners = jnp.full((W,), -1, c.dtype).at[jnp.where(first, rank, W)].set(srt, mode="drop")
        return partners, cols

    partners, cols = jax.vmap(row)(cand)
    return partners.astype(jnp.int32), cols.astype(jnp.int32)


def batch_descriptor_jacobian_sparse(batch, spec: SymmetryFunctionSet, *, chunk_size: int = 2):
    """Descriptor Jacobians stored per atom over its partners only (memory linear in the atom count).

    dG_i/dR_k is non-zero only for k = i and the atoms k with an image
    within the cut-off of i; with images folded onto their atoms those are
    at most min(N, M + 1) atoms, M the neighbour slots.  For cells wider
    than ~2 Rc that is far fewer than N, so storage is (N, W) blocks instead
    of the (N, N) of :func:`batch_descriptor_jacobian` (same values).

    Returns:
        ``values`` (B, N, W, spec.n_functions, 3), Å⁻¹, with
        ``values[b, i, q, f] = dG_{i,f} / dR_{partners[b, i, q]}``, and
        ``partners`` (B, N, W) int32 (-1 = unused, its values zero).
    """
    B, N, M = batch.neighbors.shape
    disp = jax.vmap(displacements)(batch.positions, batch.cell, batch.neighbors, batch.shifts)
    js = _atoms_jacobian(disp.reshape(B * N, M, 3), batch.neighbor_mask.reshape(B * N, M), spec, batch.slots,
                         chunk_size)
    js = js.reshape((B, N) + js.shape[1:])

    def fold(js_b, neighbors, mask):
        partners, cols = _partner_columns(neighbors, mask)
        rows = jnp.arange(N)
        values = jnp.zeros((N, partners.shape[1]) + js_b.shape[2:], js_b.dtype)
        values = values.at[rows[:, None], cols[:, 1:]].add(js_b)
        return values.at[rows, cols[:, 0]].add(-js_b.sum(axis=1)), partners

    return jax.vmap(fold)(js, batch.neighbors, batch.neighbor_mask)


def batch_descriptor_strain_jacobian(batch, spec: SymmetryFunctionSet, *, chunk_size: int = 2):
    """Derivatives of every atom's symmetry functions by a homogeneous strain.

    Under the strain r -> r (I + ε) (ε symmetric) every neighbour vector
    moves, so dG_i/dε_ab = ½ Σ_m [r_m,a (dG_i/dr_m)_b + r_m,b (dG_i/dr_m)_a]
    over the atom's neighbour slots m (periodic images included: this is
    why it is taken before folding).  With it the stress of any network on
    the functions is a contraction, σ_v = (1/V) Σ_i (dE/dG_i) · S_i[:, v].

    Returns:
        (B, N, spec.n_functions, 6) array S[b, i, f, v] = dG_{i,f}/dε_v
        (dimensionless), v in Voigt order (:data:`bpnn_jax.units.VOIGT`); zero for padding.
    """
    B, N, M = batch.neighbors.shape
    disp = jax.vmap(displacements)(batch.positions, batch.cell, batch.neighbors, batch.shifts)
    d = disp.reshape(B * N, M, 3)
    js = _atoms_jacobian(d, batch.neighbor_mask.reshape(B * N, M), spec, batch.slots, chunk_size)  # (BN, M, F, 3)
    full = jnp.einsum("nma,nmfb->nfab", d, js)
    full = 0.5 * (full + jnp.swapaxes(full, -1, -2))
    out = jnp.stack([full[..., a, b] for a, b in VOIGT], axis=-1)
    return out.reshape(B, N, -1, 6)
