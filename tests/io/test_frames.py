"""Extended XYZ (and other ASE formats) in every command; a second material labelled by EMT.

* round trip: frames written by ASE (single-point energy and forces, or
  ``info``/``arrays`` keys) read back with the same numbers, named FILE@INDEX;
* bad extended XYZ (truncated frame, NaN coordinate, missing energy for
  ``evaluate``) stops with an error naming the file and, where it applies,
  the frame; exit status 2, nothing written;
* ``train FILE.extxyz`` on Cu structures labelled by ASE's EMT potential
  (bulk at several volumes, a vacancy, rattled snapshots) gives a potential
  whose held-out errors against EMT are small.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import bpnn_jax  # noqa: F401
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
import ase.io

from bpnn_jax.cli import main
from bpnn_jax.errors import XSFError
from bpnn_jax.io import read_frames, read_structures


def emt_frames(n: int = 60, seed: int = 0, *, a0: float = 3.61, gold_corners: bool = False) -> list:
    """Cu structures labelled by EMT: strained, rattled 2x2x2 fcc cells of lattice constant ~a0 (Å),
    every fourth with a vacancy; with ``gold_corners`` Cu3Au (L1_2), Au on the corner site of each
    conventional cell.  Energy eV, forces eV/Å, stress."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=a0 * (0.96 + 0.08 * rng.random()), cubic=True).repeat((2, 2, 2))
        if gold_corners:
            a.symbols[[4 * c for c in range(8)]] = "Au"
        if k % 4 == 3:
            del a[int(rng.integers(len(a)))]
        a.positions += rng.normal(0.0, 0.08, a.positions.shape)
        a.calc = EMT()
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        frames.append(a)
    return frames


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cu") / "cu_emt.extxyz"
    ase.io.write(path, emt_frames(), format="extxyz")
    return path


def test_extxyz_round_trip(cu_file, tmp_path):
    frames = emt_frames(5)
    frames_back = read_frames(cu_file)
    assert len(frames_back) == 60 and frames_back[3].info["file"] == f"{cu_file}@3"
    first = read_frames(cu_file)[:5]
    for a, b in zip(frames, first):
        assert b.info["energy"] == pytest.approx(a.get_potential_energy(), rel=1e-7)
        np.testing.assert_allclose(b.calc.results["forces"], a.get_forces(), atol=1e-7)  # extxyz: 8 decimals
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-7)
    # info/arrays keys instead of calculator results
    a = frames[0].copy()
    a.info["REF_energy"] = -1.25
    a.arrays["REF_forces"] = np.ones((len(a), 3))
    p = tmp_path / "keys.extxyz"
    ase.io.write(p, a, format="extxyz")
    (b,) = read_frames(p)
    assert b.info["energy"] == -1.25 and np.all(b.calc.results["forces"] == 1.0)
    # a directory holds .xsf and .extxyz files
    structures, _ = read_structures(cu_file.parent, require_energy=True)
    assert len(structures) == 60


def test_bad_extxyz_names_file_and_frame(cu_file, tmp_path, capsys):
    text = cu_file.read_text().splitlines()
    truncated = tmp_path / "truncated.extxyz"
    truncated.write_text("\n".join(text[: 2 * 34 + 20]) + "\n")  # frame 2 cut short
    with pytest.raises(XSFError, match="truncated.extxyz"):
        read_frames(truncated)
    nan = tmp_path / "nan.extxyz"
    frames = emt_frames(3)
    frames[1].positions[4, 0] = np.nan
    ase.io.write(nan, frames, format="extxyz")
    with pytest.raises(XSFError, match=r"nan\.extxyz@1: atom 4 has a non-finite position"):
        read_frames(nan)
    noenergy = tmp_path / "noenergy.extxyz"
    bare = [f.copy() for f in emt_frames(2)]  # copies drop the calculator
    ase.io.write(noenergy, bare, format="extxyz")
    out = tmp_path / "m.json"
    assert main(["evaluate", "tio2", str(noenergy), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "noenergy.extxyz@0" in err and "no energy" in err and "Traceback" not in err
    assert not out.exists()


def test_train_and_evaluate_on_emt_copper(cu_file, tmp_path, train_and_evaluate):
    m = train_and_evaluate(cu_file, tmp_path / "run", "--members", "2", "--hidden", "16,16", "--ef-epochs", "150",
                           "--ef-atoms-per-batch", "96")
    print("Cu EMT held-out:", m["energy_rmse_mev_atom"], "meV/atom", m["force_rmse_ev_a"], "eV/Å")
    # EMT forces here have an RMS of ~0.5 eV/Å, energies spread over ~60 meV/atom.
    assert m["energy_rmse_mev_atom"] < 5.0  # measured 0.94 (imbalzano set; 1.5 with artrith-urban)
    assert m["force_rmse_ev_a"] < 0.12  # measured 0.072 (0.070 with artrith-urban)
    assert all(r["file"].startswith(str(cu_file) + "@") for r in m["per_structure"])


def test_train_with_defaults_alone_on_emt_copper(tmp_path, train_and_evaluate):
    """``train FILE.extxyz`` with no options at all: the general descriptor set, fitted references, small errors.

    Trained on 16 of the 60 structures (one mini-batch per epoch: the defaults' 2000 epochs then take a
    quarter of the time they take on all 60) and scored on the other 44, which it never saw, as well as on
    its own test split.
    """
    frames = emt_frames()
    data, unseen = tmp_path / "cu16.extxyz", tmp_path / "cu_unseen.extxyz"
    ase.io.write(data, frames[:16], format="extxyz")
    ase.io.write(unseen, frames[16:], format="extxyz")
    run = tmp_path / "defaults"
    m = train_and_evaluate(data, run)
    assert main(["evaluate", str(run / "model.keras"), str(unseen), "--json", str(tmp_path / "unseen.json")]) == 0
    m_unseen = json.loads((tmp_path / "unseen.json").read_text())
    assert m_unseen["n_structures"] == 44
    for scored in (m, m_unseen):
        print("Cu EMT held-out, defaults:", scored["n_structures"], scored["energy_rmse_mev_atom"],
              scored["force_rmse_ev_a"], scored.get("stress_rmse_gpa"))
        assert scored["energy_rmse_mev_atom"] < 2.0  # measured 0.58 (test split), 0.89 (the 44)
        assert scored["force_rmse_ev_a"] < 0.06  # measured 0.009, 0.017
        assert scored["stress_rmse_gpa"] < 0.5  # measured 0.096, 0.10
    model_cfg = json.loads((run / "split.json").read_text())
    assert set(model_cfg["references"]) == {"Cu"}
