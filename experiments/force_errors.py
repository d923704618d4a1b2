"""Where the force error of a model comes from, on the test split of its training run (issue 4).

    python -m experiments.force_errors                       # tio2_v8 (the shipped tio2 trained on the test split)
    python -m experiments.force_errors --model runs/x/model.keras --out DIR

The test split is reproduced as ``bpnn_jax.training.load_training_data``
makes it with a default :class:`~bpnn_jax.training.TrainConfig`: every XSF
file under ``--data`` (default ``$BPNN_DATA_DIR`` or ``../shared/data/tio2``)
in file order, structures with a DFT cohesive energy above ``--max-energy``
(default +1 eV/atom, relative to the TiO2 free-atom references) dropped,
then ``split_indices(n, 0.1, 0.1, --seed)["test"]`` (693 structures for
the shipped model).  Only the reading and the energy filter are repeated
here (no neighbour lists for the other 6000 structures).  When
``runs/tio2/split.json`` of the shipped model's training run is present, its
test files are compared with the reproduced ones (``split_check`` in the
JSON); ``--split FILE`` uses the ``test`` list of such a file instead.

Forces are predicted in float32 with
:func:`bpnn_jax.training.predict_structures`, symmetry functions with
:func:`bpnn_jax.training.featurize_host` (float32, as in training).
Force RMSE and MAE are over Cartesian components, as everywhere in
bpnn_jax; an atom's squared error is the sum over its three components.

Reported (``force_errors.json``, ``force_errors.md``, ``force_errors.png``
in ``--out``, default ``experiments/results/force_errors``):

* force RMSE/MAE, DFT force RMS and share of the total squared error by the
  structure's DFT cohesive energy (eV/atom), by the atom's |F_DFT| (eV/Å,
  with the relative error), by the atom's nearest-neighbour distance and by
  element;
* the share of the total squared force error from the worst 0.1 %, 1 % and
  10 % of atoms (and the RMSE without them), the 10 worst atoms (file,
  atom, nearest-neighbour distance, symmetry functions outside the model's
  stored training range ``sf_min``/``sf_max``) and the 10 worst structures;
* atoms outside the training range (strictly, and by more than 5 % of a
  range as :func:`bpnn_jax.calculators.ase.extrapolation_report` warns) and
  their share of the error;
* the force RMSE on the near-equilibrium test structures (cohesive energy
  < -8 eV/atom).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: Bin edges: structure cohesive energy (eV/atom), |F_DFT| per atom (eV/Å),
#: nearest-neighbour distance per atom (Å; Ti-O bonds in rutile/anatase are ~1.95 Å).
COHESIVE_EDGES = (-math.inf, -8.4, -8.0, -7.0, -5.0, math.inf)
FORCE_EDGES = (0.0, 1.0, 3.0, 10.0, 30.0, math.inf)
DISTANCE_EDGES = (0.0, 1.5, 1.7, 1.85, 2.0, math.inf)
NEAR_EQUILIBRIUM = -8.0
TOP_FRACTIONS = (0.001, 0.01, 0.1)


# -------------------------------------------------------------------- split
def test_structures(data, *, seed: int, max_energy: float | None, split_file=None):
    """The test structures (``ase.Atoms``) and a note on how they were chosen.

    Reproduces ``load_training_data(...)["split"]["test"]`` for a default
    ``TrainConfig`` with the given ``seed`` and ``max_energy`` (see the
    module docstring), or takes the ``test`` list of ``split_file``.
    """
    from bpnn_jax.io import read_structures, read_xsf
    from bpnn_jax.training import TrainConfig, split_indices

    if split_file is not None:
        files = json.loads(Path(split_file).read_text())["test"]
        atoms = [read_xsf(f if Path(f).exists() else Path(data) / Path(f).name, require_energy=True)
                 for f in files]
        return atoms, {"source": str(split_file)}
    config = TrainConfig(seed=seed, max_energy=max_energy)
    atoms, _ = read_structures([data], require_energy=True)
    refs = config.reference_energies
    cohesive = np.array([(a.info["energy"] - math.fsum(refs[s] for s in a.get_chemical_symbols())) / len(a)
                         for a in atoms])
    keep = np.ones(len(atoms), bool) if max_energy is None else cohesive <= max_energy
    kept = [a for a, k in zip(atoms, keep) if k]
    test = split_indices(len(kept), config.val_fraction, config.test_fraction, config.seed)["test"]
    note = {"source": f"reproduced: {len(atoms)} files, {int((~keep).sum())} above max_energy, "
                      f"seed {seed}, val/test fractions {config.val_fraction}/{config.test_fraction}"}
    run_split = REPO / "runs" / "tio2" / "split.json"
    if run_split.exists():
        theirs = [Path(f).name for f in json.loads(run_split.read_text())["test"]]
        ours = [Path(kept[k].info["file"]).name for k in test]
        note["split_check"] = {"file": str(run_split.relative_to(REPO)), "same_test_files": theirs == ours,
                               "n_theirs": len(theirs), "n_ours": len(ours)}
    return [kept[k] for k in test], note


# --------------------------------------------------------------- per atom
def nearest_neighbor_distances(h) -> np.ndarray:
    """(N,) distance to the nearest atom (periodic images included) within the list's cut-off; inf if none."""
    nl = h.nl
    out = np.full(h.n_atoms, np.inf)
    if len(nl.centers):
        d = np.linalg.norm(h.positions[nl.neighbors] + nl.shifts @ h.cell - h.positions[nl.centers], axis=1)
        np.minimum.at(out, nl.centers, d)
    return out


