"""``energies``: total and cohesive energies of structure files as CSV.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import BPNNInputError
from .common import add_key_args, frame_keys, parse_reference


def add_energies_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "energies",
        help="tabulate total and cohesive energies of structure files as CSV",
        description=(
            "Read structure files (extended XYZ, any ASE format, or XSF; each needs an energy, in XSF a "
            "'# total energy = X eV' line) and write a CSV "
            "with columns file, n_atoms, composition, energy_ev, energy_per_atom_ev and "
            "cohesive_energy_per_atom_ev = (E - sum of free-atom reference energies) / N, "
            "all in eV. Default references: aenet's TiO2 values "
            "(O -432.503149303 eV, Ti -1604.604515075 eV)."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="structure files (extended XYZ, any ASE format, XSF) or directories")
    p.add_argument("--out", "-o", required=True, metavar="FILE.csv", help="CSV file to write (atomically)")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip files that cannot be read (listed on stderr) instead of stopping at the first",
    )
    p.add_argument(
        "--ref",
        action="append",
        type=parse_reference,
        default=[],
        metavar="SYMBOL=EV",
        help="free-atom reference energy in eV (repeatable); replaces the TiO2 defaults when given",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    add_key_args(p)
    return p


def cmd_energies(args: argparse.Namespace) -> int:
    from ..io.energies import REFERENCE_ENERGIES_TIO2, energy_table, write_energy_csv
    from ..io.frames import read_structures

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    references = dict(args.ref) if args.ref else dict(REFERENCE_ENERGIES_TIO2)
    structures, skipped = read_structures(
        args.paths, require_energy=True, skip_invalid=args.skip_invalid, progress=progress,
        keys=frame_keys(args),
    )
    for path, reason in skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if not structures:
        raise BPNNInputError(f"no readable structures among {len(skipped)} file(s); nothing written")
    rows = energy_table(structures, references)
    write_energy_csv(args.out, rows)
    msg = f"wrote {len(rows)} structure(s) to {args.out}"
    if skipped:
        msg += f"; skipped {len(skipped)} invalid file(s)"
    print(msg, file=sys.stderr)
    return 0
