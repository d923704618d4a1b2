"""Resumable hyper-parameter grid search for the BPNN (KerasTuner ``GridSearch``, the committee trainer).

Run from the repository root::

    python -m experiments.grid                 # the study's 3 x 3 x 3 x 2 grid on all data
    python -m experiments.grid --quick         # tiny grid on 60 structures (about a minute)
    python -m experiments.grid --ef            # energy+force grid of the committee recipe (experiments/grid_ef.py)

Each trial is ``train --preset seed`` with the grid point's layers, nodes,
learning rate and dropout: one network on energies only, MAE, trained by
the committee trainer (:mod:`bpnn_jax.training.jacobian`).  Kill it at any
moment and run the same command again: finished grid points
are not trained again, an interrupted one is.  Outputs under ``--out``:

* ``results.csv``: one row per grid point (written after each trial);
* ``results.md``, ``trials.png``: the trials sorted by validation energy RMSE;
* ``best/``: the best configuration retrained (the study's set-up: batch 20,
  80 epochs) and scored on the held-out test split: ``model.keras``,
  ``test_metrics.json``, ``plots/``;
* ``tuner/bpnn_grid/``: KerasTuner's project; ``cache/descriptors.npz``:
  symmetry functions and statistics shared by all trials and restarts;
  ``grid.json``: the settings (a restart with other settings is refused).

See ``experiments/README.md`` for running several workers (one per GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Settings of the full grid and of ``--quick`` (command-line values win).
FULL = dict(layers=[4, 5, 6], nodes=[16, 32, 64], learning_rates=[5e-4, 1e-4, 5e-5], dropouts=[0.0, 0.1],
            subset=None, epochs=40, batch_size=20, retrain_epochs=80, retrain_batch_size=20,
            out=REPO_ROOT / "experiments" / "results" / "grid")
QUICK = dict(layers=[1, 2], nodes=[8], learning_rates=[1e-3], dropouts=[0.0], subset=60, epochs=3, batch_size=8,
             retrain_epochs=3, retrain_batch_size=20, out=REPO_ROOT / "experiments" / "results" / "grid_quick")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.grid", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=None,
                   help="XSF directory (default: $BPNN_DATA_DIR or <repo>/../shared/data/tio2)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default experiments/results/grid, with --quick .../grid_quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 40; --quick 3)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="about this many structures per batch in the trials (default 20; the trainer batches "
                        "by padded atoms)")
    p.add_argument("--energy-loss", choices=("mae", "mse", "huber"), default="mae",
                   help="per-atom energy loss (the study used MAE)")
    p.add_argument("--subset", type=int, default=None,
                   help="use N structures drawn at random with --seed (default all; --quick 60)")
    p.add_argument("--seed", type=int, default=0, help="subset, split, initialisation and shuffling seed")
    p.add_argument("--ef", action="store_true",
                   help="tune the energy+force committee recipe instead (layers 2,3 x nodes 64,96,128,160; "
                        "`--ef --help` lists its options)")
    p.add_argument("--quick", action="store_true",
                   help="tiny grid (layers 1,2 x nodes 8 x lr 1e-3 x dropout 0) on 60 structures, 3 epochs")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="choices of hidden layers (default 4 5 6)")
    p.add_argument("--nodes", type=int, nargs="+", default=None, help="choices of nodes per layer (default 16 32 64)")
    p.add_argument("--learning-rates", type=float, nargs="+", default=None,
                   help="choices of Adam learning rate (default 5e-4 1e-4 5e-5)")
    p.add_argument("--dropouts", type=float, nargs="+", default=None,
                   help="choices of dropout rate; 0 = off, the study's 'on' is 0.1 (default 0 0.1)")
    p.add_argument("--retrain-epochs", type=int, default=None, help="epochs of the final retrain (default 80)")
    p.add_argument("--retrain-batch-size", type=int, default=None, help="batch size of the final retrain (default 20)")
    p.add_argument("--no-retrain", action="store_true", help="stop after the grid and its report")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                   help="trainer verbosity (0 silent, 1 a line per epoch, 2 about ten lines)")
    return p


def _settings(args, choices: dict, data_dir: Path) -> dict:
    return {
        "data": str(data_dir.resolve()), "subset": args.subset, "seed": args.seed, "epochs": args.epochs,
        "batch_size": args.batch_size, "trainer": "committee", "energy_loss": args.energy_loss,
        "choices": {k: list(v) for k, v in choices.items()},
    }


def check_settings(out: Path, settings: dict) -> str | None:
    """Write ``grid.json`` or compare with it; an error message if they differ."""
    from bpnn_jax.io import atomic_write

    path = out / "grid.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
                             for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
            return (f"{out} holds a grid search with other settings ({diff}); "
                    "rerun with the same options, or use another --out (or delete the directory)")
        return None
    with atomic_write(path) as fh:
        json.dump(settings, fh, indent=2)
    return None


def _distributed_role() -> str | None:
    """"chief", "worker" or None, from KerasTuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the grid search, report, retrain the best and test it.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every grid point is in ``results.csv``, 1 when some failed
        (run again to retry them), 2 on a settings mismatch.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--ef" in argv:  # the energy+force grid has its own options
        from experiments import grid_ef

        return grid_ef.main([a for a in argv if a != "--ef"])
    args = build_parser().parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name in ("epochs", "batch_size", "subset", "retrain_epochs", "retrain_batch_size", "layers", "nodes",
                 "learning_rates", "dropouts"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    out = Path(args.out) if args.out is not None else preset["out"]
    data_dir = args.data or Path(os.environ.get("BPNN_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "tio2"))

    import bpnn_jax  # noqa: F401  (selects the JAX backend before Keras is imported)
    from bpnn_jax.training import TrainConfig
    from bpnn_jax.training.tuning import (
        BPNNGridSearch, BPNNHyperModel, ResultsTable, evaluate_on_test, grid_hyperparameters,
        plot_trials, prepare_tuning_data, retrain, select_files, write_results_markdown,
    )

    choices = {"layers": args.layers, "nodes": args.nodes, "learning_rate": args.learning_rates,
               "dropout": args.dropouts}
    hps = grid_hyperparameters(choices)  # validates the choices
    choices = {hp.name: list(hp.values) for hp in hps.space}
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(args, choices, data_dir)
    problem = check_settings(out, settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    results = ResultsTable(out / "results.csv")
    config = TrainConfig(seed=args.seed)
    role = _distributed_role()
    tuner_kwargs = dict(directory=str(out / "tuner"), project_name="bpnn_grid", overwrite=False)

    def load():
        files = select_files(data_dir, args.subset, args.seed)
        print(f"[data] {len(files)} XSF files from {data_dir}", flush=True)
        return prepare_tuning_data(files, config, cache=out / "cache" / "descriptors.npz")

    def hypermodel_for(data):
        return BPNNHyperModel(data.descriptor, data.statistics, reference_energies=data.references, choices=choices,
                              energy_loss=args.energy_loss, seed=args.seed)

    t0 = time.time()
    data = None
    n_grid = math.prod(len(v) for v in choices.values())
    print(f"[grid] {n_grid} grid points, {args.epochs} epochs each, batch {args.batch_size}; output {out}", flush=True)
    if role == "chief":
        # The chief only serves the oracle (blocks until the grid is done);
        # it needs no data for that.
        tuner = BPNNGridSearch(None, results=results, hyperparameters=hps, **tuner_kwargs)
        tuner.search(verbose=0)
    else:
        data = load()
        tuner = BPNNGridSearch(hypermodel_for(data), results=results, hyperparameters=hps, **tuner_kwargs)
        tuner.search(data, epochs=args.epochs, batch_size=args.batch_size, fit_verbose=args.verbose, verbose=0)
        if role == "worker":
            print(f"[grid] worker {os.environ.get('KERASTUNER_TUNER_ID')} finished", flush=True)
            return 0
    print(f"[grid] search finished in {time.time() - t0:.0f} s", flush=True)

    rows = results.rows()
    done = {results.key(r) for r in rows}
    grid = tuner.oracle.grid()
    missing = [g for g in grid if results.key(g) not in done]
    if missing:
        print(f"[grid] warning: {len(missing)} grid point(s) failed and are not in results.csv "
              f"(run the same command again to retry them): {missing}", flush=True)
    shown = {"epochs per trial": args.epochs, "batch size": args.batch_size, "seed": args.seed,
             "energy loss": args.energy_loss, "trainer": "committee (one network)",
             "structures": args.subset or "all", "data": data_dir}
    write_results_markdown(rows, out / "results.md", grid_size=len(grid), settings=shown)
    if not rows:
        print("error: no trial finished", file=sys.stderr)
        return 1
    plot_trials(rows, out / "trials.png")
    best = min(rows, key=lambda r: r["val_energy_rmse_mev_atom"])
    print(f"[grid] best: layers={best['layers']} nodes={best['nodes']} learning_rate={best['learning_rate']:g} "
          f"dropout={best['dropout']:g}: {best['val_energy_rmse_mev_atom']:.2f} meV/atom, "
          f"{best['val_energy_rmse_ev_total']:.3f} eV total (validation)", flush=True)
    print(f"[grid] wrote {out / 'results.md'} and {out / 'trials.png'}", flush=True)
    if args.no_retrain:
        return 1 if missing else 0

    if data is None:
        data = load()
    best_dir = out / "best"
    model = retrain(hypermodel_for(data), data, best, best_dir, epochs=args.retrain_epochs,
                    batch_size=args.retrain_batch_size, seed=args.seed, verbose=args.verbose)
    metrics_path = best_dir / "test_metrics.json"
    print(f"[retrain] done ({time.time() - t0:.0f} s since start)", flush=True)
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
    else:
        print(f"[test] evaluating on {len(data.files['test'])} test structures", flush=True)
        metrics = evaluate_on_test(model, data, best_dir, forces=True)
        print(f"[test] done ({time.time() - t0:.0f} s since start)", flush=True)
    write_results_markdown(rows, out / "results.md", grid_size=len(grid), settings=shown, test_metrics=metrics)
    force = f", forces {metrics['force_rmse_ev_a']:.4f} eV/Å" if metrics.get("force_rmse_ev_a") is not None else ""
    print(f"[test] best configuration retrained: {metrics['energy_rmse_mev_atom']:.2f} meV/atom, "
          f"{metrics['energy_rmse_ev']:.3f} eV total-energy RMSE (study: 594.4 eV){force}; "
          f"{metrics_path}", flush=True)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
