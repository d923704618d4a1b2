"""Rutile and anatase in the DFT data, and their lattice constants from the potential.

    python -m experiments.phases                 # scan ../shared/data/tio2, fit, relax, write results
    python -m experiments.phases --symprec 0.1   # another symmetry tolerance (Å)

1. **Find the phases.**  Every stoichiometric TiO2 structure of the data set
   is classified with spglib: *rutile* is space group P4_2/mnm (136) with Ti
   on one 2a/2b orbit and O on one 4f/4g orbit (O at (u, u, 0)); *anatase* is
   I4_1/amd (141) with Ti on one 4a/4b orbit and O on one 8e orbit (O at
   (0, 0, z)).  spglib works on the primitive cell, so supercells of any
   size are recognised; strained cells whose symmetry is broken (e.g.
   rutile with a != b, space group Pnnm) are not counted.  Lattice constants
   are those of spglib's standardised conventional cell (a = b, c).
2. **DFT equilibrium.**  The structures of each phase in the data are one
   relaxed cell and an isotropic scaling series of it (fixed c/a and
   fractional coordinates).  The DFT equilibrium volume is the minimum of a
   third-order Birch–Murnaghan fit of energy per formula unit against
   volume per formula unit over the structures within ``--window`` (default
   ±10 %) of the volume of the lowest-energy structure; a and c follow from
   that volume at the c/a of the lowest-energy structure.  The
   lowest-energy structure itself is reported as well.
3. **The potential.**  The model's energies of the same structures give its
   own E(V) curve and Birch–Murnaghan fit (same c/a, same internal
   coordinates); in addition the lowest-energy DFT structure of each phase
   is fully relaxed (positions and cell, BFGS + ``FrechetCellFilter``, the
   relaxation of :mod:`experiments.md`), which also frees c/a and the
   internal coordinate, and the ideal conventional cell of
   :func:`experiments.md.build_phase` is relaxed as a cross-check.  The
   model's energy against c/a at constant volume (lowest-energy DFT
   structure, fixed fractional coordinates, c/a × 0.94 … 1.14) shows the
   direction the data do not sample.

Writes ``phases.json`` (everything), ``phases.md`` (tables) and ``ev.png``
(E(V): DFT points against the model; the model's E(c/a)) to ``--out`` (default
``experiments/results/phases``).  Needs spglib (``pip install -e ".[experiments]"``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: 1 eV/Å^3 in GPa.
EV_A3_TO_GPA = 160.21766208

#: Space group and Wyckoff letters (Ti, O) of each phase.  Both origin
#: choices / settings spglib may pick are allowed: rutile Ti 2a or 2b, O 4f
#: or 4g; anatase Ti 4a or 4b, O 8e.
PHASE_SYMMETRY = {
    "rutile": dict(number=136, symbol="P4_2/mnm", Ti={"a", "b"}, O={"f", "g"}, fu_per_conventional=2),
    "anatase": dict(number=141, symbol="I4_1/amd", Ti={"a", "b"}, O={"e"}, fu_per_conventional=4),
}


# ----------------------------------------------------------------- symmetry
def symmetry_dataset(atoms, symprec: float = 0.05):
    """spglib's symmetry dataset of ``atoms`` (None when spglib finds none)."""
    import spglib

    cell = (np.asarray(atoms.cell.array), atoms.get_scaled_positions(wrap=True), atoms.numbers)
    with warnings.catch_warnings():
        # spglib >= 2.5 warns on every call that its "return None" error
        # handling is deprecated; later versions raise instead: both handled.
        warnings.filterwarnings("ignore", "Set OLD_ERROR_HANDLING", DeprecationWarning)
        try:
            return spglib.get_symmetry_dataset(cell, symprec=symprec)
        except Exception:
            return None


def classify(atoms, symprec: float = 0.05, dataset=None) -> str | None:
    """"rutile", "anatase" or None for one structure.

    Requires composition TiO2 (only Ti and O, twice as many O as Ti), the
    space group of the phase, and each element on a single crystallographic
    orbit with the Wyckoff letters of :data:`PHASE_SYMMETRY`.
    """
    symbols = np.array(atoms.get_chemical_symbols())
    n_ti, n_o = int((symbols == "Ti").sum()), int((symbols == "O").sum())
    if n_ti == 0 or n_o != 2 * n_ti or n_ti + n_o != len(atoms):
        return None
    ds = dataset if dataset is not None else symmetry_dataset(atoms, symprec)
    if ds is None:
        return None
    wyckoffs = np.array(ds.wyckoffs)
    orbits = np.array(ds.crystallographic_orbits)
    for phase, sym in PHASE_SYMMETRY.items():
        if ds.number != sym["number"]:
            continue
        ok = True
        for el in ("Ti", "O"):
            sel = symbols == el
            if len(set(orbits[sel])) != 1 or not set(wyckoffs[sel]) <= sym[el]:
                ok = False
        return phase if ok else None
    return None


