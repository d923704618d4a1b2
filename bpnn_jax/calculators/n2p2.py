"""Export a model to n2p2 (and LAMMPS ``pair_style hdnnp``), and n2p2's ``input.data`` format.

n2p2 (https://github.com/CompPhysVienna/n2p2) is the reference C++
implementation of Behler-Parrinello potentials; LAMMPS's ML-HDNNP package
(``pair_style hdnnp``) runs its files.  :func:`export_n2p2` writes a model
whose descriptors are G2/G4 symmetry functions as

* ``input.nn``: elements, free-atom energies (``atom_energy``), cosine
  cut-off (``cutoff_type 1 0.0``), the functions (``symfunction_short``, type
  2 = G2, type 3 = narrow angular G4) and the network shape;
* ``scaling.data``: per element and function min, max, mean and sigma;
  with ``scale_symmetry_functions_sigma`` and ``scale_min_short 0`` /
  ``scale_max_short 1`` n2p2 feeds (G - mean) / sigma to the network, which
  is bpnn_jax's standardisation (min and max only drive n2p2's extrapolation
  warnings: they are the model's training range);
* ``weights.ZZZ.data`` (ZZZ = atomic number): the network, with bpnn_jax's
  output scale and per-element shift folded into its last layer.  A
  committee is one wider network: the members side by side on the shared
  input (first layer concatenated, later layers block-diagonal) and an
  output layer that averages them, so n2p2 computes the members' mean;
* with a repulsive pair baseline (:mod:`bpnn_jax.model.repulsion`, which n2p2
  does not have): ``repulsion.table`` for LAMMPS ``pair_style table``
  (``hybrid/overlay`` with ``hdnnp``), and ``lammps.in.snippet``, the LAMMPS
  input lines.

Why the definitions agree (n2p2 commit 61daa0d, ``SymFncExpRad``,
``SymFncExpAngn``, ``CutoffFunction``): type 2 is
Σ_j exp(-η (r_ij - rs)²) fc(r_ij); type 3 is 2^(1-ζ) Σ_{j<k} (1 + λ cos θ)^ζ
exp(-η (r_ij² + r_ik² + r_jk²)) fc(r_ij) fc(r_ik) fc(r_jk) over each
unordered neighbour pair once (with rs = 0), both with neighbour-element
resolution, and cut-off type 1 with alpha 0 is ½(cos(π r/rc) + 1): bpnn_jax's
G2, G4 and cosine cut-off (:mod:`bpnn_jax.descriptors`).  n2p2 sorts each
element's functions (by type, cut-off, η, rs, ζ, λ, neighbour elements) and
orders elements by atomic number; the scaling rows and first-layer weights
are written in that order.  No ``mean_energy``/``conv_energy``/
``conv_length`` lines: n2p2 then uses the file's units, eV and Å.

Units throughout: eV, Å, eV/Å.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import BPNNInputError

__all__ = [
    "N2P2_ACTIVATIONS",
    "export_n2p2",
    "format_members",
    "lammps_lines",
    "n2p2_networks",
    "n2p2_symmetry_functions",
    "nnp_predict",
    "repulsion_table",
    "write_n2p2_data",
    "write_repulsion_tables",
]

#: bpnn_jax (Keras) activation -> n2p2 letter (NeuralNetwork.cpp: t tanh, s logistic, p softplus, r ReLU,
#: l identity).  SiLU/swish, GELU, ELU, ... have no n2p2 counterpart.
N2P2_ACTIVATIONS = {"tanh": "t", "sigmoid": "s", "softplus": "p", "relu": "r", "linear": "l"}

#: Descriptor class -> name in messages.
_KIND_NAMES = {"ChebyshevBasis": "Chebyshev", "CombinedDescriptors": "combined"}

#: n2p2's CutoffFunction::CT_COS.
_CUTOFF_COS = 1

_FLOAT = "{:24.16E}"  # 17 significant digits: every double reads back exactly


def _f(x: float) -> str:
    return _FLOAT.format(float(x))


def _atomic_number(symbol: str) -> int:
    from ase.data import atomic_numbers

    try:
        return int(atomic_numbers[symbol])
    except KeyError:
        raise BPNNInputError(f"element {symbol!r} has no atomic number: n2p2 cannot name its weights file") from None


def format_members(indices: Iterable[int]) -> str:
    """0-based member indices as 1-based ranges, e.g. [0, 1, 2, 4] -> "1-3,5"."""
    idx = sorted(int(i) + 1 for i in indices)
    out, k = [], 0
    while k < len(idx):
        j = k
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[k]) if j == k else f"{idx[k]}-{idx[j]}")
        k = j + 1
    return ",".join(out)


def _model_name(model) -> str:
    return getattr(model, "_bpnn_source", None) or getattr(model, "name", "model")


def _select(model, members: Sequence[int] | None, name: str):
    """The chosen members (0-based) and the symmetry-function parts they read.

    Returns:
        ``(members, parts)``: sorted-as-given member indices and a list of
        ``(SymmetryFunctionSet, (start, stop))`` column ranges of the model.

    Raises:
        BPNNInputError: bad member numbers, members on a descriptor n2p2 cannot
            compute (naming them and the members that can be exported).
    """
    from ..descriptors.symmetry import SymmetryFunctionSet
    from ..model.ensemble import descriptor_parts, parts_read

    K = int(model.members)
    if members is None:
        chosen = list(range(K))
    else:
        chosen = [int(k) for k in members]
        if not chosen or len(set(chosen)) != len(chosen) or min(chosen) < 0 or max(chosen) >= K:
            raise BPNNInputError(f"{name}: --members: give distinct member numbers from 1 to {K} (the model has "
                                 f"{K} member{'s' if K > 1 else ''})")
    parts, ranges = descriptor_parts(model)
    reads = parts_read(model)
    if len(parts) == 1:
        reads[:] = True  # a member with all-zero first layer still "reads" the only set
    def foreign(k):  # the descriptor kinds n2p2 lacks that member k reads
        return {_KIND_NAMES.get(type(parts[p]).__name__, type(parts[p]).__name__) for p in range(len(parts))
                if reads[k, p] and not isinstance(parts[p], SymmetryFunctionSet)}

    bad = [k for k in chosen if foreign(k)]
    if bad:
        kinds = " and ".join(sorted(set().union(*(foreign(k) for k in bad))))
        if K == 1:
            raise BPNNInputError(f"{name}: its descriptors are {kinds}, which n2p2 cannot compute (it has G2/G4 "
                                 f"symmetry functions only)")
        good = [k for k in range(K) if not foreign(k)]
        hint = (f"export the members on symmetry functions with --members {format_members(good)}" if good
                else "no member of this model can be exported")
        raise BPNNInputError(
            f"{name}: member{'s' if len(bad) > 1 else ''} {format_members(bad)} of {K} read{'s' if len(bad) == 1 else ''} "
            f"{kinds} descriptors, which n2p2 cannot compute (it has G2/G4 symmetry functions only); {hint}")
    kept = [p for p in range(len(parts)) if reads[chosen, p].any()] or [0]
    return chosen, [(parts[p], ranges[p]) for p in kept]


def n2p2_symmetry_functions(parts, elements: Sequence[str]) -> dict:
    """n2p2's symmetry-function lines and order for every centre element.

    Args:
        parts: ``[(SymmetryFunctionSet, (start, stop)), ...]``: the sets and
            their column ranges in the model's descriptor vector.
        elements: the model's elements (species order).

    Returns:
        ``{element: [(column, line), ...]}`` in n2p2's order for that
        element (its ``Element::sortSymmetryFunctions``): ``column`` is the
        model's descriptor column, ``line`` the ``symfunction_short`` line.

    Raises:
        BPNNInputError: two identical functions (n2p2 would order them
            arbitrarily).
    """
    z = {el: _atomic_number(el) for el in elements}
    n2p2_index = {el: i for i, el in enumerate(sorted(elements, key=lambda e: z[e]))}
    out = {}
    for centre in elements:
        rows = []
        for spec, (start, _stop) in parts:
            rc = float(spec.cutoff)
            for k, col in enumerate(spec.columns()):
                column = start + k
                eta = float(col["eta"])
                if col["kind"] == "G2":
                    nb, rs = col["neighbors"], float(col["rs"])
                    key = (2, rc, eta, rs, 0.0, 0.0, n2p2_index[nb], 0)
                    line = f"symfunction_short {centre} 2 {nb} {eta!r} {rs!r} {rc!r}"
                else:
                    b, c = col["neighbors"].split("-")
                    lam, zeta = float(col["lambda"]), float(col["zeta"])
                    e1, e2 = sorted((n2p2_index[b], n2p2_index[c]))
                    key = (3, rc, eta, 0.0, zeta, lam, e1, e2)
                    line = f"symfunction_short {centre} 3 {b} {c} {eta!r} {lam!r} {zeta!r} {rc!r}"
                rows.append((key, column, line))
        rows.sort(key=lambda r: r[0])
        for a, b in itertools.pairwise(rows):
            if a[0] == b[0]:
                raise BPNNInputError(f"descriptor columns {a[1]} and {b[1]} are the same function ({a[2]}); "
                                     f"n2p2 would order them arbitrarily")
        out[centre] = [(column, line) for _, column, line in rows]
    return out


def _activation_letter(model, name: str) -> str:
    act = N2P2_ACTIVATIONS.get(str(model.activation))
    if act is None:
        raise BPNNInputError(f"{name}: activation {model.activation!r} has no n2p2 equivalent (n2p2 has "
                             f"{', '.join(sorted(N2P2_ACTIVATIONS))}); this model cannot be exported")
    return act


def n2p2_networks(model, members: Sequence[int], columns: dict) -> dict:
    """Each element's network as one n2p2 network computing the members' mean atomic energy.

    Args:
        model: the BPNN.
        members: 0-based member indices to combine (their mean).
        columns: ``{element: [descriptor column, ...]}`` in n2p2's input order.

    Returns:
        ``{element: (layers, activations)}``: ``layers`` a list of
        ``(W (fan_in, fan_out), b (fan_out,))`` float64 arrays, input to
        output, computing E_i - E_ref (eV) from (G - mean)/sigma in n2p2's
        order; ``activations`` n2p2 letters, one per layer.

    Raises:
        BPNNInputError: an activation n2p2 does not have.
    """
    from ..model.ensemble import model_statistic

    act = _activation_letter(model, _model_name(model))
    scale = float(model_statistic(model, "energy_scale"))
    shift = model_statistic(model, "energy_shift")
    K = len(members)
    out = {}
    for s, (el, net) in enumerate(zip(model.elements, model.nets)):
        Ws, bs = net.member_weights()
        Ws = [np.asarray(W, np.float64)[members] for W in Ws]  # (K, fan_in, fan_out)
        bs = [np.asarray(b, np.float64)[members] for b in bs]
        layers = []
        W0 = Ws[0][:, columns[el], :]  # (K, F, H): members side by side on the shared input
        layers.append((np.concatenate(list(W0), axis=1), np.concatenate(list(bs[0]))))
        for W, b in zip(Ws[1:-1], bs[1:-1]):
            fi, fo = W.shape[1:]
            big = np.zeros((K * fi, K * fo))
            for k in range(K):
                big[k * fi:(k + 1) * fi, k * fo:(k + 1) * fo] = W[k]
            layers.append((big, np.concatenate(list(b))))
        # e = shift + scale * mean_k (W_k h_k + b_k): the mean and the output scale folded in.
        W_out = np.concatenate(list(Ws[-1]), axis=0) * (scale / K)
        b_out = np.array([shift[s] + scale * math.fsum(bs[-1][:, 0]) / K])
        layers.append((W_out, b_out))
        out[el] = (layers, [act] * (len(layers) - 1) + ["l"])
    return out


def _write_weights(path: Path, layers) -> int:
    """n2p2's weights file (NeuralNetwork::getConnections order); returns the number of values."""
    from ..io.atomic import atomic_write

    lines = [
        "# Neural network connection values (weights and biases), written by bpnn_jax export-n2p2.",
        "# Col 1 connection value; 2 type (a = weight, b = bias); 3 index; 4 l_s; 5 n_s; 6 l_e; 7 n_e",
    ]
    count = 0
    for layer, (W, b) in enumerate(layers, 1):
        fan_in, fan_out = W.shape
        # For each neuron j of the previous layer, its weights to every neuron k of this one, then the biases.
        for j in range(fan_in):
            for k in range(fan_out):
                count += 1
                lines.append(f"{_f(W[j, k])} a {count:9d} {layer - 1:5d} {j + 1:5d} {layer:5d} {k + 1:5d}")
        for k in range(fan_out):
            count += 1
            lines.append(f"{_f(b[k])} b {count:9d} {layer:5d} {k + 1:5d}")
    with atomic_write(path) as fh:
        fh.write("\n".join(lines) + "\n")
    return count


