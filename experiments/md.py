"""Molecular dynamics and relaxation of TiO2 with a bpnn_jax potential.

    python -m experiments.md                         # NVE, rutile 3x3x4 (216 atoms), 300 K, 2 ps
    python -m experiments.md --ensemble nvt --phase anatase
    python -m experiments.md --relax-only            # lattice constants only

Writes to ``--out`` (default ``experiments/results/md``): ``<phase>_<ensemble>.traj``
(ASE trajectory), ``<phase>_<ensemble>.csv`` (time, potential, kinetic, total
energy in eV, temperature in K), ``<phase>_<ensemble>.png`` (energies over
time), ``relax.json`` (relaxed lattice constants against the DFT data) and
``summary.json`` (energy drift in meV/atom/ps, timings).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import bpnn_jax  # noqa: F401  (selects the JAX backend for Keras)

REPO = Path(__file__).resolve().parents[1]

#: Experimental lattice constants (Å) used only as starting points.
PHASES = {
    # P4_2/mnm, Ti 2a (0,0,0), O 4f (u,u,0), u = 0.305
    "rutile": dict(spacegroup=136, cellpar=(4.594, 4.594, 2.959, 90, 90, 90), basis=[(0, 0, 0), (0.305, 0.305, 0)]),
    # I4_1/amd (origin choice 1), Ti 4a (0,0,0), O 8e (0,0,z), z = 0.208
    "anatase": dict(spacegroup=141, cellpar=(3.785, 3.785, 9.514, 90, 90, 90), basis=[(0, 0, 0), (0, 0, 0.208)]),
}


def build_phase(phase: str):
    """Conventional cell of rutile (6 atoms) or anatase (12 atoms)."""
    from ase.spacegroup import crystal

    p = PHASES[phase]
    return crystal(["Ti", "O"], basis=p["basis"], spacegroup=p["spacegroup"], cellpar=p["cellpar"], primitive_cell=False)


def relax(atoms, calc, fmax: float = 0.01, steps: int = 300):
    """Relax positions and cell (FrechetCellFilter + BFGS); returns the relaxed copy."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    a = atoms.copy()
    a.calc = calc
    opt = BFGS(FrechetCellFilter(a), logfile=None)
    opt.run(fmax=fmax, steps=steps)
    return a


def dft_reference_lattice(data_dir: Path, relaxed, tol: float = 0.05):
    """Lattice lengths of the lowest-energy DFT structure with the same cell shape.

    Looks for structures in ``data_dir`` with as many atoms as ``relaxed``
    whose sorted cell lengths agree with the relaxed ones within ``tol``
    (relative), and returns (file, sorted lengths, energy/atom) of the one
    with the lowest energy per atom, or None.
    """
    from bpnn_jax.io import read_xsf

    target = np.sort(relaxed.cell.lengths())
    best = None
    for path in sorted(Path(data_dir).glob("*.xsf")):
        with open(path) as fh:
            head = fh.read(400)
        if f"\n{len(relaxed)} 1" not in head.replace("\r", ""):
            continue
        a = read_xsf(path)
        lengths = np.sort(a.cell.lengths())
        if np.all(np.abs(lengths / target - 1) < tol):
            e = a.info["energy"] / len(a)
            if best is None or e < best[2]:
                best = (path.name, lengths, e)
    return best


def run_md(atoms, calc, *, ensemble: str, temperature: float, steps: int, timestep_fs: float, seed: int,
           out: Path, tag: str, log_every: int = 10):
    """NVE (velocity Verlet) or NVT (Langevin) MD; returns the energy log (array)."""
    from ase import units
    from ase.io.trajectory import Trajectory
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        dyn = VelocityVerlet(atoms, dt)
    else:
        dyn = Langevin(atoms, dt, temperature_K=temperature, friction=0.01 / units.fs, rng=rng)
    traj = Trajectory(out / f"{tag}.traj", "w", atoms)
    rows = []

    def record():
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        rows.append((dyn.nsteps * timestep_fs / 1000.0, epot, ekin, epot + ekin, atoms.get_temperature()))

    dyn.attach(record, interval=log_every)
    dyn.attach(traj.write, interval=log_every * 5)
    t0 = time.time()
    dyn.run(steps)
    traj.close()
    return np.array(rows), time.time() - t0