def conventional_ac(atoms, symprec: float = 0.05, dataset=None) -> tuple[float, float]:
    """(a, c) in Å of the standardised conventional cell of a tetragonal structure."""
    ds = dataset if dataset is not None else symmetry_dataset(atoms, symprec)
    lengths = np.linalg.norm(np.asarray(ds.std_lattice), axis=1)
    return float(0.5 * (lengths[0] + lengths[1])), float(lengths[2])


def tetragonal_axis(atoms, dataset) -> np.ndarray:
    """Cartesian unit vector along the fourfold axis (the conventional c axis)."""
    for rot in dataset.rotations:
        if round(np.linalg.det(rot)) == 1 and int(np.trace(rot)) == 1:  # proper fourfold rotation
            w, v = np.linalg.eig(rot.astype(float))
            frac = np.real(v[:, np.argmin(np.abs(w - 1))])
            axis = np.asarray(atoms.cell.array).T @ frac
            return axis / np.linalg.norm(axis)
    raise ValueError("no fourfold rotation axis")


def strain_c_over_a(atoms, factor: float, axis) -> "object":
    """Copy of ``atoms`` with c/a multiplied by ``factor`` at constant volume (fixed fractional coordinates)."""
    n = np.asarray(axis, np.float64).reshape(3, 1)
    s = factor ** (2.0 / 3.0)  # c -> s c, a -> a / sqrt(s)
    deform = (np.eye(3) - n @ n.T) / np.sqrt(s) + s * (n @ n.T)
    out = atoms.copy()
    out.set_cell(np.asarray(atoms.cell.array) @ deform, scale_atoms=True)
    return out


def cohesive_per_atom(energy: float, symbols) -> float:
    """Energy per atom (eV) relative to the free-atom references of the data."""
    from bpnn_jax.io import REFERENCE_ENERGIES_TIO2

    return (energy - math.fsum(REFERENCE_ENERGIES_TIO2[s] for s in symbols)) / len(symbols)


def scan(data_dir: Path, symprec: float, extra_symprecs=()) -> tuple[list[dict], dict]:
    """Classify every structure of ``data_dir``.

    Returns (records of the rutile and anatase structures, summary), where
    each record has file, phase, n_atoms, energy_per_atom_ev,
    cohesive_ev_atom, volume_per_fu_a3, a_A, c_A, c_over_a and max_force_ev_a
    (plus the Atoms under "_atoms"), and the summary counts structures by
    composition class and space group, and phases at ``extra_symprecs``.
    """
    from bpnn_jax.io import find_xsf_files, read_xsf

    records: list[dict] = []
    spacegroups: Counter = Counter()
    n_total = n_stoich = 0
    extra_counts = {float(s): Counter() for s in extra_symprecs}
    for path in find_xsf_files(data_dir):
        atoms = read_xsf(path, require_energy=True)
        n_total += 1
        symbols = atoms.get_chemical_symbols()
        n_ti = symbols.count("Ti")
        if n_ti == 0 or symbols.count("O") != 2 * n_ti or len(symbols) != 3 * n_ti:
            continue
        n_stoich += 1
        ds = symmetry_dataset(atoms, symprec)
        spacegroups[f"{ds.number} {ds.international}" if ds is not None else "none"] += 1
        for s, cnt in extra_counts.items():
            cnt[classify(atoms, s) or "other"] += 1
        phase = classify(atoms, symprec, dataset=ds)
        if phase is None:
            continue
        a, c = conventional_ac(atoms, dataset=ds)
        forces = atoms.calc.results.get("forces") if atoms.calc is not None else None
        records.append(dict(
            file=path.name, phase=phase, n_atoms=len(atoms),
            energy_per_atom_ev=float(atoms.info["energy"] / len(atoms)),
            cohesive_ev_atom=float(cohesive_per_atom(atoms.info["energy"], symbols)),
            volume_per_fu_a3=float(3 * atoms.get_volume() / len(atoms)),
            a_A=a, c_A=c, c_over_a=c / a,
            max_force_ev_a=None if forces is None else float(np.abs(forces).max()),
            _atoms=atoms,
        ))
    summary = dict(
        n_structures=n_total, n_stoichiometric_tio2=n_stoich,
        spacegroups_of_stoichiometric=dict(spacegroups.most_common()),
        phase_counts_other_symprec={str(s): dict(c) for s, c in extra_counts.items()},
    )
    return records, summary


