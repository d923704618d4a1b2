"""Paired A/B of the MD step cost of two models (energy, forces, stress), in one process, interleaved.

    python benchmarks/md_ab.py tio2 tio2_v8 [--sizes 96,1050]

One benchmark run on a shared VM varies by tens of per cent; two models timed
alternately in one process share that noise, so their ratio is the figure.
Prints µs/atom/step (median of six rounds of five steps) and the per-round ratios.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from md_inference import rutile, rutile_repeats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="model A (a shipped name or a .keras path)")
    ap.add_argument("b", help="model B")
    ap.add_argument("--sizes", default="96,1050", help="approximate rutile supercell sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    args = ap.parse_args(argv)
    from bpnn_jax.calculators.ase import BPNNCalculator
    from bpnn_jax.model import load_model

    rng = np.random.default_rng(0)
    calcs = {name: BPNNCalculator(load_model(name)) for name in (args.a, args.b)}
    for target in (int(s) for s in args.sizes.split(",")):
        atoms = rutile(rutile_repeats(target))
        n, base = len(atoms), atoms.positions.copy()

        def step(name):
            a = atoms.copy()
            a.positions = base + rng.normal(0.0, 0.02, base.shape)
            a.calc = calcs[name]
            t = time.perf_counter()
            a.get_potential_energy(), a.get_forces(), a.get_stress()
            return time.perf_counter() - t

        for name in calcs:  # compile and warm up
            [step(name) for _ in range(3)]
        times = {name: [] for name in calcs}
        for r in range(args.rounds):
            for name in (list(calcs) if r % 2 == 0 else list(calcs)[::-1]):
                times[name].append(float(np.median([step(name) for _ in range(args.steps)])))
        med = {k: np.median(v) / n * 1e6 for k, v in times.items()}
        ratios = [round(x / y, 2) for x, y in zip(times[args.a], times[args.b])]
        print(f"{n} atoms: {args.a} {med[args.a]:.0f}, {args.b} {med[args.b]:.0f} µs/atom/step; "
              f"ratio {med[args.a] / med[args.b]:.2f} (per round {ratios})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
