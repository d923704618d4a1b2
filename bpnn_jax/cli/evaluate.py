"""``evaluate``: score a model on labelled structure files, with plots.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse

from .common import (
    add_key_args,
    check_output,
    frame_keys,
    interactive,
    read_inputs,
    split_files,
)


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score a model on labelled structure files (meV/atom, eV/Å) with plots",
        description=(
            "Energy RMSE/MAE (meV/atom), total-energy RMSE (eV), force RMSE/MAE (eV/Å), residual statistics, "
            "on all structures and on those with cohesive energy <= --max-energy (eV/atom)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a .keras file or a shipped model name (e.g. tio2)")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="structure files (extended XYZ, any ASE format, XSF) or directories")
    p.add_argument("--split", metavar="RUN_DIR/split.json[:NAME]", default=None,
                   help="evaluate the structures of one part of a training run's split (NAME: test, the "
                        "default, val or train) instead of, or in addition to, PATHs")
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots to DIR")
    p.add_argument("--no-forces", action="store_true", help="energies only (faster)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="evaluate descriptors and networks in this precision (default: the model's, float32 for "
                        "shipped models)")
    p.add_argument("--max-energy", type=float, default=1.0,
                   help="also report metrics for cohesive energy <= this, eV/atom (default 1.0, aenet's MAXENERGY)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid files (unreadable, no energy line, elements the model lacks, overlapping "
                        "atoms), listed on stderr; by default the first stops the command before any output")
    add_key_args(p)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..model.bpnn import load_model
    from ..training.evaluation import evaluate_structures, write_plots, write_report

    check_output(args.json)
    paths = list(args.paths) + (split_files(args.split) if args.split else [])
    if not paths:
        from ..errors import BPNNInputError

        raise BPNNInputError("nothing to evaluate: give PATHs or --split RUN_DIR/split.json")
    model = load_model(args.model, dtype=args.dtype)
    atoms = read_inputs(paths, model, args.model, require_energy=True, skip_invalid=args.skip_invalid,
                        keys=frame_keys(args))
    report = evaluate_structures(model, atoms, forces=not args.no_forces, max_energy=args.max_energy,
                                 progress=interactive())
    for label, key in (("all structures", "all"), (f"cohesive <= {args.max_energy} eV/atom", "within_max_energy")):
        m = report.get(key)
        if not m or not m.get("n_structures"):
            continue
        line = (f"{label}: n={m['n_structures']}  energy RMSE {m['energy_rmse_mev_atom']:.2f} meV/atom  "
                f"MAE {m['energy_mae_mev_atom']:.2f} meV/atom  total-energy RMSE {m['energy_rmse_ev']:.4f} eV")
        if "force_rmse_ev_a" in m:
            line += f"  force RMSE {m['force_rmse_ev_a']:.4f} eV/Å  MAE {m['force_mae_ev_a']:.4f} eV/Å"
        if "stress_rmse_gpa" in m:
            line += f"  stress RMSE {m['stress_rmse_gpa']:.4f} GPa  MAE {m['stress_mae_gpa']:.4f} GPa"
        if m.get("spread_error_spearman") is not None:
            line += f"  spread-error Spearman {m['spread_error_spearman']:.2f}"
        if m.get("uncertainty_error_spearman") is not None:
            line += f" (calibrated {m['uncertainty_error_spearman']:.2f})"
        print(line)
    if args.json:
        write_report(report, args.json)
    if args.plots:
        model_path = Path(args.model)
        history = None
        if model_path.exists():  # a run directory's history: the committee stage's, else the Keras stages'
            candidates = [model_path.parent / "ef_history.csv", model_path.parent / "history.csv"]
            history = next((c for c in candidates if c.exists()), None)
        for p in write_plots(report, args.plots, history):
            print(f"wrote {p}")
    return 0
