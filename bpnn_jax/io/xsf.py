"""Reading and writing XSF structure files, energy tables and atomic writes.

This module depends on numpy and ASE only (no JAX, no Keras), so that it can
be imported cheaply by the command-line interface and by data tools.

Units throughout: energies in eV, lengths (cell vectors, positions) in Å,
forces in eV/Å.

The XSF dialect read here is the one used by aenet and by the TiO2 data set::

    # total energy = -19960.66173260 eV

    CRYSTAL
    PRIMVEC
        5.934  0.000  0.000          <- cell vectors as rows, Å
        0.000  9.297  0.000
        0.000  0.000  4.649
    PRIMCOORD
    24 1                             <- number of atoms, then 1
    Ti  x y z  fx fy fz              <- Cartesian Å, optional forces in eV/Å

A non-periodic structure uses an ``ATOMS`` block instead of
``CRYSTAL``/``PRIMVEC``/``PRIMCOORD``: every following line is one atom.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, chemical_symbols

from ..errors import BPNNInputError, XSFError
from ..units import VOIGT

__all__ = [
    "ENERGY_CSV_COLUMNS",
    "REFERENCE_ENERGIES_TIO2",
    "atomic_write",
    "energy_table",
    "find_xsf_files",
    "read_structures",
    "read_xsf",
    "sample_data_dir",
    "read_frames",
    "stress_voigt",
    "voigt_6",
    "structure_energy",
    "write_energy_csv",
    "write_xsf",
]

#: Free-atom reference energies (eV) used by aenet for the TiO2 data set.
REFERENCE_ENERGIES_TIO2: dict[str, float] = {"O": -432.503149303, "Ti": -1604.604515075}

#: Column order of the CSV written by :func:`write_energy_csv`.
ENERGY_CSV_COLUMNS: tuple[str, ...] = (
    "file",
    "n_atoms",
    "composition",
    "energy_ev",
    "energy_per_atom_ev",
    "cohesive_energy_per_atom_ev",
)

#: Cells with ``|det| <`` this (Å^3) are rejected as singular.
MIN_CELL_VOLUME = 1e-6
#: Cells whose volume divided by the product of the vector lengths is below
#: this are rejected as degenerate (vectors almost coplanar).
MIN_CELL_SINE = 1e-6

# A decimal number in plain or scientific notation, ASCII digits only.
# (Python's float() also accepts "1_0", "nan", "infinity" and non-ASCII
# digits; none of those belongs in an XSF file.)
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NONFINITE_RE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_INT_RE = re.compile(r"[+-]?[0-9]+")
# "# total energy = -19960.66173260 eV", tolerant of spacing, case, ":".
_ENERGY_HINT_RE = re.compile(r"total\s*energy", re.IGNORECASE)
_ENERGY_RE = re.compile(r"^#\s*total\s*energy\s*[=:]?\s*(?P<rest>.*)$", re.IGNORECASE)
_KEYWORDS = frozenset({"CRYSTAL", "PRIMVEC", "PRIMCOORD", "CONVVEC", "ATOMS"})
_UNSUPPORTED_KEYWORDS = frozenset(
    {"SLAB", "POLYMER", "MOLECULE", "ANIMSTEPS", "DIM-GROUP"}
)


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a file for writing so that it appears complete or not at all.

    The data go to a temporary file in the same directory as ``path``; when
    the ``with`` block ends without an exception the temporary file is
    flushed, fsync'ed and renamed onto ``path`` with :func:`os.replace`
    (atomic on POSIX and Windows).  If the block raises, the temporary file
    is removed and ``path`` is left untouched.

    Args:
        path: destination file.
        mode: ``"w"`` (text, the default) or ``"wb"`` (binary).
        encoding: text encoding (text mode only).
        newline: passed to :func:`open` (text mode only); use ``""`` for
            the :mod:`csv` module.

    Yields:
        The open file object of the temporary file.

    Raises:
        BPNNInputError: if ``mode`` is not a write mode, the destination
            directory does not exist or the temporary file cannot be created.

    Example:
        >>> with atomic_write("energies.csv", newline="") as fh:  # doctest: +SKIP
        ...     fh.write("file,energy_ev\\n")
    """
    if mode not in ("w", "wt", "wb"):
        raise BPNNInputError(f"atomic_write: mode must be 'w', 'wt' or 'wb', not {mode!r}")
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise BPNNInputError(f"cannot write {path}: directory {parent} does not exist")
    if path.is_dir():
        raise BPNNInputError(f"cannot write {path}: it is a directory")
    tmp = parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        # 0o666 filtered by the umask: the same permissions as open() gives.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise BPNNInputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    binary = "b" in mode
    try:
        if binary:
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# --------------------------------------------------------------------------
# XSF reading
# --------------------------------------------------------------------------


