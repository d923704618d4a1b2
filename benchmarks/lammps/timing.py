"""Time per MD step: n2p2 in LAMMPS (1 and 2 MPI ranks) against bpnn_jax's ASE calculator, the same potential.

Usage::

    python benchmarks/lammps/timing.py [--sizes 96,1050,9600] [--lammps-seconds 60] [--calc-steps 5]
                                       [--parts lammps,float32,float64] [--out-dir DIR]

The potential is the shipped tio2 committee's members 1-5 (Imbalzano functions, 5 x 128 x 128 tanh) with its
pair baseline: in LAMMPS the ``export-n2p2 tio2 --members 1-5`` files (``pair_style hybrid/overlay hdnnp
... table linear 2000``); in bpnn_jax ``select_members(load_model("tio2", dtype), range(5))`` under
``BPNNCalculator`` (energy and forces).

* LAMMPS: rutile (``benchmarks/md_inference.py``'s cell) at 300 K, NVE, 1 fs; a warm-up run, then a timed
  run; µs/atom/step from the timed run's ``Loop time`` (all of LAMMPS: pair, neighbour lists,
  communication).  Steps are chosen from the warm-up's cost so that the timed run takes about
  ``--lammps-seconds``.
* bpnn_jax: as ``benchmarks/md_inference.py`` times a step (all atoms moved to new random positions about
  their sites, 0.02 Å, so the neighbour list is reused as in MD; energy and forces asked for), after one
  warm-up step (compilation); the median of ``--calc-steps`` steps.

The load average (``uptime``) is recorded before each measurement. Writes
``<out-dir>/n2p2_vs_bpnn_cpu.json`` and ``.md`` after each measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "benchmarks"))
import lammps_io
from bench_common import add_common_args, log, machine_line, new_result, write_results
from md_rutile import lscpu, uptime

REPEATS = {96: (2, 2, 4), 1050: (5, 5, 7), 9600: (10, 10, 16)}


def _load() -> str:
    return uptime().split("load average:")[-1].strip()


#: Rough cost of n2p2 per atom and step on this machine (µs), per exported member set: sizes the timed runs.
#: n2p2 forms dE/dG forward, one pass over the network per input function, so its cost grows as functions x
#: width^2: the 5-member committee as one 96 x 640 x 640 network costs ~20x one member (96 x 128 x 128).
EST_US = {"1-5": 45000.0, "1": 2500.0}
#: The same for a committee exported member by member (``export-n2p2 --separate-members``).
EST_US_SEPARATE = 2500.0


def lammps_timing(work: Path, n_target: int, nprocs: int, seconds: float, max_seconds: float, export: Path,
                  members: str, separate: bool = False) -> dict:
    from md_inference import rutile

    reps = REPEATS[n_target]
    atoms = rutile(reps)
    n = len(atoms)
    k = len(parse_members(members))
    per_atom = EST_US_SEPARATE * k if separate else EST_US.get(members, 45000.0)
    est = n * per_atom * 1e-6 / nprocs  # s/step
    code = "n2p2 in LAMMPS, member by member" if separate and k > 1 else "n2p2 in LAMMPS"
    row = {"code": code, "members": members, "ranks": nprocs, "n_atoms": n, "repeats": list(reps)}
    if 3 * est > max_seconds:
        row.update(skipped=f"predicted {est:.0f} s/step: 1 warm-up + 2 timed steps exceed {max_seconds:g} s")
        log(f"LAMMPS {n} atoms, {nprocs} rank(s), members {members}: skipped ({row['skipped']})")
        return row
    timed = int(max(2, min(300, round(seconds / est))))
    warm = 1 if est > 2 else max(1, min(20, timed // 5))
    wd = work / f"m{members}{'s' if separate else ''}_n{n}_np{nprocs}"
    wd.mkdir(parents=True, exist_ok=True)
    lammps_io.write_data(atoms, wd / "data.lmp", ["O", "Ti"])
    pair = [line for line in (export / "lammps.in.snippet").read_text().splitlines() if not line.startswith("#")]
    deck = "\n".join(["units metal", "atom_style atomic", "boundary p p p", "read_data data.lmp", *pair,
                      "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
                      "velocity all create 300.0 4928459 mom yes rot yes dist gaussian loop geom",
                      "timestep 0.001", "fix nve all nve", "thermo_style custom step temp pe etotal",
                      "thermo 1000", f"run {warm}", f"run {timed}", ""])
    load = _load()
    log(f"LAMMPS {n} atoms, {nprocs} rank(s), members {members}: warm-up {warm}, timed {timed} steps "
        f"(~{est:.2f} s/step expected); load {load}")
    text = lammps_io.run_lammps(deck, wd, nprocs=nprocs, log_name="log.timing")
    loop_s, _, steps, atoms_n = lammps_io.loop_time(text)[-1]
    row.update(steps_timed=steps, warmup_steps=warm, loop_s=loop_s, ms_per_step=1e3 * loop_s / steps,
               us_per_atom_step=1e6 * loop_s / steps / atoms_n, load_before=load, load_after=_load())
    pair_pct = [line for line in text.splitlines() if line.startswith("Pair  ")]
    if pair_pct:
        row["pair_percent"] = float(pair_pct[-1].split("|")[-1])
    log(f"  {row['us_per_atom_step']:.1f} µs/atom/step ({row['ms_per_step']:.1f} ms/step, {steps} steps)")
    return row


def parse_members(text: str) -> list[int]:
    """'1-5' -> [0, 1, 2, 3, 4] (0-based), '1' -> [0]."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a) - 1, int(b or a)))
    return out


