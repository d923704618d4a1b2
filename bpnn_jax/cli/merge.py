"""``merge``: trained committees merged into one committee.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse

from .common import check_output, member_list, read_inputs, split_files


def add_merge_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "merge",
        help="merge trained committees (any descriptor sets) into one committee",
        description=(
            "Write one committee holding every member of the MODELs (same elements, hidden layers, activation "
            "and reference energies; descriptor sets may differ: the merged model computes each one, and each "
            "member reads its own). Its energy is the mean over all members, its spread their standard "
            "deviation. The extrapolation threshold is calibrated afresh on the structures of --calibrate "
            "(PATHs) and/or --split (a training run's validation part), by the rule of train."
        ),
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="two or more .keras files or shipped model names (one with --members)")
    p.add_argument("--out", required=True, metavar="FILE.keras", help="model to write")
    p.add_argument("--members", type=member_list, default=None, metavar="LIST",
                   help="keep only these members of the merged committee, numbered from 1 in MODEL order, e.g. "
                        "1-5,16-25 (descriptor sets that no kept member reads are dropped)")
    p.add_argument("--split", metavar="RUN_DIR/split.json[:NAME]", default=None,
                   help="calibrate the threshold on this part of a run's split (NAME default val)")
    p.add_argument("--calibrate", nargs="+", default=(), metavar="PATH",
                   help="calibrate the threshold on these structures (XSF, extended XYZ, directories)")
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid calibration files")
    return p


def cmd_merge(args: argparse.Namespace) -> int:
    from ..descriptors.batch import prepare_structures
    from ..errors import BPNNInputError, ModelError
    from ..model.bpnn import load_model
    from ..model.ensemble import merge_committees, select_members
    from ..training import spread_threshold

    check_output(args.out)
    if len(args.models) < 2 and args.members is None:
        raise BPNNInputError("merge needs two or more MODELs (or --members to take some of one's)")
    models = [load_model(m) for m in args.models]
    merged = merge_committees(models) if len(models) > 1 else models[0]
    if args.members is not None:
        try:
            merged = select_members(merged, args.members)
        except ModelError:  # its message counts from 0; --members counts from 1
            raise BPNNInputError(f"--members: give distinct member numbers from 1 to {merged.members} (the "
                                 f"committee of {' + '.join(args.models)} has {merged.members})") from None
    paths = list(args.calibrate) + (split_files(args.split, default="val") if args.split else [])
    if paths:
        atoms = read_inputs(paths, merged, "(merged)", require_energy=False, skip_invalid=args.skip_invalid)
        hosts = prepare_structures(atoms, merged.elements, merged.spec.cutoff)
        merged.uncertainty_threshold = spread_threshold(merged, hosts)
    from ..training.run_state import atomic_save

    atomic_save(merged, args.out)
    thr = ("no extrapolation threshold (give --split or --calibrate)" if merged.uncertainty_threshold is None
           else f"extrapolation threshold {1000 * merged.uncertainty_threshold:.1f} meV/atom from {len(paths)} "
                f"structure(s)")
    print(f"wrote {args.out}: {merged.members} members; {merged.spec.describe()}; {thr}")
    return 0