class _Lines:
    """Cursor over the lines of an XSF file that skips blanks and comments."""

    def __init__(self, path: str, lines: list[str]):
        self.path = path
        self.lines = lines
        # number of the last line (a final newline does not start a new line)
        self.last_line = max(1, len(lines) - (1 if lines and lines[-1] == "" else 0))
        self.i = 0  # index of the next line to look at

    def next_data(self) -> tuple[int, str] | None:
        """Return (1-based line number, stripped text) of the next data line."""
        while self.i < len(self.lines):
            text = self.lines[self.i].strip()
            self.i += 1
            if text and not text.startswith("#"):
                return self.i, text
        return None

    def peek_data(self) -> tuple[int, str] | None:
        """Like :meth:`next_data` but without consuming the line."""
        save = self.i
        item = self.next_data()
        self.i = save
        return item

    def error(self, reason: str, line: int | None = None) -> XSFError:
        """An :class:`XSFError` for this file (to be raised by the caller)."""
        return XSFError(self.path, reason, line=line)


def _is_keyword(text: str) -> bool:
    first = text.split()[0].upper()
    return first in _KEYWORDS or first in _UNSUPPORTED_KEYWORDS or first.startswith("BEGIN_")


def _parse_float(cur: _Lines, token: str, what: str, line: int) -> float:
    """Parse one strict decimal number, rejecting NaN/inf and junk."""
    shown = repr(token) if len(token) <= 40 else repr(token[:40]) + "..."
    if _NONFINITE_RE.fullmatch(token):
        raise cur.error(f"non-finite {what} {shown}", line)
    if not _NUMBER_RE.fullmatch(token):
        raise cur.error(f"non-numeric {what} {shown}", line)
    value = float(token)
    if not math.isfinite(value):  # e.g. 1e400 overflows to inf
        raise cur.error(f"non-finite {what} {shown} (overflows float64)", line)
    return value


def _parse_element(cur: _Lines, token: str, line: int) -> int:
    """Atomic number from a chemical symbol or an atomic number."""
    if _INT_RE.fullmatch(token):
        z = int(token)
        if 1 <= z < len(chemical_symbols):
            return z
        raise cur.error(f"unknown element: atomic number {token!r} is not in 1..{len(chemical_symbols) - 1}", line)
    if token.isascii() and token.isalpha() and 1 <= len(token) <= 3:
        symbol = token[0].upper() + token[1:].lower()
        z = atomic_numbers.get(symbol, 0)
        if z > 0:
            return z
    shown = token if len(token) <= 40 else token[:40] + "..."
    raise cur.error(f"unknown element {shown!r} (expected a chemical symbol such as 'Ti' or an atomic number)", line)


def _parse_atom_line(
    cur: _Lines, line: int, text: str, index: int, ncols: int | None
) -> tuple[int, list[float], list[float] | None, int]:
    """Parse ``Sym x y z [fx fy fz]``; returns (Z, position, force, ncols)."""
    tokens = text.split()
    n = len(tokens)
    if n not in (4, 7):
        raise cur.error(
            f"atom {index + 1} has {n} columns; expected 4 (symbol x y z) or "
            f"7 (symbol x y z fx fy fz)",
            line,
        )
    if ncols is not None and n != ncols:
        raise cur.error(
            f"atom {index + 1} has {n} columns but the atoms before it have {ncols}; "
            "forces must be given for all atoms or for none",
            line,
        )
    z = _parse_element(cur, tokens[0], line)
    pos = [_parse_float(cur, t, f"{ax} coordinate of atom {index + 1}", line) for ax, t in zip("xyz", tokens[1:4])]
    force = None
    if n == 7:
        force = [
            _parse_float(cur, t, f"force component f{ax} of atom {index + 1}", line)
            for ax, t in zip("xyz", tokens[4:7])
        ]
    return z, pos, force, n


