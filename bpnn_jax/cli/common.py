"""Helpers shared by the commands: label keys, reference energies, input checks, member lists, splits."""

from __future__ import annotations

import argparse


def add_key_args(p) -> None:
    """``--energy-key``, ``--forces-key``, ``--stress-key`` (labels of ASE-format frames)."""
    g = p.add_argument_group("labels of extended XYZ / ASE frames (default: ASE's results, then the usual keys)")
    g.add_argument("--energy-key", default=None, metavar="KEY", help="info key of the energy, eV")
    g.add_argument("--forces-key", default=None, metavar="KEY", help="arrays key of the forces, eV/Å")
    g.add_argument("--stress-key", default=None, metavar="KEY",
                   help="info key of the stress, eV/Å³ (a key containing 'virial' is read as a virial, eV)")


def frame_keys(args):
    """The :class:`~bpnn_jax.io.FrameKeys` of ``--energy-key`` etc."""
    from ..io.frames import FrameKeys

    return FrameKeys(getattr(args, "energy_key", None), getattr(args, "forces_key", None),
                     getattr(args, "stress_key", None))


def parse_reference(text: str) -> tuple[str, float]:
    """argparse type for ``--ref SYMBOL=EV``."""
    symbol, sep, value = text.partition("=")
    symbol = symbol.strip()
    try:
        energy = float(value)
    except ValueError:
        energy = float("nan")
    if not sep or not symbol or energy != energy or energy in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected SYMBOL=ENERGY_EV (e.g. O=-432.503149303), got {text!r}")
    return symbol, energy


def member_list(text: str) -> list[int]:
    """``1-5,16-25`` -> [0, ..., 4, 15, ..., 24] (1-based inclusive ranges in, 0-based indices out)."""
    out = []
    try:
        for item in text.split(","):
            lo, _, hi = item.strip().partition("-")
            lo, hi = int(lo), int(hi or lo)
            if lo < 1 or hi < lo:
                raise ValueError
            out.extend(range(lo - 1, hi))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give member numbers from 1, e.g. 1-5,16-25") from None
    return out


def split_files(spec: str, default: str = "test") -> list[str]:
    """Files of ``RUN_DIR/split.json[:NAME]`` (NAME ``default`` when not given), resolved like the run saw them."""
    import json
    from pathlib import Path

    from ..errors import BPNNInputError

    path, _, name = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    name = name or default
    p = Path(path)
    if p.is_dir():
        p = p / "split.json"
    try:
        split = json.loads(p.read_text())
    except OSError as exc:
        raise BPNNInputError(f"{p}: cannot read the split file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise BPNNInputError(f"{p}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if name not in split or not isinstance(split[name], list):
        raise BPNNInputError(f"{p}: no split named {name!r} (has: train, val, test)")
    if name == "test" and split.get("trained_on_test"):
        raise BPNNInputError(f"{p}: this run trained on its test split (train --train-on-test): score it on "
                             f"'{path}:val' or on other data")
    if not split[name]:
        raise BPNNInputError(f"{p}: the {name!r} split is empty")
    return [str(f) for f in split[name]]


def interactive() -> bool:
    """Progress bars only on a terminal: logs get no progress-bar debris."""
    import sys

    return sys.stderr.isatty()


# ------------------------------------------------------- input validation
def check_output(path) -> None:
    """Fail before any computation if ``path`` cannot be written."""
    from pathlib import Path

    from ..errors import BPNNInputError

    if path is None:
        return
    out = Path(path)
    if not out.parent.is_dir():
        raise BPNNInputError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise BPNNInputError(f"cannot write {out}: it is a directory")


def _structure_problem(model, model_name: str, atoms) -> str | None:
    """Why ``atoms`` cannot be used with ``model`` (without the file name), or None."""
    from ..descriptors.neighbors import check_geometry
    from ..errors import StructureError

    name = str(atoms.info.get("file", "structure"))
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(model.elements), key=symbols.index)
    if unknown:
        first = symbols.index(unknown[0])
        return (
            f"element(s) {', '.join(unknown)} (first: atom {first}, counting from 0) not among the "
            f"elements {', '.join(model.elements)} of model {model_name}"
        )
    try:
        check_geometry(atoms.positions, atoms.cell.array, atoms.pbc, name=name, symbols=symbols)
    except StructureError as exc:
        text = str(exc)
        return text[len(name) + 2 :] if text.startswith(f"{name}: ") else text
    return None


def read_inputs(paths, model, model_name: str, *, require_energy: bool, skip_invalid: bool, keys=None):
    """Read every structure and check it against the model, before any output.

    Every file is read and checked (XSF syntax, energy line when
    ``require_energy``, elements known to the model, geometry), so that one
    run reports all bad files.  Without ``skip_invalid`` any bad file stops
    the command with the first problem (file, line, reason) and the number
    of others; with it, bad files are listed on stderr and skipped.

    Returns:
        The valid structures, in file order.

    Raises:
        BPNNInputError: a bad file (without ``skip_invalid``), no valid
            structure at all, a missing path or an empty directory.
    """
    import sys

    from ..errors import BPNNInputError, XSFError
    from ..io.frames import find_xsf_files, read_frames

    files = find_xsf_files(paths)
    good, bad = [], []  # bad: (file or FILE@INDEX, reason without the file, full message)
    for f in files:
        try:
            frames = read_frames(f, require_energy=require_energy, keys=keys)
        except XSFError as exc:
            reason = exc.reason if exc.line is None else f"line {exc.line}: {exc.reason}"
            bad.append((exc.path or str(f), reason, str(exc)))
            continue
        for atoms in frames:
            name = atoms.info.get("file", str(f))
            problem = _structure_problem(model, model_name, atoms)
            if problem is None:
                good.append(atoms)
            else:
                bad.append((name, problem, f"{name}: {problem}"))
    if bad and not skip_invalid:
        msg = bad[0][2]
        if len(bad) > 1:
            others = ", ".join(b[0] for b in bad[1:4]) + (", ..." if len(bad) > 4 else "")
            msg += f" (and {len(bad) - 1} more invalid file(s): {others})"
        raise BPNNInputError(f"{msg}; nothing written (--skip-invalid skips invalid files)")
    for name, reason, _ in bad:
        print(f"warning: skipped {name}: {reason}", file=sys.stderr)
    if not good:
        raise BPNNInputError(f"no valid structures among {len(files)} file(s); nothing written")
    if bad:
        print(f"skipped {len(bad)} invalid file(s) of {len(files)}", file=sys.stderr)
    return good
