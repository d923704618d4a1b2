"""Command-line interface: ``python -m bpnn_jax`` / ``bpnn-jax``.

Each subcommand lives in its own module (``train`` in :mod:`.train`,
``check-forces`` in :mod:`.check_forces`, ...) as a pair of functions
registered in :data:`COMMANDS`:

* ``add_<name>_parser(subparsers)`` adds the subcommand's parser and its
  arguments and returns the parser;
* ``cmd_<name>(args) -> int`` runs it and returns the exit status.

Helpers shared by several commands are in :mod:`.common`.  To add a
subcommand, write both functions in a new module and add one entry to
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

from ..errors import BPNNError
from . import (
    check_forces,
    energies,
    evaluate,
    export_lammps,
    export_n2p2,
    featurize,
    merge,
    predict,
    train,
)

#: name -> (add_parser(subparsers) -> parser, run(args) -> exit status)
COMMANDS: dict[str, tuple[Callable[..., argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "energies": (energies.add_energies_parser, energies.cmd_energies),
    "featurize": (featurize.add_featurize_parser, featurize.cmd_featurize),
    "train": (train.add_train_parser, train.cmd_train),
    "evaluate": (evaluate.add_evaluate_parser, evaluate.cmd_evaluate),
    "predict": (predict.add_predict_parser, predict.cmd_predict),
    "check-forces": (check_forces.add_check_forces_parser, check_forces.cmd_check_forces),
    "export-lammps": (export_lammps.add_export_lammps_parser, export_lammps.cmd_export_lammps),
    "export-n2p2": (export_n2p2.add_export_n2p2_parser, export_n2p2.cmd_export_n2p2),
    "merge": (merge.add_merge_parser, merge.cmd_merge),
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
