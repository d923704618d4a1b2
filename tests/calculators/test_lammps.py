"""The LAMMPS route (bpnn_jax.calculators.lammps, ``export-lammps``): the exported
lammps-jax program, run in process on structures laid out as LAMMPS lays
them out, against the calculator; the layout itself against a brute-force
image search; the bundle as lammps-jax's C++ loader reads it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bpnn_jax.cli import main
from bpnn_jax.io import read_xsf

THIN = "structure1632.xsf"  # 6 atoms, shortest cell vector 2.36 Å
LARGE = "structure7514.xsf"  # 95 atoms
CAPACITY = dict(max_atoms=2048, max_neighbors=160, max_owned=96)


@pytest.fixture(scope="module")
def bundle64(tmp_path_factory):
    from bpnn_jax.calculators.lammps import export_lammps

    path = tmp_path_factory.mktemp("lammps") / "tio2.json"
    export_lammps("tio2", path, precision="float64", **CAPACITY)
    return path


def test_exported_program_equals_calculator_float64(bundle64, data_dir):
    from bpnn_jax.calculators.lammps import verify_bundle

    atoms = [read_xsf(data_dir / THIN), read_xsf(data_dir / LARGE)]
    result = verify_bundle(bundle64, atoms)
    assert [r["n_atoms"] for r in result["structures"]] == [6, 95]
    assert all(r["n_ghosts"] > 5 * r["n_atoms"] for r in result["structures"][:1])  # thin cell: many images
    # The issue asks for 1e-6 relative and 1e-5 eV/Å; the same kernel in float64 gives ~1e-16.
    assert result["max_rel_energy_error"] <= 1e-12
    assert result["max_abs_energy_error_ev"] <= 1e-8
    assert result["max_abs_force_error_ev_a"] <= 1e-10


def test_bundle_types_follow_model_elements_and_unknown_types_give_nan(bundle64, data_dir):
    """Type t is element t-1: swapping O and Ti changes the energy; a type past the elements is NaN."""
    from bpnn_jax.calculators.lammps import (
        compile_bundle,
        lammps_layout,
        read_bundle,
        run_bundle,
    )

    bundle = read_bundle(bundle64)
    assert bundle["bpnn_jax"]["lammps_types"] == {"1": "O", "2": "Ti"}
    atoms = read_xsf(data_dir / THIN)
    exe = compile_bundle(bundle)
    layout = lammps_layout(atoms, ("O", "Ti"), 6.5, max_atoms=2048, max_neighbors=160, rows=96)
    e, _ = run_bundle(bundle, layout, exe)
    n = layout.nlocal + layout.nghost
    swapped = layout.species.copy()
    swapped[:n] = 1 - swapped[:n]
    e_swap, _ = run_bundle(bundle, _replace(layout, species=swapped), exe)
    assert abs(e_swap - e) > 1.0
    bad = layout.species.copy()
    bad[0] = 2
    e_bad, _ = run_bundle(bundle, _replace(layout, species=bad), exe)
    assert np.isnan(e_bad)


def _replace(layout, **kw):
    import dataclasses

    return dataclasses.replace(layout, **kw)


def test_layout_matches_brute_force_images(data_dir):
    """Each row lists exactly the images within the cut-off (brute force over shifts), ghosts are images."""
    from bpnn_jax.calculators.lammps import lammps_layout

    atoms = read_xsf(data_dir / THIN)
    rc = 6.5
    L = lammps_layout(atoms, ("O", "Ti"), rc, max_atoms=2048, max_neighbors=160, rows=8)
    pos, cell = atoms.positions, atoms.cell.array
    n = len(atoms)
    rng = range(-4, 5)
    for i in range(n):
        expected = sorted(
            round(float(np.linalg.norm(pos[j] + np.array(s) @ cell - pos[i])), 9)
            for j in range(n) for s in np.array(np.meshgrid(rng, rng, rng)).T.reshape(-1, 3)
            if 0 < np.linalg.norm(pos[j] + np.array(s) @ cell - pos[i]) < rc
        )
        row = L.neighbors[: L.num_neighbors[i], i]
        got = sorted(round(float(np.linalg.norm(L.positions[k] - pos[i])), 9) for k in row)
        assert got == expected
        assert np.all(L.neighbors[L.num_neighbors[i]:, i] == 2048)
    # Ghost rows are images of their owners: same species, lattice-vector offsets.
    g = slice(n, n + L.nghost)
    frac = np.linalg.solve(cell.T, (L.positions[g] - pos[L.owner[g]]).T).T
    assert np.allclose(frac, np.round(frac), atol=1e-9)
    assert np.array_equal(L.species[g], L.species[L.owner[g]])


def test_bundle_contract_survives_first_match_key_lookup(bundle64):
    """lammps-jax's C++ loader takes the first '"key":' in the file: our metadata must not shadow the contract."""
    text = bundle64.read_text()
    contract = json.loads(text)["contract"]
    for key, value in contract.items():
        if isinstance(value, (list, dict)):
            continue
        m = re.search(r'"%s"\s*:\s*("(?:[^"\\]|\\.)*"|[^,}\s]+)' % re.escape(key), text)
        assert json.loads(m.group(1)) == value, key
    assert contract["unit_style"] == "metal" and contract["input_layout"] == "neighbor-matrix"
    assert contract["n_species"] == 2 and contract["newton"] == "on"


