"""Tests of :mod:`bpnn_jax.descriptors.featurize` and the ``featurize`` subcommand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bpnn_jax  # noqa: F401
from bpnn_jax.cli import main
from bpnn_jax.descriptors import SymmetryFunctionSet
from bpnn_jax.descriptors.batch import prepare_structures
from bpnn_jax.descriptors.featurize import (
    default_elements,
    descriptor_function,
    feature_arrays,
    featurize,
    featurize_files,
)
from bpnn_jax.errors import BPNNInputError, StructureError
from bpnn_jax.io import read_xsf

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Oracle structures of 24, 6 (thinnest cell of the oracle set, 2.44 Å) and 47 atoms.
ORACLE_FILES = ("structure0001.xsf", "structure1821.xsf", "structure7473.xsf")

ARRAYS = (
    "files", "n_atoms", "atom_offset", "species", "sf", "elements", "cutoff",
    "fn_center", "fn_kind", "fn_neighbors", "fn_eta", "fn_rs", "fn_lambda", "fn_zeta", "fn_rc",
)


@pytest.fixture(scope="module")
def spec():
    return SymmetryFunctionSet.artrith_urban()


@pytest.fixture(scope="module")
def oracle(oracle_path):
    with np.load(oracle_path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _oracle_sf(oracle, name: str) -> tuple[np.ndarray, np.ndarray]:
    k = oracle["files"].tolist().index(name)
    off, n = int(oracle["atom_offset"][k]), int(oracle["n_atoms"][k])
    return oracle["sf"][off : off + n], oracle["species"][off : off + n]


@pytest.fixture(scope="module")
def oracle_paths(data_dir) -> list[str]:
    return [str(data_dir / name) for name in ORACLE_FILES]


@pytest.fixture(scope="module")
def cli_f64(oracle_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("feat") / "sf.npz"
    assert main(["featurize", *oracle_paths, "--out", str(out), "--no-progress"]) == 0
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------


def test_featurize_order(oracle, data_dir, spec):
    """Input order is kept whatever the batching; prepared input gives the same."""
    names = list(ORACLE_FILES) + ["structure0005.xsf", "structure2126.xsf", "structure1808.xsf"]
    atoms = [read_xsf(data_dir / n) for n in names]
    order = [3, 0, 5, 1, 4, 2]
    atoms = [atoms[i] for i in order]
    names = [names[i] for i in order]
    merged = featurize(atoms, spec)
    prepared = featurize(prepare_structures(atoms, spec.elements, spec.cutoff), spec)
    for name, a, m, q in zip(names, atoms, merged, prepared):
        ref, species = _oracle_sf(oracle, name)
        assert a.get_chemical_symbols() == species.tolist()
        assert m.shape == (len(a), 70) and m.dtype == np.float64
        assert np.abs(m - ref).max() <= 1e-10, name
        np.testing.assert_array_equal(m, q)


def test_featurize_empty_and_bad_input(spec):
    assert featurize([], spec) == []
    with pytest.raises(BPNNInputError):
        featurize([], spec, dtype=np.int32)
    with pytest.raises(BPNNInputError):
        featurize([], spec, atoms_per_batch=0)


def test_featurize_unknown_element_names_structure(spec):
    from ase import Atoms

    atoms = Atoms("OTiN", positions=[[0, 0, 0], [1, 1, 1], [2, 2, 2]], cell=6.0 * np.eye(3), pbc=True)
    atoms.info["file"] = "n.xsf"
    with pytest.raises(StructureError, match="n.xsf"):
        featurize([atoms], spec)


def test_descriptor_function_is_cached(spec):
    assert descriptor_function(spec, 8) is descriptor_function(SymmetryFunctionSet.artrith_urban(), 8)
    assert descriptor_function(spec, 8) is not descriptor_function(spec, 4)


def test_default_elements():
    assert default_elements(["O", "O"]) == ("O", "Ti")
    assert default_elements(["Ti", "O"]) == ("O", "Ti")
    assert default_elements(["Ti", "O", "Li"]) == ("Li", "O", "Ti")
    assert default_elements(["Zr", "O"], preset="other") == ("O", "Zr")


def test_featurize_files_api(oracle_paths, oracle):
    fs = featurize_files(oracle_paths[:2], dtype=np.float64)
    assert fs.files == oracle_paths[:2]
    assert fs.spec.elements == ("O", "Ti")
    arrays = feature_arrays(fs)
    assert set(arrays) == set(ARRAYS)
    for name, v in zip(ORACLE_FILES, fs.values):
        ref, species = _oracle_sf(oracle, name)
        assert np.abs(v - ref).max() <= 1e-10


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def test_cli_arrays_match_oracle(cli_f64, oracle, oracle_paths):
    z = cli_f64
    assert set(z) == set(ARRAYS)
    assert z["files"].tolist() == oracle_paths
    refs = [_oracle_sf(oracle, name) for name in ORACLE_FILES]
    n_atoms = [len(r[0]) for r in refs]
    assert z["n_atoms"].dtype == np.int64 and z["n_atoms"].tolist() == n_atoms
    assert z["atom_offset"].tolist() == [0, n_atoms[0], n_atoms[0] + n_atoms[1]]
    assert z["species"].tolist() == np.concatenate([r[1] for r in refs]).tolist()
    assert z["sf"].shape == (sum(n_atoms), 70) and z["sf"].dtype == np.float64
    assert np.abs(z["sf"] - np.concatenate([r[0] for r in refs])).max() <= 1e-10
    assert z["elements"].tolist() == ["O", "Ti"] and float(z["cutoff"]) == 6.5
    for name in ("fn_center", "fn_kind", "fn_neighbors", "fn_eta", "fn_rs", "fn_lambda", "fn_zeta", "fn_rc"):
        np.testing.assert_array_equal(z[name], oracle[name], err_msg=name)
        assert z[name].dtype.kind == oracle[name].dtype.kind, name


def test_cli_float32(cli_f64, oracle_paths, tmp_path):
    out = tmp_path / "sf32"  # no suffix: written exactly here
    assert main(["featurize", *oracle_paths, "-o", str(out), "--dtype", "float32", "--no-progress"]) == 0
    assert out.is_file() and not Path(str(out) + ".npz").exists()
    with np.load(out, allow_pickle=False) as z:
        sf32 = z["sf"]
        assert z["files"].tolist() == cli_f64["files"].tolist()
    sf64 = cli_f64["sf"]
    assert sf32.dtype == np.float32 and sf32.shape == sf64.shape
    rel = np.abs(sf32.astype(np.float64) - sf64) / np.abs(sf64)
    assert rel.max() <= 1e-4, rel.max()


def test_cli_missing_path_exit_2(tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert main(["featurize", str(tmp_path / "nope.xsf"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.xsf" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_missing_output_directory_exit_2(oracle_paths, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "x.npz"
    assert main(["featurize", oracle_paths[0], "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_bad_file_subprocess_no_traceback(tmp_path):
    bad = tmp_path / "bad.xsf"
    bad.write_text("CRYSTAL\nPRIMVEC\n1 0 0\n0 1 0\n")
    out = tmp_path / "x.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "bpnn_jax", "featurize", str(bad), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "bad.xsf" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_skip_invalid(oracle_paths, tmp_path, capsys, oracle):
    bad = tmp_path / "bad.xsf"
    bad.write_text("CRYSTAL\nPRIMVEC\n1 0 0\n0 1 0\n")
    out = tmp_path / "x.npz"
    assert main(["featurize", str(bad), oracle_paths[0], "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()
    capsys.readouterr()
    assert main(["featurize", str(bad), oracle_paths[0], "--out", str(out), "--skip-invalid", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "bad.xsf" in err and "skipped 1 invalid file" in err
    with np.load(out, allow_pickle=False) as z:
        assert z["files"].tolist() == [oracle_paths[0]]
        assert np.abs(z["sf"] - _oracle_sf(oracle, ORACLE_FILES[0])[0]).max() <= 1e-10
    assert main(["featurize", str(bad), "--out", str(out), "--skip-invalid"]) == 2
    assert "no readable structures" in capsys.readouterr().err


def test_cli_skip_invalid_structure(oracle_paths, tmp_path, capsys):
    """--skip-invalid also skips readable structures that cannot be featurised."""
    nitrogen = tmp_path / "nitrogen.xsf"
    nitrogen.write_text("CRYSTAL\nPRIMVEC\n5 0 0\n0 5 0\n0 0 5\nPRIMCOORD\n2 1\nO 0 0 0\nN 1.5 1.5 1.5\n")
    out = tmp_path / "x.npz"
    args = ["featurize", oracle_paths[0], str(nitrogen), "--out", str(out), "--elements", "O", "Ti", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nitrogen.xsf" in err and "N" in err and "Traceback" not in err
    assert not out.exists()
    assert main(args + ["--skip-invalid"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "nitrogen.xsf: atom 1 is N" in err
    with np.load(out, allow_pickle=False) as z:
        assert z["files"].tolist() == [oracle_paths[0]]
        assert z["n_atoms"].tolist() == [24]


def test_featurize_command_does_not_import_keras(oracle_paths, tmp_path):
    """A featurize process pays for JAX only: Keras (1-2 s to import) stays out of it."""
    code = ("import sys\nfrom bpnn_jax.cli import main\n"
            f"rc = main(['featurize', {str(oracle_paths[0])!r}, '--out', {str(tmp_path / 'f.npz')!r}])\n"
            "print(rc, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["0", "False"], out.stdout
    assert (tmp_path / "f.npz").exists()
