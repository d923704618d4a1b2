"""Options derived from the data (:mod:`bpnn_jax.training.defaults`): what ``train DATA`` does by default.

* the cut-off follows the data's density: the same crystal at two densities gets two cut-offs,
  in the ratio of the lattice constants (and a brute-force neighbour count agrees with the summary);
* what is derived is printed and recorded in ``RUN_DIR/config.yaml``, and ``train --config`` of that file
  repeats the run exactly; options that are given are never derived;
* data too small to validate, or without forces, are told apart with a message.
"""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from bpnn_jax.cli import main
from bpnn_jax.training import TrainConfig
from bpnn_jax.training.data import read_training_frames
from bpnn_jax.training.defaults import DERIVED, NEIGHBOUR_COUNT, derive_defaults, summarize_data
from tests.io.test_frames import emt_frames


def cu_frames(n: int, a0: float, seed: int = 0, forces: bool = True) -> list:
    """Rattled 2x2x2 fcc Cu cells of lattice constant ~a0 (Å), labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=a0 * (0.98 + 0.04 * rng.random()), cubic=True).repeat((2, 2, 2))
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f if forces else None)
        frames.append(a)
    return frames


def read(path):
    return read_training_frames([str(path)], TrainConfig(), progress=False)


def test_cutoff_follows_the_density(tmp_path):
    dense, loose = cu_frames(24, 3.61), cu_frames(24, 3.61 * 1.15, seed=1)
    s_dense, s_loose = summarize_data(dense), summarize_data(loose)
    # Brute force with ASE's neighbour list: the median over atoms of the Cu count within 9 Å sets the
    # radius of a sphere that holds NEIGHBOUR_COUNT of them at that density.
    from ase.neighborlist import neighbor_list

    counts = np.concatenate([np.bincount(neighbor_list("i", a, 9.0), minlength=len(a)) for a in dense])
    density = np.median(counts) / (4 / 3 * np.pi * 9.0**3)
    assert (3 * NEIGHBOUR_COUNT / (4 * np.pi * density)) ** (1 / 3) == pytest.approx(s_dense.radius["Cu"], rel=1e-9)
    v_dense, why_dense = derive_defaults(s_dense)
    v_loose, why_loose = derive_defaults(s_loose)
    assert v_loose["cutoff"] > v_dense["cutoff"]
    assert v_loose["cutoff"] / v_dense["cutoff"] == pytest.approx(1.15, rel=0.05)
    assert any(f"cut-off {v_dense['cutoff']:g} Å" in line for line in why_dense)
    assert v_dense["members"] >= 5 and v_dense["preset"] == "dense"
    # Given options are never derived.
    v_given, _ = derive_defaults(s_dense, given=["cutoff", "members"])
    assert "cutoff" not in v_given and "members" not in v_given


def test_close_contacts_get_a_repulsive_baseline():
    frames = cu_frames(12, 3.61)
    values, _ = derive_defaults(summarize_data(frames))
    assert values["repulsion"] is None
    # Two atoms pushed to 0.6 of the nearest-neighbour distance (2.55 Å) in three structures.
    for a in frames[:3]:
        d = a.positions[1] - a.positions[0]
        a.positions[1] = a.positions[0] + d / np.linalg.norm(d) * 0.6 * 2.55
    summary = summarize_data(frames)
    lo, median = summary.nearest["Cu-Cu"]
    assert lo == pytest.approx(0.6 * 2.55, abs=0.01) and 2.4 < median < 2.7
    values, reasons = derive_defaults(summary)
    assert values["repulsion"] == {"Cu-Cu": round(0.85 * median, 2)}
    assert any("close contacts" in line for line in reasons)


def test_too_few_structures_and_no_forces_are_told(tmp_path, capsys):
    values, reasons = derive_defaults(summarize_data(cu_frames(24, 3.61, forces=False)))
    assert values["members"] >= 5 and values["ef_force_weight"] == 0.0
    assert any("24 of 24 structures have no forces" in line for line in reasons)
    path = tmp_path / "few.extxyz"
    ase.io.write(path, cu_frames(5, 3.61), format="extxyz")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "5 structures: too few for a training and a validation split" in capsys.readouterr().err


def test_data_without_forces_train_an_energy_committee(tmp_path, capsys):
    """No forces: the committee trains on energies, computes no descriptor Jacobians, and fits."""
    data = tmp_path / "cu.extxyz"
    frames = cu_frames(40, 3.61, forces=False)
    ase.io.write(data, frames, format="extxyz")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--members", "2", "--hidden", "16", "--ef-epochs", "400",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "energy-only committee of 2" in out and "force weight 0: energies only" in out
    assert not list((run / "cache").glob("jacobians-*"))  # no Jacobians computed or cached
    from bpnn_jax.calculators.ase import BPNNCalculator
    from bpnn_jax.model import load_model

    model = load_model(str(run / "model.keras"))
    assert model.members == 2 and model.uncertainty_threshold is not None
    calc = BPNNCalculator(model, warn_extrapolation=False)
    e = np.array([calc.get_potential_energy(a) / len(a) for a in read(data)])
    ref = np.array([a.get_potential_energy() / len(a) for a in frames])
    # Fitted far better than the spread of the data (the rattle and the lattice constants' ±2 %).
    assert np.sqrt(np.mean((e - ref) ** 2)) < 0.25 * np.std(ref)
    # Asking for forces where there are none names a file and the way out.
    assert main(["train", str(data), "--out", str(tmp_path / "f"), "--members", "2", "--ef-force-weight", "0.01",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no forces" in err and "--ef-force-weight 0" in err and "cu.extxyz" in err


def test_derived_options_are_recorded_and_the_config_repeats_the_run(tmp_path, capsys):
    data = tmp_path / "cu.extxyz"
    ase.io.write(data, cu_frames(24, 3.61), format="extxyz")
    quick = ["--members", "2", "--hidden", "8", "--ef-epochs", "3", "--ef-final-epochs", "1", "--quiet"]
    assert main(["train", str(data), "--out", str(tmp_path / "a"), *quick]) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "a" / "config.yaml").read_text()
    config = yaml.safe_load(text)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    # Derived: the cut-off and descriptors, printed with their reasons and kept in config.yaml.
    assert "cut-off" in printed and "# options derived from the data:" in text
    assert config["preset"] == "dense" and config["cutoff"] == saved["cutoff"] > 4.0
    assert config["members"] == 2 and config["hidden"] == [8] and config["derive"] == []
    assert set(DERIVED) <= set(config)
    # The recorded config repeats the run: same options, same model.
    assert main(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again == saved
    from bpnn_jax.calculators.ase import BPNNCalculator
    from bpnn_jax.model import load_model

    def energies(run):
        calc = BPNNCalculator(load_model(str(tmp_path / run / "model.keras")), warn_extrapolation=False)
        return [calc.get_potential_energy(a) for a in read(data)[:3]]

    np.testing.assert_allclose(energies("a"), energies("b"), rtol=0, atol=1e-6)


def test_the_element_with_the_fewest_neighbours_sets_the_cutoff():
    """Two elements (the cheap half of an end-to-end defaults run on them): Au, a quarter of the atoms of
    Cu3Au, needs the larger sphere to hold NEIGHBOUR_COUNT Au atoms, so Au sets the cut-off (clipped)."""
    frames = emt_frames(8, a0=3.75, gold_corners=True)
    summary = summarize_data(frames)
    assert summary.elements == ("Au", "Cu")
    assert summary.radius["Au"] == pytest.approx(3 ** (1 / 3) * summary.radius["Cu"], rel=0.05)  # 3 Cu per Au
    values, reasons = derive_defaults(summary)
    assert values["cutoff"] == 6.5 < summary.radius["Au"]
    assert any("Au sets it" in line and "clipped" in line for line in reasons)
    cu_only, _ = derive_defaults(summarize_data(cu_frames(8, 3.61)))
    assert cu_only["cutoff"] < 6.5
