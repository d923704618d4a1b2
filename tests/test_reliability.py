"""Reliability: every failure says what is wrong and where, and loses no work.

The guarantees of the README ("Guarantees on bad input and interruptions"):

* ``evaluate``/``predict`` with a missing, corrupt or wrong-element model, or
  with bad files among the inputs, exit with status 2 and
  ``error: FILE...: what`` before writing anything; ``--skip-invalid``
  finishes and lists the skipped files with their reasons.  ``train`` on a
  file without an energy line names the file and leaves an earlier run in
  the same directory untouched.
* Geometry: atoms closer than :data:`~bpnn_jax.descriptors.neighbors.MIN_DISTANCE`
  (periodic images included), singular, degenerate and too-small cells are
  :class:`~bpnn_jax.errors.StructureError` naming the file, the atoms and
  the distance, and fail at once; left-handed and skewed cells work; a
  structure larger than the atom-bucket ladder works.

Interruptions (a killed run resumes bit-exactly) and non-finite losses (never
a saved model) are the committee trainer's, tested in
``tests/training/test_jacobian.py``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

import bpnn_jax  # noqa: F401  (selects the JAX backend)
import jax
import keras

from bpnn_jax.descriptors.batch import collate, plan_batches, prepare_structures
from bpnn_jax.cli import main
from bpnn_jax.descriptors import SymmetryFunctionSet, batch_descriptors
from bpnn_jax.errors import StructureError
from bpnn_jax.io import REFERENCE_ENERGIES_TIO2, read_xsf, write_xsf
from bpnn_jax.model import BPNN
from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, MIN_DISTANCE, bucket_size, check_geometry, neighbor_list

REPO_ROOT = Path(__file__).resolve().parent.parent
RC = 6.5

UNIT = "structure1099.xsf"  # 6 atoms


# ==========================================================================
# helpers
# ==========================================================================
def _tiny_model(elements=("O", "Ti")) -> BPNN:
    spec = SymmetryFunctionSet.artrith_urban(elements)
    keras.utils.set_random_seed(0)
    return BPNN(spec.to_config(), hidden=(4,), reference_energies=REFERENCE_ENERGIES_TIO2)


def _run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean_error(code: int, err: str, *fragments: str) -> None:
    """Exit status 2, no traceback, and stderr ends with ``error: ...`` holding ``fragments``."""
    assert code == 2, err
    assert "Traceback" not in err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after any warnings or progress bars
    assert last.startswith("error: "), err
    for fragment in fragments:
        assert fragment in last, (fragment, err)


def _close_atoms(base: Atoms) -> Atoms:
    """``base`` (Ti2O4) with its atom 4 (O) moved 0.3 Å from atom 1 (Ti)."""
    atoms = base.copy()
    atoms.positions[4] = atoms.positions[1] + np.array([0.3, 0.0, 0.0])
    return atoms


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ==========================================================================
# 1. command line: models and inputs
# ==========================================================================
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny models: "tio2" (O, Ti) and "o_only" (O)."""
    d = tmp_path_factory.mktemp("models")
    out = {}
    for key, elements in (("tio2", ("O", "Ti")), ("o_only", ("O",))):
        path = d / f"{key}.keras"
        _tiny_model(elements).save(path)
        out[key] = path
    return out


