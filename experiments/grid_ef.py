"""Resumable energy+force grid search (KerasTuner ``GridSearch`` over committees on descriptor Jacobians).

Run from the repository root::

    python -m experiments.grid --ef                      # layers {2,3} x nodes {64,96,128,160}, all data
    python -m experiments.grid --ef --subset 1500 --epochs 120    # cheaper trials
    python -m experiments.grid --ef --layers 2 --nodes 96 128 --activations tanh silu --weight-decays 1e-4 5e-4

Each grid point trains a committee (``--members``, default 1) with the
recipe of ``train --members K`` (mini-batch AdamW on energies and forces
from cached descriptor Jacobians, warm-up and cosine decay, EMA, each
member's best epoch on validation) and is scored by the validation value
of mean((ΔE/n)²) + λ·mean(ΔF²) at the grid's force weight λ
(:mod:`bpnn_jax.training.tuning_ef`).  Kill it at any moment and run the same
command again: finished points are not trained again, an interrupted one
resumes from its last checkpoint.  Outputs under ``--out`` (default
``experiments/results/grid_ef``): ``results.csv``, ``results.md`` (sorted
by the objective), ``grid.json`` (the settings; a restart with others is
refused), ``trials/`` (each point's resume state and history),
``cache/`` (the Jacobians, shared by all trials and restarts) and
``tuner/`` (KerasTuner's project).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.grid --ef", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="data directory (default: $BPNN_DATA_DIR or <repo>/../shared/data/tio2)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "experiments" / "results" / "grid_ef")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 3], help="choices of hidden layers")
    p.add_argument("--nodes", type=int, nargs="+", default=[64, 96, 128, 160], help="choices of nodes per layer")
    p.add_argument("--activations", nargs="+", default=["tanh"], help="choices of activation")
    p.add_argument("--weight-decays", type=float, nargs="+", default=[5e-4], help="choices of AdamW weight decay")
    p.add_argument("--epochs", type=int, default=150, help="epochs per trial")
    p.add_argument("--members", type=int, default=1, help="committee members per trial")
    p.add_argument("--force-weight", type=float, default=1.5e-2, help="λ of the loss and of the objective")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--final-learning-rate", type=float, default=1e-5, help="learning rate at the end")
    p.add_argument("--atoms-per-batch", type=int, default=768)
    p.add_argument("--descriptors", default="imbalzano", help="symmetry-function preset or file (as train)")
    p.add_argument("--cutoff", type=float, default=6.5, help="cut-off of the imbalzano preset, Å")
    p.add_argument("--subset", type=int, default=None, help="training structures (default: the whole split)")
    p.add_argument("--seed", type=int, default=0, help="split, subset, initialisation and shuffling seed")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="trainer verbosity")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run or resume the grid; 0 when every point is in ``results.csv``, 1 when some failed, 2 on bad settings."""
    args = build_parser().parse_args(argv)
    data_dir = args.data or Path(os.environ.get("BPNN_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "tio2"))

    import bpnn_jax  # noqa: F401  (the JAX backend before Keras)
    from bpnn_jax.training import TrainConfig
    from bpnn_jax.training.tuning_ef import (
        EFGridSearch,
        ef_grid_hyperparameters,
        ef_results_table,
        prepare_ef_data,
        write_ef_results_markdown,
    )
    from experiments.grid import check_settings

    choices = {"layers": args.layers, "nodes": args.nodes, "activation": args.activations,
               "weight_decay": args.weight_decays}
    try:
        hps = ef_grid_hyperparameters(choices)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    choices = {hp.name: list(hp.values) for hp in hps.space}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fixed = {"epochs": args.epochs, "members": args.members, "force_weight": args.force_weight,
             "learning_rate": args.learning_rate, "final_learning_rate": args.final_learning_rate,
             "atoms_per_batch": args.atoms_per_batch, "seed": args.seed}
    settings = {"mode": "ef", "data": str(Path(data_dir).resolve()), "descriptors": args.descriptors,
                "cutoff": args.cutoff, "subset": args.subset, **fixed, "choices": choices}
    problem = check_settings(out, settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    results = ef_results_table(out / "results.csv")
    n_grid = math.prod(len(v) for v in choices.values())
    print(f"[grid] {n_grid} E+F grid points, {args.epochs} epochs x {args.members} member(s) each, "
          f"λ = {args.force_weight:g}; output {out}", flush=True)
    t0 = time.time()
    config = TrainConfig(preset=args.descriptors, cutoff=args.cutoff, seed=args.seed)
    data = prepare_ef_data([data_dir], config, subset=args.subset, cache_dir=out / "cache")
    tuner = EFGridSearch(results=results, hyperparameters=hps, trials_dir=out / "trials",
                         directory=str(out / "tuner"), project_name="bpnn_grid_ef", overwrite=False)
    tuner.search(data, fit_verbose=args.verbose, verbose=0, **fixed)
    rows = results.rows()
    grid = tuner.oracle.grid()
    done = {results.key(r) for r in rows}
    missing = [g for g in grid if results.key(g) not in done]
    if missing:
        print(f"[grid] warning: {len(missing)} grid point(s) failed (run the same command again to retry): "
              f"{missing}", flush=True)
    shown = {"descriptors": data.spec.describe(), "training structures": data.train.n_structures,
             "validation structures": data.val.n_structures, **fixed, "data": data_dir}
    write_ef_results_markdown(rows, out / "results.md", grid_size=len(grid), settings=shown)
    if rows:
        best = min(rows, key=lambda r: r["val_objective"])
        print(f"[grid] best: layers={best['layers']} nodes={best['nodes']} activation={best['activation']} "
              f"weight_decay={best['weight_decay']:g}: objective {best['val_objective']:.4g}, energy "
              f"{best['val_energy_rmse_mev_atom']:.2f} meV/atom, forces {best['val_force_rmse_ev_a']:.4f} eV/Å "
              f"(validation); {out / 'results.md'}", flush=True)
    print(f"[grid] finished in {time.time() - t0:.0f} s", flush=True)
    return 1 if missing or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
