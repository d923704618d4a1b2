"""``featurize``: descriptors of structure files into an ``.npz`` file.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import BPNNInputError


def add_featurize_parser(subparsers) -> argparse.ArgumentParser:
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


def cmd_featurize(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from ..descriptors.featurize import featurize_files, save_features
    from ..descriptors.symmetry import SymmetryFunctionSet

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
