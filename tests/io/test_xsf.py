"""Tests of bpnn_jax.io.xsf (strict XSF reading and writing) and of finding and reading many XSF files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpnn_jax.io as bio
from bpnn_jax.errors import BPNNInputError, XSFError
from bpnn_jax.io import (
    find_xsf_files,
    read_structures,
    read_xsf,
    write_xsf,
)

S0001_ENERGY = -19960.66173260  # eV, from the file's comment line


@pytest.fixture(scope="module")
def s0001_text(data_dir: Path) -> str:
    return (data_dir / "structure0001.xsf").read_text()


def _write(tmp_path: Path, text: str | bytes, name: str = "bad.xsf") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _expect_error(path: Path, *fragments: str, line: int | None = None, **kwargs) -> XSFError:
    """read_xsf(path) must raise XSFError naming the file, line and fragments."""
    with pytest.raises(XSFError) as info:
        read_xsf(path, **kwargs)
    err = info.value
    msg = str(err)
    assert str(path) in msg
    assert err.path == str(path)
    if line is not None:
        assert err.line == line, msg
        assert f"line {line}" in msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return err


# --------------------------------------------------------------------------
# reading real files
# --------------------------------------------------------------------------


def test_read_structure0001(data_dir: Path):
    path = data_dir / "structure0001.xsf"
    atoms = read_xsf(path, require_energy=True)
    assert len(atoms) == 24
    assert atoms.pbc.all()
    assert atoms.get_chemical_symbols().count("Ti") == 8
    assert atoms.get_chemical_symbols().count("O") == 16
    assert atoms.get_chemical_symbols()[0] == "Ti"
    np.testing.assert_array_equal(atoms.positions[0], [4.42027297, 7.02709599, 2.24183899])
    np.testing.assert_array_equal(
        atoms.cell.array, [[5.934, 0, 0], [0, 9.29699974, 0], [0, 0, 4.64899994]]
    )
    assert atoms.info["energy"] == S0001_ENERGY
    assert isinstance(atoms.info["energy"], float)
    assert atoms.info["file"] == str(path)
    assert atoms.get_potential_energy() == S0001_ENERGY
    forces = atoms.get_forces()
    assert forces.shape == (24, 3)
    np.testing.assert_array_equal(forces[0], [0.07592985, -0.40427630, 0.69417754])


def test_read_small_files(small_files):
    sizes = []
    for f in small_files:
        atoms = read_xsf(f, require_energy=True)
        sizes.append(len(atoms))
        assert atoms.pbc.all()
        assert atoms.get_forces().shape == (len(atoms), 3)
        assert abs(atoms.cell.volume) > 1.0
        assert set(atoms.get_chemical_symbols()) == {"Ti", "O"}
    assert sizes == [24, 6, 6, 22, 23, 46, 47, 94, 95, 95]


def test_atoms_block_numbers_and_case(tmp_path):
    text = (
        "#TOTAL ENERGY: -12.5eV\n"
        "atoms\n"
        "8   0.0 0.0 0.0\n"
        "1   0.0 0.0 0.96\n"
        "h   0.93 0.0 -0.24\n"
    )
    atoms = read_xsf(_write(tmp_path, text, "water.xsf"), require_energy=True)
    assert not atoms.pbc.any()
    assert atoms.get_chemical_symbols() == ["O", "H", "H"]
    assert atoms.info["energy"] == -12.5
    assert atoms.cell.rank == 0
    assert "forces" not in atoms.calc.results
    np.testing.assert_array_equal(atoms.positions[2], [0.93, 0.0, -0.24])


def test_no_energy_allowed_unless_required(tmp_path, s0001_text):
    text = "\n".join(_lines(s0001_text)[1:])
    p = _write(tmp_path, text)
    atoms = read_xsf(p)
    assert "energy" not in atoms.info
    assert "energy" not in atoms.calc.results
    _expect_error(p, "missing energy line", require_energy=True)


def test_bom_crlf_and_comments_are_tolerated(tmp_path, s0001_text):
    lines = _lines(s0001_text)
    lines.insert(3, "# a comment")
    lines.insert(12, "")
    data = b"\xef\xbb\xbf" + "\r\n".join(lines).encode()
    atoms = read_xsf(_write(tmp_path, data), require_energy=True)
    assert len(atoms) == 24
    assert atoms.info["energy"] == S0001_ENERGY


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def test_round_trip_real_file(tmp_path, data_dir):
    src = read_xsf(data_dir / "structure7513.xsf")
    out = tmp_path / "rt.xsf"
    write_xsf(out, src)
    back = read_xsf(out, require_energy=True)
    np.testing.assert_array_equal(back.positions, src.positions)
    np.testing.assert_array_equal(back.cell.array, src.cell.array)
    np.testing.assert_array_equal(back.numbers, src.numbers)
    np.testing.assert_array_equal(back.get_forces(), src.get_forces())
    assert back.info["energy"] == src.info["energy"]
    # writing what was read gives the same text again
    out2 = tmp_path / "rt2.xsf"
    write_xsf(out2, back)
    assert out2.read_text() == out.read_text()


def test_round_trip_arbitrary_floats(tmp_path):
    rng = np.random.default_rng(0)
    cell = np.diag([3.0, 4.0, 5.0]) + rng.normal(scale=0.3, size=(3, 3))
    atoms = Atoms("TiO2", positions=rng.normal(size=(3, 3)) * 1e-3, cell=cell, pbc=True)
    forces = rng.normal(size=(3, 3)) * 1e5
    energy = -1234.567890123456789
    out = tmp_path / "f.xsf"
    write_xsf(out, atoms, energy=energy, forces=forces)
    back = read_xsf(out, require_energy=True)
    np.testing.assert_array_equal(back.positions, atoms.positions)
    np.testing.assert_array_equal(back.cell.array, cell)
    np.testing.assert_array_equal(back.get_forces(), forces)
    assert back.info["energy"] == energy


def test_round_trip_non_periodic_without_energy(tmp_path):
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]])
    out = tmp_path / "m.xsf"
    write_xsf(out, atoms)
    text = out.read_text()
    assert "ATOMS" in text and "energy" not in text and "CRYSTAL" not in text
    back = read_xsf(out)
    assert not back.pbc.any()
    np.testing.assert_array_equal(back.positions, atoms.positions)


def test_write_rejects_bad_input(tmp_path):
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=[1, 1, 1], pbc=[True, True, False])
    with pytest.raises(BPNNInputError, match="partially periodic"):
        write_xsf(tmp_path / "x.xsf", atoms)
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1]])
    with pytest.raises(BPNNInputError, match="shape"):
        write_xsf(tmp_path / "x.xsf", atoms, forces=np.zeros((3, 3)))
    with pytest.raises(BPNNInputError, match="non-finite"):
        write_xsf(tmp_path / "x.xsf", atoms, energy=float("nan"))
    assert not (tmp_path / "x.xsf").exists()


# --------------------------------------------------------------------------
# bad input: every problem is an XSFError naming file, line and problem
# --------------------------------------------------------------------------


def test_empty_file(tmp_path):
    _expect_error(_write(tmp_path, ""), "empty file")
    _expect_error(_write(tmp_path, "  \n\n\t\n", "blank.xsf"), "empty file")


def test_missing_file_and_directory(tmp_path):
    _expect_error(tmp_path / "nope.xsf", "no such file")
    _expect_error(tmp_path, "directory")


def test_malformed_energy_lines(tmp_path, s0001_text):
    lines = _lines(s0001_text)
    cases = [
        ("# total energy = abc eV", "non-numeric total energy 'abc'"),
        ("# total energy = nan eV", "non-finite total energy 'nan'"),
        ("# total energy = -1e999 eV", "non-finite total energy"),
        ("# total energy = -19960.66 Ry", "energy unit 'Ry'"),
        ("# total energy =", "malformed energy line"),
        ("# total energy = 1 2 eV", "malformed energy line"),
    ]
    for i, (energy_line, fragment) in enumerate(cases):
        p = _write(tmp_path, "\n".join([energy_line] + lines[1:]), f"e{i}.xsf")
        _expect_error(p, fragment, line=1)
        _expect_error(p, fragment, line=1, require_energy=True)


def test_duplicate_energy_line(tmp_path, s0001_text):
    lines = _lines(s0001_text)
    p = _write(tmp_path, "\n".join(lines[:1] + lines[:1] + lines[1:]))
    _expect_error(p, "second total-energy line", line=2)


def test_truncated_file(tmp_path, s0001_text):
    lines = _lines(s0001_text)
    # 9 header lines, then 24 atoms: keep 21 atoms
    p = _write(tmp_path, "\n".join(lines[:9 + 21]) + "\n")
    _expect_error(p, "truncated", "found 21", "24 were declared (line 9)", "end of file", line=30)
    # cut in the middle of an atom line
    p = _write(tmp_path, "\n".join(lines[:15]) + "\nO 1.0 2.0", "cut.xsf")
    _expect_error(p, "atom 7 has 3 columns", line=16)
    # a keyword where atoms were expected
    p = _write(tmp_path, "\n".join(lines[:12] + ["PRIMVEC"]), "kw.xsf")
    _expect_error(p, "found 3 atom lines but 24 were declared", "before 'PRIMVEC'", line=13)


def test_extra_atom_line(tmp_path, s0001_text):
    lines = _lines(s0001_text)
    p = _write(tmp_path, "\n".join(lines[:33] + [lines[32]]) + "\n")
    _expect_error(p, "extra atom line", "declared 24 atoms on line 9", line=34)


@pytest.mark.parametrize(
    ("replacement", "fragments"),
    [
        ("Ti 4.42027297 7.02709599 2.24183899 0.07592985", ("atom 1 has 5 columns", "expected 4")),
        ("Ti 4.42027297 7.02709599", ("atom 1 has 3 columns",)),
        ("Ti 4.4202x297 7.02709599 2.24183899", ("non-numeric x coordinate of atom 1", "'4.4202x297'")),
        ("Ti 4.42 nan 2.24 0.1 0.2 0.3", ("non-finite y coordinate of atom 1", "'nan'")),
        ("Ti 4.42 7.02 -inf 0.1 0.2 0.3", ("non-finite z coordinate of atom 1",)),
        ("Ti 4.42 7.02 2.24 0.1 Infinity 0.3", ("non-finite force component fy of atom 1",)),
        ("Ti 4.42 7.02 2.24 0.1 0.2 1e400", ("non-finite force component fz of atom 1", "overflows")),
        ("Ti 4.42 7.02 2.24 0.1 0.2 1_0", ("non-numeric force component fz of atom 1", "'1_0'")),
        ("Xx 4.42 7.02 2.24 0.1 0.2 0.3", ("unknown element 'Xx'",)),
        ("X 4.42 7.02 2.24 0.1 0.2 0.3", ("unknown element 'X'",)),
        ("0 4.42 7.02 2.24 0.1 0.2 0.3", ("unknown element", "atomic number '0'")),
        ("200 4.42 7.02 2.24 0.1 0.2 0.3", ("unknown element", "atomic number '200'")),
    ],
)
def test_bad_first_atom_line(tmp_path, s0001_text, replacement, fragments):
    lines = _lines(s0001_text)
    assert lines[9].startswith("Ti ")
    lines[9] = replacement
    _expect_error(_write(tmp_path, "\n".join(lines)), *fragments, line=10)


def test_forces_on_some_atoms_only(tmp_path, s0001_text):
    lines = _lines(s0001_text)
    lines[14] = " ".join(lines[14].split()[:4])  # atom 6 without forces
    _expect_error(
        _write(tmp_path, "\n".join(lines)),
        "atom 6 has 4 columns but the atoms before it have 7",
        "forces must be given for all atoms or for none",
        line=15,
    )


@pytest.mark.parametrize(
    ("index", "replacement", "fragments", "line"),
    [
        (8, "24", ("expected 'N 1'", "'24'"), 9),
        (8, "24 2", ("must be 1",), 9),
        (8, "0 1", ("must be positive",), 9),
        (8, "x 1", ("expected 'N 1'",), 9),
        (8, "PRIMVEC", ("expected 'N 1'", "'PRIMVEC'"), 9),
        (5, "  0.0 9.29699974", ("PRIMVEC row 2 has 2 columns",), 6),
        (6, "  0.0 0.0 abc", ("non-numeric PRIMVEC row 3 component 'abc'",), 7),
        (4, "  nan 0.0 0.0", ("non-finite PRIMVEC row 1 component",), 5),
        (2, "SLAB", ("'SLAB' is not supported",), 3),
        (2, "CRYSTAL 1", ("unexpected text after keyword CRYSTAL",), 3),
        (2, "hello world", ("unexpected line 'hello world'",), 3),
    ],
)
def test_bad_header_lines(tmp_path, s0001_text, index, replacement, fragments, line):
    lines = _lines(s0001_text)
    lines[index] = replacement
    _expect_error(_write(tmp_path, "\n".join(lines)), *fragments, line=line)


def test_missing_blocks(tmp_path, s0001_text):
    lines = _lines(s0001_text)
    no_primvec = lines[:3] + lines[7:]
    _expect_error(_write(tmp_path, "\n".join(no_primvec), "a.xsf"), "missing PRIMVEC", line=3)
    no_primcoord = lines[:7]
    _expect_error(_write(tmp_path, "\n".join(no_primcoord), "b.xsf"), "missing PRIMCOORD", line=3)
    no_crystal = lines[:2] + lines[3:]
    _expect_error(_write(tmp_path, "\n".join(no_crystal), "c.xsf"), "PRIMVEC before the CRYSTAL keyword", line=3)
    only_comment = "# total energy = -1.0 eV\n"
    _expect_error(_write(tmp_path, only_comment, "d.xsf"), "no structure found")
    two_primvec = lines[:7] + lines[3:]
    _expect_error(_write(tmp_path, "\n".join(two_primvec), "e.xsf"), "second PRIMVEC", "line 4", line=8)
    empty_atoms = "ATOMS\n"
    _expect_error(_write(tmp_path, empty_atoms, "f.xsf"), "ATOMS block has no atoms", line=1)


def test_singular_and_degenerate_cells(tmp_path, s0001_text):
    lines = _lines(s0001_text)
    singular = list(lines)
    singular[6] = singular[5]  # third row = second row
    err = _expect_error(_write(tmp_path, "\n".join(singular), "s.xsf"), "singular cell", "9.297", line=4)
    assert "[[5.934, 0, 0], [0, 9.297, 0], [0, 9.297, 0]]" in str(err)
    zero = list(lines)
    zero[4] = "0 0 0"
    _expect_error(_write(tmp_path, "\n".join(zero), "z.xsf"), "singular cell", line=4)
    flat = list(lines)
    flat[6] = "0.0 9.29699974 1e-9"
    _expect_error(_write(tmp_path, "\n".join(flat), "f.xsf"), "cell", line=4)


def test_not_utf8(tmp_path, s0001_text):
    data = bytearray(s0001_text.encode())
    lines_before = s0001_text.split("\n")
    offset = sum(len(x) + 1 for x in lines_before[:4]) + 3  # inside line 5
    data[offset] = 0xFF
    _expect_error(_write(tmp_path, bytes(data)), "not a UTF-8 text file", "0xff", line=5)
    _expect_error(_write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00", "img.xsf"), "not a UTF-8", line=1)


def test_binary_junk_that_is_valid_utf8(tmp_path):
    _expect_error(_write(tmp_path, b"\x00\x01\x02 abc\n"), "unexpected line", line=1)


# --------------------------------------------------------------------------
# fuzzing: no exception other than XSFError escapes
# --------------------------------------------------------------------------

_FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

_VALID_SMALL = """# total energy = -4988.12345678 eV

