"""The rutile/anatase classifier and E(V) fit of experiments.phases (fast; spglib only, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.spacegroup import crystal

from bpnn_jax.io import read_xsf
from experiments.md import PHASES, build_phase
from experiments.phases import (
    EV_A3_TO_GPA,
    birch_murnaghan,
    classify,
    conventional_ac,
    fit_birch_murnaghan,
    strain_c_over_a,
    symmetry_dataset,
    tetragonal_axis,
)


@pytest.mark.parametrize("phase", ["rutile", "anatase"])
def test_ideal_phases_and_supercells_are_recognised(phase):
    conv = build_phase(phase)
    a_exp, _, c_exp = PHASES[phase]["cellpar"][:3]
    for atoms in (conv, conv.repeat((2, 2, 2)), conv.repeat((1, 1, 3))):
        assert classify(atoms) == phase
        a, c = conventional_ac(atoms)
        assert a == pytest.approx(a_exp, abs=1e-6) and c == pytest.approx(c_exp, abs=1e-6)
    # the primitive cell (6 atoms for anatase), rotated and with a little noise
    p = PHASES[phase]
    prim = crystal(["Ti", "O"], basis=p["basis"], spacegroup=p["spacegroup"], cellpar=p["cellpar"], primitive_cell=True)
    prim.rotate(30, "z", rotate_cell=True)
    prim.positions += np.random.default_rng(0).normal(scale=0.005, size=prim.positions.shape)
    assert classify(prim) == phase


def test_other_structures_are_rejected():
    rng = np.random.default_rng(1)
    rutile = build_phase("rutile")
    random = rutile.repeat((1, 1, 2))
    random.set_scaled_positions(rng.random((len(random), 3)))
    assert classify(random) is None
    strained = rutile.copy()  # a != b: Pnnm, no longer rutile
    strained.set_cell(rutile.cell.array * [1.03, 1.0, 1.0], scale_atoms=True)
    assert symmetry_dataset(strained).number == 58 and classify(strained) is None
    assert classify(rutile[:-1]) is None  # TiO2 minus one O
    swapped = rutile.copy()  # the rutile sites with the elements exchanged: Ti2O4 -> Ti4O2
    swapped.set_chemical_symbols(["O" if s == "Ti" else "Ti" for s in rutile.get_chemical_symbols()])
    assert classify(swapped) is None


def test_data_structures(data_dir):
    assert classify(read_xsf(data_dir / "structure1061.xsf")) == "rutile"
    anatase = read_xsf(data_dir / "structure6350.xsf")  # 6-atom primitive cell
    assert classify(anatase) == "anatase"
    a, c = conventional_ac(anatase)
    assert a == pytest.approx(3.8031, abs=1e-3) and c == pytest.approx(9.7073, abs=1e-3)


def test_c_over_a_strain_keeps_volume():
    atoms = crystal(["Ti", "O"], basis=PHASES["anatase"]["basis"], spacegroup=141,
                    cellpar=PHASES["anatase"]["cellpar"], primitive_cell=True)
    ds = symmetry_dataset(atoms)
    axis = tetragonal_axis(atoms, ds)
    strained = strain_c_over_a(atoms, 1.1, axis)
    a0, c0 = conventional_ac(atoms)
    a1, c1 = conventional_ac(strained)
    assert strained.get_volume() == pytest.approx(atoms.get_volume(), rel=1e-12)
    assert (c1 / a1) / (c0 / a0) == pytest.approx(1.1, rel=1e-9)
    assert classify(strained) == "anatase"


def test_birch_murnaghan_fit_recovers_parameters():
    true = (-25.7, 35.0, 200.0 / EV_A3_TO_GPA, 4.3)
    v = np.linspace(31.0, 39.0, 15)
    fit = fit_birch_murnaghan(v, birch_murnaghan(v, *true))
    assert fit["v0_a3_fu"] == pytest.approx(35.0, rel=1e-6)
    assert fit["e0_ev_fu"] == pytest.approx(-25.7, abs=1e-8)
    assert fit["b0_gpa"] == pytest.approx(200.0, rel=1e-4)
    assert fit["b0_prime"] == pytest.approx(4.3, rel=1e-3)