def calculator_timing(n_target: int, dtype: str, steps: int, max_seconds: float, members: str) -> dict:
    from md_inference import rutile

    from bpnn_jax.calculators.ase import BPNNCalculator
    from bpnn_jax.model import load_model
    from bpnn_jax.model.ensemble import select_members

    model = select_members(load_model("tio2", dtype=dtype), parse_members(members))
    assert model.repulsion is not None
    atoms = rutile(REPEATS[n_target])
    n = len(atoms)
    calc = BPNNCalculator(model, dtype=dtype, warn_extrapolation=False)
    atoms.calc = calc
    ref = atoms.positions.copy()
    rng = np.random.default_rng(0)

    def step():
        atoms.positions = ref + rng.normal(0.0, 0.02, ref.shape)
        t0 = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        return time.perf_counter() - t0

    load = _load()
    log(f"BPNNCalculator {dtype}, {n} atoms, members {members}; load {load}")
    first = step()
    times = []
    t_start = time.perf_counter()
    while len(times) < steps and (len(times) < 2 or time.perf_counter() - t_start < max_seconds):
        times.append(step())
    med = statistics.median(times)
    row = {"code": f"bpnn_jax BPNNCalculator {dtype}", "members": members, "ranks": None, "n_atoms": n, "repeats": list(REPEATS[n_target]),
           "steps_timed": len(times), "first_step_s": first, "ms_per_step": 1e3 * med,
           "ms_per_step_min": 1e3 * min(times), "us_per_atom_step": 1e6 * med / n,
           "nl_rebuilds": calc.nl_builds, "load_before": load, "load_after": _load()}
    log(f"  {row['us_per_atom_step']:.1f} µs/atom/step ({row['ms_per_step']:.1f} ms/step median of {len(times)})")
    return row


def _label(code, members, ranks) -> str:
    what = "tio2 members " + members if "-" in members or "," in members else "tio2 member " + members
    return f"{code}, {ranks} MPI rank{'s' if ranks != 1 else ''}, {what}" if ranks else f"{code}, {what}"


