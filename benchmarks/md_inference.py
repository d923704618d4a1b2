"""Benchmark: time per MD step of the ASE calculator on rutile supercells.

Usage::

    python benchmarks/md_inference.py [--sizes 100,1000,10000] [--steps 20]
                                      [--model NAME|FILE.keras] [--out-dir DIR] [--tag TAG]

``bpnn_jax.BPNNCalculator(bpnn_jax.load_model("tio2"))`` (or ``--model``) on rutile TiO2
(a = 4.594 Å, c = 2.959 Å, u = 0.305) repeated to about each requested
number of atoms, as close to cubic as the repeats allow.  Every step moves
all atoms to new random positions about the lattice sites (Gaussian,
``--amplitude`` Å per component, well under half the 0.5 Å skin), as
thermal vibrations in MD do, and asks for energy, forces and stress (one
evaluation gives all three).  The neighbour list is then built once and
reused, as in MD.

Per size, after warm-up steps:

* ms per step and µs per atom per step (all atoms real; the padded atom
  count of the compiled shape is also given);
* the split of a step: the compiled JAX function alone (energy, forces,
  stress and symmetry functions, timed directly with the step's inputs)
  and the host side (ASE, copying positions in and results out, the
  extrapolation check);
* a neighbour-list build, timed separately: the search (vesin) and the
  padding into dense tensors; MD pays it once per rebuild (every few
  hundred steps at 300 K with a 0.5 Å skin), so a step that rebuilds costs
  step + build;
* the forward cost: the model's energy alone (descriptors and networks, no
  derivatives), compiled on the same padded inputs, and the ratio of the
  step's compiled function (energy, forces, stress) to it;
* the first call (neighbour list, compilation and one evaluation).

Writes ``<out-dir>/md_inference_<tag>.json`` and ``.md`` (after each size,
so a run cut short keeps what it measured).  ``--data`` is accepted for a
uniform command line and not used.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    add_common_args,
    default_tag,
    device_peak_memory_mb,
    fmt,
    footer,
    log,
    machine_line,
    new_result,
    record_error,
    rss_peak_mb,
    write_results,
)

A, C, U = 4.594, 2.959, 0.305


def rutile_repeats(target: int) -> tuple[int, int, int]:
    """Repeats (na, na, nc) of the 6-atom rutile cell: about ``target`` atoms, close to cubic.

    Sizes are scored by the padding of the atom-bucket ladder (x1.5 steps
    beyond 256: 9600 atoms pad to 10080 there, 10200 to 15136), which the
    calculator used when these sizes were chosen; it now pads with
    :func:`bpnn_jax.calculators.ase.calculator_padding` (9600 atoms: none), but
    the score is kept so that the sizes, and the committed results, stay
    comparable (the calculator's padding would choose 10 x 10 x 17 for 10 k).
    """
    from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, bucket_size

    best = None
    for na in range(1, 80):
        for nc in range(1, 120):
            n = 6 * na * na * nc
            if n > 4 * target:
                break
            score = (abs(math.log(n / target)) + 0.3 * abs(math.log(na * A / (nc * C)))
                     + 0.5 * math.log(bucket_size(n, ATOM_BUCKETS) / n))
            if best is None or score < best[0]:
                best = (score, (na, na, nc))
    return best[1]


def rutile(repeats):
    """Rutile TiO2 repeated (na, na, nc) times (ase.Atoms)."""
    from ase import Atoms

    frac = [(0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (U, U, 0.0), (1 - U, 1 - U, 0.0), (0.5 + U, 0.5 - U, 0.5),
            (0.5 - U, 0.5 + U, 0.5)]
    cell = Atoms("Ti2O4", scaled_positions=frac, cell=[A, A, C], pbc=True)
    return cell.repeat(repeats)


def _median(xs):
    return statistics.median(xs) if xs else None


def run_size(model, target: int, args, rng) -> dict:
    import jax

    from bpnn_jax import BPNNCalculator
    from bpnn_jax.calculators.ase import calculator_padding, calculator_slots
    from bpnn_jax.descriptors.batch import HostStructure, collate
    from bpnn_jax.descriptors.neighbors import neighbor_list

    reps = rutile_repeats(target)
    atoms = rutile(reps)
    n = len(atoms)
    ref = atoms.positions.copy()
    calc = BPNNCalculator(model, skin=args.skin, warn_extrapolation=False, member_forces=args.member_forces)
    atoms.calc = calc
    row = {"target": target, "repeats": list(reps), "n_atoms": n, "cell_A": [round(x, 3) for x in atoms.cell.lengths()]}
    log(f"size {target}: rutile {reps[0]}x{reps[1]}x{reps[2]} = {n} atoms")

    # Time the compiled function inside each step: wrap the calculator's
    # (private) evaluation function.  Optional: without it, no model/host split.
    model_times: list[float] = []
    try:
        inner = calc._fn

        def timed_fn(*a, **k):
            t0 = time.perf_counter()
            out = jax.block_until_ready(inner(*a, **k))
            model_times.append(time.perf_counter() - t0)
            return out

        calc._fn = timed_fn
    except AttributeError as exc:
        row["model_split_error"] = f"{type(exc).__name__}: {exc}"

    def step():
        atoms.positions = ref + rng.normal(0.0, args.amplitude, ref.shape)
        t0, c0 = time.perf_counter(), time.process_time()
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()
        return time.perf_counter() - t0, time.process_time() - c0

    row["first_call_s"] = round(step()[0], 3)
    row["padded_shape"] = [list(s[:2]) + [list(s[2])] for s in sorted(calc.compiled_shapes)]
    log(f"  first call (neighbour list + compile + run): {row['first_call_s']} s; shape {row['padded_shape']}")
    for _ in range(args.warmup):
        step()
    builds0 = calc.nl_builds
    del model_times[:]
    times, cpu = [], []
    t_start = time.perf_counter()
    while len(times) < args.steps and (len(times) < 2 or time.perf_counter() - t_start < args.max_seconds):
        w, c = step()
        times.append(w)
        cpu.append(c)
    row["steps_timed"] = len(times)
    row["nl_rebuilds_during_steps"] = calc.nl_builds - builds0
    row["step_ms"] = round(1e3 * _median(times), 2)
    row["step_ms_mean"] = round(1e3 * statistics.mean(times), 2)
    row["step_ms_min"] = round(1e3 * min(times), 2)
    row["step_cpu_ms"] = round(1e3 * _median(cpu), 2)
    row["us_per_atom_step"] = round(1e6 * _median(times) / n, 2)
    row["cpu_us_per_atom_step"] = round(1e6 * _median(cpu) / n, 2)
    n_pad = row["padded_shape"][0][1] if row["padded_shape"] else None
    row["padded_atoms"] = n_pad
    if n_pad:
        row["us_per_padded_atom_step"] = round(1e6 * _median(times) / n_pad, 2)
        row["cpu_us_per_padded_atom_step"] = round(1e6 * _median(cpu) / n_pad, 2)
    row["compile_s"] = round(max(0.0, row["first_call_s"] - _median(times)), 2)
    if len(model_times) == len(times):
        host = [w - m for w, m in zip(times, model_times)]
        row["model_ms"] = round(1e3 * _median(model_times), 2)
        row["host_ms"] = round(1e3 * _median(host), 2)
        row["model_us_per_atom"] = round(1e6 * _median(model_times) / n, 2)
    log(f"  {len(times)} steps: median {row['step_ms']} ms/step = {row['us_per_atom_step']} µs/atom/step "
        f"(CPU {row['step_cpu_ms']} ms/step; model {row.get('model_ms')} ms, host {row.get('host_ms')} ms; "
        f"{row['nl_rebuilds_during_steps']} neighbour-list rebuilds)")

    # A neighbour-list build, as the calculator does it: search, then padding.
    inputs = None
    try:
        species = calc._species(atoms)
        search, pad = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, calc.cutoff + calc.skin)
            t1 = time.perf_counter()
            slots = calculator_slots(nl, species, len(model.elements))
            host = HostStructure("bench", np.array(atoms.positions), np.array(atoms.cell.array), species, nl, slots)
            inputs = collate([host], 1, calculator_padding(n), slots, dtype=calc.dtype).inputs(model.elements)
            t2 = time.perf_counter()
            search.append(t1 - t0)
            pad.append(t2 - t1)
        row["nl_search_ms"] = round(1e3 * min(search), 2)
        row["nl_pad_ms"] = round(1e3 * min(pad), 2)
        row["nl_build_ms"] = round(row["nl_search_ms"] + row["nl_pad_ms"], 2)
        row["nl_pairs"] = int(len(nl.centers))
        row["slots"] = list(slots)
        row["step_with_rebuild_ms"] = round(row["step_ms"] + row["nl_build_ms"], 2)
        log(f"  neighbour list (Rc + skin = {calc.cutoff + calc.skin} Å): search {row['nl_search_ms']} ms + "
            f"padding {row['nl_pad_ms']} ms, {row['nl_pairs']} pairs, slots {row['slots']}")
    except Exception as exc:
        row["nl_error"] = f"{type(exc).__name__}: {exc}"
        log(f"  neighbour-list timing failed: {row['nl_error']}")
    try:
        if inputs is None:
            raise RuntimeError("no padded inputs (the neighbour-list build failed)")
        row.update(forward_cost(model, inputs, n, step_fn=inner if "model_split_error" not in row else None,
                                step_values=[v.value for v in calc._variables], repeats=args.forward_repeats))
        if row.get("model_ms"):
            row["model_over_forward_separate"] = round(row["model_ms"] / row["forward_ms"], 2)
        log(f"  forward (energy only): {row['forward_ms']} ms = {row['forward_us_per_atom']} µs/atom; "
            f"step / forward = {row.get('step_over_forward')} (interleaved; "
            f"range {row.get('step_over_forward_min')}-{row.get('step_over_forward_max')}), "
            f"{row.get('model_over_forward_separate')} from the MD steps")
    except Exception as exc:
        row["forward_error"] = f"{type(exc).__name__}: {exc}"
        log(f"  forward timing failed: {row['forward_error']}")
    row["energy_ev_atom"] = round(float(atoms.get_potential_energy()) / n, 5)
    row["max_force_ev_a"] = round(float(np.abs(atoms.get_forces()).max()), 4)
    return row


def forward_cost(model, inputs, n_atoms: int, repeats: int = 5, step_fn=None, step_values=None) -> dict:
    """Median time of the model's energy alone on the calculator's padded ``inputs``.

    The energies (descriptors and every member's network, no derivatives) as
    one compiled function of positions and cell, the weights passed as
    arguments (as the calculator does), on the neighbour list at Rc + skin
    that the neighbour-list timing built.  With ``step_fn`` (the
    calculator's compiled step: energy, forces, stress) the two are timed
    alternately, ``repeats`` times each, and ``step_over_forward`` is the
    median of the ratios of neighbouring calls: a shared machine's speed
    drifts by tens of per cent over minutes, and timing the two at
    different moments made that drift part of the ratio.
    """
    import jax
    import keras

    variables = list(model.variables)

    @jax.jit
    def energy(values, positions, cell, inputs):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return model.structure_energies(positions, cell, inputs)

    values = [v.value for v in variables]
    args = (values, inputs["positions"], inputs["cell"], inputs)
    step_args = None if step_fn is None else (step_values, inputs["positions"], inputs["cell"], inputs)
    jax.block_until_ready(energy(*args))
    if step_args is not None:
        jax.block_until_ready(step_fn(*step_args))
    times, step_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(energy(*args))
        times.append(time.perf_counter() - t0)
        if step_args is not None:
            t0 = time.perf_counter()
            jax.block_until_ready(step_fn(*step_args))
            step_times.append(time.perf_counter() - t0)
    t = _median(times)
    out = {"forward_ms": round(1e3 * t, 2), "forward_us_per_atom": round(1e6 * t / n_atoms, 2),
           "forward_repeats": repeats}
    if step_times:
        ratios = [s / f for s, f in zip(step_times, times)]
        out.update(step_fn_ms_interleaved=round(1e3 * _median(step_times), 2),
                   step_over_forward=round(_median(ratios), 2),
                   step_over_forward_min=round(min(ratios), 2), step_over_forward_max=round(max(ratios), 2))
    return out


def ratio_range(r: dict) -> str:
    lo, hi = r.get("step_over_forward_min"), r.get("step_over_forward_max")
    return "" if lo is None else f" ({fmt(lo)}–{fmt(hi)})"


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [
        f"# MD step benchmark: BPNNCalculator on rutile ({res['tag']})",
        "",
        f"{res['date']} · model `{s.get('model', 'tio2')}` ({s.get('descriptor', 'shipped')}) · "
        f"energy + forces + stress per step"
        f"{'' if s.get('member_forces', True) else ' (forces of the committee mean only: member_forces=False)'} · "
        f"skin {s['skin']} Å · "
        f"random displacements σ = {s['amplitude']} Å per step about the lattice sites · {s['warmup']} warm-up "
        f"steps, then up to {s['steps']} timed steps (median reported)",
        "",
        machine_line(res),
        "",
        "| atoms | repeats | padded N | ms/step | µs/atom/step | CPU µs/atom/step | CPU µs/padded atom/step | "
        "model ms | host ms | forward ms (energy only) | model / forward (range) | "
        "neighbour list ms (search + padding) | step with rebuild ms | rebuilds in timed steps | first call s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["sizes"]:
        if "error" in r:
            lines.append(f"| ~{r['target']} | — | — | failed: {r['error']} | | | | | | | | | | | |")
            continue
        nl = (f"{fmt(r.get('nl_build_ms'))} ({fmt(r.get('nl_search_ms'))} + {fmt(r.get('nl_pad_ms'))})"
              if "nl_build_ms" in r else "—")
        lines.append(
            f"| {r['n_atoms']} | {'×'.join(map(str, r['repeats']))} | {r.get('padded_atoms')} | {fmt(r['step_ms'])} | "
            f"{fmt(r['us_per_atom_step'])} | {fmt(r.get('cpu_us_per_atom_step'))} | "
            f"{fmt(r.get('cpu_us_per_padded_atom_step'))} | {fmt(r.get('model_ms'))} | {fmt(r.get('host_ms'))} | "
            f"{fmt(r.get('forward_ms'))} | {fmt(r.get('step_over_forward'))}{ratio_range(r)} | {nl} | "
            f"{fmt(r.get('step_with_rebuild_ms'))} | {r['nl_rebuilds_during_steps']} of {r['steps_timed']} | "
            f"{fmt(r['first_call_s'])} |"
        )
    sc = res.get("scaling_largest_over_smallest")
    if sc:
        labels = {"us_per_atom_step": "wall per atom", "cpu_us_per_atom_step": "CPU per atom",
                  "us_per_padded_atom_step": "wall per padded atom", "cpu_us_per_padded_atom_step": "CPU per padded atom"}
        lines += ["", "Cost per atom and step, largest size / smallest size (1 = linear scaling): " + ", ".join(
            f"{labels.get(k, k)} {v}" for k, v in sc.items()) + "."]
    lines += [
        "",
        "Medians over the timed steps. CPU = process CPU time (all threads), less sensitive than wall time to "
        "other jobs on a shared machine. model = the compiled JAX function inside each step, waited for "
        "(energy, forces and stress by one reverse pass, plus the symmetry functions for the extrapolation "
        "check); host = step − model (ASE, copies in and out, extrapolation check); forward = the model's "
        "energy alone (descriptors and networks, no derivatives) compiled on the same padded inputs; "
        "model / forward = the cost of energy, forces and stress over the energy alone: the median ratio of "
        "alternate calls of the two compiled functions on the same inputs (range over the pairs; older files: "
        "the MD steps' model time over a separate timing of the energy). Neighbour list = a build "
        "as the calculator does it (vesin search at Rc + skin, then padding into dense slot tensors); MD pays "
        "it only when an atom has moved more than skin/2. "
        "first call = neighbour list + compilation + one step. Atoms are padded to the next size of the atom "
        "ladder (padded N), and the padded atoms cost time too.",
    ]
    lines += footer(res)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--sizes", default="100,1000,10000", help="approximate atom counts, comma-separated")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per size (default 20)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call (default 2)")
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="stop timing a size after this many seconds (at least 2 steps; default 120)")
    ap.add_argument("--amplitude", type=float, default=0.02, help="σ of the random displacements, Å (default 0.02)")
    ap.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin, Å (the calculator's default 0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forward-repeats", type=int, default=9,
                    help="alternate calls of the energy alone and of the step's function, each (default 9)")
    ap.add_argument("--model", default="tio2", help="a shipped model's name or a .keras path (default tio2)")
    ap.add_argument("--member-forces", action=argparse.BooleanOptionalAction, default=True,
                    help="a committee's per-member forces (forces_std; the calculator's default) or, with "
                         "--no-member-forces, the forces of the mean energy only (one backward pass)")
    args = ap.parse_args(argv)
    sizes = [int(float(x)) for x in args.sizes.split(",") if x.strip()]

    import bpnn_jax

    args.tag = args.tag or default_tag()
    model = bpnn_jax.load_model(args.model)
    dtype = str(np.dtype(model.compute_dtype or "float32"))
    res = new_result("md_inference", args, dtype)
    res["settings"] = {"sizes": sizes, "steps": args.steps, "warmup": args.warmup, "max_seconds": args.max_seconds,
                       "amplitude": args.amplitude, "skin": args.skin, "seed": args.seed,
                       "member_forces": args.member_forces, "model": args.model,
                       "descriptor": model.spec.describe(),
                       "structure": f"rutile a={A} c={C} u={U}"}
    res["sizes"] = []
    log(f"MD step benchmark on {res['machine']['device']} ({res['machine']['device_kind']}), sizes {sizes}")
    rng = np.random.default_rng(args.seed)
    stem = f"md_inference_{args.tag}"
    for target in sizes:
        try:
            res["sizes"].append(run_size(model, target, args, rng))
        except KeyboardInterrupt:  # e.g. `timeout -s INT`: keep the sizes already measured
            res["errors"].append(f"interrupted (SIGINT) during size {target}")
            log(f"interrupted during size {target}: writing what was measured")
            write_results(res, args.out_dir, stem, markdown(res))
            break
        except Exception as exc:  # e.g. out of memory at the largest size: keep the others
            record_error(res, f"size {target}", exc)
            res["sizes"].append({"target": target, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        res["peak_rss_mb"] = rss_peak_mb()
        res["peak_device_memory_mb"] = device_peak_memory_mb()
        write_results(res, args.out_dir, stem, markdown(res))
    ok = [r for r in res["sizes"] if "error" not in r]
    if len(ok) >= 2:
        # Linear scaling: µs/atom/step of the largest vs the smallest size.
        res["scaling_largest_over_smallest"] = {
            key: round(ok[-1][key] / ok[0][key], 3)
            for key in ("us_per_atom_step", "cpu_us_per_atom_step", "us_per_padded_atom_step",
                        "cpu_us_per_padded_atom_step")
            if ok[-1].get(key) and ok[0].get(key)
        }
        write_results(res, args.out_dir, stem, markdown(res))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