def _parse_energy(cur: _Lines) -> float | None:
    """Find the ``# total energy = X eV`` comment.

    Returns:
        The energy in eV, or None if no comment mentions a total energy.

    Raises:
        XSFError: a total-energy comment that cannot be read, a second one,
            a unit other than eV, or a non-finite value.
    """
    energy: float | None = None
    energy_line: int | None = None
    for i, raw in enumerate(cur.lines):
        text = raw.strip()
        if not text.startswith("#") or not _ENERGY_HINT_RE.search(text):
            continue
        lineno = i + 1
        if energy_line is not None:
            raise cur.error(f"second total-energy line (the first is line {energy_line})", lineno)
        m = _ENERGY_RE.match(text)
        tokens = m.group("rest").split() if m else []
        if len(tokens) == 1 and len(tokens[0]) > 2 and tokens[0][-2:].lower() == "ev":
            tokens = [tokens[0][:-2], "eV"]  # "-19960.66eV"
        if not 1 <= len(tokens) <= 2:
            shown = text if len(text) <= 80 else text[:80] + "..."
            raise cur.error(f"malformed energy line {shown!r}; expected '# total energy = <value> eV'", lineno)
        if len(tokens) == 2 and tokens[1].lower() != "ev":
            raise cur.error(f"energy unit {tokens[1][:20]!r} is not supported; expected eV", lineno)
        energy = _parse_float(cur, tokens[0], "total energy", lineno)
        energy_line = lineno
    return energy


def _check_cell(cur: _Lines, cell: np.ndarray, line: int) -> None:
    det = float(np.linalg.det(cell))
    lengths = np.linalg.norm(cell, axis=1)
    shown = "[" + ", ".join("[" + ", ".join(f"{v:.6g}" for v in row) + "]" for row in cell) + "]"
    if not math.isfinite(det) or abs(det) < MIN_CELL_VOLUME:
        raise cur.error(f"singular cell {shown} Å (volume {det:.3g} Å^3)", line)
    prod = float(np.prod(lengths))
    if not math.isfinite(prod) or abs(det) / prod < MIN_CELL_SINE:
        raise cur.error(f"degenerate cell {shown} Å (vectors almost coplanar, volume {det:.3g} Å^3)", line)


def _read_vectors(cur: _Lines, keyword: str) -> np.ndarray:
    """Read the 3 rows (Å) that follow PRIMVEC or CONVVEC."""
    rows = []
    for r in range(3):
        item = cur.next_data()
        if item is None:
            raise cur.error(f"truncated file: {keyword} needs 3 rows, found {r}", cur.last_line)
        line, text = item
        if _is_keyword(text):
            raise cur.error(f"{keyword} needs 3 rows, found {r} before {text.split()[0]!r}", line)
        tokens = text.split()
        if len(tokens) != 3:
            raise cur.error(f"{keyword} row {r + 1} has {len(tokens)} columns; expected 3", line)
        rows.append([_parse_float(cur, t, f"{keyword} row {r + 1} component", line) for t in tokens])
    return np.array(rows, dtype=np.float64)


def _read_atom_block(
    cur: _Lines, count: int | None, kw_line: int, keyword: str
) -> tuple[list[int], np.ndarray, np.ndarray | None]:
    """Read atom lines: ``count`` of them, or (count None) up to a keyword/EOF.

    Returns:
        (atomic numbers, positions (N, 3) in Å, forces (N, 3) in eV/Å or None).
    """
    numbers: list[int] = []
    positions: list[list[float]] = []
    forces: list[list[float]] = []
    ncols: int | None = None
    while count is None or len(numbers) < count:
        item = cur.peek_data()
        if item is None or _is_keyword(item[1]):
            if count is None:
                break
            where = cur.last_line if item is None else item[0]
            stop = "end of file" if item is None else f"{item[1].split()[0]!r}"
            raise cur.error(
                f"truncated {keyword} block: found {len(numbers)} atom lines but "
                f"{count} were declared (line {kw_line}) before {stop}",
                where,
            )
        cur.next_data()
        line, text = item
        z, pos, force, ncols = _parse_atom_line(cur, line, text, len(numbers), ncols)
        numbers.append(z)
        positions.append(pos)
        if force is not None:
            forces.append(force)
    if not numbers:
        raise cur.error(f"{keyword} block has no atoms", kw_line)
    pos_arr = np.array(positions, dtype=np.float64).reshape(-1, 3)
    f_arr = np.array(forces, dtype=np.float64).reshape(-1, 3) if ncols == 7 else None
    return numbers, pos_arr, f_arr


