"""``export-n2p2``: write a model as n2p2 files (input.nn, scaling.data, weights.ZZZ.data) for nnp-predict
and LAMMPS ``pair_style hdnnp``.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the command.
"""

from __future__ import annotations

import argparse

from .common import member_list


def add_export_n2p2_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-n2p2",
        help="export a model on G2/G4 symmetry functions to n2p2 (nnp-predict, LAMMPS pair_style hdnnp)",
        description=(
            "Write MODEL as n2p2 files in DIR (eV, Å): input.nn, scaling.data and weights.ZZZ.data (ZZZ = "
            "atomic number). A committee becomes one network computing the members' mean. Members on a "
            "Chebyshev basis cannot be expressed in n2p2: choose the others with --members. A repulsive pair "
            "baseline is written as DIR/repulsion.table for LAMMPS pair_style table (hybrid/overlay with "
            "hdnnp); the LAMMPS input lines are printed and written to DIR/lammps.in.snippet (LAMMPS type t "
            "is element t-1 of the model, as for export-lammps)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a .keras file or a shipped model name")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (created if missing)")
    p.add_argument("--members", type=member_list, default=None, metavar="LIST",
                   help="export only these committee members (their mean), numbered from 1, e.g. 1-5")
    p.add_argument("--separate-members", action="store_true",
                   help="one n2p2 network per member (DIR/member_NN/), summed by LAMMPS pair_style hybrid/scaled: "
                        "the same potential at ~1/K of n2p2's cost for K members (LAMMPS only; nnp-predict "
                        "reads one network)")
    p.add_argument("--table-points", type=int, default=2000, metavar="N",
                   help="rows per element pair of repulsion.table (default 2000)")
    p.add_argument("--table-rmin", type=float, default=0.5, metavar="Å",
                   help="shortest distance of repulsion.table, Å (default 0.5; LAMMPS stops below it)")
    p.add_argument("--lammps-dir", default=None, metavar="PATH",
                   help="how the LAMMPS input lines name DIR (default: DIR as given)")
    return p


def cmd_export_n2p2(args: argparse.Namespace) -> int:
    from ..calculators.n2p2 import export_n2p2, export_n2p2_members, format_members

    export = export_n2p2_members if args.separate_members else export_n2p2
    summary = export(args.model, args.out, members=args.members, table_points=args.table_points,
                     table_r_min=args.table_rmin, lammps_dir=args.lammps_dir)
    layers = " x ".join(str(n) for n in summary["layers"])
    if args.separate_members:
        layers = f"{len(summary['members'])} networks of {layers}"
    funcs = ", ".join(f"{el} {n}" for el, n in summary["n_functions"].items())
    print(f"wrote {args.out}: members {format_members(summary['members'])}, symmetry functions {funcs}, "
          f"network {layers}, cut-off {summary['cutoff']:g} Å"
          + (f"; pair baseline in repulsion.table ({', '.join(summary['tables'])})" if summary["tables"] else ""))
    print("LAMMPS input lines (also in lammps.in.snippet):")
    for line in summary["lammps"]:
        print("  " + line)
    return 0
