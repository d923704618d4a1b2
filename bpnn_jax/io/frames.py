"""Structure files in any format: XSF or anything ASE reads, one frame or many, and where their labels are.

Frames read through ASE get their energy, forces and stress from ASE's
single-point results or from the keys of :class:`FrameKeys`; every frame is
named ``FILE@INDEX`` and checked (finite positions, cell and labels).
Units: eV, Å, eV/Å, eV/Å³.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ..errors import BPNNInputError, XSFError
from ..units import stress_voigt
from .xsf import read_xsf

__all__ = [
    "DIRECTORY_SUFFIXES",
    "ENERGY_KEYS",
    "FORCES_KEYS",
    "STRESS_KEYS",
    "VIRIAL_KEYS",
    "FrameKeys",
    "find_xsf_files",
    "read_frames",
    "read_structures",
]


#: File suffixes a directory contributes (XSF, and extended XYZ read by ASE).
DIRECTORY_SUFFIXES = (".xsf", ".extxyz")


def find_xsf_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into a list of structure files.

    Args:
        paths: files and/or directories (a single path is accepted too).  A
            file is taken as given, whatever its extension; a directory
            contributes its ``*.xsf`` and ``*.extxyz`` files (not recursive),
            sorted by name.

    Returns:
        The files, in the order of ``paths``, each directory's files sorted;
        a file met twice is listed once (at its first place).

    Raises:
        XSFError: a path that does not exist.
        BPNNInputError: no paths, or a directory without ``.xsf`` files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise BPNNInputError("no input paths given")
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        try:
            key = p.resolve()
        except (OSError, RuntimeError):
            key = p
        if key not in seen:
            seen.add(key)
            found.append(p)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            try:
                files = sorted(
                    (q for q in p.iterdir() if q.suffix.lower() in DIRECTORY_SUFFIXES and q.is_file()),
                    key=lambda q: q.name,
                )
            except OSError as exc:
                raise BPNNInputError(f"{p}: cannot list directory: {exc.strerror or exc}") from exc
            if not files:
                raise BPNNInputError(f"{p}: directory contains no .xsf files (and no .extxyz files)")
            for q in files:
                add(q)
        elif p.exists() or _frame_reference(p) is not None:
            add(p)
        else:
            raise XSFError(str(p), "no such file or directory")
    return found


#: info / arrays keys tried, in order, for energies and forces of frames read by ASE.
ENERGY_KEYS = ("energy", "REF_energy", "total_energy", "dft_energy")
FORCES_KEYS = ("forces", "REF_forces", "dft_forces")
#: ``info`` keys looked for (in order) for the stress (eV/Å³, ASE's sign:
#: tensile positive; 6 Voigt or 9 components) when ASE's results have none.
STRESS_KEYS = ("stress", "REF_stress", "dft_stress")
#: ``info`` keys of the virial W = −σ V (eV), used when there is no stress.
VIRIAL_KEYS = ("virial", "REF_virial", "dft_virial")


@dataclasses.dataclass(frozen=True)
class FrameKeys:
    """Where the labels of a frame read through ASE are.

    None looks at ASE's single-point results first, then the default keys
    (:data:`ENERGY_KEYS`, :data:`FORCES_KEYS`, :data:`STRESS_KEYS` /
    :data:`VIRIAL_KEYS`).  A name looks only there: ``info[energy]`` (or
    a calculator result of that name), ``arrays[forces]``,
    ``info[stress]`` (a key containing "virial" is read as a virial, eV).
    """

    energy: str | None = None
    forces: str | None = None
    stress: str | None = None



def _frame_reference(path: Path) -> tuple[Path, int] | None:
    """(file, index) for a name ``FILE@INDEX`` whose FILE exists (and the name itself does not)."""
    m = re.fullmatch(r"(.+)@(\d+)", str(path))
    if m is None or path.exists() or not Path(m.group(1)).is_file():
        return None
    return Path(m.group(1)), int(m.group(2))


def read_frames(path: str | os.PathLike, *, require_energy: bool = False, keys: FrameKeys | None = None) -> list[Atoms]:
    """Every structure of one file: XSF (one frame) or any format ASE reads (extended XYZ, ...).

    ``path`` may also be ``FILE@INDEX``, one frame of a multi-frame file, as
    the frames are named in errors, CSV and JSON (and in a run's
    ``split.json``).

    Frames read by ASE are named ``FILE@INDEX`` (``atoms.info["file"]``).
    The energy (eV) comes from ASE's single-point results or the first of
    :data:`ENERGY_KEYS` in ``info``, the forces (eV/Å) from the results or
    the first of :data:`FORCES_KEYS` in ``arrays``; both are attached as a
    :class:`~ase.calculators.singlepoint.SinglePointCalculator` and the
    energy also as ``info["energy"]``, as :func:`read_xsf` does.  The
    stress (eV/Å³, ASE's convention) comes from the results, the first of
    :data:`STRESS_KEYS`, or a virial (:data:`VIRIAL_KEYS`, eV, σ = −W/V)
    and is attached too.  ``keys`` names other places (:class:`FrameKeys`).

    Raises:
        XSFError: the file cannot be parsed (naming the file, and the line
            where ASE gives one), a frame has non-finite positions, cell,
            energy or forces, or (``require_energy``) no energy; the message
            names the frame as ``FILE@INDEX``.
    """
    path = Path(path)
    ref = _frame_reference(path)
    if ref is not None:  # FILE@INDEX: one frame of a multi-frame file
        base, index = ref
        frames = read_frames(base, require_energy=require_energy, keys=keys)
        if index >= len(frames):
            raise XSFError(str(path), f"no frame {index} ({base} has {len(frames)})")
        return [frames[index]]
    if path.suffix.lower() == ".xsf":
        return [read_xsf(path, require_energy=require_energy)]
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ASE raises many types for bad files; all mean "cannot parse"
        text = str(exc) or type(exc).__name__
        line = None
        m = re.search(r"line (\d+)", text)
        if m:
            line = int(m.group(1))
        raise XSFError(str(path), f"cannot read as {path.suffix.lstrip('.') or 'a structure file'} "
                                  f"({type(exc).__name__}: {text})", line) from None
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise XSFError(str(path), "no structures in the file")
    keys = keys or FrameKeys()
    out = []
    for k, atoms in enumerate(frames):
        name = f"{path}@{k}"
        results = dict(getattr(atoms.calc, "results", None) or {})
        energy = _label(results, atoms.info, keys.energy, ENERGY_KEYS, "energy")
        forces = _label(results, atoms.arrays, keys.forces, FORCES_KEYS, "forces")
        if not np.all(np.isfinite(atoms.positions)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(atoms.positions), axis=1))[0])
            raise XSFError(name, f"atom {bad} has a non-finite position")
        if np.any(atoms.pbc) and not np.all(np.isfinite(atoms.cell.array)):
            raise XSFError(name, "non-finite cell")
        if energy is not None:
            try:
                energy = float(energy)
            except (TypeError, ValueError):
                raise XSFError(name, f"energy {energy!r} is not a number") from None
            if not math.isfinite(energy):
                raise XSFError(name, f"non-finite energy {energy}")
        elif require_energy:
            where = (f"info key {keys.energy!r}" if keys.energy else
                     f"calculator results and info keys {', '.join(ENERGY_KEYS)}")
            raise XSFError(name, f"no energy (looked for {where})")
        if forces is not None:
            forces = np.asarray(forces, np.float64)
            if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
                raise XSFError(name, f"forces must be {len(atoms)} x 3 finite numbers")
        volume = float(abs(np.linalg.det(atoms.cell.array))) if np.all(atoms.pbc) else None
        stress = None
        if keys.stress is not None:
            raw = _label(results, atoms.info, keys.stress, (), "stress")
            if raw is not None:
                stress = stress_voigt(raw, name, volume, virial="virial" in keys.stress.lower())
        else:
            raw = results.get("stress")
            if raw is None:
                raw = next((atoms.info[key] for key in STRESS_KEYS if key in atoms.info), None)
            if raw is not None:
                stress = stress_voigt(raw, name, volume, virial=False)
            else:
                raw = next((atoms.info[key] for key in VIRIAL_KEYS if key in atoms.info), None)
                if raw is not None:
                    stress = stress_voigt(raw, name, volume, virial=True)
        clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        clean.info["file"] = name
        if energy is not None:
            clean.info["energy"] = energy
        clean.calc = SinglePointCalculator(clean, energy=energy, forces=forces, stress=stress)
        out.append(clean)
    return out


def _label(results: dict, store: Mapping, key: str | None, defaults: Sequence[str], what: str):
    """A frame's label: ``key`` only (results or ``store``), or the results then ``defaults``."""
    if key is not None:
        if key in store:
            return store[key]
        if key in results:
            return results[key]
        return None
    if results.get(what) is not None:
        return results[what]
    return next((store[k] for k in defaults if k in store), None)


def read_structures(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    require_energy: bool = False,
    skip_invalid: bool = False,
    progress: bool = False,
    keys: FrameKeys | None = None,
) -> tuple[list[Atoms], list[tuple[str, str]]]:
    """Read every XSF file under ``paths`` (see :func:`find_xsf_files`).

    Args:
        paths: files and/or directories.
        require_energy: passed to :func:`read_xsf`.
        keys: where ASE-format frames keep their labels (:class:`FrameKeys`).
        skip_invalid: if True, files that fail to parse are skipped and
            reported in the second return value; if False the first bad
            file raises.
        progress: show a tqdm progress bar on stderr.

    Returns:
        ``(structures, skipped)``: the structures read (in file order) and a
        list of ``(file, reason)`` for skipped files; the reason includes
        the line number where there is one.

    Raises:
        XSFError: a bad file (unless ``skip_invalid``), a missing path.
        BPNNInputError: no paths, or a directory without ``.xsf`` files.
    """
    files = find_xsf_files(paths)
    iterator: Iterable[Path] = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="reading XSF", unit="file", file=sys.stderr)
    structures: list[Atoms] = []
    skipped: list[tuple[str, str]] = []
    for f in iterator:
        try:
            structures.extend(read_frames(f, require_energy=require_energy, keys=keys))
        except XSFError as exc:
            if not skip_invalid:
                raise
            reason = exc.reason if exc.line is None else f"line {exc.line}: {exc.reason}"
            skipped.append((str(f), reason))
    return structures, skipped
