"""Benchmark: symmetry functions of a whole XSF data set (default: all TiO2).

Usage::

    python benchmarks/featurize.py [DATA_DIR] [--limit N] [--sweep] [--no-grad]

DATA_DIR defaults to ``$BPNN_DATA_DIR`` or ``<repo>/../shared/data/tio2``.
Measures, for the Artrith-Urban set (70 functions):

* reading the XSF files and building the neighbour lists (host, NumPy/vesin),
* the batch shapes of :func:`bpnn_jax.descriptors.batch.plan_batches` (which merges
  rare shapes) and their padding waste,
* per dtype (float32, float64) and mode (forward: the SFs; gradient: the SFs
  and d/d(positions) of sum_i,f SF[i, f] * w[f] for a random w, one vjp),
  the compilation time (first call minus second call of one batch per
  shape, summed over shapes) and the steady-state time of a full pass with
  everything compiled (host collation included), in s and µs per atom,
* peak resident memory, machine, JAX device and versions.

``--sweep`` first times chunk_size x atoms_per_batch on a subset.  Results
go to ``benchmarks/results/featurize_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _machine() -> dict:
    import jax
    import jaxlib

    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = None
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "memory_gb": None if mem_gb is None else round(mem_gb, 1),
        "jax_backend": jax.default_backend(),
        "jax_device": str(dev),
        "jax_device_kind": getattr(dev, "device_kind", ""),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
    }


def _grad_function(spec, chunk_size: int):
    """jit(batch, w) -> (SFs (B, N, F), d sum(SF * w) / d positions (B, N, 3))."""
    import jax
    import jax.numpy as jnp

    from bpnn_jax.descriptors import batch_descriptors

    def f(batch, w):
        def sf(positions):
            return batch_descriptors(batch.replace(positions=positions), spec, chunk_size=chunk_size)

        g, vjp = jax.vjp(sf, batch.positions)
        (dpos,) = vjp(jnp.broadcast_to(w.astype(g.dtype), g.shape))
        return g, dpos

    return jax.jit(f)


def _block(x):
    import jax

    return jax.block_until_ready(x)


def _run_mode(compact, spec, *, dtype, chunk_size, atoms_per_batch, gradient: bool, repeats: int = 1) -> dict:
    """Compile timings per shape, then steady-state passes over all batches."""
    from bpnn_jax.descriptors.batch import collate, plan_batches
    from bpnn_jax.descriptors.featurize import descriptor_function, featurize

    plan = plan_batches(compact, atoms_per_batch)  # the plan featurize uses
    n_atoms = int(sum(s.n_atoms for s in compact))
    w = np.random.default_rng(0).normal(size=spec.n_functions)
    fn = _grad_function(spec, chunk_size) if gradient else descriptor_function(spec, chunk_size)

    def call(batch):
        return _block(fn(batch, w) if gradient else fn(batch))

    # Compilation: first call minus second call, one batch per shape.
    seen = {}
    compile_cpu = 0.0
    for members, b, n, slots in plan:
        key = (b, n, slots)
        if key in seen:
            continue
        batch = collate([compact[int(i)].host() for i in members], b, n, slots, dtype=dtype)
        t0, c0 = time.perf_counter(), time.process_time()
        call(batch)
        t1, c1 = time.perf_counter(), time.process_time()
        call(batch)
        t2, c2 = time.perf_counter(), time.process_time()
        seen[key] = max(0.0, (t1 - t0) - (t2 - t1))
        compile_cpu += max(0.0, (c1 - c0) - (c2 - c1))
    compile_s = float(sum(seen.values()))

    steady, steady_cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        if gradient:
            pending = None
            for members, b, n, slots in plan:
                batch = collate([compact[int(i)].host() for i in members], b, n, slots, dtype=dtype)
                out = fn(batch, w)
                if pending is not None:
                    [np.asarray(x) for x in pending]
                pending = out
            if pending is not None:
                [np.asarray(x) for x in pending]
        else:
            featurize(compact, spec, dtype=dtype, atoms_per_batch=atoms_per_batch, chunk_size=chunk_size)
        steady.append(time.perf_counter() - t0)
        steady_cpu.append(time.process_time() - c0)
    best = min(steady)
    return {
        "shapes": len(seen),
        "compile_s": round(compile_s, 2),
        "compile_cpu_s": round(compile_cpu, 2),
        "steady_cpu_s": round(min(steady_cpu), 2),
        "cpu_us_per_atom": round(min(steady_cpu) / n_atoms * 1e6, 1),
        "compile_s_per_shape": {f"B={k[0]} N={k[1]} slots={k[2]}": round(v, 2) for k, v in seen.items()},
        "steady_s": round(best, 2),
        "steady_runs_s": [round(x, 2) for x in steady],
        "us_per_atom": round(best / n_atoms * 1e6, 1),
        "atoms": n_atoms,
    }


def slot_cost(slots) -> int:
    """Work per padded atom: angular slot pairs (sum over a <= b of M_a M_b) + radial slots."""
    s = len(slots)
    return sum(slots[a] * slots[b] for a in range(s) for b in range(a, s)) + sum(slots)


def _padding(compact, atoms_per_batch: int, merge: bool) -> dict:
    """Padding of the batch plan, as fractions of the padded work that is waste."""
    from bpnn_jax.descriptors.batch import plan_batches

    seq = compact
    plan = plan_batches(seq, atoms_per_batch, merge_small=merge)
    real_atoms = real_pairs = real_cost = 0
    pad_atoms = pad_slots = pad_cost = 0
    for members, b, n, slots in plan:
        pad_atoms += b * n
        pad_slots += b * n * sum(slots)
        pad_cost += b * n * slot_cost(slots)
        for i in members:
            s = seq[int(i)]
            real_atoms += s.n_atoms
            real_pairs += int(s.counts.sum())
            # Per-element neighbour counts per atom -> pair work actually needed.
            c = np.zeros((s.n_atoms, len(slots)), np.int64)
            centers = np.repeat(np.arange(s.n_atoms), s.counts)
            np.add.at(c, (centers, s.species[s.neighbors]), 1)
            for a in range(len(slots)):
                for bb in range(a, len(slots)):
                    real_cost += int(np.sum(c[:, a] * c[:, bb]))
            real_cost += int(c.sum())
    return {
        "shapes": len({(b, n, s) for _, b, n, s in plan}),
        "batches": len(plan),
        "atom_waste": round(1 - real_atoms / pad_atoms, 4),
        "slot_waste": round(1 - real_pairs / pad_slots, 4),
        "pair_work_waste": round(1 - real_cost / pad_cost, 4),
    }


def _sweep(compact, spec, chunks, apbs, repeats: int) -> list[dict]:
    rows = []
    for apb in apbs:
        for chunk in chunks:
            r = _run_mode(
                compact, spec, dtype=np.float64, chunk_size=chunk, atoms_per_batch=apb, gradient=False, repeats=repeats
            )
            keys = ("shapes", "compile_s", "steady_s", "us_per_atom", "steady_cpu_s", "cpu_us_per_atom")
            row = {"atoms_per_batch": apb, "chunk_size": chunk, **{k: r[k] for k in keys}}
            print(f"  sweep apb={apb:4d} chunk={chunk:3d}: {row}", flush=True)
            rows.append(row)
    return rows


def _markdown(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    t = res["timings"]
    lines = [
        f"# Featurisation benchmark ({res['device']})",
        "",
        f"{res['date']} · {res['n_structures']} structures, {res['n_atoms']} atoms from `{res['data_dir']}` · "
        f"{s['n_functions']} Artrith-Urban functions · chunk_size={s['chunk_size']}, "
        f"atoms_per_batch={s['atoms_per_batch']}",
        "",
        f"Machine: {m['cpu_model']}, {m['nproc']} cores, {m['memory_gb']} GB; {m['platform']}; "
        f"JAX {m['jax_version']} / jaxlib {m['jaxlib_version']} on `{m['jax_device']}`.",
        "",
        "Modes: *forward* = the SFs; *gradient* = the SFs and d(sum_i,f SF[i,f] w[f])/d(positions) (one VJP). "
        "compile = first minus second call of one batch per shape, summed; steady = a full pass with everything "
        "compiled (host collation included), best of the passes; µs/atom = steady / real atoms. CPU = process "
        "CPU time (all threads).",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| read XSF | {t['read_s']} |",
        f"| neighbour lists (+ compaction) | {t['neighbor_list_s']} |",
        "",
        "| dtype | mode | shapes | compile s | steady s | µs/atom | steady CPU s | CPU µs/atom |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dtype, modes in res["results"].items():
        for mode, r in modes.items():
            lines.append(
                f"| {dtype} | {mode} | {r['shapes']} | {r['compile_s']} | {r['steady_s']} | {r['us_per_atom']} | "
                f"{r['steady_cpu_s']} | {r['cpu_us_per_atom']} |"
            )
    p, pu = res["padding"]["merged"], res["padding"]["unmerged"]
    lines += [
        "",
        "Padding (fraction of the padded work that is waste): "
        f"atoms {p['atom_waste']:.1%}, neighbour slots {p['slot_waste']:.1%}, "
        f"angular pair work {p['pair_work_waste']:.1%}; {p['shapes']} shapes in {p['batches']} batches "
        f"(plan_batches(merge_small=False): {pu['shapes']} shapes, {pu['batches']} batches, slots {pu['slot_waste']:.1%}, "
        f"pair work {pu['pair_work_waste']:.1%}).",
        "",
        f"Peak RSS: {res['peak_rss_mb']:.0f} MB (after neighbour lists: {res['rss_after_nl_mb']:.0f} MB).",
    ]
    if res.get("sweep"):
        lines += ["", "Sweep (float64 forward, subset of "
                  f"{res['sweep_structures']} structures):", "",
                  "| atoms_per_batch | chunk_size | shapes | compile s | steady s | µs/atom |", "|---|---|---|---|---|---|"]
        for r in res["sweep"]:
            lines.append(
                f"| {r['atoms_per_batch']} | {r['chunk_size']} | {r['shapes']} | {r['compile_s']} | "
                f"{r['steady_s']} | {r['us_per_atom']} |"
            )
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"* {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    default_dir = os.environ.get("BPNN_DATA_DIR", str(REPO.parent / "shared" / "data" / "tio2"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", nargs="?", default=default_dir, help=f"XSF directory (default {default_dir})")
    ap.add_argument("--limit", type=int, default=None, help="only the first N files (quick trials)")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--no-grad", action="store_true", help="skip the gradient runs")
    ap.add_argument("--chunk-size", type=int, default=None, help="default: bpnn_jax.descriptors.featurize's")
    ap.add_argument("--atoms-per-batch", type=int, default=None, help="default: bpnn_jax.descriptors.featurize's")
    ap.add_argument("--repeats", type=int, default=1, help="steady-state passes per mode (best is reported)")
    ap.add_argument("--sweep", action="store_true", help="time chunk_size x atoms_per_batch on a subset first")
    ap.add_argument(
        "--sweep-only", action="store_true",
        help="only the sweep, on every k-th file; writes featurize_<device>_sweep.json/.md",
    )
    ap.add_argument("--sweep-structures", type=int, default=400, help="subset size of the sweep (every k-th file)")
    ap.add_argument("--device-name", default=None, help="suffix of the result files (default: JAX backend)")
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--note", action="append", default=[], help="note to add to the results (repeatable)")
    args = ap.parse_args(argv)

    import jax

    from bpnn_jax.descriptors import SymmetryFunctionSet  # imports bpnn_jax first (x64)
    from bpnn_jax.descriptors.featurize import (
        DEFAULT_ATOMS_PER_BATCH,
        DEFAULT_CHUNK_SIZE,
        prepare_compact,
    )
    from bpnn_jax.io import find_xsf_files, read_structures

    chunk = args.chunk_size or DEFAULT_CHUNK_SIZE
    apb = args.atoms_per_batch or DEFAULT_ATOMS_PER_BATCH
    device = args.device_name or jax.default_backend()
    spec = SymmetryFunctionSet.artrith_urban()
    load_start = os.getloadavg()

    files = find_xsf_files(args.data_dir)
    if args.limit:
        files = files[: args.limit]
    if args.sweep_only:
        files = files[:: max(1, len(files) // args.sweep_structures)]
        args.sweep = True
    t0 = time.perf_counter()
    atoms, _ = read_structures(files)
    read_s = time.perf_counter() - t0
    print(f"read {len(atoms)} structures in {read_s:.1f} s", flush=True)

    t0 = time.perf_counter()
    compact = prepare_compact(atoms, spec)
    nl_s = time.perf_counter() - t0
    rss_nl = _rss_mb()
    n_atoms = int(sum(s.n_atoms for s in compact))
    print(f"neighbour lists in {nl_s:.1f} s ({n_atoms} atoms), peak RSS {rss_nl:.0f} MB", flush=True)

    res: dict = {
        "benchmark": "featurize",
        "device": device,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "data_dir": str(args.data_dir),
        "n_structures": len(compact),
        "n_atoms": n_atoms,
        "settings": {
            "preset": "artrith-urban",
            "n_functions": spec.n_functions,
            "chunk_size": chunk,
            "atoms_per_batch": apb,
        },
        "machine": _machine(),
        "timings": {"read_s": round(read_s, 2), "neighbor_list_s": round(nl_s, 2)},
    }

    if args.sweep:
        subset = compact[:: max(1, len(compact) // args.sweep_structures)]
        res["sweep_structures"] = len(subset)
        print(f"sweep on {len(subset)} structures", flush=True)
        res["sweep"] = _sweep(subset, spec, (4, 8, 16), (128, 256, 512), max(2, args.repeats))

    if args.sweep_only:
        best = min(res["sweep"], key=lambda r: r["steady_cpu_s"])
        res["sweep_best"] = best
        res["peak_rss_mb"] = round(_rss_mb(), 1)
        res["load_average_start"] = [round(x, 2) for x in load_start]
        res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        res["notes"] = list(args.note)
        _write(res, Path(args.out_dir) / f"featurize_{device}_sweep", _sweep_markdown(res))
        return 0

    res["padding"] = {"merged": _padding(compact, apb, True), "unmerged": _padding(compact, apb, False)}
    print(f"padding: {res['padding']}", flush=True)

    res["results"] = {}
    for name in args.dtypes.split(","):
        dtype = np.dtype(name.strip())
        res["results"][dtype.name] = {}
        modes = [False] if args.no_grad else [False, True]
        for gradient in modes:
            mode = "gradient" if gradient else "forward"
            r = _run_mode(
                compact, spec, dtype=dtype, chunk_size=chunk, atoms_per_batch=apb, gradient=gradient,
                repeats=args.repeats,
            )
            res["results"][dtype.name][mode] = r
            print(f"{dtype.name} {mode}: {json.dumps({k: v for k, v in r.items() if k != 'compile_s_per_shape'})}", flush=True)

    res["peak_rss_mb"] = round(_rss_mb(), 1)
    res["rss_after_nl_mb"] = round(rss_nl, 1)
    res["load_average_start"] = [round(x, 2) for x in load_start]
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    res["notes"] = list(args.note)
    _write(res, Path(args.out_dir) / f"featurize_{device}", _markdown(res))
    return 0


def _write(res: dict, stem: Path, markdown: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown)
    print(f"wrote {stem}.json and {stem}.md", flush=True)


def _sweep_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Featurisation sweep ({res['device']}): chunk_size x atoms_per_batch",
        "",
        f"{res['date']} · float64 forward pass · {res['n_structures']} structures ({res['n_atoms']} atoms), "
        f"every k-th file of `{res['data_dir']}` · {m['cpu_model']}, {m['nproc']} cores · "
        f"JAX {m['jax_version']} on `{m['jax_device']}` · load average {res['load_average_start']} -> "
        f"{res['load_average_end']}",
        "",
        "| atoms_per_batch | chunk_size | shapes | compile s | steady s (wall) | µs/atom (wall) | steady CPU s | CPU µs/atom |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["sweep"]:
        lines.append(
            f"| {r['atoms_per_batch']} | {r['chunk_size']} | {r['shapes']} | {r['compile_s']} | "
            f"{r['steady_s']} | {r['us_per_atom']} | {r['steady_cpu_s']} | {r['cpu_us_per_atom']} |"
        )
    b = res["sweep_best"]
    lines += [
        "",
        "Steady times are the best of several passes; CPU time (user + system of this process, all threads) "
        "is less sensitive than wall time to the other jobs on the machine.",
        "",
        f"Lowest steady CPU time: atoms_per_batch={b['atoms_per_batch']}, chunk_size={b['chunk_size']}.",
    ]
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"* {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