# ----------------------------------------------------------------- baseline
def repulsion_table(repulsion, pair: str, n_points: int = 2000, r_min: float = 0.5):
    """The pair baseline φ(r) of one element pair tabulated for LAMMPS ``pair_style table``.

    Points are evenly spaced in r² (LAMMPS's ``RSQ`` layout, so a
    ``pair_style table linear N`` with the same N uses them without
    re-interpolating them), from ``r_min`` to the pair's cut-off.

    Args:
        repulsion: a :class:`~bpnn_jax.model.repulsion.PairRepulsion`.
        pair: its key, e.g. "O-Ti".
        n_points: number of rows.
        r_min: first distance, Å (LAMMPS stops if two atoms come closer).

    Returns:
        ``(r, e, f)``: (n_points,) float64 distances (Å), pair energies φ(r)
        (eV) and forces -dφ/dr (eV/Å).
    """
    rc = float(repulsion.cutoffs[pair])
    if not 0 < r_min < rc:
        raise BPNNInputError(f"table r_min {r_min} Å must lie between 0 and the {pair} cut-off {rc} Å")
    if n_points < 2:
        raise BPNNInputError(f"a table needs at least 2 points, got {n_points}")
    r = np.sqrt(r_min**2 + np.arange(n_points) * (rc**2 - r_min**2) / (n_points - 1))
    r[-1] = rc
    x = np.clip(1.0 - r / rc, 0.0, None)
    c = np.asarray(repulsion.coefficients[pair], np.float64)
    p = np.asarray(repulsion.powers, np.float64)
    e = (c[None] * x[:, None] ** p[None]).sum(axis=1)
    f = (c[None] * p[None] * x[:, None] ** (p[None] - 1) / rc).sum(axis=1)
    return r, e, f