def test_export_lammps_cli_verify_json_and_failure_exit(tmp_path, data_dir, capsys):
    bundle = tmp_path / "b.json"
    assert main(["export-lammps", "tio2", "--out", str(bundle), "--max-atoms", "2048", "--max-neighbors", "160",
                 "--max-owned", "96"]) == 0
    assert "1=O 2=Ti" in capsys.readouterr().out
    out = tmp_path / "v.json"
    assert main(["export-lammps", "--verify", str(bundle), str(data_dir / THIN), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["passed"] and result["max_abs_energy_error_ev"] < 1e-3
    assert result["max_abs_force_error_ev_a"] < 1e-5
    assert main(["export-lammps", "--verify", str(bundle), str(data_dir / THIN), "--force-tolerance", "1e-30"]) == 1


def test_structure_too_large_for_the_bundle_is_a_clear_error(bundle64, data_dir, capsys):
    code = main(["export-lammps", "--verify", str(bundle64), str(data_dir / "structure0001.xsf"),
                 "--model", "tio2", "--force-tolerance", "1"])
    assert code == 0  # 24 atoms fit
    from bpnn_jax.calculators.lammps import export_lammps

    small = bundle64.with_name("small.json")
    export_lammps("tio2", small, max_atoms=64, max_neighbors=160, max_owned=32)
    assert main(["export-lammps", "--verify", str(small), str(data_dir / LARGE)]) == 2
    err = capsys.readouterr().err
    assert LARGE in err and "max_atoms = 64" in err and "Traceback" not in err


def test_missing_lammps_jax_names_the_install_command(monkeypatch, tmp_path, capsys):
    import builtins

    real = builtins.__import__

    def no_lammps_jax(name, *args, **kwargs):
        if name.startswith("lammps_jax"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lammps_jax)
    assert main(["export-lammps", "tio2", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "--no-deps" in err and "lammps-jax==0.2.1" in err
    assert not (tmp_path / "b.json").exists()


def test_committee_mean_is_float64_exact():
    """The committee mean in float64 is the mean of the members (Keras's ops.mean reduces in float32)."""
    import jax.numpy as jnp

    from bpnn_jax.model import load_model

    m = load_model("tio2", dtype="float64")
    rng = np.random.default_rng(0)
    sf = jnp.asarray(rng.random((1, 12, m.n_functions)) * 3)
    species = jnp.asarray(rng.integers(0, 2, (1, 12)))
    mask = jnp.ones((1, 12), bool)
    members = np.asarray(m.member_atomic_energies(sf, species, mask), np.float64)
    mean = np.asarray(m.atomic_energies(sf, species, mask))
    np.testing.assert_allclose(mean, members.mean(axis=0), rtol=0, atol=1e-12)


def test_jax_and_jaxlib_are_one_version():
    """Installing lammps-jax with its dependencies moves jaxlib below jax (~8x slower JAX): --no-deps."""
    import jax
    import jaxlib

    assert jax.__version__ == jaxlib.__version__
