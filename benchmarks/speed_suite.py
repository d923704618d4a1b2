"""Benchmark suite: the speed figures of issue 14 side by side, from one run on one machine.

Usage::

    python benchmarks/speed_suite.py [--data DIR] [--every 9] [--md-sizes 96,1000,10000] [--md-steps 5]
                                     [--parts process,dscribe,md] [--out-dir DIR] [--tag TAG]

Parts, each in fresh processes:

1. **Whole-process times** of ``python -m bpnn_jax featurize`` on every
   ``--every``-th XSF file of the data (782 structures of the TiO2 set for
   9), of ``evaluate tio2`` on one structure and of ``load_model("tio2")``:
   *cold* = with an empty XLA compilation cache (a temporary
   ``BPNN_COMPILATION_CACHE`` directory), *warm* = the same command again
   (the programs come from that cache: no tracing, no compiling); best of
   ``--repeats`` warm runs; wall and CPU times.  Cold − warm is what
   tracing and compilation cost a first run.  Beside them, DScribe's whole
   process on the same files (``dscribe_compare.py --dscribe-process``:
   import, ASE's reader, ACSF with 2 processes, save), when DScribe is
   installed.
2. **Featurisation in one process** against DScribe's ACSF
   (``benchmarks/dscribe_compare.py`` on the same structures, float32
   ours, DScribe with 2 processes): steady µs/atom and our compile seconds.
3. **MD steps** (``benchmarks/md_inference.py``): the shipped committee's
   energy + forces + stress per step on rutile cells of ``--md-sizes``
   atoms, with every member's forces (the calculator's default, for
   ``forces_std``) and with the forces of the mean only
   (``member_forces=False``).

Writes ``<out-dir>/speed_suite_<tag>.json`` and ``.md``, and the parts'
own results next to them (``dscribe_compare_<tag>-suite.*``,
``md_inference_<tag>-suite*.*``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import add_common_args, default_tag, fmt, footer, log, machine_line, new_result, write_results  # noqa: E402

HERE = Path(__file__).resolve().parent


def _children_cpu_s() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def _run(cmd, env, cwd) -> float:
    """Wall seconds of one process (raises on a non-zero exit)."""
    return _run_timed(cmd, env, cwd)[0]


def _run_timed(cmd, env, cwd) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys, all its threads and children) of one process."""
    t, c = time.perf_counter(), _children_cpu_s()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t, _children_cpu_s() - c
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr[-800:]}")
    return seconds, cpu