# ----------------------------------------------------------------- E(V) fit
def birch_murnaghan(v, e0, v0, b0, b1):
    """Third-order Birch–Murnaghan energy (units of e0; b0 in e0 per volume unit)."""
    x = (v0 / v) ** (2.0 / 3.0)
    return e0 + 9.0 * v0 * b0 / 16.0 * ((x - 1.0) ** 3 * b1 + (x - 1.0) ** 2 * (6.0 - 4.0 * x))


def fit_birch_murnaghan(volumes, energies) -> dict:
    """Least-squares BM3 fit; returns e0 (eV/f.u.), v0 (Å^3/f.u.), B0 (GPa), B0', rms residual (meV/f.u.)."""
    from scipy.optimize import curve_fit

    v = np.asarray(volumes, np.float64)
    e = np.asarray(energies, np.float64)
    if len(v) < 5:
        raise ValueError(f"need at least 5 points for a Birch–Murnaghan fit, got {len(v)}")
    # Start from a parabola: E = p0 V^2 + p1 V + p2, V0 = -p1 / 2p0, B0 = V0 E''.
    p = np.polyfit(v, e, 2)
    v0 = -p[1] / (2 * p[0]) if p[0] > 0 else v[np.argmin(e)]
    guess = (float(np.polyval(p, v0)), float(v0), float(2 * p[0] * v0), 4.0)
    params, _ = curve_fit(birch_murnaghan, v, e, p0=guess, maxfev=20000)
    resid = e - birch_murnaghan(v, *params)
    return dict(e0_ev_fu=float(params[0]), v0_a3_fu=float(params[1]), b0_gpa=float(params[2] * EV_A3_TO_GPA),
                b0_prime=float(params[3]), rms_residual_mev_fu=float(1e3 * np.sqrt(np.mean(resid ** 2))),
                n_points=int(len(v)), v_range_a3_fu=[float(v.min()), float(v.max())])


def lattice_from_volume(v_fu: float, c_over_a: float, fu_per_cell: int) -> tuple[float, float]:
    """(a, c) of a tetragonal conventional cell with volume v_fu per formula unit."""
    a = (v_fu * fu_per_cell / c_over_a) ** (1.0 / 3.0)
    return float(a), float(a * c_over_a)


def pct(model: float, ref: float) -> float:
    return float(100.0 * (model / ref - 1.0))


# ------------------------------------------------------------------- model
def relax_report(atoms, calc, symprec: float, fmax: float, steps: int) -> dict:
    """Relax ``atoms`` with :func:`experiments.md.relax`; lattice, energy, symmetry after."""
    from experiments.md import relax

    t0 = time.time()
    relaxed = relax(atoms, calc, fmax=fmax, steps=steps)
    ds = symmetry_dataset(relaxed, symprec)
    phase = classify(relaxed, symprec, dataset=ds)
    out = dict(
        phase_after=phase, spacegroup_after=None if ds is None else int(ds.number),
        n_atoms=len(relaxed),
        cell_lengths_A=[float(x) for x in relaxed.cell.lengths()],
        cell_angles_deg=[float(x) for x in relaxed.cell.angles()],
        volume_per_fu_a3=float(3 * relaxed.get_volume() / len(relaxed)),
        energy_per_atom_ev=float(relaxed.get_potential_energy() / len(relaxed)),
        cohesive_ev_atom=float(cohesive_per_atom(relaxed.get_potential_energy(), relaxed.get_chemical_symbols())),
        max_force_ev_a=float(np.abs(relaxed.get_forces()).max()),
        max_stress_gpa=float(np.abs(relaxed.get_stress()).max() * EV_A3_TO_GPA),
        seconds=time.time() - t0,
    )
    if phase is not None:
        a, c = conventional_ac(relaxed, dataset=ds)
        out.update(a_A=a, c_A=c, c_over_a=c / a)
    return out


