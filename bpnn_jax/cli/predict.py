"""``predict``: energies (and forces) of structure files.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse

from .common import check_output, interactive, read_inputs


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predict energies (and forces) of structure files",
        description="Write a CSV with file, n_atoms, energy_ev (DFT scale) and energy_per_atom_ev.",
    )
    p.add_argument("model", metavar="MODEL", help="a .keras file or a shipped model name (e.g. tio2)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="structure files or directories (energies not needed)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="CSV to write")
    p.add_argument("--forces", metavar="FILE.xyz", help="also write structures with predicted energy and forces (extended XYZ)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="evaluate descriptors and networks in this precision (default: the model's)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid files (unreadable, elements the model lacks, overlapping atoms), listed on "
                        "stderr; by default the first stops the command before any output")
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    import csv

    import numpy as np

    from ..descriptors.batch import prepare_structures
    from ..io.atomic import atomic_write
    from ..model.bpnn import load_model, total_energy
    from ..training import predict_structures

    check_output(args.out)
    check_output(args.forces)
    model = load_model(args.model, dtype=args.dtype)
    atoms = read_inputs(args.paths, model, args.model, require_energy=False, skip_invalid=args.skip_invalid)
    hs = prepare_structures(atoms, model.elements, model.spec.cutoff, progress=interactive())
    e_rel, forces, e_std, _ = predict_structures(model, hs, forces=bool(args.forces), progress=interactive(),
                                                 dtype=np.dtype(model.compute_dtype or "float32"), uncertainty=True)
    energy = total_energy(model, e_rel, [a.get_chemical_symbols() for a in atoms])
    committee = model.members > 1
    with atomic_write(args.out, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "n_atoms", "energy_ev", "energy_per_atom_ev"] + (["energy_std_ev"] if committee else []))
        for a, e, sd in zip(atoms, energy, e_std):
            w.writerow([a.info.get("file", ""), len(a), f"{e:.8f}", f"{e / len(a):.8f}"]
                       + ([f"{sd:.6f}"] if committee else []))
    if args.forces:
        import ase.io
        from ase.calculators.singlepoint import SinglePointCalculator

        frames = []
        for a, e, f in zip(atoms, energy, forces):
            b = a.copy()
            b.calc = SinglePointCalculator(b, energy=float(e), forces=np.asarray(f))
            frames.append(b)
        with atomic_write(args.forces) as fh:
            ase.io.write(fh, frames, format="extxyz")
    print(f"wrote {args.out}" + (f" and {args.forces}" if args.forces else ""))
    return 0
