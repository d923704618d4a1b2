"""Reading and writing XSF structure files.

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

import math
import os
import re
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, chemical_symbols

from ..errors import BPNNInputError, XSFError
from .atomic import atomic_write

__all__ = ["MIN_CELL_SINE", "MIN_CELL_VOLUME", "float_text", "read_xsf", "structure_energy", "write_xsf"]

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


def float_text(x: float) -> str:
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
        out.append(f"# total energy = {float_text(energy)} eV")
        out.append("")
    symbols = atoms.get_chemical_symbols()

    def atom_line(i: int) -> str:
        cols = [f"{symbols[i]:<3s}"] + [f"{float_text(v):>22s}" for v in positions[i]]
        if forces is not None:
            cols += [f"{float_text(v):>22s}" for v in forces[i]]
        return " ".join(cols)

    if pbc.all():
        out.append("CRYSTAL")
        out.append("PRIMVEC")
        for row in cell:
            out.append("    " + " ".join(f"{float_text(v):>22s}" for v in row))
        out.append("PRIMCOORD")
        out.append(f"{n} 1")
    else:
        out.append("ATOMS")
    out.extend(atom_line(i) for i in range(n))
    with atomic_write(path) as fh:
        fh.write("\n".join(out) + "\n")
