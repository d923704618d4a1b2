"""Benchmark: the exported LAMMPS program (lammps-jax bundle) against the calculator.

Usage::

    python benchmarks/lammps_export.py [--sizes 96,1000] [--repeats 5]
                                       [--precision float32,float64] [--out-dir DIR] [--tag TAG]

For rutile supercells (as ``md_inference.py``) and each precision: export
``tio2`` with capacities fitted to the cell (``max_owned`` = the atom count,
``max_atoms`` = atoms + ghosts rounded up to 64, ``max_neighbors`` = 128),
lay the cell out as LAMMPS would (owned atoms, ghost images within
cut-off + 1 Å, full neighbour matrix) and time the program's
energy-and-forces call in this process (what ``pair_style jax/kk`` runs
each step, without LAMMPS's own work), against one energy+forces+stress
evaluation of ``BPNNCalculator`` in the same precision.  Also: export time,
in-process compile time, bundle size, and the largest energy / force
differences.  Needs lammps-jax (``pip install --no-deps lammps-jax==0.2.1``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    add_common_args,
    default_tag,
    fmt,
    footer,
    log,
    machine_line,
    new_result,
    record_error,
    rss_peak_mb,
    write_results,
)
from md_inference import rutile, rutile_repeats  # noqa: E402


def run_case(target: int, precision: str, args, tmp: Path) -> dict:
    import jax

    from bpnn_jax import BPNNCalculator
    from bpnn_jax.calculators.lammps import compile_bundle, export_lammps, lammps_layout, read_bundle, run_bundle

    atoms = rutile(rutile_repeats(target))
    n = len(atoms)
    probe = lammps_layout(atoms, ("O", "Ti"), 6.5, max_atoms=64 * n, max_neighbors=512, rows=n)
    max_atoms = -(-(n + probe.nghost) // 64) * 64
    path = tmp / f"tio2_{n}_{precision}.json"
    t0 = time.perf_counter()
    export_lammps("tio2", path, precision=precision, max_atoms=max_atoms, max_neighbors=128, max_owned=n)
    t_export = time.perf_counter() - t0
    bundle = read_bundle(path)
    t0 = time.perf_counter()
    exe = compile_bundle(bundle)
    t_compile = time.perf_counter() - t0
    layout = lammps_layout(atoms, ("O", "Ti"), 6.5, max_atoms=max_atoms, max_neighbors=128, rows=n,
                           dtype=precision)
    run_bundle(bundle, layout, exe)  # warm
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        energy, forces = run_bundle(bundle, layout, exe)
        times.append(time.perf_counter() - t0)
    calc = BPNNCalculator("tio2", dtype=precision, warn_extrapolation=False)
    a = atoms.copy()
    a.calc = calc
    a.get_potential_energy()
    ctimes = []
    rng = np.random.default_rng(0)
    for _ in range(args.repeats):
        a.positions = atoms.positions + rng.normal(0, 1e-4, atoms.positions.shape)
        t0 = time.perf_counter()
        a.get_potential_energy()
        a.get_forces()
        a.get_stress()
        ctimes.append(time.perf_counter() - t0)
    a.positions = atoms.positions
    e_ref, f_ref = a.get_potential_energy(), a.get_forces()
    jax.clear_caches()
    t_step = statistics.median(times)
    t_calc = statistics.median(ctimes)
    return {
        "n_atoms": n, "n_ghosts": layout.nghost, "precision": precision, "max_atoms": max_atoms,
        "bundle_mb": round(path.stat().st_size / 2**20, 2), "export_s": round(t_export, 2),
        "compile_s": round(t_compile, 2), "step_ms": round(1e3 * t_step, 2),
        "us_per_atom": round(1e6 * t_step / n, 1), "calculator_step_ms": round(1e3 * t_calc, 2),
        "calculator_us_per_atom": round(1e6 * t_calc / n, 1),
        "abs_energy_error_ev": abs(energy - e_ref), "max_abs_force_error_ev_a": float(np.abs(forces - f_ref).max()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="96,1000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", default="float32,float64")
    add_common_args(ap)
    args = ap.parse_args(argv)
    args.tag = args.tag or default_tag()
    res = new_result("lammps_export", args, args.precision)
    res["rows"] = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for target in (int(s) for s in args.sizes.split(",")):
            for precision in args.precision.split(","):
                log(f"rutile ~{target} atoms, {precision}")
                try:
                    row = run_case(target, precision, args, Path(tmp))
                except Exception as exc:  # noqa: BLE001 - a benchmark notes a failed case and goes on
                    record_error(res, f"{target} atoms {precision}", exc)
                    continue
                res["rows"].append(row)
                log(str(row))
    res["rss_peak_mb"] = rss_peak_mb()
    lines = [
        "# Exported LAMMPS program (lammps-jax bundle) against the calculator, rutile TiO2, `tio2` committee",
        "",
        machine_line(res),
        "",
        "The bundle's energy-and-forces program run in process on the cell laid out as LAMMPS would "
        "(owned + ghost atoms, full neighbour matrix, 128 slots, rows = owned atoms); the calculator "
        "gives energy, forces and stress in one evaluation. Medians of the repeats.",
        "",
        "| atoms | ghosts | precision | bundle MB | export s | compile s | program ms/step | µs/atom | "
        "calculator ms/step | calculator µs/atom | |ΔE| eV | max |ΔF| eV/Å |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['n_atoms']} | {r['n_ghosts']} | {r['precision']} | {r['bundle_mb']} | {r['export_s']} | "
            f"{r['compile_s']} | {fmt(r['step_ms'])} | {fmt(r['us_per_atom'])} | {fmt(r['calculator_step_ms'])} | "
            f"{fmt(r['calculator_us_per_atom'])} | {r['abs_energy_error_ev']:.1e} | "
            f"{r['max_abs_force_error_ev_a']:.1e} |")
    lines += footer(res)
    write_results(res, args.out_dir, f"lammps_export_{args.tag}", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