def markdown(res: dict) -> str:
    rows = res["rows"]
    sizes = sorted({r["n_atoms"] for r in rows})
    keys = []
    for r in rows:
        key = (r["code"], r["members"], r["ranks"])
        if key not in keys:
            keys.append(key)
    keys.sort(key=lambda k: (k[1] != "1-5", k[0].startswith("bpnn"), k[0], k[2] or 0))
    lines = [
        "# Time per MD step: n2p2 in LAMMPS against bpnn_jax's calculator (CPU)",
        "",
        ("The same potential: the shipped `tio2` committee's members 1-5 (96 Imbalzano functions, 5 x 128 x 128 "
        "tanh; n2p2 runs them as one 96 x 640 x 640 x 1 network whose mean output is the committee's) plus "
        "its pair baseline (LAMMPS: `pair_style table linear 2000`); for scale, member 1 alone (96 x 128 x "
        "128) too. Rutile TiO2 supercells. µs per atom per MD step (energy and forces; LAMMPS: the `Loop "
        "time` of NVE steps at 300 K after warm-up steps, neighbour lists and communication included; "
        "bpnn_jax: `BPNNCalculator.get_potential_energy()` + `get_forces()` after a compiling warm-up step, "
        "median, neighbour list reused as in MD; JAX uses both cores). Lower is better."),
        "",
        "| code | " + " | ".join(f"{n} atoms" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for code, members, ranks in keys:
        cells = []
        for n in sizes:
            r = next((x for x in rows if (x["code"], x["members"], x["ranks"], x["n_atoms"]) ==
                      (code, members, ranks, n)), None)
            cells.append("—" if r is None else ("skipped" if "skipped" in r else f"{r['us_per_atom_step']:.0f}"))
        lines.append(f"| {_label(code, members, ranks)} | " + " | ".join(cells) + " |")
    lines += ["", ("Each measurement (steps timed after warm-up, ms/step, load average of `uptime` before and "
              "after):"), "",
              "| code | members | ranks | atoms | steps | ms/step | µs/atom/step | load before | load after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['code']} | {r['members']} | {r['ranks'] or '—'} | {r['n_atoms']} | skipped: "
                         f"{r['skipped']} | | | | |")
            continue
        lines.append(f"| {r['code']} | {r['members']} | {r['ranks'] or '—'} | {r['n_atoms']} | {r['steps_timed']} | "
                     f"{r['ms_per_step']:.1f} | {r['us_per_atom_step']:.1f} | {r['load_before']} | "
                     f"{r['load_after']} |")
    cpu = res["lscpu"]
    lines += ["", f"lscpu: {cpu.get('Model name', '?')}, {cpu.get('CPU(s)', '?')} CPUs. " + machine_line(res),
              "", ("The machine was shared with other jobs (a training run on about one core; the load "
              "averages above count everything on its 2 cores): absolute numbers are upper bounds, 2-rank runs "
              "competed with those jobs for the second core, and ratios between rows measured at different "
              "loads are rough.")]
    if res.get("errors"):
        lines += ["", "Parts that failed:", ""] + [f"* {e}" for e in res["errors"]]
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"* {x}" for x in res["notes"]]
    lines += ["", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="96,1050,9600")
    ap.add_argument("--parts", default="lammps,float32,float64")
    ap.add_argument("--members", default="1-5,1", help="member sets (numbered from 1), each exported and timed")
    ap.add_argument("--sizes-for", default="1=1050", help="sizes per member set, e.g. 1=96,1050 (semicolon "
                    "between sets); sets not named use --sizes")
    ap.add_argument("--parts-for", default="1=lammps,float64", help="parts per member set, as --sizes-for")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--separate-members", action="store_true",
                    help="LAMMPS: export committees member by member (export-n2p2 --separate-members, "
                         "pair_style hybrid/scaled) instead of as one block-diagonal network")
    ap.add_argument("--lammps-seconds", type=float, default=40.0, help="about this long per timed LAMMPS run")
    ap.add_argument("--lammps-max-seconds", type=float, default=240.0,
                    help="skip a LAMMPS run whose warm-up + 2 steps would take longer (predicted)")
    ap.add_argument("--calc-steps", type=int, default=5)
    ap.add_argument("--calc-max-seconds", type=float, default=60.0)
    ap.add_argument("--work", default=str(lammps_io.tools_cache() / "work" / "timing"))
    add_common_args(ap)
    args = ap.parse_args(argv)
    args.tag = args.tag or "cpu"
    sizes = [int(x) for x in args.sizes.split(",")]
    parts = args.parts.split(",")
    res = new_result("n2p2_vs_bpnn", args, "float64 (n2p2, LAMMPS); float32 and float64 (bpnn_jax)")
    res["lscpu"] = lscpu()
    res["rows"] = []
    work = Path(args.work)
    stem = f"n2p2_vs_bpnn_{args.tag}"
    exports = {}
    if "lammps" in parts:
        if not lammps_io.have_lammps():
            raise SystemExit(f"LAMMPS not found at {lammps_io.lammps_binary()}: {lammps_io.how_to_build()}")
        from bpnn_jax.cli import main as cli

        work.mkdir(parents=True, exist_ok=True)
        for members in args.members.split(","):
            exports[members] = work / f"tio2-n2p2-{members}"
            sep = ["--separate-members"] if args.separate_members else []
            exports[members] = work / f"tio2-n2p2-{members}{'-separate' if sep else ''}"
            assert cli(["export-n2p2", "tio2", "--out", str(exports[members]), "--members", members, *sep]) == 0
    def per_set(text):
        return dict(item.split("=", 1) for item in filter(None, text.split(";")))

    sizes_for, parts_for = per_set(args.sizes_for), per_set(args.parts_for)
    for members in args.members.split(","):
        for n in ([int(x) for x in sizes_for[members].split(",")] if members in sizes_for else sizes):
            for part in (parts_for[members].split(",") if members in parts_for else parts):
                try:
                    if part == "lammps":
                        for r in (int(x) for x in args.ranks.split(",")):
                            res["rows"].append(lammps_timing(work, n, r, args.lammps_seconds,
                                                             args.lammps_max_seconds, exports[members], members,
                                                             separate=args.separate_members))
                            write_results(res, args.out_dir, stem, markdown(res))
                    else:
                        res["rows"].append(calculator_timing(n, part, args.calc_steps, args.calc_max_seconds,
                                                             members))
                        write_results(res, args.out_dir, stem, markdown(res))
                except Exception as exc:  # noqa: BLE001 - keep going: other parts still tell something
                    res["errors"].append(f"{part} members {members}, {n} atoms: {type(exc).__name__}: {exc}"[:600])
                    log(f"FAILED {res['errors'][-1]}")
                    write_results(res, args.out_dir, stem, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
