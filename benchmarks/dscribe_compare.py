"""Benchmark: our symmetry functions against DScribe's ACSF, same functions, same structures.

Usage::

    python benchmarks/dscribe_compare.py [--subset 300] [--dtypes float64,float32]
                                         [--n-jobs 1] [--out-dir DIR] [--data DIR] [--tag TAG]

Both compute the 70 Artrith-Urban functions (Rc = 6.5 Å; G2 η and Rs and G4
η, λ, ζ taken from :meth:`bpnn_jax.descriptors.SymmetryFunctionSet.
artrith_urban`) for every atom of the same structures, in the same process,
one after the other.  DScribe (``pip install -e ".[bench]"``) is optional:
if it is missing or fails, the script says so and reports our timings only.

The definitions coincide.  DScribe's G4 (``dscribe/ext/acsf.cpp``) is
``2 (½(1 + λ cos θ))^ζ exp(-η (R_ij² + R_ik² + R_jk²)) fc(R_ij) fc(R_ik)
fc(R_jk)`` = ``2^(1-ζ) (1 + λ cos θ)^ζ ...``, summed once over each
unordered neighbour pair {j, k} (k < j), with the same cosine cut-off,
periodic images included: the same as ours and aenet's.  Layout
differences, handled here: DScribe adds one G1 (Σ fc) column per element,
dropped from the comparison (it is computed, so it is in DScribe's time);
its blocks are [G1, G2...] per element, then G4 per element pair in the
order O-O, O-Ti, Ti-Ti, while ours interleave them (aenet's order).

Measured: µs per atom for DScribe (its own neighbour search included; one
process unless ``--n-jobs``), for ours per dtype in steady state (compiled;
featurisation alone, and with our neighbour lists), and the one-off cost of
ours with compilation; the ratios; the largest deviation between DScribe's
values and ours, per function kind, absolute and relative to each column's
largest value.  The aenet Fortran featuriser is given as a reference line
(``--aenet-ms-per-atom``, a figure measured separately on the project's
2-core machine, not by this script).

Writes ``<out-dir>/dscribe_compare_<tag>.json`` and ``.md``.

``python benchmarks/dscribe_compare.py --dscribe-process PARAMS.json DIR
N_JOBS OUT.npy`` is DScribe's whole process alone (no JAX imported): read
every XSF file of DIR with ASE, compute the ACSF with the parameters of
PARAMS.json (:func:`acsf_params`), save them; ``speed_suite.py`` times it
beside our whole ``featurize`` process.
"""

from __future__ import annotations

import argparse
import resource
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
    select_files,
    write_results,
)


def _cpu_s() -> float:
    """CPU time of this process and its reaped children, s (not DScribe's joblib workers, which live on)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def dscribe_columns(spec) -> tuple[list[int], int]:
    """For each of our columns, the index of the same function in DScribe's output; DScribe's width.

    DScribe (one G1, n_g2 G2, no G3 per element; then n_g4 G4 per element
    pair, pair (j, k) with j >= k at j(j+1)/2 + k), element indices in the
    order of the species given to it (here ``spec.elements``).
    """
    n_el = len(spec.elements)
    per_el = 1 + len(spec.radial)
    n_g4 = len(spec.angular)
    index = []
    for a in range(n_el):
        for p in range(len(spec.radial)):
            index.append(a * per_el + 1 + p)
        for b in range(a, n_el):
            pair = b * (b + 1) // 2 + a
            for q in range(n_g4):
                index.append(n_el * per_el + pair * n_g4 + q)
    width = n_el * per_el + n_el * (n_el + 1) // 2 * n_g4
    assert len(index) == spec.n_functions
    return index, width


def acsf_params(spec) -> dict:
    """DScribe's ACSF arguments for our function set (plain JSON: a DScribe-only process reads them)."""
    return {"species": list(spec.elements), "r_cut": spec.cutoff,
            "g2_params": [[eta, rs] for eta, rs in spec.radial],
            "g4_params": [[eta, zeta, lam] for eta, lam, zeta in spec.angular]}


def make_acsf(params: dict):
    """DScribe's ACSF of :func:`acsf_params` (periodic, dense, float64)."""
    from dscribe.descriptors import ACSF

    return ACSF(**params, periodic=True, sparse=False, dtype="float64")