def process_times(commands: dict, repeats: int) -> dict:
    """{name: {cold_s, warm_s, warm_runs_s, cold_cpu_s, warm_cpu_s}} with a fresh compilation cache per command.

    Warm: best of ``repeats`` runs (wall and CPU time each the least of
    their runs); the CPU times (user + sys of the process and its children)
    are less disturbed by other load on the machine than the wall times.
    """
    out = {}
    for name, cmd in commands.items():
        with tempfile.TemporaryDirectory(prefix="bpnn_suite_cache_") as cache, \
                tempfile.TemporaryDirectory(prefix="bpnn_suite_work_") as work:
            env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
            env["BPNN_COMPILATION_CACHE"] = cache
            cold, cold_cpu = _run_timed(cmd, env, work)
            warm = [_run_timed(cmd, env, work) for _ in range(repeats)]
        out[name] = {"command": " ".join(map(str, cmd)), "cold_s": round(cold, 2),
                     "warm_s": round(min(w for w, _ in warm), 2), "warm_runs_s": [round(w, 2) for w, _ in warm],
                     "cold_cpu_s": round(cold_cpu, 2), "warm_cpu_s": round(min(c for _, c in warm), 2)}
        log(f"{name}: cold {cold:.1f} s ({cold_cpu:.1f} s CPU), warm {out[name]['warm_s']} s "
            f"({out[name]['warm_cpu_s']} s CPU)")
    return out


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [f"# Speed suite ({res['tag']})", "", f"{res['date']} · {s['n_structures']} structures "
             f"({s['n_atoms']} atoms) = every {s['every']}th XSF file of `{res.get('data_dir')}`", "",
             machine_line(res), "", "## Whole processes (seconds)", "",
             "| command | cold (empty compilation cache) | warm (same command again) | cold CPU | warm CPU |",
             "|---|---|---|---|---|"]
    procs = res.get("process", {})
    for name, p in procs.items():
        lines.append(f"| {name} | {fmt(p['cold_s'])} | {fmt(p['warm_s'])} | {fmt(p.get('cold_cpu_s'))} | "
                     f"{fmt(p.get('warm_cpu_s'))} |")
    ds = next((p for name, p in procs.items() if name.startswith("DScribe")), None)
    ours = next((p for name, p in procs.items() if name.startswith("featurize")), None)
    if ds and ours:
        lines += ["", f"DScribe's whole process / our warm `featurize` process: {fmt(ds['warm_s'] / ours['warm_s'])}× "
                  f"(wall), {fmt(ds['warm_cpu_s'] / ours['warm_cpu_s'])}× (CPU time); against our cold process "
                  f"{fmt(ds['warm_s'] / ours['cold_s'])}× (wall). CPU = user + sys of the process, its threads and "
                  "children (DScribe's worker processes included); warm = best of the repeated runs. Both read the "
                  "same XSF files (DScribe's with ASE's reader) and write their values to a file."]
    d = res.get("dscribe_compare")
    if d:
        lines += ["", "## Featurisation in one process (70 Artrith–Urban functions)", "",
                  "| | µs/atom (steady) | compile s |", "|---|---|---|"]
        ours = d.get("ours", {}).get("float32", {})
        lines.append(f"| bpnn_jax float32 | {fmt(ours.get('us_per_atom'))} | {fmt(ours.get('compile_s'))} |")
        if d.get("dscribe"):
            lines.append(f"| DScribe {d.get('dscribe_version', '')} ({d['dscribe'].get('n_jobs')} processes) | "
                         f"{fmt(d['dscribe'].get('us_per_atom'))} | – |")
    ds_us = (d or {}).get("dscribe", {}).get("us_per_atom")
    for label, md in res.get("md", {}).items():
        lines += ["", f"## MD steps, shipped committee, {label} (energy + forces + stress)", "",
                  "| atoms | ms/step | µs/atom/step | model ms | first call s | DScribe forward-only µs/atom / "
                  "this µs/atom/step |", "|---|---|---|---|---|---|"]
        for r in md.get("sizes", []):
            if "error" in r:
                lines.append(f"| {r.get('target')} | {r['error']} | | | | |")
                continue
            ratio = fmt(ds_us / r["us_per_atom_step"]) if ds_us and r.get("us_per_atom_step") else "–"
            lines.append(f"| {r.get('n_atoms')} | {fmt(r.get('step_ms'))} | {fmt(r.get('us_per_atom_step'))} | "
                         f"{fmt(r.get('model_ms'))} | {fmt(r.get('first_call_s'))} | {ratio} |")
    lines += footer(res)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--every", type=int, default=9, help="featurize every N-th XSF file (default 9: 782 files)")
    ap.add_argument("--repeats", type=int, default=2, help="warm runs per command (best reported)")
    ap.add_argument("--md-sizes", default="96,1000,10000")
    ap.add_argument("--md-steps", type=int, default=5)
    ap.add_argument("--parts", default="process,dscribe,md",
                    help="comma-separated parts to run (default all); the others are kept from the previous "
                         "results file of the same tag, when there is one")
    args = ap.parse_args(argv)
    args.tag = args.tag or default_tag()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    res = new_result("speed_suite", args, "float32")
    out_dir = Path(args.out_dir)
    previous = out_dir / f"speed_suite_{args.tag}.json"
    if previous.exists() and parts != {"process", "dscribe", "md"}:
        old = json.loads(previous.read_text())
        for key, part in (("process", "process"), ("dscribe_compare", "dscribe"), ("md", "md")):
            if part not in parts and key in old:
                res[key] = old[key]
                res.setdefault("notes", []).append(f"part '{part}' from the run of {old.get('date')}")
    files = sorted(Path(args.data).glob("*.xsf"))[::args.every]
    if not files:
        raise SystemExit(f"no XSF files in {args.data}")
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bpnn_suite_files_") as tmp:
        subset = Path(tmp) / "subset"
        subset.mkdir()
        n_atoms = 0
        for f in files:
            (subset / f.name).symlink_to(f.resolve())
            with open(f) as fh:
                text = fh.read()
            n_atoms += int(text.split("PRIMCOORD", 1)[1].split()[0]) if "PRIMCOORD" in text else 0
        res["settings"] = {"every": args.every, "n_structures": len(files), "n_atoms": n_atoms,
                           "md_sizes": args.md_sizes, "md_steps": args.md_steps}
        commands = {
            f"featurize {len(files)} structures": [py, "-m", "bpnn_jax", "featurize", str(subset), "--out",
                                                   "features.npz"],
            # The same, tracing every program again (the compilation cache alone): what the exported
            # programs save a warm process.
            f"featurize {len(files)} structures, BPNN_EXPORTED_PROGRAMS=0": [
                "env", "BPNN_EXPORTED_PROGRAMS=0", py, "-m", "bpnn_jax", "featurize", str(subset), "--out",
                "features.npz"],
            "evaluate tio2, one structure": [py, "-m", "bpnn_jax", "evaluate", "tio2", str(files[0])],
            "load_model(\"tio2\")": [py, "-c", "import bpnn_jax; bpnn_jax.load_model('tio2')"],
        }
        if importlib.util.find_spec("dscribe") is not None:
            from bpnn_jax.descriptors import SymmetryFunctionSet
            from dscribe_compare import acsf_params

            params = Path(tmp) / "acsf.json"
            params.write_text(json.dumps(acsf_params(SymmetryFunctionSet.artrith_urban(("O", "Ti")))))
            commands[f"DScribe ACSF whole process, {len(files)} structures (n_jobs=2)"] = [
                py, str(HERE / "dscribe_compare.py"), "--dscribe-process", str(params), str(subset), "2",
                "acsf.npy"]
        if "process" in parts:
            res["process"] = process_times(commands, args.repeats)
            write_results(res, out_dir, f"speed_suite_{args.tag}", markdown(res))
        if "dscribe" in parts:
            tag = f"{args.tag}-suite"
            cmd = [py, str(HERE / "dscribe_compare.py"), "--data", str(subset), "--subset", "0", "--dtypes",
                   "float32", "--n-jobs", "2", "--out-dir", str(out_dir), "--tag", tag]
            _run(cmd, dict(os.environ), HERE.parent)
            res["dscribe_compare"] = json.loads((out_dir / f"dscribe_compare_{tag}.json").read_text())
            write_results(res, out_dir, f"speed_suite_{args.tag}", markdown(res))
    if "md" in parts:
        res["md"] = {}
        for label, flag in (("every member's forces", "--member-forces"), ("forces of the mean only",
                                                                           "--no-member-forces")):
            tag = f"{args.tag}-suite{'' if flag == '--member-forces' else '-meanforces'}"
            cmd = [py, str(HERE / "md_inference.py"), "--sizes", args.md_sizes, "--steps", str(args.md_steps),
                   "--warmup", "1", "--max-seconds", "90", flag, "--out-dir", str(out_dir), "--tag", tag]
            _run(cmd, dict(os.environ), HERE.parent)
            res["md"][label] = json.loads((out_dir / f"md_inference_{tag}.json").read_text())
            write_results(res, out_dir, f"speed_suite_{args.tag}", markdown(res))
    log(f"wrote {out_dir / f'speed_suite_{args.tag}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
