"""NVE MD of a rutile supercell in LAMMPS with the n2p2 export of the shipped tio2 model (members 1-5 + baseline).

Usage::

    python benchmarks/lammps/md_rutile.py [--repeats 5 5 7] [--steps 10000] [--ranks 1,2]
                                          [--steps-per-rank 1:500,2:4000] [--work DIR] [--analyse]

Exports ``tio2 --members 1-5`` (``export-n2p2``), writes rutile TiO2 (a = 4.594 Å, c = 2.959 Å, u = 0.305,
the cell of ``benchmarks/md_inference.py``) repeated ``--repeats`` times as a LAMMPS data file, and runs
``nve_rutile.in`` (velocities at 300 K with ``loop geom``, 1 fs, NVE) on each rank count in turn.
Then, from the logs: the total-energy drift per atom (last minus first, largest excursion, and the slope of
a straight-line fit, per ps), the cost per step, and the largest difference of the total energies per atom
of the runs on different rank counts over the first ``--first`` steps (thermo every step there, 15
significant digits).  ``--analyse`` only re-reads the logs of an earlier run in ``--work``.

Writes ``<out-dir>/lammps_md_cpu.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "benchmarks"))
import lammps_io

DECK = HERE / "nve_rutile.in"


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def lscpu() -> dict:
    out = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return out
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return {k: out[k] for k in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)")
            if k in out}


def machine() -> dict:
    return {"lscpu": lscpu(), "nproc": os.cpu_count(), "platform": platform.platform(),
            "lammps_build": (lammps_io.tools_cache() / "lammps" / "BPNN_BUILD").read_text().split("\n")
            if (lammps_io.tools_cache() / "lammps" / "BPNN_BUILD").exists() else None}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(work: Path, repeats, members: str) -> tuple[Path, Path, int]:
    """Export the model and write the data file and the pair lines; returns (data, pair file, atoms)."""
    from md_inference import (
        rutile,  # benchmarks/md_inference.py: the project's rutile cell
    )

    from bpnn_jax.cli import main as cli

    work.mkdir(parents=True, exist_ok=True)
    export = work / f"tio2-n2p2-{members}"
    if cli(["export-n2p2", "tio2", "--out", str(export), "--members", members]) != 0:
        raise SystemExit("export-n2p2 failed")
    pair = work / "pair.in"
    pair.write_text((export / "lammps.in.snippet").read_text())
    atoms = rutile(tuple(repeats))
    data = work / f"rutile_{'x'.join(map(str, repeats))}.data"
    lammps_io.write_data(atoms, data, ["O", "Ti"])
    return data, pair, len(atoms)


def analyse_log(text: str, first: int) -> dict:
    rows = lammps_io.thermo_table(text)
    loops = lammps_io.loop_time(text)
    if not rows or not loops:
        raise ValueError("no thermo rows or loop times in the log")
    n = loops[0][3]  # a run cut short has the thermo rows of its second run but no second Loop time
    by_step = {}
    for r in rows:  # the step ending the first run starts the second: keep one
        by_step[int(r["Step"])] = r
    steps = np.array(sorted(by_step))
    t = np.array([by_step[s]["Time"] for s in steps])
    e = np.array([by_step[s]["TotEng"] for s in steps]) / n
    temp = np.array([by_step[s]["Temp"] for s in steps])
    seconds = sum(x[0] for x in loops)
    n_steps = sum(x[2] for x in loops)
    out = {"n_atoms": n, "steps": int(steps[-1]), "ps": float(t[-1]), "procs": loops[0][1],
           "loop_seconds": round(seconds, 2), "s_per_step": seconds / n_steps,
           "us_per_atom_step": 1e6 * seconds / n_steps / n,
           "etot_first_ev_atom": float(e[0]), "etot_last_ev_atom": float(e[-1]),
           "drift_last_minus_first_mev_atom": 1e3 * float(e[-1] - e[0]),
           "max_excursion_mev_atom": 1e3 * float(np.abs(e - e[0]).max()),
           "temp_mean_K": float(temp[steps >= min(steps[-1], 100)].mean()), "temp_last_K": float(temp[-1])}
    if t[-1] > 0 and len(t) > 2:
        slope = np.polyfit(t, e, 1)[0]
        out["fit_slope_mev_atom_per_ps"] = 1e3 * float(slope)
    # after the first ps (if there is one): the equilibration of a cell started on its lattice sites is over
    late = t >= min(1.0, t[-1] / 2)
    if late.sum() > 2:
        out[f"fit_slope_after_{float(t[late][0]):g}ps_mev_atom_per_ps"] = 1e3 * float(np.polyfit(t[late], e[late], 1)[0])
    out["first_steps"] = {str(int(s)): [by_step[s]["PotEng"] / n, by_step[s]["TotEng"] / n]
                          for s in steps if s <= first}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, nargs=3, default=[5, 5, 7], help="rutile repeats (default 5 5 7: 1050 atoms)")
    ap.add_argument("--steps", type=int, default=10000, help="steps per run (default 10000 = 10 ps)")
    ap.add_argument("--steps-per-rank", default="", help="e.g. 1:500,2:4000 overrides --steps per rank count")
    ap.add_argument("--members", default="1-5", help="tio2 members to export, numbered from 1 (default 1-5)")
    ap.add_argument("--ranks", default="1,2", help="MPI rank counts, run in turn (default 1,2)")
    ap.add_argument("--first", type=int, default=100, help="steps logged every step and compared (default 100)")
    ap.add_argument("--every", type=int, default=10, help="thermo interval after them (default 10)")
    ap.add_argument("--work", default=str(lammps_io.tools_cache() / "work" / "md_rutile"))
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--analyse", action="store_true", help="only analyse the logs already in --work")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)
    ranks = [int(x) for x in args.ranks.split(",")]
    steps = {r: args.steps for r in ranks}
    for item in filter(None, args.steps_per_rank.split(",")):
        r, s = item.split(":")
        steps[int(r)] = int(s)
    work = Path(args.work)
    res_path = work / "md_rutile.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    if not args.analyse and (res.get("repeats") != args.repeats or res.get("members") != args.members):
        res = {}  # runs of another cell or model in this work directory: start afresh
    res = res or {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                  "repeats": args.repeats, "members": args.members, "runs": {}, "notes": list(args.note)}
    res["notes"] = sorted(set(res.get("notes", []) + list(args.note)), key=(res.get("notes", []) + list(args.note)).index)
    if not args.analyse:
        res.setdefault("commands", []).append(" ".join(sys.argv[1:] if argv is None else argv))
        if not lammps_io.have_lammps():
            raise SystemExit(f"LAMMPS not found at {lammps_io.lammps_binary()}: {lammps_io.how_to_build()}")
        data, pair, n = prepare(work, args.repeats, args.members)
        res["n_atoms"] = n
        res["members"] = args.members
        for r in ranks:
            before = uptime()
            log(f"{r} rank(s), {steps[r]} steps, {n} atoms; {before}")
            t0 = time.perf_counter()
            lammps_io.run_lammps(DECK, work, nprocs=r, log_name=f"log.nve.{r}",
                                 variables={"data": data.name, "pair": pair.name, "steps": steps[r],
                                            "first": args.first, "every": args.every}, timeout=6 * 3600)
            res["runs"][str(r)] = {"uptime_before": before, "uptime_after": uptime(),
                                   "wall_s": round(time.perf_counter() - t0, 1)}
            res_path.write_text(json.dumps(res, indent=2))
    for r in ranks:
        path = work / f"log.nve.{r}"
        if path.exists():
            res["runs"].setdefault(str(r), {}).update(analyse_log(path.read_text(), args.first))
            a = res["runs"][str(r)]
            log(f"{r} rank(s): {a['steps']} steps ({a['ps']:g} ps), drift {a['drift_last_minus_first_mev_atom']:.3g} "
                f"meV/atom, {a['us_per_atom_step']:.1f} µs/atom/step")
    done = [str(r) for r in ranks if "first_steps" in res["runs"].get(str(r), {})]
    if len(done) >= 2:
        a, b = (res["runs"][k]["first_steps"] for k in done[:2])
        common = sorted(set(a) & set(b), key=int)
        da = [abs(a[k][1] - b[k][1]) for k in common]
        res["rank_comparison"] = {"ranks": done[:2], "steps_compared": len(common), "last_step": common[-1],
                                  "max_abs_dEtot_ev_atom": max(da)}
        log(f"ranks {done[0]} vs {done[1]}: max |dEtot| over steps 0-{common[-1]}: {max(da):.2e} eV/atom")
    res_path.write_text(json.dumps(res, indent=2))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(res))
    for run in slim["runs"].values():
        run.pop("first_steps", None)
    (out / "lammps_md_cpu.json").write_text(json.dumps(slim, indent=2) + "\n")
    (out / "lammps_md_cpu.md").write_text(markdown(res))
    log(f"wrote {out / 'lammps_md_cpu.md'} and .json")
    return 0


def markdown(res: dict) -> str:
    m = res["machine"]
    cpu = m["lscpu"].get("Model name", "?")
    n = res.get("n_atoms") or next((r["n_atoms"] for r in res["runs"].values() if "n_atoms" in r), "?")
    lines = [
        f"# NVE MD in LAMMPS with the n2p2 export of tio2 (members {res.get('members', '1-5')} + pair baseline)",
        "",
        (f"Rutile TiO2 {'x'.join(map(str, res['repeats']))} supercell ({n} atoms; a = 4.594 Å, c = 2.959 Å, "
        "u = 0.305), velocities drawn at 300 K (`velocity ... loop geom`, the same on any rank count), "
        "timestep 1 fs, `fix nve`; `pair_style hybrid/overlay hdnnp ... table linear 2000` as printed by "
        f"`python -m bpnn_jax export-n2p2 tio2 --members {res.get('members', '1-5')}`; neighbour skin 1 Å, rebuilt when needed "
        "(checked every step). Deck `benchmarks/lammps/nve_rutile.in`, driver "
        "`benchmarks/lammps/md_rutile.py`; LAMMPS 2022-01-06 (Debian source) with ML-HDNNP against n2p2 "
        "61daa0d, OpenMPI, 1 OpenMP thread."),
        "",
        (f"Machine: {cpu}, {m['lscpu'].get('CPU(s)', m['nproc'])} CPUs visible "
        f"({m['lscpu'].get('Thread(s) per core', '?')} thread(s) per core), shared with other jobs (see the "
        f"load averages). Date {res['date']}."),
        "",
        "| MPI ranks | steps | ps | µs/atom/step | s/step | E_tot(end) − E_tot(0), meV/atom | max \\|E_tot − E_tot(0)\\|, meV/atom | fit slope, meV/atom/ps | mean T, K | load before → after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, a in sorted(res["runs"].items()):
        if "steps" not in a:
            continue
        lb = a.get("uptime_before", "").split("load average:")[-1].strip()
        la = a.get("uptime_after", "").split("load average:")[-1].strip()
        lines.append(
            f"| {r} | {a['steps']} | {a['ps']:g} | {a['us_per_atom_step']:.0f} | {a['s_per_step']:.3f} | "
            f"{a['drift_last_minus_first_mev_atom']:+.4f} | {a['max_excursion_mev_atom']:.4f} | "
            f"{a.get('fit_slope_mev_atom_per_ps', float('nan')):+.4f} | {a['temp_mean_K']:.0f} | {lb} → {la} |")
    rc = res.get("rank_comparison")
    if rc:
        lines += ["", (f"Ranks {rc['ranks'][0]} vs {rc['ranks'][1]}: the total energies per atom of steps 0-"
                      f"{rc['last_step']} ({rc['steps_compared']} thermo rows, `%20.15g`) differ by at most "
                      f"{rc['max_abs_dEtot_ev_atom']:.1e} eV/atom.")]
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"* {x}" for x in res["notes"]]
    lines += ["", "Commands:", ""] + [f"* `python benchmarks/lammps/md_rutile.py {c}`" for c in res.get("commands", [])]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