@pytest.fixture(scope="module")
def mixed_dir(data_dir, tmp_path_factory, six_atom_files) -> dict:
    """A directory with 2 good structures and 4 bad or doubtful ones.

    Returns a dict of paths: dir, good (list), syntax, zr, close,
    no_energy (fine for predict, invalid for evaluate).
    """
    d = tmp_path_factory.mktemp("mixed")
    base = read_xsf(data_dir / UNIT)
    good = []
    for name in ("a_good.xsf", "b_good.xsf"):
        (d / name).write_text((data_dir / UNIT if name[0] == "a" else six_atom_files[2]).read_text())
        good.append(d / name)
    syntax = d / "c_syntax.xsf"
    syntax.write_text("# total energy = -1.0 eV\nCRYSTAL\nPRIMVEC\n1 0 0\n0 1 0\n")
    zr = d / "d_zr.xsf"
    zr_atoms = base.copy()
    zr_atoms.symbols[3] = "Zr"
    write_xsf(zr, zr_atoms, energy=-1000.0)
    close = d / "e_close.xsf"
    write_xsf(close, _close_atoms(base), energy=base.info["energy"])  # within max_energy: train reads it
    no_energy = d / "f_no_energy.xsf"
    text = (data_dir / UNIT).read_text()
    no_energy.write_text("\n".join(line for line in text.splitlines() if "total energy" not in line) + "\n")
    return dict(dir=d, good=good, syntax=syntax, zr=zr, close=close, no_energy=no_energy)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_missing_and_corrupt_model_files(command, data_dir, tmp_path, capsys, models):
    xsf = data_dir / UNIT
    out = tmp_path / "out.csv"
    tail = ["--out", out] if command == "predict" else ["--json", out]

    missing = tmp_path / "nope.keras"
    code, _, err = _run_cli([command, missing, xsf, *tail], capsys)
    _assert_clean_error(code, err, str(missing), "no such model file")

    noise = tmp_path / "noise.keras"
    noise.write_bytes(np.random.default_rng(0).bytes(2048))
    code, _, err = _run_cli([command, noise, xsf, *tail], capsys)
    _assert_clean_error(code, err, str(noise), "not a readable bpnn_jax model")

    truncated = tmp_path / "truncated.keras"
    data = models["tio2"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = _run_cli([command, truncated, xsf, *tail], capsys)
    _assert_clean_error(code, err, str(truncated))

    code, _, err = _run_cli([command, models["tio2"], xsf, "--out" if command == "predict" else "--json",
                             tmp_path / "no_such_dir" / "x.csv"], capsys)
    _assert_clean_error(code, err, "no_such_dir", "does not exist")
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_elements_the_model_does_not_know(command, data_dir, tmp_path, capsys, models, mixed_dir):
    out = tmp_path / "out.csv"
    tail = ["--out", out] if command == "predict" else ["--json", out]
    # A structure with Zr, for a Ti/O model.
    code, _, err = _run_cli([command, models["tio2"], mixed_dir["zr"], *tail], capsys)
    _assert_clean_error(code, err, str(mixed_dir["zr"]), "Zr", "atom 3", str(models["tio2"]), "O, Ti")
    # A TiO2 structure, for a model of O only.
    code, _, err = _run_cli([command, models["o_only"], data_dir / UNIT, *tail], capsys)
    _assert_clean_error(code, err, str(data_dir / UNIT), "element(s) Ti", str(models["o_only"]))
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_bad_files_stop_before_any_output(command, tmp_path, capsys, models, mixed_dir):
    out = tmp_path / "out.csv"
    tail = ["--out", out, "--forces", tmp_path / "f.xyz"] if command == "predict" else [
        "--json", out, "--plots", tmp_path / "plots"]
    code, _, err = _run_cli([command, models["tio2"], mixed_dir["dir"], *tail], capsys)
    # The first bad file (sorted by name), with its line, and the count of others.
    n_bad = 3 if command == "predict" else 4
    _assert_clean_error(code, err, f"{mixed_dir['syntax']}, line 5", "PRIMVEC needs 3 rows",
                        f"and {n_bad - 1} more invalid file(s)", "--skip-invalid", "nothing written")
    assert list(tmp_path.iterdir()) == []


def test_predict_skip_invalid_lists_skipped_files(tmp_path, capsys, models, mixed_dir):
    out = tmp_path / "p.csv"
    code, _, err = _run_cli(["predict", models["tio2"], mixed_dir["dir"], "--skip-invalid", "--out", out], capsys)
    assert code == 0, err
    rows = _read_csv(out)
    expected = [*mixed_dir["good"], mixed_dir["no_energy"]]
    assert [r["file"] for r in rows] == [str(p) for p in expected]
    assert all(math.isfinite(float(r["energy_ev"])) for r in rows)
    lines = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(lines) == 3, err
    assert f"warning: skipped {mixed_dir['syntax']}: line 5: " in err and "PRIMVEC needs 3 rows" in err
    assert f"warning: skipped {mixed_dir['zr']}: element(s) Zr" in err
    assert (f"warning: skipped {mixed_dir['close']}: atoms 1 (Ti) and 4 (O) are 0.3 Å apart, "
            f"closer than the minimum {MIN_DISTANCE} Å") in err
    assert "skipped 3 invalid file(s) of 6" in err


def test_evaluate_skip_invalid_lists_skipped_files(tmp_path, capsys, models, mixed_dir):
    out = tmp_path / "m.json"
    code, _, err = _run_cli(["evaluate", models["tio2"], mixed_dir["dir"], "--skip-invalid", "--no-forces",
                             "--json", out], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["n_structures"] == 2
    assert [r["file"] for r in report["per_structure"]] == [str(p) for p in mixed_dir["good"]]
    assert f"warning: skipped {mixed_dir['no_energy']}: missing energy line" in err
    for key in ("syntax", "zr", "close"):
        assert f"warning: skipped {mixed_dir[key]}: " in err
    # Nothing valid at all: an error, nothing written.
    code, _, err = _run_cli(["evaluate", models["tio2"], mixed_dir["zr"], mixed_dir["close"], "--skip-invalid",
                             "--json", tmp_path / "n.json"], capsys)
    _assert_clean_error(code, err, "no valid structures among 2 file(s)")
    assert not (tmp_path / "n.json").exists()


def test_train_without_energy_line_names_the_file(data_dir, tmp_path, capsys, mixed_dir, six_atom_files):
    run = tmp_path / "run"
    run.mkdir()
    earlier = {"config.json": '{"seed": 0}', "state.json": '{"stage": "energy", "epoch": 7, "best": 1.0}',
               "history.csv": "stage,epoch,loss\nenergy,1,0.5\n"}
    for name, text in earlier.items():
        (run / name).write_text(text)
    files = six_atom_files[:4]
    code, _, err = _run_cli(["train", *files, mixed_dir["no_energy"], "--out", run, "--quiet"], capsys)
    _assert_clean_error(code, err, str(mixed_dir["no_energy"]), "missing energy line")
    # An earlier run in the directory is left as it was.
    assert {p.name: p.read_text() for p in run.iterdir()} == earlier

    code, _, err = _run_cli(["train", *files, mixed_dir["close"], "--out", run, "--quiet"], capsys)
    _assert_clean_error(code, err, str(mixed_dir["close"]), "atoms 1 (Ti) and 4 (O) are 0.3 Å apart")
    assert {p.name: p.read_text() for p in run.iterdir()} == earlier


# ==========================================================================
# 2. geometry checks
# ==========================================================================
@pytest.fixture(scope="module")
def unit(data_dir) -> Atoms:
    return read_xsf(data_dir / UNIT)


def _cartesian_pairs(nl, cell) -> set:
    return {(int(i), int(j), *np.round(s @ cell, 6)) for i, j, s in zip(nl.centers, nl.neighbors, nl.shifts)}


def test_close_atoms_name_file_atoms_and_distance(unit):
    atoms = _close_atoms(unit)
    atoms.info["file"] = "data/close.xsf"
    with pytest.raises(StructureError) as info:
        prepare_structures([atoms], ("O", "Ti"), RC)
    msg = str(info.value)
    assert msg.startswith("data/close.xsf: atoms 1 (Ti) and 4 (O) are 0.3 Å apart"), msg
    assert f"minimum {MIN_DISTANCE} Å" in msg and "count from 0" in msg
    # The same check without building the list, and with a cut-off below the minimum.
    with pytest.raises(StructureError, match=r"x\.xsf: atoms 1 and 4 are 0\.3 Å apart"):
        check_geometry(atoms.positions, atoms.cell.array, True, name="x.xsf")
    with pytest.raises(StructureError, match=r"atoms 1 and 4 are 0\.3 Å apart"):
        neighbor_list(atoms.positions, atoms.cell.array, True, 0.2)
    # Switched off, the structure goes through.
    assert prepare_structures([atoms], ("O", "Ti"), RC, min_distance=None)[0].n_atoms == 6


def test_close_periodic_images_are_found():
    cell = 5.0 * np.eye(3)
    pos = np.array([[0.1, 2.0, 2.0], [4.85, 2.0, 2.0], [2.5, 2.5, 2.5]])  # 0 and 1: 0.25 Å across the boundary
    with pytest.raises(StructureError) as info:
        neighbor_list(pos, cell, True, RC, name="wrap.xsf", symbols=["O", "Ti", "O"])
    msg = str(info.value)
    assert "wrap.xsf: atoms 0 (O) and 1 (Ti) are 0.25 Å apart (atom 1 in the image shifted by [-1, 0, 0]" in msg
    check_geometry(pos, cell, False)  # not periodic: 4.75 Å apart, fine
    # An atom next to its own image: a lattice vector shorter than the minimum (found by lattice reduction,
    # which the message's short vector shows; a brute-force image search would take minutes).
    thin = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [1.3, 2.1, 1e-4]])
    with pytest.raises(StructureError, match=r"thin\.xsf: the lattice vector \[[-0-9, ]+\] \(in units of the cell vectors\) is 0\.005 Å long"):
        neighbor_list(pos[:2], thin, True, RC, name="thin.xsf")