def outside_counts(sf, species, lo, hi, tolerance: float) -> np.ndarray:
    """(N,) number of symmetry functions outside [lo - tol*range, hi + tol*range] of the atom's element.

    The same test as :func:`bpnn_jax.calculators.ase.extrapolation_report`
    (including its 1e-6 relative slack for the float32 storage of the
    ranges), for all atoms at once.
    """
    slack = tolerance * (hi - lo) + 1e-6 * np.maximum(np.abs(lo), np.abs(hi))
    lower, upper = (lo - slack)[species], (hi + slack)[species]
    sf = np.asarray(sf, np.float64)
    return ((sf < lower) | (sf > upper)).sum(axis=1)


def largest_excess(sf, species, lo, hi) -> np.ndarray:
    """(N,) largest excess beyond the training range over an atom's functions, in units of that function's range."""
    width = np.where(hi - lo > 0, hi - lo, 1.0)[species]
    sf = np.asarray(sf, np.float64)
    below = (lo[species] - sf) / width
    above = (sf - hi[species]) / width
    return np.maximum(np.maximum(below, above).max(axis=1), 0.0)


# ---------------------------------------------------------------- metrics
def _group(sq, abs_sum, f_sq, n, total_sq) -> dict:
    """Metrics of a group of atoms from per-atom sums over components."""
    if n == 0:
        return {"n_atoms": 0}
    return {
        "n_atoms": int(n),
        "force_rmse_ev_a": float(np.sqrt(sq.sum() / (3 * n))),
        "force_mae_ev_a": float(abs_sum.sum() / (3 * n)),
        "dft_force_rms_ev_a": float(np.sqrt(f_sq.sum() / (3 * n))),
        "relative_rmse": float(np.sqrt(sq.sum() / f_sq.sum())) if f_sq.sum() > 0 else None,
        "share_of_squared_error": float(sq.sum() / total_sq),
    }