def plot_energies(log, n_atoms, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = log[:, 0]
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    axes[0].plot(t, (log[:, 1] - log[0, 3]) / n_atoms * 1e3, label="potential")
    axes[0].plot(t, log[:, 2] / n_atoms * 1e3, label="kinetic")
    axes[0].plot(t, (log[:, 3] - log[0, 3]) / n_atoms * 1e3, label="total", lw=2)
    axes[0].set_ylabel("energy − E_tot(0) (meV/atom)")
    axes[0].legend()
    axes[0].set_title(title)
    axes[1].plot(t, log[:, 4])
    axes[1].set_ylabel("temperature (K)")
    axes[1].set_xlabel("time (ps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tio2", help="model file or shipped name (default tio2)")
    p.add_argument("--phase", choices=sorted(PHASES), default="rutile")
    p.add_argument("--supercell", type=int, nargs=3, default=None, metavar=("NA", "NB", "NC"),
                   help="replication of the conventional cell (default rutile 3 3 4, anatase 3 3 1)")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nve")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relax-only", action="store_true", help="only relax the unit cells and report lattice constants")
    p.add_argument("--data", default=os.environ.get("BPNN_DATA_DIR", str(REPO.parent / "shared" / "data" / "tio2")))
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "md"))
    args = p.parse_args(argv)

    from bpnn_jax import BPNNCalculator, load_model
    from bpnn_jax.io import atomic_write

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    calc = BPNNCalculator(model)

    # Relaxation: lattice constants of both phases from a 3 % strained start.
    relax_report = {}
    for phase in sorted(PHASES):
        cell0 = build_phase(phase)
        strained = cell0.copy()
        strained.set_cell(cell0.cell * 1.03, scale_atoms=True)
        relaxed = relax(strained, BPNNCalculator(model))
        a, b, c = relaxed.cell.lengths()
        ref = dft_reference_lattice(Path(args.data), relaxed) if Path(args.data).exists() else None
        relax_report[phase] = {
            "relaxed_abc_A": [float(a), float(b), float(c)],
            "energy_per_atom_ev": float(relaxed.get_potential_energy() / len(relaxed)),
            "dft_reference": None if ref is None else {"file": ref[0], "sorted_lengths_A": [float(x) for x in ref[1]],
                                                       "energy_per_atom_ev": float(ref[2])},
        }
        print(f"{phase}: relaxed a={a:.4f} b={b:.4f} c={c:.4f} Å" +
              ("" if ref is None else f"; DFT data {ref[0]}: sorted lengths {np.round(ref[1], 4).tolist()} Å"))
    with atomic_write(out / "relax.json") as fh:
        json.dump(relax_report, fh, indent=2)
    if args.relax_only:
        return 0

    rep = args.supercell or ((3, 3, 4) if args.phase == "rutile" else (3, 3, 1))
    atoms = build_phase(args.phase).repeat(tuple(rep))
    tag = f"{args.phase}_{args.ensemble}"
    print(f"{tag}: {len(atoms)} atoms, {args.steps} steps of {args.timestep} fs at {args.temperature} K")
    log, seconds = run_md(atoms, calc, ensemble=args.ensemble, temperature=args.temperature, steps=args.steps,
                          timestep_fs=args.timestep, seed=args.seed, out=out, tag=tag)
    n = len(atoms)
    with atomic_write(out / f"{tag}.csv") as fh:
        fh.write("time_ps,epot_ev,ekin_ev,etot_ev,temperature_k\n")
        for row in log:
            fh.write(",".join(f"{x:.8f}" for x in row) + "\n")
    plot_energies(log, n, out / f"{tag}.png", f"{tag}, {n} atoms, dt = {args.timestep} fs")
    t = log[:, 0]
    etot = log[:, 3] / n * 1e3  # meV/atom
    slope = float(np.polyfit(t, etot, 1)[0]) if len(t) > 2 else float("nan")
    summary = {
        "phase": args.phase, "ensemble": args.ensemble, "n_atoms": n, "steps": args.steps,
        "timestep_fs": args.timestep, "temperature_k": args.temperature,
        "simulated_ps": float(t[-1]) if len(t) else 0.0,
        "total_energy_drift_mev_atom_per_ps": slope,
        "total_energy_max_deviation_mev_atom": float(np.max(np.abs(etot - etot[0]))),
        "mean_temperature_k": float(log[:, 4].mean()),
        "wall_seconds": seconds, "ms_per_step": 1e3 * seconds / max(args.steps, 1),
        "neighbour_list_builds": calc.nl_builds,
    }
    with atomic_write(out / "summary.json") as fh:
        json.dump(summary, fh, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