def test_degenerate_cells_fail_fast_left_handed_and_skewed_cells_work(unit):
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 1.2, 0.7]])
    with pytest.raises(StructureError, match=r"flat\.xsf: the cell is singular"):
        neighbor_list(pos, np.array([[3.0, 0, 0], [0, 3.0, 0], [3.0, 3.0, 0]]), True, RC, name="flat.xsf")
    nearly_flat = np.array([[10.0, 0, 0], [0, 10.0, 0], [10.0, 10.0, 1e-5]])  # volume 1e-3 Å^3
    with pytest.raises(StructureError, match=r"f\.xsf: the lattice vector \[[-0-9, ]+\] .* is 1e-05 Å long"):
        neighbor_list(pos, nearly_flat, True, RC, name="f.xsf")
    with pytest.raises(StructureError, match=r"f\.xsf: the cell is too small for a neighbour search"):
        neighbor_list(pos, nearly_flat, True, RC, name="f.xsf", min_distance=None)
    with pytest.raises(StructureError, match=r"n\.xsf: cell must be a finite"):
        neighbor_list(pos, np.full((3, 3), np.nan), True, RC, name="n.xsf")

    cell = unit.cell.array
    reference = _cartesian_pairs(neighbor_list(unit.positions, cell, True, RC), cell)
    left = cell[[0, 2, 1]]  # the same lattice, left-handed basis
    assert np.linalg.det(left) < 0
    assert _cartesian_pairs(neighbor_list(unit.positions, left, True, RC), left) == reference
    skewed = cell.copy()  # the same lattice again, in a very skewed basis
    skewed[0] += 7 * cell[2]
    skewed[1] -= 5 * cell[0] + 3 * cell[2]
    nl = neighbor_list(unit.positions, skewed, True, RC)
    assert _cartesian_pairs(nl, skewed) == reference
    assert np.all(nl.shifts == np.round(nl.shifts))