def _parse_xsf_text(path: str, text: str, require_energy: bool) -> Atoms:
    """Parse decoded XSF text (see :func:`read_xsf`); ``path`` names the file in errors."""
    lines = text.split("\n")
    cur = _Lines(path, lines)
    if not text.strip():
        raise cur.error("empty file", None)

    energy = _parse_energy(cur)

    crystal_line = primvec_line = primcoord_line = atoms_line = None
    primcoord_count: int | None = None
    primcoord_count_line: int | None = None
    cell = None
    numbers = positions = forces = None
    while True:
        item = cur.next_data()
        if item is None:
            break
        line, text_ = item
        keyword = text_.split()[0].upper()
        if keyword in _UNSUPPORTED_KEYWORDS or keyword.startswith("BEGIN_"):
            raise cur.error(f"XSF keyword {text_.split()[0]!r} is not supported (only CRYSTAL and ATOMS structures)", line)
        if keyword not in _KEYWORDS:
            if primcoord_count is not None and len(text_.split()) in (4, 7):
                raise cur.error(
                    f"extra atom line: PRIMCOORD declared {primcoord_count} atoms on line {primcoord_count_line}", line
                )
            shown = text_ if len(text_) <= 60 else text_[:60] + "..."
            raise cur.error(
                f"unexpected line {shown!r} (expected an XSF keyword such as CRYSTAL, PRIMVEC or PRIMCOORD)", line
            )
        if len(text_.split()) != 1:
            # Animated files write e.g. "PRIMVEC 1"; not supported here.
            raise cur.error(f"unexpected text after keyword {keyword} (animated XSF files are not supported)", line)
        if keyword == "CRYSTAL":
            if crystal_line is not None:
                raise cur.error(f"second CRYSTAL keyword (first on line {crystal_line})", line)
            if atoms_line is not None:
                raise cur.error(f"CRYSTAL after an ATOMS block (line {atoms_line}); a file holds one structure", line)
            crystal_line = line
        elif keyword == "ATOMS":
            if atoms_line is not None:
                raise cur.error(f"second ATOMS block (first on line {atoms_line})", line)
            if crystal_line is not None:
                raise cur.error(f"ATOMS block in a CRYSTAL file (CRYSTAL on line {crystal_line}); use PRIMCOORD", line)
            atoms_line = line
            numbers, positions, forces = _read_atom_block(cur, None, line, "ATOMS")
        elif keyword in ("PRIMVEC", "CONVVEC"):
            if crystal_line is None:
                raise cur.error(f"{keyword} before the CRYSTAL keyword", line)
            vectors = _read_vectors(cur, keyword)
            if keyword == "PRIMVEC":
                if primvec_line is not None:
                    raise cur.error(f"second PRIMVEC block (first on line {primvec_line})", line)
                primvec_line = line
                _check_cell(cur, vectors, line)
                cell = vectors
        else:  # PRIMCOORD
            if crystal_line is None:
                raise cur.error("PRIMCOORD before the CRYSTAL keyword", line)
            if primcoord_line is not None:
                raise cur.error(f"second PRIMCOORD block (first on line {primcoord_line})", line)
            primcoord_line = line
            head = cur.next_data()
            if head is None:
                raise cur.error("truncated file: PRIMCOORD is not followed by the line 'N 1'", cur.last_line)
            hline, htext = head
            tokens = htext.split()
            if len(tokens) != 2 or not all(_INT_RE.fullmatch(t) for t in tokens):
                shown = htext if len(htext) <= 60 else htext[:60] + "..."
                raise cur.error(f"expected 'N 1' (number of atoms, 1) after PRIMCOORD, found {shown!r}", hline)
            count = int(tokens[0])
            if count <= 0:
                raise cur.error(f"number of atoms must be positive, found {count}", hline)
            if int(tokens[1]) != 1:
                raise cur.error(f"second number after PRIMCOORD must be 1, found {tokens[1]}", hline)
            primcoord_count, primcoord_count_line = count, hline
            numbers, positions, forces = _read_atom_block(cur, count, hline, "PRIMCOORD")

    if crystal_line is not None:
        if primvec_line is None:
            raise cur.error("missing PRIMVEC block (cell vectors) in CRYSTAL file", crystal_line)
        if primcoord_line is None:
            raise cur.error("missing PRIMCOORD block (atoms) in CRYSTAL file", crystal_line)
        pbc = True
    elif atoms_line is not None:
        pbc = False
    else:
        raise cur.error("no structure found: expected a CRYSTAL or ATOMS keyword", None)
    if require_energy and energy is None:
        raise cur.error("missing energy line '# total energy = <value> eV'", None)

    atoms = Atoms(numbers=numbers, positions=positions, cell=cell if pbc else None, pbc=pbc)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info["file"] = path
    if energy is not None:
        atoms.info["energy"] = float(energy)
    return atoms


