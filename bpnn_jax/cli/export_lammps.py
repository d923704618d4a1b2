"""``export-lammps``: write a model as a lammps-jax bundle, or verify one.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside
the command.
"""

from __future__ import annotations

import argparse

from .common import check_output, read_inputs

#: Default --verify tolerances per bundle precision: (relative energy, force eV/Å).
VERIFY_TOLERANCES = {"float64": (1e-6, 1e-5), "float32": (1e-5, 2e-3)}


def add_export_lammps_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-lammps",
        help="export a model for LAMMPS (lammps-jax, pair_style jax/kk), or verify an exported bundle",
        description=(
            "Write MODEL as a lammps-jax bundle (JSON, metal units) for pair_style jax/kk: "
            "LAMMPS type t is element t-1 of the model (tio2: 1 = O, 2 = Ti). "
            "With --verify BUNDLE, run the exported program in this process on each PATH laid out as "
            "LAMMPS lays it out (owned and ghost atoms, full neighbour matrix) and compare it with the "
            "calculator; exit status 1 above the tolerances. Needs lammps-jax: "
            'pip install --no-deps "lammps-jax==0.2.1".'
        ),
    )
    p.add_argument("args", nargs="*", metavar="MODEL | PATH",
                   help="the model to export (a .keras file or a shipped name); with --verify, structure files, "
                        "extended XYZ or directories")
    p.add_argument("--out", metavar="FILE.json", help="bundle to write")
    p.add_argument("--platform", choices=("cpu", "cuda"), default="cpu",
                   help="PJRT plugin LAMMPS runs the bundle on (default cpu)")
    p.add_argument("--precision", choices=("float32", "float64"), default="float64",
                   help="precision of the whole program (default float64)")
    p.add_argument("--max-atoms", type=int, default=4096,
                   help="owned + ghost atoms per MPI rank (default 4096)")
    p.add_argument("--max-neighbors", type=int, default=192,
                   help="neighbours of one atom within the cut-off (default 192; TiO2 near equilibrium has "
                        "~110 within 6.5 Å)")
    p.add_argument("--max-owned", type=int, default=None,
                   help="owned atoms per rank (rows computed); default --max-atoms. Ghost rows cost as much "
                        "as owned ones, so set it near the owned count")
    p.add_argument("--verify", metavar="BUNDLE", help="verify this bundle on PATH... instead of exporting")
    p.add_argument("--model", metavar="MODEL", help="with --verify: model to compare with (default: the "
                                                    "one recorded in the bundle)")
    p.add_argument("--json", metavar="FILE", help="with --verify: write the result as JSON")
    p.add_argument("--energy-tolerance", type=float, default=None,
                   help="with --verify: largest relative energy error (default 1e-6 float64, 1e-5 float32)")
    p.add_argument("--force-tolerance", type=float, default=None,
                   help="with --verify: largest force error, eV/Å (default 1e-5 float64, 2e-3 float32)")
    p.add_argument("--skip-invalid", action="store_true", help="with --verify: skip invalid files")
    return p


def cmd_export_lammps(args: argparse.Namespace) -> int:
    from ..errors import BPNNInputError

    if args.verify:
        return _verify(args)
    if len(args.args) != 1:
        raise BPNNInputError("export-lammps takes one MODEL (or --verify BUNDLE PATH...)")
    if not args.out:
        raise BPNNInputError("export-lammps MODEL needs --out FILE.json")
    check_output(args.out)
    from ..calculators.lammps import export_lammps

    bundle = export_lammps(args.args[0], args.out, platform=args.platform, precision=args.precision,
                           max_atoms=args.max_atoms, max_neighbors=args.max_neighbors, max_owned=args.max_owned)
    meta, c = bundle["bpnn_jax"], bundle["contract"]
    types = " ".join(f"{t}={el}" for t, el in meta["lammps_types"].items())
    print(f"wrote {args.out}: {c['precision']} for {bundle['export_info']['platform']}, cut-off {c['cutoff']} Å, "
          f"max_atoms {c['max_atoms']}, max_neighbors {c['max_neighbors']}, "
          f"max_owned {c.get('max_owned', c['max_atoms'])}; LAMMPS types {types}")
    print(f"in LAMMPS: pair_style jax/kk ${{pjrt}}  /  pair_coeff * * {args.out}  (units metal, newton on)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import json

    from ..calculators.lammps import read_bundle, verify_bundle
    from ..errors import BPNNInputError
    from ..io.atomic import atomic_write
    from ..model.bpnn import load_model

    if not args.args:
        raise BPNNInputError("export-lammps --verify BUNDLE needs at least one PATH")
    check_output(args.json)
    bundle = read_bundle(args.verify)
    precision = bundle["contract"]["precision"]
    model_ref = args.model or bundle["bpnn_jax"]["model"]
    if not model_ref:
        raise BPNNInputError(f"{args.verify}: the bundle records no model; give it with --model")
    model = load_model(model_ref, dtype=precision)
    atoms = read_inputs(args.args, model, model_ref, require_energy=False, skip_invalid=args.skip_invalid)
    result = verify_bundle(args.verify, atoms, model, bundle=bundle)
    e_tol, f_tol = VERIFY_TOLERANCES[precision]
    e_tol = args.energy_tolerance if args.energy_tolerance is not None else e_tol
    f_tol = args.force_tolerance if args.force_tolerance is not None else f_tol
    bad = []
    for r in result["structures"]:
        print(f"{r['structure']}: {r['n_atoms']} atoms + {r['n_ghosts']} ghosts, energy error "
              f"{r['abs_energy_error_ev']:.2e} eV ({r['rel_energy_error']:.1e} rel), force error "
              f"{r['max_abs_force_error_ev_a']:.2e} eV/Å")
        if r["rel_energy_error"] > e_tol or r["max_abs_force_error_ev_a"] > f_tol:
            bad.append(r["structure"])
    result.update(energy_tolerance=e_tol, force_tolerance_ev_a=f_tol, passed=not bad)
    if args.json:
        with atomic_write(args.json) as fh:
            json.dump(result, fh, indent=2)
    print(f"largest errors: energy {result['max_abs_energy_error_ev']:.2e} eV "
          f"({result['max_rel_energy_error']:.1e} relative, tolerance {e_tol:g}), forces "
          f"{result['max_abs_force_error_ev_a']:.2e} eV/Å (tolerance {f_tol:g})")
    if bad:
        print(f"FAILED: {len(bad)} structure(s) above the tolerances: {', '.join(bad[:5])}")
        return 1
    return 0