def write_repulsion_tables(path, repulsion, n_points: int = 2000, r_min: float = 0.5) -> dict[str, float]:
    """Write every pair of the baseline as one section of a LAMMPS table file.

    Returns:
        ``{pair: cut-off Å}`` of the sections written (section keyword = pair key).
    """
    from ..io.atomic import atomic_write

    lines = ["# Short-range repulsive pair baseline of a bpnn_jax model (units metal: Å, eV, eV/Å).",
             "# phi(r) = sum_k c_k (1 - r/rc)^p_k, zero beyond rc; columns: index, r, phi, -dphi/dr."]
    written = {}
    for pair, rc in repulsion.cutoffs.items():
        r, e, f = repulsion_table(repulsion, pair, n_points, r_min)
        lines += ["", pair, f"N {n_points} RSQ {r_min!r} {float(rc)!r}", ""]
        lines += [f"{i + 1} {float(ri)!r} {float(ei)!r} {float(fi)!r}"
                  for i, (ri, ei, fi) in enumerate(zip(r, e, f))]
        written[pair] = float(rc)
    with atomic_write(path) as fh:
        fh.write("\n".join(lines) + "\n")
    return written


def _hdnnp_style(cutoff: float, out_dir: str) -> str:
    """The ``hdnnp`` pair style and its arguments for the files in ``out_dir``.

    n2p2 stops at the first extrapolation warning by default (maxew 0); these are warnings about leaving
    the training range, which the committee spread monitors better: count them, do not stop.
    """
    return (f"hdnnp {cutoff!r} dir {out_dir} showew no showewsum 1000 maxew 1000000 resetew yes "
            f"cflength 1.0 cfenergy 1.0")


