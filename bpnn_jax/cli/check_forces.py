"""``check-forces``: a model's forces and stress against finite differences of its energy.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse

from .common import check_output, read_inputs


def add_check_forces_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check-forces",
        help="check a model's forces and stress against finite differences of its energy (float64)",
        description=(
            "Evaluate the model in float64 and compare its forces and stress with central finite differences "
            "of its energy, per structure; errors are relative to the largest finite-difference component. "
            "Exit status 1 when any error exceeds --tolerance."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a .keras file or a shipped model name (e.g. tio2)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="structure files or directories (energies not needed)")
    p.add_argument("--json", metavar="FILE", help="write the result (one row per structure) as JSON")
    p.add_argument("--delta", type=float, default=1e-4,
                   help="finite-difference step, Å for positions and dimensionless for strain; five-point "
                        "stencil (default 1e-4)")
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="largest accepted relative error of forces and stress (default 1e-5)")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="check at most this many atoms per structure (a seeded random choice; default all)")
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid files instead of stopping")
    return p


def cmd_check_forces(args: argparse.Namespace) -> int:
    import json

    from ..calculators.force_check import check_forces
    from ..errors import BPNNInputError
    from ..io.atomic import atomic_write
    from ..model.bpnn import load_model

    check_output(args.json)
    if not args.delta > 0:
        raise BPNNInputError(f"--delta must be > 0 Å, got {args.delta}")
    model = load_model(args.model, dtype="float64")
    atoms = read_inputs(args.paths, model, args.model, require_energy=False, skip_invalid=args.skip_invalid)
    result = check_forces(model, atoms, delta=args.delta, max_atoms=args.max_atoms)
    result["tolerance"] = args.tolerance
    bad = []
    for r in result["structures"]:
        s_err = r.get("max_rel_stress_error")
        stress_txt = "" if s_err is None else f"  stress {s_err:.2e}"
        print(f"{r['file']}: forces {r['max_rel_force_error']:.2e}{stress_txt} (relative)")
        if r["max_rel_force_error"] > args.tolerance or (s_err is not None and s_err > args.tolerance):
            bad.append(r["file"])
    result["passed"] = not bad
    if args.json:
        with atomic_write(args.json) as fh:
            json.dump(result, fh, indent=2)
    s_all = result["max_rel_stress_error"]
    print(f"largest relative error: forces {result['max_rel_force_error']:.2e}"
          + ("" if s_all is None else f", stress {s_all:.2e}") + f" (tolerance {args.tolerance:g})")
    if bad:
        print(f"FAILED: {len(bad)} structure(s) above the tolerance: {', '.join(bad[:5])}")
        return 1
    return 0