def test_supercell_beyond_the_ladder_and_left_handed_cells_give_the_same_sfs(unit):
    """A 300-atom supercell (bucket 384 > 256), a left-handed basis and the
    mirror image all give the unit cell's symmetry functions (float64)."""
    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    left = unit.copy()
    left.set_cell(unit.cell.array[[2, 1, 0]], scale_atoms=False)
    mirror = Atoms(unit.symbols, positions=-unit.positions, cell=-unit.cell.array, pbc=True)
    big = unit.repeat((5, 5, 2))  # atom k of image m is atom m * 6 + k
    assert len(big) == 300 > ATOM_BUCKETS[-1]
    assert np.linalg.det(left.cell.array) < 0 and np.linalg.det(mirror.cell.array) < 0
    hosts = prepare_structures([unit, left, mirror, big], spec.elements, spec.cutoff)
    assert len({h.slots for h in hosts}) == 1
    n_pad = bucket_size(300, ATOM_BUCKETS)
    assert n_pad == 384
    assert [n for _, _, n, _ in plan_batches(hosts[3:], 256)] == [384]
    batch = collate(hosts, 4, n_pad, hosts[0].slots, dtype=np.float64)
    g = np.asarray(jax.jit(lambda b: batch_descriptors(b, spec))(batch))
    ref = g[0, :6]
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(g[1, :6], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g[2, :6], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g[3, :300].reshape(50, 6, -1), np.broadcast_to(ref, (50, 6, ref.shape[1])),
                               rtol=1e-10, atol=1e-10)
    assert np.all(g[:3, 6:] == 0.0) and np.all(g[3, 300:] == 0.0)