def _types_comment(elements: Sequence[str]) -> str:
    return "# units metal (eV, Å); atom types: " + ", ".join(f"{t} = {el}" for t, el in enumerate(elements, 1))


def _table_coeffs(elements: Sequence[str], out_dir: str, tables: dict[str, float]) -> list[str]:
    """``pair_coeff`` lines of the baseline's ``repulsion.table`` sections."""
    lines = []
    for pair, rc in tables.items():
        a, b = pair.split("-")
        i, j = sorted((elements.index(a) + 1, elements.index(b) + 1))
        lines.append(f"pair_coeff {i} {j} table {out_dir}/repulsion.table {pair} {rc!r}")
    return lines


def lammps_lines_members(elements: Sequence[str], cutoff: float, member_dirs: Sequence[str], out_dir: str,
                         tables: dict[str, float] | None, n_points: int = 2000) -> list[str]:
    """LAMMPS input lines for a committee exported member by member: ``pair_style hybrid/scaled``.

    Every member is its own ``hdnnp`` sub-style, scaled by 1/K, so LAMMPS sums the members' mean; the
    baseline table, when there is one, is added at scale 1.  n2p2 forms dE/dG with one forward pass per
    input function through the whole network, so K networks side by side cost ~K times one member,
    where the block-diagonal network of :func:`export_n2p2` costs ~K² times (its zeros included).

    Args:
        member_dirs: the members' export directories as LAMMPS should find them.
        out_dir: the directory of ``repulsion.table`` as LAMMPS should find it.
        The rest as :func:`lammps_lines`.
    """
    scale = repr(1.0 / len(member_dirs))
    styles = [f"{scale} {_hdnnp_style(cutoff, d)}" for d in member_dirs]
    if tables:
        styles.append(f"1.0 table linear {n_points}")
    lines = [_types_comment(elements), "pair_style hybrid/scaled " + " ".join(styles)]
    lines += [f"pair_coeff * * hdnnp {k} " + " ".join(elements) for k in range(1, len(member_dirs) + 1)]
    return lines + _table_coeffs(elements, out_dir, tables or {})