def dscribe_process(params_file: str, data: str, n_jobs: int, out: str) -> int:
    """DScribe's whole process, as a user runs it: import, read the XSF files with ASE, ACSF, save.

    Neither JAX nor bpnn_jax is imported: its time is DScribe's alone (the
    parameters come from ``params_file``, written by the caller from
    :func:`acsf_params`).  Writes the (atoms, features) float64 array to
    ``out`` (``.npy``).
    """
    import json

    import ase.io

    files = sorted(Path(data).glob("*.xsf"))
    atoms = [ase.io.read(f, format="xsf") for f in files]
    values = make_acsf(json.loads(Path(params_file).read_text())).create(atoms, n_jobs=n_jobs)
    np.save(out, np.concatenate([np.asarray(v) for v in values]))
    return 0


def run_dscribe(atoms, spec, n_jobs: int, repeats: int) -> tuple[dict, list]:
    acsf = make_acsf(acsf_params(spec))
    index, width = dscribe_columns(spec)
    if acsf.get_number_of_features() != width:
        raise RuntimeError(f"DScribe has {acsf.get_number_of_features()} features, expected {width}")
    walls, cpus = [], []
    values = None
    for r in range(repeats):
        t0, c0 = time.perf_counter(), _cpu_s()
        if n_jobs == 1:
            out = [acsf.create(a) for a in atoms]
        else:
            out = acsf.create(atoms, n_jobs=n_jobs)
            out = [np.asarray(x) for x in out]
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_s() - c0)
        log(f"  DScribe pass {r + 1}: {walls[-1]:.1f} s wall")
        values = out
    n_atoms = sum(len(a) for a in atoms)
    if n_jobs != 1:
        # joblib's worker processes live on after each pass (they are not reaped, so their CPU time is
        # in no rusage of this process): no CPU figure rather than the parent's alone.
        cpus = None
    res = {
        "n_jobs": n_jobs,
        "wall_s": round(min(walls), 3),
        "cpu_s": None if cpus is None else round(min(cpus), 3),
        "runs_wall_s": [round(x, 2) for x in walls],
        "us_per_atom": round(min(walls) / n_atoms * 1e6, 1),
        "cpu_us_per_atom": None if cpus is None else round(min(cpus) / n_atoms * 1e6, 1),
        "n_features": int(acsf.get_number_of_features()),
    }
    return res, [np.asarray(v, np.float64)[:, index] for v in values]


def run_ours(compact, spec, dtype, repeats: int) -> tuple[dict, list]:
    from bpnn_jax.descriptors.featurize import featurize

    n_atoms = sum(s.n_atoms for s in compact)
    t0, c0 = time.perf_counter(), _cpu_s()
    featurize(compact, spec, dtype=dtype)  # compiles every batch shape (cached for the next calls)
    first = time.perf_counter() - t0
    first_cpu = _cpu_s() - c0
    walls, cpus = [], []
    out = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), _cpu_s()
        out = featurize(compact, spec, dtype=dtype)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_s() - c0)
    best = min(walls)
    res = {
        "first_pass_s": round(first, 3),
        "first_pass_cpu_s": round(first_cpu, 3),
        "compile_s": round(max(0.0, first - best), 3),
        "wall_s": round(best, 3),
        "cpu_s": round(min(cpus), 3),
        "runs_wall_s": [round(x, 2) for x in walls],
        "us_per_atom": round(best / n_atoms * 1e6, 1),
        "cpu_us_per_atom": round(min(cpus) / n_atoms * 1e6, 1),
    }
    return res, out


def deviations(ours: list, theirs: list, spec) -> dict:
    """Largest |ours - DScribe| per function kind, absolute and relative to the column's largest |value|."""
    a = np.concatenate([np.asarray(x, np.float64) for x in ours])
    b = np.concatenate(theirs)
    diff = np.abs(a - b)
    scale = np.maximum(np.abs(b).max(axis=0), 1e-300)
    rel = diff / scale
    cols = spec.columns()
    out = {}
    for kind in ("G2", "G4", "all"):
        sel = [i for i, c in enumerate(cols) if kind in ("all", c["kind"])]
        d, r = diff[:, sel], rel[:, sel]
        i_atom, j = np.unravel_index(np.argmax(d), d.shape)
        c = cols[sel[j]]
        out[kind] = {
            "max_abs": float(d.max()),
            "max_rel_to_column_max": float(r.max()),
            "worst_column": f"{c['kind']} {c['neighbors']} eta={c['eta']} lambda={c['lambda']} zeta={c['zeta']}",
            "value_there": float(b[i_atom, sel[j]]),
        }
    out["max_abs_value"] = float(np.abs(b).max())
    return out


