"""Command-line interface: ``python -m bpnn_jax`` / ``bpnn-jax``.

Each subcommand is a pair of functions registered in :data:`COMMANDS`:

* ``_add_<name>_parser(subparsers)`` adds the subcommand's parser and its
  arguments and returns the parser;
* ``_cmd_<name>(args) -> int`` runs it and returns the exit status.

To add a subcommand, write both functions and add one entry to
:data:`COMMANDS`.  Command functions import heavy modules (JAX, Keras) inside
their bodies so that ``--help`` stays quick.

Errors that are the user's (:class:`bpnn_jax.errors.BPNNError`, unreadable
or unwritable files) are printed as ``error: <message>`` on stderr without a
traceback, with exit status 2; Ctrl-C gives exit status 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..errors import BPNNError, BPNNInputError
from . import export_lammps as cli_lammps
from . import export_n2p2 as cli_n2p2
from . import train as cli_model

# --------------------------------------------------------------------------
# energies
# --------------------------------------------------------------------------


def _add_energies_parser(subparsers) -> argparse.ArgumentParser:
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
        type=cli_model.parse_reference,
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
    cli_model.add_key_args(p)
    return p


def _cmd_energies(args: argparse.Namespace) -> int:
    from ..io.energies import REFERENCE_ENERGIES_TIO2, energy_table, write_energy_csv
    from ..io.frames import read_structures

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    references = dict(args.ref) if args.ref else dict(REFERENCE_ENERGIES_TIO2)
    structures, skipped = read_structures(
        args.paths, require_energy=True, skip_invalid=args.skip_invalid, progress=progress,
        keys=cli_model.frame_keys(args),
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


# --------------------------------------------------------------------------
# featurize
# --------------------------------------------------------------------------


def _add_featurize_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "featurize",
        help="compute descriptors of structure files into an .npz file",
        description=(
            "Compute raw (unnormalised) Behler-Parrinello symmetry functions of every atom of "
            "the given structure files and write them to an .npz file with arrays files, n_atoms, "
            "atom_offset, species (element symbol per atom), sf (total_atoms x n_functions; "
            "atoms in file order, structures in the order given, directories sorted by name), "
            "elements, cutoff (Å) and the column description fn_center, fn_kind, fn_neighbors, "
            "fn_eta (1/Å^2), fn_rs (Å), fn_lambda, fn_zeta, fn_rc (Å): the layout of aenet's "
            "reference file. Load with numpy.load(FILE, allow_pickle=False)."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="structure files (extended XYZ, any ASE format, XSF) or directories")
    p.add_argument(
        "--out", "-o", required=True, metavar="FILE.npz",
        help="output file, written atomically and exactly at this name (no suffix is added)",
    )
    p.add_argument(
        "--preset", "--descriptors", default="auto", metavar="NAME|FILE",
        help="descriptor set: auto (default: artrith-urban, the 70-function TiO2 set of aenet, for O/Ti "
             "data; imbalzano otherwise), artrith-urban, imbalzano (alias general), chebyshev (aenet's Chebyshev "
             "basis: 44 functions for any number of elements), or a JSON/YAML parameter file",
    )
    p.add_argument(
        "--elements", nargs="+", default=None, metavar="SYMBOL",
        help="element order of the columns (default: O Ti when the data hold only those, "
        "otherwise the elements found, sorted by symbol)",
    )
    p.add_argument(
        "--dtype", default="float64", choices=["float32", "float64"],
        help="precision of the computation and of the stored values (default: float64)",
    )
    p.add_argument(
        "--skip-invalid", action="store_true",
        help="skip files that cannot be read (listed on stderr) instead of stopping at the first",
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show progress bars on stderr (default: when stderr is a terminal)",
    )
    return p


def _cmd_featurize(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from ..descriptors.symmetry import SymmetryFunctionSet
    from ..descriptors.featurize import featurize_files, save_features

    out = Path(args.out)
    if not out.parent.is_dir():  # fail before the (long) computation
        raise BPNNInputError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise BPNNInputError(f"cannot write {out}: it is a directory")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    features = featurize_files(
        args.paths,
        preset=args.preset,
        elements=args.elements,
        dtype=np.dtype(args.dtype),
        progress=progress,
        skip_invalid=args.skip_invalid,
    )
    for path, reason in features.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    save_features(args.out, features)
    n_atoms = int(features.n_atoms.sum())
    kind = "symmetry functions" if isinstance(features.spec, SymmetryFunctionSet) else "descriptor columns"
    msg = (
        f"wrote {features.spec.n_functions} {kind} of {n_atoms} atom(s) in "
        f"{len(features.files)} structure(s) to {args.out}"
    )
    if features.skipped:
        msg += f"; skipped {len(features.skipped)} invalid file(s)"
    print(msg, file=sys.stderr)
    return 0


# --------------------------------------------------------------------------
# registry and entry point
# --------------------------------------------------------------------------

#: name -> (add_parser(subparsers) -> parser, run(args) -> exit status)
COMMANDS: dict[str, tuple[Callable[..., argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "energies": (_add_energies_parser, _cmd_energies),
    "featurize": (_add_featurize_parser, _cmd_featurize),
    "train": (cli_model.add_train_parser, cli_model.cmd_train),
    "evaluate": (cli_model.add_evaluate_parser, cli_model.cmd_evaluate),
    "predict": (cli_model.add_predict_parser, cli_model.cmd_predict),
    "check-forces": (cli_model.add_check_forces_parser, cli_model.cmd_check_forces),
    "export-lammps": (cli_lammps.add_export_lammps_parser, cli_lammps.cmd_export_lammps),
    "export-n2p2": (cli_n2p2.add_export_n2p2_parser, cli_n2p2.cmd_export_n2p2),
    "merge": (cli_model.add_merge_parser, cli_model.cmd_merge),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="bpnn-jax",
        description="Behler-Parrinello neural-network potentials in JAX (units: eV, Å, eV/Å).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_parser, run) in COMMANDS.items():
        sub = add_parser(subparsers)
        sub.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` if None.

    Returns:
        Exit status: 0 on success, 2 for usage errors and for input errors
        (message ``error: ...`` on stderr, no traceback), 130 on Ctrl-C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    try:
        return int(args._run(args))
    except BPNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