def lammps_lines(elements: Sequence[str], cutoff: float, out_dir: str, tables: dict[str, float] | None,
                 n_points: int = 2000) -> list[str]:
    """LAMMPS input lines for an export: ``pair_style`` and ``pair_coeff``.

    LAMMPS atom type t is element t-1 of the model (as for ``export-lammps``).

    Args:
        elements: the model's elements.
        cutoff: largest symmetry-function cut-off, Å.
        out_dir: the export directory as LAMMPS should find it.
        tables: ``{pair: cut-off}`` of ``repulsion.table`` sections, or None.
        n_points: table length (``table linear N``).
    """
    hdnnp = _hdnnp_style(cutoff, out_dir)
    lines = [_types_comment(elements)]
    if not tables:
        return lines + [f"pair_style {hdnnp}", "pair_coeff * * " + " ".join(elements)]
    lines += [f"pair_style hybrid/overlay {hdnnp} table linear {n_points}",
              "pair_coeff * * hdnnp " + " ".join(elements)]
    return lines + _table_coeffs(elements, out_dir, tables)


# ------------------------------------------------------------------ export
def _load(model):
    """``(model, name)``: a BPNN as it is, or loaded from a ``.keras`` path or shipped name."""
    from ..model.bpnn import BPNN, load_model

    if isinstance(model, BPNN):
        return model, _model_name(model)
    return load_model(model), str(model)