# -------------------------------------------------------------------- plot
def plot_ev(records, model_e_fu, fits, path: Path, window_ranges, phases: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"rutile": "tab:blue", "anatase": "tab:red"}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, zoom in zip(axes[:2], (False, True)):
        for phase in ("rutile", "anatase"):
            idx = [k for k, r in enumerate(records) if r["phase"] == phase]
            v = np.array([records[k]["volume_per_fu_a3"] for k in idx])
            e_dft = np.array([3 * records[k]["cohesive_ev_atom"] for k in idx])
            e_mod = np.array([model_e_fu[k] for k in idx])
            if zoom:
                lo, hi = window_ranges[phase]
                keep = (v >= lo) & (v <= hi)
                v, e_dft, e_mod = v[keep], e_dft[keep], e_mod[keep]
            order = np.argsort(v)
            ax.plot(v[order], e_dft[order], "o", color=colours[phase], mfc="none", label=f"{phase} DFT")
            ax.plot(v[order], e_mod[order], "x", color=colours[phase], label=f"{phase} model")
            if zoom:
                vv = np.linspace(v.min(), v.max(), 200)
                for src, ls in (("dft", "-"), ("model", "--")):
                    f = fits[phase][src]
                    ax.plot(vv, birch_murnaghan(vv, f["e0_ev_fu"], f["v0_a3_fu"], f["b0_gpa"] / EV_A3_TO_GPA,
                                                f["b0_prime"]), ls, color=colours[phase], lw=1,
                            label=f"{phase} {src} BM fit")
        ax.set_xlabel("volume per TiO2 (Å³)")
        ax.set_ylabel("cohesive energy per TiO2 (eV)")
        ax.set_title("near the minimum (fit window)" if zoom else "all structures of the two phases")
        ax.legend(fontsize=8)
    ax = axes[2]
    for phase, r in phases.items():
        scan_ca = r["model_c_over_a_scan_at_dft_volume"]
        x = np.array([p["factor"] for p in scan_ca])
        e = np.array([p["model_cohesive_ev_atom"] for p in scan_ca])
        e0 = r["lowest_energy_structure"]["cohesive_ev_atom"]
        ax.plot(x, 1e3 * (e - e0), "x-", color=colours[phase], label=f"{phase} model (fixed fractional coordinates)")
        rel = r["model_relaxed_from_data"]
        if rel.get("c_over_a"):
            ax.plot(rel["c_over_a"] / r["lowest_energy_structure"]["c_over_a"], 1e3 * (rel["cohesive_ev_atom"] - e0),
                    "*", ms=12, color=colours[phase], label=f"{phase} model, fully relaxed")
    ax.plot(1.0, 0.0, "ko", mfc="none", label="DFT lowest-energy structure")
    ax.axhline(0, color="0.7", lw=0.5)
    ax.set_xlabel("c/a relative to the DFT structure's")
    ax.set_ylabel("E − E_DFT(lowest structure) (meV/atom)")
    ax.set_title("model E(c/a) at the DFT volume (no DFT data off c/a = 1)")
    ax.legend(fontsize=8)
    fig.suptitle("Rutile and anatase in the DFT data: isotropic volume scans, DFT vs the tio2 potential")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("BPNN_DATA_DIR", str(REPO.parent / "shared" / "data" / "tio2")))
    p.add_argument("--model", default="tio2", help="model file or shipped name (default tio2)")
    p.add_argument("--symprec", type=float, default=0.05, help="spglib tolerance in Å (default 0.05)")
    p.add_argument("--window", type=float, default=0.10,
                   help="E(V) fit window: relative volume distance from the lowest-energy structure (default 0.10)")
    p.add_argument("--fmax", type=float, default=0.005, help="relaxation: force/stress criterion (eV/Å)")
    p.add_argument("--steps", type=int, default=500, help="relaxation: maximum BFGS steps")
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "phases"))
    args = p.parse_args(argv)

    import bpnn_jax
    from bpnn_jax.io import atomic_write
    from bpnn_jax.training.evaluation import evaluate_structures
    from experiments.md import build_phase

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = sorted({0.01, 0.1} - {args.symprec})
    records, summary = scan(Path(args.data), args.symprec, extra)
    t_scan = time.time() - t_start
    print(f"scanned {summary['n_structures']} structures ({summary['n_stoichiometric_tio2']} TiO2) in {t_scan:.0f} s: "
          + ", ".join(f"{ph} {sum(r['phase'] == ph for r in records)}" for ph in PHASE_SYMMETRY))

    model = bpnn_jax.load_model(args.model)
    rep = evaluate_structures(model, [r["_atoms"] for r in records], forces=False, max_energy=None)
    for r, ps in zip(records, rep["per_structure"]):
        r["model_cohesive_ev_atom"] = float(cohesive_per_atom(ps["energy_pred_ev"], r["_atoms"].get_chemical_symbols()))
    model_e_fu = [3 * r["model_cohesive_ev_atom"] for r in records]

    results: dict = {"settings": dict(data=str(args.data), model=args.model, symprec=args.symprec, window=args.window,
                                      fmax=args.fmax, steps=args.steps),
                     "scan": summary, "phases": {}}
    fits: dict = {}
    windows: dict = {}
    calc = bpnn_jax.BPNNCalculator(model, warn_extrapolation=False)
    for phase, sym in PHASE_SYMMETRY.items():
        idx = [k for k, r in enumerate(records) if r["phase"] == phase]
        if not idx:
            results["phases"][phase] = {"n_structures": 0}
            continue
        recs = [records[k] for k in idx]
        best = min(recs, key=lambda r: (r["energy_per_atom_ev"], r["file"]))
        v_best = best["volume_per_fu_a3"]
        lo, hi = v_best * (1 - args.window), v_best * (1 + args.window)
        windows[phase] = (lo, hi)
        win = [k for k in idx if lo <= records[k]["volume_per_fu_a3"] <= hi]
        v = [records[k]["volume_per_fu_a3"] for k in win]
        fit_dft = fit_birch_murnaghan(v, [3 * records[k]["cohesive_ev_atom"] for k in win])
        fit_model = fit_birch_murnaghan(v, [model_e_fu[k] for k in win])
        c_over_a = best["c_over_a"]
        for f in (fit_dft, fit_model):
            f["a_A"], f["c_A"] = lattice_from_volume(f["v0_a3_fu"], c_over_a, sym["fu_per_conventional"])
            f["c_over_a_fixed"] = c_over_a
        fits[phase] = {"dft": fit_dft, "model": fit_model}

        axis = tetragonal_axis(best["_atoms"], symmetry_dataset(best["_atoms"], args.symprec))
        ca_scan = []
        for factor in np.round(np.arange(0.94, 1.1401, 0.02), 4):
            x = strain_c_over_a(best["_atoms"], float(factor), axis)
            x.calc = calc
            ca_scan.append(dict(c_over_a=float(best["c_over_a"] * factor), factor=float(factor),
                                model_cohesive_ev_atom=float(cohesive_per_atom(x.get_potential_energy(),
                                                                               x.get_chemical_symbols())),
                                extrapolating_atoms=len(calc.last_extrapolation)))
        relaxed_data = relax_report(best["_atoms"], calc, args.symprec, args.fmax, args.steps)
        relaxed_ideal = relax_report(build_phase(phase), calc, args.symprec, args.fmax, args.steps)
        results["phases"][phase] = dict(
            space_group=f"{sym['number']} {sym['symbol']}",
            n_structures=len(recs),
            n_atoms=dict(Counter(r["n_atoms"] for r in recs)),
            distinct_c_over_a=sorted({round(r["c_over_a"], 4) for r in recs}),
            energy_per_atom_range_ev=[min(r["energy_per_atom_ev"] for r in recs),
                                      max(r["energy_per_atom_ev"] for r in recs)],
            volume_per_fu_range_a3=[min(r["volume_per_fu_a3"] for r in recs), max(r["volume_per_fu_a3"] for r in recs)],
            lowest_energy_structure={k: val for k, val in best.items() if not k.startswith("_")},
            dft_fit=fit_dft, model_fit=fit_model,
            model_c_over_a_scan_at_dft_volume=ca_scan,
            model_relaxed_from_data=relaxed_data, model_relaxed_from_ideal=relaxed_ideal,
            structures=[{k: val for k, val in r.items() if not k.startswith("_")}
                        for r in sorted(recs, key=lambda r: r["volume_per_fu_a3"])],
        )
        print(f"{phase}: {len(recs)} structures; lowest {best['file']} a={best['a_A']:.4f} c={best['c_A']:.4f}; "
              f"DFT BM a={fit_dft['a_A']:.4f} c={fit_dft['c_A']:.4f} V0={fit_dft['v0_a3_fu']:.3f}; "
              f"model relaxed a={relaxed_data.get('a_A', float('nan')):.4f} c={relaxed_data.get('c_A', float('nan')):.4f} "
              f"({relaxed_data['phase_after']})")

    ph = results["phases"]
    if all(ph[x].get("n_structures") for x in PHASE_SYMMETRY):
        r, a = ph["rutile"], ph["anatase"]
        results["anatase_minus_rutile_mev_per_fu"] = dict(
            dft_lowest_structures=3e3 * (a["lowest_energy_structure"]["cohesive_ev_atom"]
                                         - r["lowest_energy_structure"]["cohesive_ev_atom"]),
            dft_bm_minima=1e3 * (a["dft_fit"]["e0_ev_fu"] - r["dft_fit"]["e0_ev_fu"]),
            model_on_dft_lowest_structures=3e3 * (
                records[[x["file"] for x in records].index(a["lowest_energy_structure"]["file"])]["model_cohesive_ev_atom"]
                - records[[x["file"] for x in records].index(r["lowest_energy_structure"]["file"])]["model_cohesive_ev_atom"]),
            model_bm_minima=1e3 * (a["model_fit"]["e0_ev_fu"] - r["model_fit"]["e0_ev_fu"]),
            model_relaxed=3e3 * (a["model_relaxed_from_data"]["cohesive_ev_atom"]
                                 - r["model_relaxed_from_data"]["cohesive_ev_atom"]),
        )
        plot_ev(records, model_e_fu, fits, out / "ev.png", windows, ph)
    results["seconds"] = time.time() - t_start
    with atomic_write(out / "phases.json") as fh:
        json.dump(results, fh, indent=2)
    with atomic_write(out / "phases.md") as fh:
        fh.write(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    """The tables of ``phases.md``."""
    s = results["settings"]
    ph = results["phases"]
    lines = [
        "# Rutile and anatase: DFT data vs the potential",
        "",
        f"Written by `python -m experiments.phases` (model `{s['model']}`, spglib symprec {s['symprec']} Å, "
        f"E(V) window ±{100 * s['window']:g} %, relaxation fmax {s['fmax']} eV/Å). "
        f"{results['scan']['n_structures']} structures scanned, {results['scan']['n_stoichiometric_tio2']} "
        f"of them stoichiometric TiO2.",
        "",
        "## The phases in the data",
        "",
        "| phase | space group | structures | atoms | c/a | energy/atom range (eV) | V/TiO2 range (Å³) | lowest-energy structure | its a, c (Å) | its cohesive energy (eV/atom) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, r in ph.items():
        if not r.get("n_structures"):
            lines.append(f"| {phase} | — | 0 | | | | | | | |")
            continue
        b = r["lowest_energy_structure"]
        lines.append(
            f"| {phase} | {r['space_group']} | {r['n_structures']} | "
            f"{', '.join(str(k) for k in r['n_atoms'])} | {', '.join(f'{x:.4f}' for x in r['distinct_c_over_a'])} | "
            f"{r['energy_per_atom_range_ev'][0]:.4f} … {r['energy_per_atom_range_ev'][1]:.4f} | "
            f"{r['volume_per_fu_range_a3'][0]:.1f} … {r['volume_per_fu_range_a3'][1]:.1f} | {b['file']} | "
            f"{b['a_A']:.4f}, {b['c_A']:.4f} | {b['cohesive_ev_atom']:.4f} |")
    lines += ["", "## Equilibrium: DFT vs model", "",
              "DFT equilibrium = minimum of the Birch–Murnaghan fit of the data's E(V) at the data's c/a. "
              "Model: (i) Birch–Murnaghan fit of the model's energies of the same structures (same c/a and "
              "internal coordinates), (ii) full relaxation (positions and cell) from the lowest-energy DFT "
              "structure. Deviations relative to the DFT fit.", "",
              "| phase | quantity | DFT lowest structure | DFT BM fit | model BM fit (same structures) | model relaxed | relaxed vs DFT fit |",
              "|---|---|---|---|---|---|---|"]
    for phase, r in ph.items():
        if not r.get("n_structures"):
            continue
        b, fd, fm, rx = r["lowest_energy_structure"], r["dft_fit"], r["model_fit"], r["model_relaxed_from_data"]
        rows = [
            ("a (Å)", b["a_A"], fd["a_A"], fm["a_A"], rx.get("a_A")),
            ("c (Å)", b["c_A"], fd["c_A"], fm["c_A"], rx.get("c_A")),
            ("c/a", b["c_over_a"], fd["c_over_a_fixed"], fm["c_over_a_fixed"], rx.get("c_over_a")),
            ("V per TiO2 (Å³)", b["volume_per_fu_a3"], fd["v0_a3_fu"], fm["v0_a3_fu"], rx["volume_per_fu_a3"]),
            ("B0 (GPa)", None, fd["b0_gpa"], fm["b0_gpa"], None),
            ("E_coh (eV/atom)", b["cohesive_ev_atom"], fd["e0_ev_fu"] / 3, fm["e0_ev_fu"] / 3, rx["cohesive_ev_atom"]),
        ]
        for name, x_best, x_fit, x_mod, x_rel in rows:
            def f(x):
                return "—" if x is None else f"{x:.4f}" if abs(x) < 100 else f"{x:.1f}"
            if name.startswith("E_coh"):
                dev = "—" if x_rel is None else f"{1e3 * (x_rel - x_fit):+.1f} meV/atom"
                mdev = f" ({1e3 * (x_mod - x_fit):+.1f} meV/atom)"
            else:
                dev = "—" if x_rel is None else f"{pct(x_rel, x_fit):+.2f} %"
                mdev = f" ({pct(x_mod, x_fit):+.2f} %)"
            lines.append(f"| {phase} | {name} | {f(x_best)} | {f(x_fit)} | {f(x_mod)}{mdev} | {f(x_rel)} | {dev} |")
    d = results.get("anatase_minus_rutile_mev_per_fu")
    if d:
        lines += ["", "## Anatase − rutile energy (meV per TiO2)", "",
                  "| DFT, lowest structures | DFT, BM minima | model on the DFT lowest structures | model, BM minima | model, relaxed |",
                  "|---|---|---|---|---|",
                  f"| {d['dft_lowest_structures']:+.1f} | {d['dft_bm_minima']:+.1f} | "
                  f"{d['model_on_dft_lowest_structures']:+.1f} | {d['model_bm_minima']:+.1f} | {d['model_relaxed']:+.1f} |"]
    lines += ["", "## Model energy against c/a at the DFT volume", "",
              "Lowest-energy DFT structure strained at constant volume (fixed fractional coordinates); "
              "model cohesive energy minus the DFT one of the unstrained structure, meV/atom. The data hold "
              "no tetragonal structure of either phase with another c/a.", ""]
    scans = {p: r["model_c_over_a_scan_at_dft_volume"] for p, r in ph.items() if r.get("n_structures")}
    if scans:
        factors = [x["factor"] for x in next(iter(scans.values()))]
        lines += ["| c/a ÷ DFT c/a | " + " | ".join(f"{f:.2f}" for f in factors) + " |",
                  "|---|" + "---|" * len(factors)]
        for p, sc in scans.items():
            e0 = ph[p]["lowest_energy_structure"]["cohesive_ev_atom"]
            lines.append(f"| {p} | " + " | ".join(f"{1e3 * (x['model_cohesive_ev_atom'] - e0):+.1f}" for x in sc) + " |")
    lines += ["", "## Cross-check: relaxation from the ideal conventional cell (experiments.md.build_phase)", "",
              "| phase | atoms | a (Å) | c (Å) | V per TiO2 (Å³) | E_coh (eV/atom) | phase after |", "|---|---|---|---|---|---|---|"]
    for phase, r in ph.items():
        if not r.get("n_structures"):
            continue
        x = r["model_relaxed_from_ideal"]
        lines.append(f"| {phase} | {x['n_atoms']} | {x.get('a_A', float('nan')):.4f} | {x.get('c_A', float('nan')):.4f} | "
                     f"{x['volume_per_fu_a3']:.3f} | {x['cohesive_ev_atom']:.4f} | {x['phase_after']} |")
    sc = results["scan"]
    lines += ["", "## Space groups of all stoichiometric TiO2 structures (symprec "
              f"{s['symprec']} Å)", "", "| space group | structures |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sc["spacegroups_of_stoichiometric"].items()]
    lines += ["", "Phase counts at other tolerances: " + "; ".join(
        f"symprec {k} Å: " + ", ".join(f"{p} {n}" for p, n in sorted(v.items()))
        for k, v in sc["phase_counts_other_symprec"].items()) + ".",
        "", f"Runtime: {results['seconds']:.0f} s on this machine's shared CPU.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