CRYSTAL
PRIMVEC
        2.96588026     0.00000000     0.00000000
        0.00000000     4.64713460     0.00000000
        0.00000000     0.00000000     4.64713459
PRIMCOORD
6 1
Ti      0.00000000     0.00000000     0.00000000     0.01000000     0.00000000    -0.00500000
Ti      1.48294013     2.32356730     2.32356730     0.00000000     0.02000000     0.00000000
O       0.00000000     1.41759283     1.41759283     0.10000000    -0.10000000     0.00000000
O       0.00000000     3.22954177     3.22954177    -0.10000000     0.10000000     0.00000000
O       1.48294013     0.90597447     3.74116012     0.00000000     0.00000000     0.30000000
O       1.48294013     3.74116012     0.90597447     0.00000000     0.00000000    -0.30000000
"""

_NASTY_TOKENS = st.sampled_from(
    ["", "nan", "-inf", "1e999", "1_0", "\u0661\u0662", "Xx", "0", "119", "-", ".", "e5", "PRIMVEC",
     "PRIMCOORD", "ATOMS", "CRYSTAL", "CONVVEC", "BEGIN_BLOCK_DATAGRID_3D", "# total energy = x",
     "99999999999999999999 1", "-3 1", "\x00", "\u2028", "\x0c", "\ufeff", "1.0 2.0", "Ti 0 0 0"]
)


@st.composite
def _mutated_xsf(draw) -> str:
    lines = _VALID_SMALL.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "token", "truncate", "insert"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "token":
            tokens = lines[i].split() or [""]
            k = draw(st.integers(0, len(tokens) - 1))
            tokens[k] = draw(_NASTY_TOKENS | st.text(max_size=6))
            lines[i] = " ".join(tokens)
        elif op == "truncate":
            text = "\n".join(lines)
            cut = draw(st.integers(0, len(text)))
            lines = text[:cut].split("\n")
        else:
            lines.insert(i, draw(_NASTY_TOKENS | st.text(max_size=20)))
    return "\n".join(lines)


def _read_or_xsferror(path: Path, require_energy: bool) -> None:
    try:
        atoms = read_xsf(path, require_energy=require_energy)
    except XSFError as exc:
        assert str(path) in str(exc)
        return
    # whatever was accepted is a sane structure
    assert len(atoms) > 0
    assert np.all(np.isfinite(atoms.positions))
    if atoms.pbc.all():
        assert abs(np.linalg.det(atoms.cell.array)) >= bio.MIN_CELL_VOLUME
    if require_energy:
        assert math.isfinite(atoms.info["energy"])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_valid_small_text_parses(fuzz_dir):
    p = _write(fuzz_dir, _VALID_SMALL, "valid.xsf")
    assert len(read_xsf(p, require_energy=True)) == 6


@_FUZZ_SETTINGS
@given(data=st.binary(max_size=600), require_energy=st.booleans())
def test_fuzz_bytes(fuzz_dir, data, require_energy):
    p = fuzz_dir / "bytes.xsf"
    p.write_bytes(data)
    _read_or_xsferror(p, require_energy)


@_FUZZ_SETTINGS
@given(text=_mutated_xsf(), require_energy=st.booleans(), encode_errors=st.booleans())
def test_fuzz_mutated_text(fuzz_dir, text, require_energy, encode_errors):
    p = fuzz_dir / "mutated.xsf"
    p.write_bytes(text.encode("utf-8", errors="surrogatepass" if encode_errors else "replace"))
    _read_or_xsferror(p, require_energy)


# --------------------------------------------------------------------------
# finding and reading many files
# --------------------------------------------------------------------------


def test_find_xsf_files_order_and_errors(tmp_path, s0001_text):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("b.xsf", "a.xsf", "c.XSF", "notes.txt"):
        (d / name).write_text(s0001_text)
    (d / "sub.xsf").mkdir()  # a directory named *.xsf is not a file
    single = tmp_path / "z.dat"
    single.write_text(s0001_text)
    files = find_xsf_files([single, d, d / "a.xsf"])
    assert [f.name for f in files] == ["z.dat", "a.xsf", "b.xsf", "c.XSF"]
    assert find_xsf_files(str(d / "a.xsf")) == [d / "a.xsf"]

    with pytest.raises(XSFError, match="no such file") as info:
        find_xsf_files([d, tmp_path / "missing"])
    assert "missing" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BPNNInputError, match="no .xsf files") as info:
        find_xsf_files([empty])
    assert str(empty) in str(info.value)
    with pytest.raises(BPNNInputError, match="no input paths"):
        find_xsf_files([])


def test_read_structures_skip_invalid(tmp_path, s0001_text, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.xsf").write_text(s0001_text)
    (d / "b.xsf").write_text("CRYSTAL\n")
    (d / "c.xsf").write_text(s0001_text)
    with pytest.raises(XSFError, match="b.xsf"):
        read_structures([d])
    structures, skipped = read_structures([d], require_energy=True, skip_invalid=True, progress=True)
    assert [Path(a.info["file"]).name for a in structures] == ["a.xsf", "c.xsf"]
    assert len(skipped) == 1
    assert skipped[0][0] == str(d / "b.xsf")
    assert "missing PRIMVEC" in skipped[0][1] and "line 1" in skipped[0][1]
    assert "reading XSF" in capsys.readouterr().err