def read_xsf(path: str | os.PathLike, *, require_energy: bool = False) -> Atoms:
    """Read one structure from an XSF file, strictly.

    ASE's own XSF reader drops the ``# total energy`` comment and tolerates
    broken files; this parser keeps the energy and rejects anything it does
    not understand, naming the file, the 1-based line and the problem.

    Supported: ``CRYSTAL`` + ``PRIMVEC`` (3 rows, cell vectors in Å) +
    ``PRIMCOORD`` (line ``N 1``, then N lines ``Sym x y z [fx fy fz]``,
    Cartesian Å and eV/Å), an optional ``CONVVEC`` block (read and ignored),
    or a non-periodic ``ATOMS`` block.  Elements may be symbols or atomic
    numbers.  Blank lines and ``#`` comment lines are ignored, except for
    the energy comment ``# total energy = X eV`` (spacing and case free).

    Args:
        path: the XSF file.
        require_energy: if True, a file without a total-energy line is an
            error.  (A total-energy line that cannot be read is always an
            error.)

    Returns:
        An :class:`ase.Atoms` with positions (Å), ``pbc=True`` and the cell
        (Å) for CRYSTAL files, ``pbc=False`` and no cell for ATOMS files; a
        :class:`~ase.calculators.singlepoint.SinglePointCalculator` holding
        the total energy (eV) and forces (eV/Å) where present;
        ``atoms.info["file"]`` (the path as given) and, when present,
        ``atoms.info["energy"]`` (float, eV).

    Raises:
        XSFError: for every problem: missing or unreadable file, non-UTF-8
            bytes, empty file, missing or malformed energy, missing blocks,
            truncated atom list, wrong column count, non-numeric or
            non-finite numbers, unknown element, singular cell.  No other
            exception type escapes, whatever the bytes of the file.
    """
    spath = str(path)
    p = Path(path)
    try:
        if not p.exists():
            raise XSFError(spath, "no such file")
        if p.is_dir():
            raise XSFError(spath, "is a directory, not an XSF file")
        data = p.read_bytes()
    except OSError as exc:
        raise XSFError(spath, f"cannot read file: {exc.strerror or exc}") from exc
    except ValueError as exc:  # e.g. embedded NUL byte in the path
        if isinstance(exc, XSFError):
            raise
        raise XSFError(spath, f"invalid path: {exc}") from exc
    base = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # UTF-8 byte-order mark
    try:
        text = data[base:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = base + exc.start
        line = data[:offset].count(b"\n") + 1
        raise XSFError(
            spath, f"not a UTF-8 text file (invalid byte 0x{data[offset]:02x} at byte offset {offset})", line=line
        ) from None
    return _parse_xsf_text(spath, text, require_energy)


# --------------------------------------------------------------------------
# XSF writing
# --------------------------------------------------------------------------


def _fmt(x: float) -> str:
    """Shortest text that reads back as exactly the same float64."""
    return repr(float(x))


def structure_energy(atoms: Atoms) -> float | None:
    """Total energy (eV) stored on a structure, or None.

    Looks at ``atoms.info["energy"]`` first, then at a calculator's stored
    results (without triggering a calculation).
    """
    if "energy" in atoms.info and atoms.info["energy"] is not None:
        return float(atoms.info["energy"])
    calc = atoms.calc
    results = getattr(calc, "results", None) if calc is not None else None
    if results and results.get("energy") is not None:
        return float(results["energy"])
    return None


def _stored_forces(atoms: Atoms) -> np.ndarray | None:
    calc = atoms.calc
    results = getattr(calc, "results", None) if calc is not None else None
    if results and results.get("forces") is not None:
        return np.asarray(results["forces"], dtype=np.float64)
    return None


def write_xsf(
    path: str | os.PathLike,
    atoms: Atoms,
    energy: float | None = None,
    forces: np.ndarray | None = None,
) -> None:
    """Write one structure as an XSF file that :func:`read_xsf` reads back.

    Numbers are written with Python's shortest round-trip representation,
    so reading the file back gives bit-identical float64 values.  The file
    is written atomically (see :func:`atomic_write`).

    Args:
        path: destination file.
        atoms: the structure; fully periodic structures are written as
            ``CRYSTAL`` (cell in Å), fully non-periodic ones as ``ATOMS``.
        energy: total energy in eV; if None, the energy stored on ``atoms``
            (``info["energy"]`` or calculator results) is used if there is
            one, else no energy line is written.
        forces: (N, 3) forces in eV/Å; if None, forces stored in the
            calculator results are used if present, else none are written.

    Raises:
        BPNNInputError: for partially periodic structures, a singular cell,
            a wrong forces shape or non-finite values.
    """
    n = len(atoms)
    if n == 0:
        raise BPNNInputError(f"cannot write {path}: structure has no atoms")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and not pbc.all():
        raise BPNNInputError(f"cannot write {path}: partially periodic structures (pbc={pbc.tolist()}) are not supported")
    if energy is None:
        energy = structure_energy(atoms)
    if forces is None:
        forces = _stored_forces(atoms)
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (n, 3):
            raise BPNNInputError(f"cannot write {path}: forces have shape {forces.shape}, expected ({n}, 3)")
    positions = np.asarray(atoms.get_positions(), dtype=np.float64)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    for name, arr in (("positions", positions), ("cell", cell), ("forces", forces)):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise BPNNInputError(f"cannot write {path}: non-finite {name}")
    if energy is not None and not math.isfinite(float(energy)):
        raise BPNNInputError(f"cannot write {path}: non-finite energy {energy}")
    if pbc.all() and abs(float(np.linalg.det(cell))) < MIN_CELL_VOLUME:
        raise BPNNInputError(f"cannot write {path}: singular cell {cell.tolist()}")

    out: list[str] = []
    if energy is not None:
        out.append(f"# total energy = {_fmt(energy)} eV")
        out.append("")
    symbols = atoms.get_chemical_symbols()

    def atom_line(i: int) -> str:
        cols = [f"{symbols[i]:<3s}"] + [f"{_fmt(v):>22s}" for v in positions[i]]
        if forces is not None:
            cols += [f"{_fmt(v):>22s}" for v in forces[i]]
        return " ".join(cols)

    if pbc.all():
        out.append("CRYSTAL")
        out.append("PRIMVEC")
        for row in cell:
            out.append("    " + " ".join(f"{_fmt(v):>22s}" for v in row))
        out.append("PRIMCOORD")
        out.append(f"{n} 1")
    else:
        out.append("ATOMS")
    out.extend(atom_line(i) for i in range(n))
    with atomic_write(path) as fh:
        fh.write("\n".join(out) + "\n")


# --------------------------------------------------------------------------
# Many files
# --------------------------------------------------------------------------


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


def stress_voigt(value, name: str, volume: float | None = None, virial: bool = False) -> np.ndarray:
    """(6,) stress in eV/Å³, :data:`VOIGT` order, from 6 (Voigt) or 9 (3 x 3) numbers.

    With ``virial`` the value is a virial W (eV) and σ = −W/V is returned.

    Raises:
        XSFError: not 6 or 9 finite numbers, or a virial without a volume;
            the message starts with ``name``.
    """
    try:
        arr = np.asarray(value, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise XSFError(name, f"stress/virial {value!r} is not numbers") from None
    if arr.size == 9:
        arr = voigt_6(arr.reshape(3, 3))
    elif arr.size != 6:
        raise XSFError(name, f"stress/virial must have 6 or 9 components, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise XSFError(name, "non-finite stress/virial")
    if virial:
        if not volume:
            raise XSFError(name, "a virial needs a periodic cell with a volume")
        arr = -arr / volume
    return arr


def voigt_6(tensor: np.ndarray) -> np.ndarray:
    """(..., 6) components of (..., 3, 3) tensors in :data:`VOIGT` order."""
    tensor = np.asarray(tensor)
    return np.stack([tensor[..., a, b] for a, b in VOIGT], axis=-1)


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


# --------------------------------------------------------------------------
# Energy tables
# --------------------------------------------------------------------------


def _composition(symbols: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    return "".join(f"{s}{counts[s]}" for s in sorted(counts))


def energy_table(
    structures: Iterable[Atoms],
    reference_energies: Mapping[str, float] = REFERENCE_ENERGIES_TIO2,
) -> list[dict[str, Any]]:
    """Per-structure energies, one dict per structure.

    The cohesive energy per atom is ``(E - sum_i E_ref[element_i]) / N``,
    computed in float64 with an exactly rounded sum of the references.

    Args:
        structures: structures with a total energy (``info["energy"]`` or
            calculator results), e.g. from :func:`read_structures`.
        reference_energies: free-atom energy (eV) per element symbol.

    Returns:
        Dicts with keys ``file`` (``info["file"]`` or ``"<structure i>"``),
        ``n_atoms``, ``composition`` (symbols sorted alphabetically, each
        with its count, e.g. ``"O16Ti8"``), ``energy_ev``,
        ``energy_per_atom_ev`` and ``cohesive_energy_per_atom_ev`` (floats,
        eV).

    Raises:
        BPNNInputError: a structure without energy, without atoms, or with
            an element that has no reference energy.
    """
    rows = []
    for i, atoms in enumerate(structures):
        name = str(atoms.info.get("file", f"<structure {i}>"))
        n = len(atoms)
        if n == 0:
            raise BPNNInputError(f"{name}: structure has no atoms")
        energy = structure_energy(atoms)
        if energy is None:
            raise BPNNInputError(f"{name}: structure has no total energy")
        symbols = atoms.get_chemical_symbols()
        missing = sorted({s for s in symbols if s not in reference_energies})
        if missing:
            raise BPNNInputError(
                f"{name}: no reference energy for element(s) {', '.join(missing)} "
                f"(references given for {', '.join(sorted(reference_energies)) or 'none'})"
            )
        e = np.float64(energy)
        e_ref = np.float64(math.fsum(float(reference_energies[s]) for s in symbols))
        rows.append(
            {
                "file": name,
                "n_atoms": n,
                "composition": _composition(symbols),
                "energy_ev": float(e),
                "energy_per_atom_ev": float(e / n),
                "cohesive_energy_per_atom_ev": float((e - e_ref) / n),
            }
        )
    return rows


def write_energy_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows of :func:`energy_table` as CSV, atomically.

    Columns are :data:`ENERGY_CSV_COLUMNS`; floats are written with full
    (round-trip) precision, in eV.

    Args:
        path: destination CSV file.
        rows: dicts with (at least) the keys of :data:`ENERGY_CSV_COLUMNS`.

    Raises:
        BPNNInputError: a row lacks a column, or the file cannot be created.
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = [c for c in ENERGY_CSV_COLUMNS if c not in row]
        if missing:
            raise BPNNInputError(f"energy table row {i} lacks column(s) {', '.join(missing)}")
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ENERGY_CSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [_fmt(row[c]) if isinstance(row[c], (float, np.floating)) else row[c] for c in ENERGY_CSV_COLUMNS]
            )


# --------------------------------------------------------------------------
# Packaged sample data
# --------------------------------------------------------------------------


def sample_data_dir() -> Path:
    """Directory of the packaged quick-start TiO2 sample (XSF files).

    Returns:
        ``bpnn_jax/data/tio2_sample``: 200 near-equilibrium structures of
        the aenet TiO2 data set (see ``bpnn_jax/data/README.md``).

    Raises:
        BPNNInputError: if the package was installed without its data.
    """
    d = Path(__file__).resolve().parent.parent / "data" / "tio2_sample"
    if not d.is_dir():
        raise BPNNInputError(f"sample data directory {d} is missing (package installed without data?)")
    return d