def _make_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BPNNInputError(f"cannot write {out}: it exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BPNNInputError(f"cannot create {out}: {exc.strerror or exc}") from None


def _write_networks(model, chosen: Sequence[int], parts, out: Path, source: str) -> dict:
    """``input.nn``, ``scaling.data`` and the weights files of members ``chosen`` (their mean) in ``out``.

    Returns:
        The summary of :func:`export_n2p2` without ``tables`` and ``lammps``.
    """
    from ..model.ensemble import model_statistic

    elements = list(model.elements)
    sfs = n2p2_symmetry_functions(parts, elements)
    columns = {el: [c for c, _ in sfs[el]] for el in elements}
    nets = n2p2_networks(model, chosen, columns)
    by_z = sorted(elements, key=_atomic_number)
    cutoff = max(float(spec.cutoff) for spec, _ in parts)
    from ..io.atomic import atomic_write

    # input.nn
    layers0, acts0 = nets[elements[0]]
    hidden = [W.shape[1] for W, _ in layers0[:-1]]
    refs = model.reference_energies
    desc = " + ".join(f"{spec.name or 'custom'} ({spec.n_functions} functions, Rc {spec.cutoff:g} Å)"
                      for spec, _ in parts)
    text = [
        "# n2p2 potential written by bpnn_jax export-n2p2 (units: eV, Å; no normalisation lines, so n2p2",
        "# uses these units as they are).",
        f"# model: {source}; members {format_members(chosen)} of {model.members}"
        + (" (their mean: members side by side, averaged by the output layer)" if len(chosen) > 1 else ""),
        f"# descriptors: {desc}",
        f"number_of_elements {len(elements)}",
        "elements " + " ".join(by_z),
    ]
    text += [f"atom_energy {el} {refs[el]!r}" for el in by_z if el in refs]
    text += [
        f"cutoff_type {_CUTOFF_COS} 0.0",
        "# (G - mean) / sigma from scaling.data: bpnn_jax's standardisation.",
        "scale_symmetry_functions_sigma",
        "scale_min_short 0.0",
        "scale_max_short 1.0",
        f"global_hidden_layers_short {len(hidden)}",
        "global_nodes_short " + " ".join(str(h) for h in hidden),
        "global_activation_short " + " ".join(acts0),
    ]
    for el in by_z:
        text.append(f"# {el}: {len(sfs[el])} functions, in n2p2's order")
        text += [line for _, line in sfs[el]]
    files = []
    path = out / "input.nn"
    with atomic_write(path) as fh:
        fh.write("\n".join(text) + "\n")
    files.append(path)

    # scaling.data: rows in n2p2's element and function order.
    mean, std = model_statistic(model, "sf_mean"), model_statistic(model, "sf_std")
    lo, hi = model_statistic(model, "sf_min"), model_statistic(model, "sf_max")
    rows = ["# Symmetry function scaling data written by bpnn_jax export-n2p2.",
            "# Col 1 e_index; 2 sf_index; 3 sf_min; 4 sf_max; 5 sf_mean; 6 sf_sigma"]
    for e, el in enumerate(by_z, 1):
        s = elements.index(el)
        for i, c in enumerate(columns[el], 1):
            rows.append(f"{e:10d} {i:10d} {_f(lo[s, c])} {_f(hi[s, c])} {_f(mean[s, c])} {_f(std[s, c])}")
    path = out / "scaling.data"
    with atomic_write(path) as fh:
        fh.write("\n".join(rows) + "\n")
    files.append(path)

    n_weights = {}
    for el in by_z:
        path = out / f"weights.{_atomic_number(el):03d}.data"
        n_weights[el] = _write_weights(path, nets[el][0])
        files.append(path)

    return {"elements": by_z, "members": list(chosen), "n_functions": {el: len(sfs[el]) for el in by_z},
            "n_weights": n_weights, "layers": [layers0[0][0].shape[0]] + [W.shape[1] for W, _ in layers0],
            "cutoff": cutoff, "files": [str(p) for p in files]}


def _write_baseline_and_lines(model, out: Path, lines_for, table_points: int, table_r_min: float) -> dict:
    """``repulsion.table`` (when the model has a baseline) and ``lammps.in.snippet`` from ``lines_for(tables)``.

    Returns:
        ``{"tables": {pair: cut-off} or None, "lammps": lines, "files": written paths}``.
    """
    from ..io.atomic import atomic_write

    files, tables = [], None
    if model.repulsion is not None and model.repulsion.cutoffs:
        path = out / "repulsion.table"
        tables = write_repulsion_tables(path, model.repulsion, table_points, table_r_min)
        files.append(str(path))
    lines = lines_for(tables)
    path = out / "lammps.in.snippet"
    with atomic_write(path) as fh:
        fh.write("\n".join(lines) + "\n")
    files.append(str(path))
    return {"tables": tables, "lammps": lines, "files": files}


def export_n2p2_members(model, out_dir, *, members: Sequence[int] | None = None, table_points: int = 2000,
                        table_r_min: float = 0.5, lammps_dir: str | None = None) -> dict:
    """Write a committee member by member: ``out_dir/member_NN/`` (n2p2 files of member NN, 1-based, no
    baseline), the baseline's ``repulsion.table`` in ``out_dir``, and ``lammps.in.snippet`` with
    :func:`lammps_lines_members` (``pair_style hybrid/scaled``).  The same potential as :func:`export_n2p2`
    of the same members, for ~1/K of n2p2's cost.

    Returns:
        The summary of :func:`export_n2p2` (``members`` the chosen ones, ``files`` every written path), and
        ``member_dirs``, the members' directories as the LAMMPS lines name them.
    """
    model, source = _load(model)
    out = Path(out_dir)
    chosen, _ = _select(model, members, source)
    _activation_letter(model, source)  # before any file is written
    _make_dir(out)
    shown = lammps_dir or str(out_dir)
    files, dirs, cutoff = [], [], 0.0
    for k in chosen:
        sub = f"member_{k + 1:02d}"
        _make_dir(out / sub)
        summary = _write_networks(model, [k], _select(model, [k], source)[1], out / sub, source)
        files += summary["files"]
        dirs.append(f"{shown}/{sub}")
        cutoff = max(cutoff, summary["cutoff"])  # members may read different function sets
    elements = list(model.elements)
    tail = _write_baseline_and_lines(
        model, out, lambda tables: lammps_lines_members(elements, cutoff, dirs, shown, tables, table_points),
        table_points, table_r_min)
    return {**summary, **tail, "members": chosen, "cutoff": cutoff, "files": files + tail["files"],
            "member_dirs": dirs}


def export_n2p2(model, out_dir, *, members: Sequence[int] | None = None, table_points: int = 2000,
                table_r_min: float = 0.5, lammps_dir: str | None = None) -> dict:
    """Write ``model`` as n2p2 files (see module doc).

    Args:
        model: a :class:`~bpnn_jax.model.BPNN`, a ``.keras`` path or a
            shipped name.
        out_dir: directory to write (created if missing).
        members: 0-based committee members to export (their mean); None:
            all.  Members on a Chebyshev basis cannot be exported.
        table_points: rows per pair of ``repulsion.table``.
        table_r_min: first distance of the tables, Å.
        lammps_dir: how LAMMPS input should name ``out_dir`` (default: as given).

    Returns:
        A summary dict: ``elements`` (n2p2 order), ``members`` (0-based),
        ``n_functions`` {element: count}, ``n_weights`` {element: count},
        ``layers`` (nodes per layer, input to output), ``cutoff`` (Å),
        ``files`` (written paths), ``tables`` ({pair: cut-off} or None) and
        ``lammps`` (the LAMMPS input lines).

    Raises:
        BPNNInputError: a model n2p2 cannot express (descriptors,
            activation), bad member numbers, or an unwritable directory.
    """
    model, source = _load(model)
    out = Path(out_dir)
    chosen, parts = _select(model, members, source)
    _activation_letter(model, source)  # before any file is written
    _make_dir(out)
    summary = _write_networks(model, chosen, parts, out, source)
    elements = list(model.elements)
    tail = _write_baseline_and_lines(
        model, out, lambda tables: lammps_lines(elements, summary["cutoff"], lammps_dir or str(out_dir), tables,
                                                table_points), table_points, table_r_min)
    return {**summary, **tail, "files": summary["files"] + tail["files"]}


# ------------------------------------------------------------- input.data
def _forces_of(atoms) -> np.ndarray | None:
    calc = atoms.calc
    results = getattr(calc, "results", None) if calc is not None else None
    if results and results.get("forces") is not None:
        return np.asarray(results["forces"], np.float64)
    return None


def write_n2p2_data(frames, path) -> None:
    """Write structures in n2p2's ``input.data`` format (Å, eV, eV/Å).

    One ``begin`` ... ``end`` block per structure: ``comment`` (the
    structure's ``info["file"]`` if any), three ``lattice`` lines for a
    periodic cell, one ``atom x y z element charge 0 fx fy fz`` line per
    atom (charges 0; forces from the structure's calculator results, else
    0), ``energy`` (the stored total energy, else 0) and ``charge 0``.

    Args:
        frames: an ASE ``Atoms`` or a sequence of them; each periodic in all
            three directions or in none.
        path: file to write (atomically).

    Raises:
        BPNNInputError: a structure periodic in only some directions (n2p2
            has no such cells).
    """
    from ..io.atomic import atomic_write
    from ..io.xsf import structure_energy

    if hasattr(frames, "get_positions"):
        frames = [frames]
    lines = []
    for n, atoms in enumerate(frames):
        pbc = np.asarray(atoms.pbc, bool)
        name = str(atoms.info.get("file", f"structure {n + 1}"))
        if pbc.any() and not pbc.all():
            raise BPNNInputError(f"{name}: periodic in some directions only ({pbc.tolist()}); n2p2 needs all or none")
        lines += ["begin", f"comment {name}"]
        if pbc.all():
            lines += ["lattice " + " ".join(_f(x) for x in v) for v in np.asarray(atoms.cell.array, np.float64)]
        forces = _forces_of(atoms)
        if forces is None:
            forces = np.zeros((len(atoms), 3))
        for sym, pos, f in zip(atoms.get_chemical_symbols(), np.asarray(atoms.positions, np.float64), forces):
            lines.append("atom " + " ".join(_f(x) for x in pos) + f" {sym} {_f(0)} {_f(0)} "
                         + " ".join(_f(x) for x in f))
        energy = structure_energy(atoms)
        lines += [f"energy {_f(0.0 if energy is None else energy)}", f"charge {_f(0)}", "end"]
    with atomic_write(path) as fh:
        fh.write("\n".join(lines) + "\n")


def nnp_predict(atoms, export_dir, binary, *, workdir=None, timeout: float = 600.0):
    """Energy and forces of one structure from n2p2's ``nnp-predict`` on an export.

    Args:
        atoms: an ASE ``Atoms``.
        export_dir: a directory written by :func:`export_n2p2`.
        binary: path of ``nnp-predict``.
        workdir: where to run (a temporary directory if None); it receives
            links to the export's files, ``input.data`` and n2p2's outputs.
        timeout: seconds.

    Returns:
        ``(energy, offset, forces)``: n2p2's total energy (eV, with the
        ``atom_energy`` offsets), the sum of the offsets (eV), and (N, 3)
        forces (eV/Å), all float64.  No pair baseline: n2p2 has none.

    Raises:
        BPNNInputError: nnp-predict failed (its log's tail in the message).
    """
    export_dir = Path(export_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="nnp-predict-") as tmp:
        run = Path(workdir) if workdir is not None else Path(tmp)
        run.mkdir(parents=True, exist_ok=True)
        for f in export_dir.iterdir():
            if f.name == "input.nn" or f.name == "scaling.data" or f.name.startswith("weights."):
                link = run / f.name
                if link.is_symlink() or link.exists():
                    link.unlink()
                os.symlink(f, link)
        write_n2p2_data(atoms, run / "input.data")
        proc = subprocess.run([str(binary), "0"], check=False, cwd=run, capture_output=True, text=True, timeout=timeout)
        log = run / "nnp-predict.log"
        if proc.returncode != 0 or not (run / "energy.out").exists():
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BPNNInputError(f"nnp-predict failed in {run} (exit status {proc.returncode}): "
                                 f"{proc.stderr[-1000:]}{tail}")
        e_row = next(line.split() for line in (run / "energy.out").read_text().splitlines()
                     if line.strip() and not line.startswith("#"))
        f_rows = [line.split() for line in (run / "nnforces.out").read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
        forces = np.array([[float(x) for x in row[5:8]] for row in f_rows], np.float64)
        return float(e_row[3]), float(e_row[5]), forces