def markdown(res: dict) -> str:
    s = res["settings"]
    ours = res.get("ours", {})
    ds = res.get("dscribe")
    lines = [
        f"# Symmetry functions: bpnn_jax vs DScribe ACSF ({res['tag']})",
        "",
        f"{res['date']} · {s['n_structures']} structures, {s['n_atoms']} atoms ({s['selection']}) from "
        f"`{res['data_dir']}` · the 70 Artrith-Urban functions (8 G2 per element, 18 G4 per element pair, "
        f"Rc = {s['cutoff']} Å) · DScribe {res.get('dscribe_version') or 'not available'}",
        "",
        machine_line(res),
        "",
        "| featuriser | what is timed | s | µs/atom | CPU µs/atom | DScribe time / this | DScribe CPU time / this |",
        "|---|---|---|---|---|---|---|",
    ]
    n_atoms = s["n_atoms"]

    def row(name, what, wall, cpu):
        us = wall / n_atoms * 1e6
        cus = None if cpu is None else cpu / n_atoms * 1e6
        r_wall = fmt(ds["wall_s"] / wall) if ds and wall else "—"
        r_cpu = fmt(ds["cpu_s"] / cpu) if ds and ds.get("cpu_s") and cpu else "—"
        lines.append(f"| {name} | {what} | {fmt(wall)} | {fmt(us)} | {fmt(cus)} | {r_wall} | {r_cpu} |")

    if ds:
        row(f"DScribe ACSF (C++), n_jobs={ds['n_jobs']}", "its neighbour search + functions", ds["wall_s"], ds["cpu_s"])
    nl, nl_cpu = res.get("ours_neighbor_lists_s"), res.get("ours_neighbor_lists_cpu_s")
    for dtype, r in ours.items():
        if "error" in r:
            lines.append(f"| bpnn_jax {dtype} | failed: {r['error']} | | | | | |")
            continue
        row(f"bpnn_jax {dtype}", "functions, compiled (steady)", r["wall_s"], r["cpu_s"])
        if nl is not None:
            both = None if nl_cpu is None else nl_cpu + r["cpu_s"]
            row(f"bpnn_jax {dtype}", "neighbour lists + functions (steady)", nl + r["wall_s"], both)
            once = None if nl_cpu is None else nl_cpu + r["first_pass_cpu_s"]
            row(f"bpnn_jax {dtype}", "neighbour lists + compilation + functions (one-off)",
                nl + r["first_pass_s"], once)
    if s.get("aenet_ms_per_atom"):
        a = s["aenet_ms_per_atom"] * 1e3
        lines.append(f"| aenet generate.x (Fortran), reference | figure measured separately, not by this run | — | "
                     f"≈ {fmt(a)} | — | {fmt(ds['us_per_atom'] / a) if ds else '—'} | — |")
    lines += [
        "",
        "µs/atom = wall time / atoms; CPU µs/atom = process CPU time (all threads) / atoms, not given for "
        "DScribe with n_jobs > 1 (its joblib workers outlive the pass: their CPU time is in no rusage of this "
        "process). DScribe with n_jobs=1 runs in one thread while XLA uses every core, so the CPU column is the "
        "per-core comparison. Steady = best of the repeated passes with everything compiled.",
    ]
    dev = res.get("deviation")
    if dev:
        lines += ["", "Largest deviation, DScribe values vs ours (the definitions coincide: same G2, same G4 "
                  "with 2^(1-ζ), R_ij² + R_ik² + R_jk² and fc(R_jk), each unordered pair {j, k} once):", "",
                  "| ours | kind | max abs deviation | max deviation / column's max value | worst column |",
                  "|---|---|---|---|---|"]
        for dtype, d in dev.items():
            for kind in ("G2", "G4", "all"):
                k = d[kind]
                lines.append(f"| {dtype} | {kind} | {k['max_abs']:.2e} | {k['max_rel_to_column_max']:.2e} | "
                             f"{k['worst_column']} |")
        first = next(iter(dev.values()))
        lines += ["", f"Largest |value| of any function: {first['max_abs_value']:.4g}."]
    if res.get("dscribe_unavailable"):
        lines += ["", f"DScribe part skipped: {res['dscribe_unavailable']}"]
    lines += footer(res)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--dscribe-process"]:  # PARAMS.json DIR N_JOBS OUT.npy, before anything imports JAX
        return dscribe_process(argv[1], argv[2], int(argv[3]), argv[4])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--subset", type=int, default=300, help="structures, spread evenly over the sorted files "
                    "(default 300; 0 = all)")
    ap.add_argument("--dtypes", default="float64,float32", help="our dtypes (default float64,float32)")
    ap.add_argument("--n-jobs", type=int, default=1, help="DScribe processes (default 1)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes of each (best reported; default 2)")
    ap.add_argument("--aenet-ms-per-atom", type=float, default=8.8,
                    help="reference line: aenet's Fortran featuriser, ms/atom (default 8.8, measured separately "
                         "on the project's 2-core CPU)")
    args = ap.parse_args(argv)

    from bpnn_jax.descriptors import SymmetryFunctionSet
    from bpnn_jax.descriptors.featurize import prepare_compact
    from bpnn_jax.io import read_structures

    args.tag = args.tag or default_tag()
    res = new_result("dscribe_compare", args, "float64 (DScribe); ours: " + args.dtypes)
    stem = f"dscribe_compare_{args.tag}"
    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    files = select_files(args.data, args.subset or None)
    t0 = time.perf_counter()
    atoms, _ = read_structures(files)
    n_atoms = int(sum(len(a) for a in atoms))
    res["settings"] = {
        "subset": args.subset, "n_structures": len(atoms), "n_atoms": n_atoms, "cutoff": spec.cutoff,
        "selection": "all files" if not args.subset else f"{len(files)} files spread evenly over the sorted list",
        "n_functions": spec.n_functions, "repeats": args.repeats, "aenet_ms_per_atom": args.aenet_ms_per_atom,
        "g2_params_eta_rs": [list(p) for p in spec.radial],
        "g4_params_eta_lambda_zeta": [list(p) for p in spec.angular],
    }
    log(f"read {len(atoms)} structures ({n_atoms} atoms) in {time.perf_counter() - t0:.1f} s")

    try:
        # DScribe first: if it is missing, say so once and carry on.
        theirs = None
        try:
            import dscribe

            res["dscribe_version"] = getattr(dscribe, "__version__", None)
            if res["dscribe_version"] is None:
                from importlib.metadata import version

                res["dscribe_version"] = version("dscribe")
        except Exception as exc:
            res["dscribe_unavailable"] = (f"cannot import dscribe ({type(exc).__name__}: {exc}); "
                                          "pip install -e \".[bench]\"")
            log(res["dscribe_unavailable"])
        if "dscribe_unavailable" not in res:
            try:
                log(f"DScribe ACSF, n_jobs={args.n_jobs}")
                res["dscribe"], theirs = run_dscribe(atoms, spec, args.n_jobs, args.repeats)
                log(f"DScribe: {res['dscribe']['us_per_atom']} µs/atom")
            except Exception as exc:
                record_error(res, "DScribe run", exc)
                res["dscribe_unavailable"] = f"DScribe failed: {type(exc).__name__}: {exc}"

        t0, c0 = time.perf_counter(), _cpu_s()
        compact = prepare_compact(atoms, spec)
        res["ours_neighbor_lists_s"] = round(time.perf_counter() - t0, 3)
        res["ours_neighbor_lists_cpu_s"] = round(_cpu_s() - c0, 3)
        log(f"our neighbour lists: {res['ours_neighbor_lists_s']} s")
        res["ours"] = {}
        res["deviation"] = {}
        for name in [x.strip() for x in args.dtypes.split(",") if x.strip()]:
            try:
                dtype = np.dtype(name)
                r, values = run_ours(compact, spec, dtype, args.repeats)
                res["ours"][dtype.name] = r
                log(f"ours {dtype.name}: compile {r['compile_s']} s, steady {r['wall_s']} s = "
                    f"{r['us_per_atom']} µs/atom")
                if theirs is not None:
                    res["deviation"][dtype.name] = deviations(values, theirs, spec)
                    d = res["deviation"][dtype.name]["all"]
                    log(f"  max |ours - DScribe| = {d['max_abs']:.3g} "
                        f"({d['max_rel_to_column_max']:.3g} of the column max)")
            except Exception as exc:
                record_error(res, f"ours {name}", exc)
                res["ours"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        if res.get("dscribe"):
            dw, dc, nl_s = res["dscribe"]["wall_s"], res["dscribe"]["cpu_s"], res["ours_neighbor_lists_s"]
            res["ratios_dscribe_over_ours"] = {
                k: {"functions_steady": round(dw / v["wall_s"], 2),
                    "with_neighbor_lists_steady": round(dw / (v["wall_s"] + nl_s), 2),
                    "cpu_time_functions_steady": round(dc / v["cpu_s"], 2) if dc else None}
                for k, v in res["ours"].items() if "error" not in v
            }
    except KeyboardInterrupt:  # e.g. `timeout -s INT`: write what was measured
        res["errors"].append("interrupted (SIGINT)")
        log("interrupted: writing what was measured")
    res["peak_rss_mb"] = rss_peak_mb()
    write_results(res, args.out_dir, stem, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