def binned(values, edges, a, extra=None) -> list[dict]:
    """Metrics per bin ``edges[k] <= value < edges[k+1]`` (atoms as in ``a``)."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (values >= lo) & (values < hi)
        row = {"lo": None if math.isinf(lo) else lo, "hi": None if math.isinf(hi) else hi,
               **_group(a["sq"][m], a["abs"][m], a["fsq"][m], int(m.sum()), a["total_sq"])}
        if extra is not None:
            row.update(extra(m))
        rows.append(row)
    return rows


def analyse(atoms_list, hs, f_pred, e_pred, sf_list, model) -> dict:
    """Everything in the report, from predictions and descriptors of the test structures."""
    import keras

    refs = model.reference_energies
    lo = np.asarray(keras.ops.convert_to_numpy(model.sf_min), np.float64)
    hi = np.asarray(keras.ops.convert_to_numpy(model.sf_max), np.float64)
    n_struct = len(atoms_list)
    n_atoms = np.array([len(a) for a in atoms_list])
    e_true = np.array([a.info["energy"] for a in atoms_list], np.float64)
    cohesive = np.array([(a.info["energy"] - math.fsum(refs[s] for s in a.get_chemical_symbols())) / len(a)
                         for a in atoms_list])
    f_true = [np.asarray(a.calc.results["forces"], np.float64) for a in atoms_list]

    struct = np.repeat(np.arange(n_struct), n_atoms)
    atom_idx = np.concatenate([np.arange(n) for n in n_atoms])
    species = np.concatenate([h.species for h in hs])
    ft = np.concatenate(f_true)
    fp = np.concatenate(f_pred)
    diff = fp - ft
    sq = (diff**2).sum(axis=1)
    a = {
        "sq": sq, "abs": np.abs(diff).sum(axis=1), "fsq": (ft**2).sum(axis=1), "total_sq": float(sq.sum()),
    }
    f_norm = np.linalg.norm(ft, axis=1)
    err_norm = np.linalg.norm(diff, axis=1)
    coh_atom = cohesive[struct]
    dmin = np.concatenate([nearest_neighbor_distances(h) for h in hs])
    sf = np.concatenate(sf_list)
    out0 = outside_counts(sf, species, lo, hi, 0.0)
    out5 = outside_counts(sf, species, lo, hi, 0.05)
    excess = largest_excess(sf, species, lo, hi)
    N = len(sq)

    overall = _group(sq, a["abs"], a["fsq"], N, a["total_sq"])
    overall.update(n_structures=n_struct,
                   energy_rmse_mev_atom=1e3 * float(np.sqrt(np.mean(((e_pred - e_true) / n_atoms) ** 2))))

    # by structure cohesive energy (also counts structures)
    def n_structs(m):
        return {"n_structures": int(len(np.unique(struct[m])))}

    by_cohesive = binned(coh_atom, COHESIVE_EDGES, a, n_structs)

    # by |F_DFT|: also the median per-atom relative error |dF| / |F|
    def rel(m):
        ok = m & (f_norm > 0)
        return {"median_abs_error_ev_a": float(np.median(err_norm[m])) if m.any() else None,
                "median_relative_error": float(np.median(err_norm[ok] / f_norm[ok])) if ok.any() else None}

    by_force = binned(f_norm, FORCE_EDGES, a, rel)
    by_distance = binned(dmin, DISTANCE_EDGES, a, n_structs)
    by_element = [{"element": el, **_group(sq[species == s], a["abs"][species == s], a["fsq"][species == s],
                                           int((species == s).sum()), a["total_sq"])}
                  for s, el in enumerate(model.elements)]

    # concentration of the squared error
    order = np.argsort(sq)[::-1]
    csum = np.cumsum(sq[order])
    top = []
    for frac in TOP_FRACTIONS:
        k = max(1, int(math.ceil(frac * N)))
        rest = order[k:]
        top.append({
            "fraction": frac, "n_atoms": k, "share_of_squared_error": float(csum[k - 1] / csum[-1]),
            "n_structures_involved": int(len(np.unique(struct[order[:k]]))),
            "min_abs_dft_force_ev_a": float(f_norm[order[:k]].min()),
            "force_rmse_without_them_ev_a": float(np.sqrt(sq[rest].sum() / (3 * len(rest)))),
        })

    worst_atoms = [{
        "rank": r + 1, "file": Path(atoms_list[struct[i]].info["file"]).name, "atom": int(atom_idx[i]),
        "element": model.elements[species[i]], "n_atoms": int(n_atoms[struct[i]]),
        "cohesive_dft_ev_atom": float(coh_atom[i]), "abs_f_dft_ev_a": float(f_norm[i]),
        "abs_f_pred_ev_a": float(np.linalg.norm(fp[i])), "abs_error_ev_a": float(err_norm[i]),
        "share_of_squared_error": float(sq[i] / a["total_sq"]),
        "nearest_neighbor_a": float(dmin[i]),
        "sf_outside_range": int(out0[i]), "sf_outside_range_5pct": int(out5[i]),
        "largest_excess_in_ranges": float(excess[i]),
    } for r, i in enumerate(order[:10])]

    s_sq = np.bincount(struct, weights=sq, minlength=n_struct)
    s_f = np.bincount(struct, weights=a["fsq"], minlength=n_struct)
    s_out = np.bincount(struct, weights=(out0 > 0).astype(float), minlength=n_struct)
    s_dmin = np.array([dmin[struct == k].min() for k in range(n_struct)])
    s_order = np.argsort(s_sq)[::-1]
    worst_structures = [{
        "rank": r + 1, "file": Path(atoms_list[k].info["file"]).name, "n_atoms": int(n_atoms[k]),
        "cohesive_dft_ev_atom": float(cohesive[k]),
        "energy_error_mev_atom": 1e3 * float((e_pred[k] - e_true[k]) / n_atoms[k]),
        "force_rmse_ev_a": float(np.sqrt(s_sq[k] / (3 * n_atoms[k]))),
        "dft_force_rms_ev_a": float(np.sqrt(s_f[k] / (3 * n_atoms[k]))),
        "share_of_squared_error": float(s_sq[k] / a["total_sq"]),
        "nearest_neighbor_a": float(s_dmin[k]), "atoms_outside_range": int(s_out[k]),
    } for r, k in enumerate(s_order[:10])]
    s_csum = np.cumsum(s_sq[s_order])
    structure_top = [{"n_structures": k, "share_of_squared_error": float(s_csum[k - 1] / s_csum[-1])}
                     for k in (1, 5, 10, 35, 70) if k <= n_struct]

    def extrap(mask, name):
        n = int(mask.sum())
        d = {"criterion": name, "n_atoms": n, "n_structures": int(len(np.unique(struct[mask])))}
        d["inside"] = _group(sq[~mask], a["abs"][~mask], a["fsq"][~mask], int((~mask).sum()), a["total_sq"])
        d["outside"] = _group(sq[mask], a["abs"][mask], a["fsq"][mask], n, a["total_sq"])
        return d

    extrapolation = [extrap(out0 > 0, "any function outside [sf_min, sf_max]"),
                     extrap(out5 > 0, "any function outside by > 5% of its range")]

    near = cohesive < NEAR_EQUILIBRIUM
    m = near[struct]
    near_eq = {"cohesive_below_ev_atom": NEAR_EQUILIBRIUM, "n_structures": int(near.sum()),
               **_group(sq[m], a["abs"][m], a["fsq"][m], int(m.sum()), a["total_sq"])}
    m_rest = (~near)[struct]
    rest = {"n_structures": int((~near).sum()),
            **_group(sq[m_rest], a["abs"][m_rest], a["fsq"][m_rest], int(m_rest.sum()), a["total_sq"])}

    report = dict(overall=overall, near_equilibrium=near_eq, not_near_equilibrium=rest,
                  by_cohesive_energy=by_cohesive, by_dft_force=by_force, by_nearest_neighbor=by_distance,
                  by_element=by_element, worst_atom_fractions=top, worst_structure_counts=structure_top,
                  worst_atoms=worst_atoms, worst_structures=worst_structures, extrapolation=extrapolation)
    arrays = dict(f_norm=f_norm, err_norm=err_norm, sq=sq, coh_atom=coh_atom, dmin=dmin, out0=out0)
    return report, arrays


# ----------------------------------------------------------------- output
def _f(x, fmt=".3f"):
    return "–" if x is None else format(x, fmt)


def _bin_label(row, unit=""):
    lo, hi = row["lo"], row["hi"]
    if lo is None:
        return f"< {hi:g}{unit}"
    if hi is None:
        return f"≥ {lo:g}{unit}"
    return f"{lo:g} … {hi:g}{unit}"


def write_markdown(report: dict, path: Path) -> None:
    o, ne, rest = report["overall"], report["near_equilibrium"], report["not_near_equilibrium"]
    sc = report["split"].get("split_check")
    check = "" if sc is None else (f"; same test files as {sc['file']}" if sc["same_test_files"]
                                   else f"; NOT the test files of {sc['file']}")
    L = [f"# Force errors of `{report['model']}` on its test split", "",
         f"{o['n_structures']} structures, {o['n_atoms']} atoms ({report['split']['source']}{check}). "
         f"Force RMSE **{o['force_rmse_ev_a']:.3f} eV/Å**, MAE {o['force_mae_ev_a']:.3f} eV/Å "
         f"(DFT force RMS {o['dft_force_rms_ev_a']:.3f} eV/Å); energy RMSE {o['energy_rmse_mev_atom']:.2f} meV/atom. "
         "RMSE/MAE over Cartesian components; *share* = share of the total squared force error.", "",
         f"Near-equilibrium structures (cohesive energy < {ne['cohesive_below_ev_atom']:g} eV/atom): "
         f"{ne['n_structures']} structures, {ne['n_atoms']} atoms, force RMSE **{ne['force_rmse_ev_a']:.3f} eV/Å**, "
         f"MAE {ne['force_mae_ev_a']:.3f} eV/Å (DFT RMS {ne['dft_force_rms_ev_a']:.3f}); "
         f"the other {rest['n_structures']} structures: RMSE {rest['force_rmse_ev_a']:.3f} eV/Å, "
         f"MAE {rest['force_mae_ev_a']:.3f} eV/Å (DFT RMS {rest['dft_force_rms_ev_a']:.3f}).", ""]

    def table(title, rows, label, cols):
        L.extend([f"## {title}", "", "| " + " | ".join([label] + [c[0] for c in cols]) + " |",
                  "|" + "---|" * (len(cols) + 1)])
        for r in rows:
            L.append("| " + " | ".join([r["_label"]] + [c[1](r) for c in cols]) + " |")
        L.append("")

    common = [("atoms", lambda r: str(r["n_atoms"])),
              ("force RMSE (eV/Å)", lambda r: _f(r.get("force_rmse_ev_a"))),
              ("force MAE (eV/Å)", lambda r: _f(r.get("force_mae_ev_a"))),
              ("DFT force RMS (eV/Å)", lambda r: _f(r.get("dft_force_rms_ev_a"))),
              ("RMSE / DFT RMS", lambda r: _f(r.get("relative_rmse"), ".2f")),
              ("share", lambda r: _f(r.get("share_of_squared_error"), ".1%"))]
    for r in report["by_cohesive_energy"]:
        r["_label"] = _bin_label(r)
    table("By cohesive energy of the structure (eV/atom)", report["by_cohesive_energy"], "E_coh (eV/atom)",
          [("structures", lambda r: str(r["n_structures"]))] + common)
    for r in report["by_dft_force"]:
        r["_label"] = _bin_label(r)
    table("By |F_DFT| of the atom (eV/Å)", report["by_dft_force"], "|F_DFT| (eV/Å)",
          common + [("median abs(dF) (eV/Å)", lambda r: _f(r.get("median_abs_error_ev_a"))),
                    ("median abs(dF)/abs(F)", lambda r: _f(r.get("median_relative_error"), ".2f"))])
    for r in report["by_nearest_neighbor"]:
        r["_label"] = _bin_label(r)
    table("By nearest-neighbour distance of the atom (Å)", report["by_nearest_neighbor"], "d_min (Å)",
          [("structures", lambda r: str(r["n_structures"]))] + common)
    for r in report["by_element"]:
        r["_label"] = r["element"]
    table("By element", report["by_element"], "element", common)

    L.extend(["## Concentration of the squared error", "",
              "| worst atoms | atoms | structures | share | min abs(F_DFT) (eV/Å) | RMSE without them (eV/Å) |",
              "|---|---|---|---|---|---|"])
    for t in report["worst_atom_fractions"]:
        L.append(f"| {t['fraction']:.1%} | {t['n_atoms']} | {t['n_structures_involved']} | "
                 f"{t['share_of_squared_error']:.1%} | {t['min_abs_dft_force_ev_a']:.2f} | "
                 f"{t['force_rmse_without_them_ev_a']:.3f} |")
    L.append("")
    L.append("Worst structures: " + ", ".join(f"{t['n_structures']} → {t['share_of_squared_error']:.1%}"
                                              for t in report["worst_structure_counts"]) + ".")
    L.append("")
    L.extend(["## Extrapolation (symmetry functions outside the stored training range)", "",
              "| criterion | atoms | structures | RMSE outside (eV/Å) | RMSE inside (eV/Å) | share outside |",
              "|---|---|---|---|---|---|"])
    for e in report["extrapolation"]:
        L.append(f"| {e['criterion']} | {e['n_atoms']} | {e['n_structures']} | "
                 f"{_f(e['outside'].get('force_rmse_ev_a'))} | {_f(e['inside'].get('force_rmse_ev_a'))} | "
                 f"{_f(e['outside'].get('share_of_squared_error'), '.1%')} |")
    L.append("")
    L.extend(["## The 10 worst atoms", "",
              "| # | file | atom | E_coh (eV/atom) | abs(F_DFT) | abs(F_pred) | abs(dF) (eV/Å) | share | d_min (Å) "
              "| SFs outside (>5%) | largest excess (ranges) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"])
    for w in report["worst_atoms"]:
        L.append(f"| {w['rank']} | {w['file']} | {w['element']}{w['atom']} of {w['n_atoms']} | "
                 f"{w['cohesive_dft_ev_atom']:.3f} | {w['abs_f_dft_ev_a']:.1f} | {w['abs_f_pred_ev_a']:.1f} | "
                 f"{w['abs_error_ev_a']:.1f} | {w['share_of_squared_error']:.1%} | {w['nearest_neighbor_a']:.3f} | "
                 f"{w['sf_outside_range']} ({w['sf_outside_range_5pct']}) | {w['largest_excess_in_ranges']:.2f} |")
    L.append("")
    L.extend(["## The 10 worst structures", "",
              "| # | file | atoms | E_coh (eV/atom) | energy error (meV/atom) | force RMSE (eV/Å) | DFT RMS (eV/Å) "
              "| share | d_min (Å) | atoms outside range |",
              "|---|---|---|---|---|---|---|---|---|---|"])
    for w in report["worst_structures"]:
        L.append(f"| {w['rank']} | {w['file']} | {w['n_atoms']} | {w['cohesive_dft_ev_atom']:.3f} | "
                 f"{w['energy_error_mev_atom']:.1f} | {w['force_rmse_ev_a']:.2f} | {w['dft_force_rms_ev_a']:.2f} | "
                 f"{w['share_of_squared_error']:.1%} | {w['nearest_neighbor_a']:.3f} | {w['atoms_outside_range']} |")
    L.append("")
    path.write_text("\n".join(L))
    for key in ("by_cohesive_energy", "by_dft_force", "by_nearest_neighbor", "by_element"):
        for r in report[key]:
            r.pop("_label", None)


def write_plot(report: dict, arrays: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 9))
    f, e = arrays["f_norm"], arrays["err_norm"]
    sc = ax[0, 0].scatter(np.maximum(f, 1e-3), np.maximum(e, 1e-3), c=arrays["coh_atom"], s=3, cmap="viridis",
                          vmin=-8.8, vmax=1.0, rasterized=True)
    lim = [1e-3, max(f.max(), e.max()) * 1.5]
    ax[0, 0].plot(lim, lim, "k--", lw=0.8, label="|ΔF| = |F_DFT|")
    ax[0, 0].set(xscale="log", yscale="log", xlabel="|F_DFT| per atom (eV/Å; < 1e-3 shown at 1e-3)",
                 ylabel="|F_pred − F_DFT| (eV/Å; < 1e-3 shown at 1e-3)",
                 title="per-atom force error")
    ax[0, 0].legend(loc="upper left", fontsize=8)
    fig.colorbar(sc, ax=ax[0, 0], label="structure cohesive energy (eV/atom)")

    sq = np.sort(arrays["sq"])[::-1]
    frac = np.arange(1, len(sq) + 1) / len(sq)
    ax[0, 1].plot(100 * frac, 100 * np.cumsum(sq) / sq.sum())
    for t in report["worst_atom_fractions"]:
        ax[0, 1].plot(100 * t["fraction"], 100 * t["share_of_squared_error"], "o", color="C3")
        ax[0, 1].annotate(f"{t['fraction']:.1%}: {t['share_of_squared_error']:.0%}",
                          (100 * t["fraction"], 100 * t["share_of_squared_error"]), textcoords="offset points",
                          xytext=(6, -12), fontsize=8)
    ax[0, 1].set(xscale="log", xlabel="worst atoms (%)", ylabel="share of total squared force error (%)",
                 title="concentration of the squared error", ylim=(0, 101))
    ax[0, 1].grid(alpha=0.3)

    def bars(axis, rows, title, xlabel):
        labels = [_bin_label(r) for r in rows]
        x = np.arange(len(rows))
        rmse = [r.get("force_rmse_ev_a") or 0 for r in rows]
        mae = [r.get("force_mae_ev_a") or 0 for r in rows]
        frms = [r.get("dft_force_rms_ev_a") or 0 for r in rows]
        axis.bar(x - 0.27, rmse, 0.27, label="force RMSE")
        axis.bar(x, mae, 0.27, label="force MAE")
        axis.bar(x + 0.27, frms, 0.27, label="DFT force RMS", color="0.7")
        for k, r in enumerate(rows):
            if r["n_atoms"]:
                axis.annotate(f"{r['n_atoms']} at.\n{r['share_of_squared_error']:.0%}", (k - 0.27, rmse[k]),
                              ha="center", va="bottom", fontsize=7)
        axis.set(xticks=x, yscale="log", title=title, xlabel=xlabel, ylabel="eV/Å")
        axis.set_xticklabels(labels, fontsize=8)
        axis.legend(fontsize=8)

    bars(ax[1, 0], report["by_cohesive_energy"], "by structure cohesive energy (atoms, share of sq. error)",
         "E_coh (eV/atom)")
    bars(ax[1, 1], report["by_dft_force"], "by |F_DFT| per atom (atoms, share of sq. error)", "|F_DFT| (eV/Å)")
    fig.suptitle(f"{report['model']}: force RMSE {report['overall']['force_rmse_ev_a']:.2f} eV/Å, "
                 f"MAE {report['overall']['force_mae_ev_a']:.2f} eV/Å on {report['overall']['n_structures']} "
                 "test structures")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.force_errors", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tio2_v8",
                   help="model file or shipped name (default tio2_v8: the shipped tio2's recipe on the training part; "
                        "tio2 itself was trained on the test split too)")
    p.add_argument("--data", type=Path,
                   default=Path(os.environ.get("BPNN_DATA_DIR", REPO.parent / "shared" / "data" / "tio2")))
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "force_errors")
    p.add_argument("--split", type=Path, default=None,
                   help="a training run's split.json: use its test files instead of reproducing the split")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--max-energy", type=float, default=1.0, help="cohesive-energy filter, eV/atom (default 1)")
    args = p.parse_args(argv)

    from bpnn_jax.descriptors.batch import prepare_structures
    from bpnn_jax.io import atomic_write
    from bpnn_jax.model import load_model, total_energy
    from bpnn_jax.training import featurize_host, predict_structures
    from bpnn_jax.training.evaluation import energy_metrics

    t0 = time.time()
    model = load_model(args.model)
    atoms_list, split_note = test_structures(args.data, seed=args.seed, max_energy=args.max_energy,
                                             split_file=args.split)
    print(f"{len(atoms_list)} test structures ({time.time() - t0:.0f} s)", flush=True)
    hs = prepare_structures(atoms_list, model.elements, model.spec.cutoff)
    e_rel, f_pred = predict_structures(model, hs, forces=True, dtype=np.float32)
    e_pred = total_energy(model, e_rel, [a.get_chemical_symbols() for a in atoms_list])
    sf_list = featurize_host(hs, model.spec, dtype=np.float32)
    print(f"predicted and featurised ({time.time() - t0:.0f} s)", flush=True)

    report, arrays = analyse(atoms_list, hs, f_pred, e_pred, sf_list, model)
    # cross-check against the package's own metrics
    check = energy_metrics(e_pred, [a.info["energy"] for a in atoms_list], [len(a) for a in atoms_list],
                           f_pred, [a.calc.results["forces"] for a in atoms_list])
    assert abs(check["force_rmse_ev_a"] - report["overall"]["force_rmse_ev_a"]) < 1e-9
    assert abs(check["force_mae_ev_a"] - report["overall"]["force_mae_ev_a"]) < 1e-9
    report = {"model": args.model, "dtype": "float32", "split": split_note, "seconds": None, **report}
    report["seconds"] = round(time.time() - t0, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out / "force_errors.json") as fh:
        json.dump(report, fh, indent=2)
    write_markdown(report, args.out / "force_errors.md")
    write_plot(report, arrays, args.out / "force_errors.png")

    o, ne = report["overall"], report["near_equilibrium"]
    print(f"force RMSE {o['force_rmse_ev_a']:.3f} eV/Å, MAE {o['force_mae_ev_a']:.3f} eV/Å; "
          f"near equilibrium (< {NEAR_EQUILIBRIUM:g} eV/atom, {ne['n_structures']} structures) "
          f"RMSE {ne['force_rmse_ev_a']:.3f} eV/Å", flush=True)
    for t in report["worst_atom_fractions"]:
        print(f"worst {t['fraction']:.1%} of atoms ({t['n_atoms']}): {t['share_of_squared_error']:.1%} "
              f"of the squared error; RMSE without them {t['force_rmse_without_them_ev_a']:.3f} eV/Å")
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
