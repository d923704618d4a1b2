"""Tests of the ASE calculator (float64 model, small random networks).

* forces = -dE/dR and stress = (1/V) dE/dε by central finite differences
  (ASE's own numerical stress for the sign and Voigt order) on a thin
  orthorhombic cell, a triclinic cell and a 24-atom cell;
* the energy is the model's plus the reference energies, and a neighbour
  list built at Rc + skin gives the same energy as one built at Rc;
* wrapping atoms changes nothing; a 2x2x1 cell has the same atomic energies;
* the neighbour list is reused for small moves and rebuilt for large ones,
  with the same results as a fresh calculator;
* unknown elements raise, and extrapolation warns (only) where it should;
* a short NVE run conserves the total energy.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (selects the JAX backend, enables float64)
import jax
from ase import units
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

from bpnn_jax.descriptors.batch import collate, prepare_structures
from bpnn_jax.calculators.ase import BPNNCalculator, ExtrapolationWarning, extrapolation_report
from bpnn_jax.errors import StructureError
from bpnn_jax.io import REFERENCE_ENERGIES_TIO2, read_xsf
from bpnn_jax.model import BPNN, total_energy

try:
    from ase.calculators.fd import calculate_numerical_stress
except ImportError:  # ASE < 3.24

    def calculate_numerical_stress(atoms, eps=1e-6):
        return atoms.calc.calculate_numerical_stress(atoms, d=eps)


THIN = "structure1632.xsf"  # 6 atoms, orthorhombic 4.52 x 2.36 x 6.29 Å
THIN2 = "structure1061.xsf"  # 6 atoms, orthorhombic 2.97 x 4.65 x 4.65 Å
BULK = "structure0001.xsf"  # 24 atoms, orthorhombic 5.93 x 9.30 x 4.65 Å
OTHER = "structure0652.xsf"  # 23 atoms
NAMES = (THIN, THIN2, BULK, OTHER)
SHEAR = np.array([[1.0, 0.0, 0.0], [0.25, 1.0, 0.0], [-0.15, 0.2, 1.0]])


def bare(atoms):
    """A copy without the data's single-point calculator."""
    out = atoms.copy()
    out.calc = None
    return out


def sheared(atoms):
    """``atoms`` under a shear (cell and positions): a triclinic cell."""
    out = bare(atoms)
    out.set_cell(atoms.cell.array @ SHEAR, scale_atoms=True)
    return out


def numerical_forces(atoms, components, step=1e-4):
    """-dE/dR by central differences for the (atom, axis) ``components``."""
    out = np.zeros((len(atoms), 3))
    for a, c in components:
        p0 = atoms.positions.copy()
        p = p0.copy()
        p[a, c] += step
        atoms.positions = p
        e_plus = atoms.get_potential_energy()
        p[a, c] -= 2 * step
        atoms.positions = p
        e_minus = atoms.get_potential_energy()
        atoms.positions = p0
        out[a, c] = -(e_plus - e_minus) / (2 * step)
    return out


@pytest.fixture(scope="module")
def structures(data_dir):
    return {name: bare(read_xsf(data_dir / name)) for name in NAMES}


@pytest.fixture(scope="module")
def model(structures, make_random_model) -> BPNN:
    return make_random_model([structures[n] for n in NAMES])


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("case", ["thin", "triclinic", "bulk"])
def test_forces_and_stress_are_energy_derivatives(model, structures, case):
    if case == "thin":
        atoms = bare(structures[THIN])
    elif case == "triclinic":
        atoms = sheared(structures[THIN2])
        angles = atoms.cell.angles()
        assert np.all(np.abs(angles - 90.0) > 5.0), angles
    else:
        atoms = bare(structures[BULK])
    atoms.calc = BPNNCalculator(model, warn_extrapolation=False)
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    energies = atoms.get_potential_energies()
    assert abs(energies.sum() - atoms.get_potential_energy()) <= 1e-9

    if case == "bulk":  # 8 random components keep the test short
        rng = np.random.default_rng(3)
        components = [(int(a), int(c)) for a, c in zip(rng.choice(len(atoms), 8, replace=False),
                                                       rng.integers(0, 3, 8))]
    else:
        components = [(a, c) for a in range(len(atoms)) for c in range(3)]
    idx = tuple(np.array(components).T)
    numeric = numerical_forces(atoms, components)[idx]
    analytic = forces[idx]
    assert np.linalg.norm(analytic) > 1e-2
    assert np.linalg.norm(numeric - analytic) / np.linalg.norm(analytic) <= 1e-6

    # ASE's own finite-difference stress: same definition, sign and Voigt order.
    # E(ε) is strongly curved (truncation error ~1e-5 relative at ε = 1e-4),
    # so use ε = 1e-5 (~1e-7); round-off is still ~1e-9 there.
    numeric_stress = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.linalg.norm(stress) > 1e-3
    assert np.linalg.norm(numeric_stress - stress) / np.linalg.norm(stress) <= 1e-6
    if case == "triclinic":  # shear components are non-trivial here
        assert np.all(np.abs(stress[3:]) > 1e-4), stress


def test_energy_scale_and_skin_list(model, structures):
    """DFT-scale energy = model + references; Rc + skin list = Rc list."""
    atoms = bare(structures[THIN])
    calc = BPNNCalculator(model, skin=0.5)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    h = prepare_structures([atoms], model.elements, model.spec.cutoff)[0]  # list at Rc exactly
    assert h.slots != calc._nl["shape"][2], "the skin list should have more neighbours"
    x = collate([h], 1, 8, h.slots, dtype=np.float64).inputs(model.elements)
    e_rel = jax.jit(lambda x: model.structure_energies(x["positions"], x["cell"], x))(x)
    expected = total_energy(model, np.asarray(e_rel), [atoms.get_chemical_symbols()])[0]
    assert abs(energy - expected) <= 1e-9
    refs = sum(REFERENCE_ENERGIES_TIO2[s] for s in atoms.get_chemical_symbols())
    assert abs(energy - refs) < 100.0  # relative part is small; references dominate


def test_wrapped_atoms_and_replicated_cell(model, structures):
    atoms = bare(structures[BULK])
    calc = BPNNCalculator(model, warn_extrapolation=False)
    atoms.calc = calc
    e0, f0, s0 = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    wrapped = bare(atoms)
    cell = atoms.cell.array
    wrapped.positions[[0, 5]] += cell[0] + cell[2]
    wrapped.positions[7] -= 2 * cell[1]
    wrapped.calc = calc
    assert abs(wrapped.get_potential_energy() - e0) <= 1e-9
    np.testing.assert_allclose(wrapped.get_forces(), f0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(wrapped.get_stress(), s0, rtol=0, atol=1e-10)

    small = bare(structures[THIN2])
    small.calc = BPNNCalculator(model, warn_extrapolation=False)
    big = small.repeat((2, 2, 1))
    big.calc = BPNNCalculator(model, warn_extrapolation=False)
    e_small, e_big = small.get_potential_energies(), big.get_potential_energies()
    np.testing.assert_allclose(e_big, np.tile(e_small, 4), rtol=0, atol=1e-9)
    assert abs(big.get_potential_energy() - 4 * small.get_potential_energy()) <= 1e-8
    np.testing.assert_allclose(big.get_forces(), np.tile(small.get_forces(), (4, 1)), rtol=0, atol=1e-10)
    np.testing.assert_allclose(big.get_stress(), small.get_stress(), rtol=0, atol=1e-10)


def test_neighbor_list_reuse(model, structures):
    atoms = bare(structures[BULK])
    calc = BPNNCalculator(model, skin=0.5, warn_extrapolation=False)
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.nl_builds == 1

    def same_as_fresh(a):
        fresh = bare(a)
        fresh.calc = BPNNCalculator(model, skin=0.5, warn_extrapolation=False)
        assert abs(a.get_potential_energy() - fresh.get_potential_energy()) <= 1e-9
        np.testing.assert_allclose(a.get_forces(), fresh.get_forces(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.get_stress(), fresh.get_stress(), rtol=0, atol=1e-10)

    rng = np.random.default_rng(5)
    step = rng.normal(size=(len(atoms), 3))
    step *= 0.24 / np.linalg.norm(step, axis=1).max()  # every atom < skin/2 = 0.25 Å
    atoms.positions += step
    forces = atoms.get_forces()
    assert calc.nl_builds == 1
    assert not np.allclose(forces, 0)
    same_as_fresh(atoms)

    atoms.positions[3] += [0.6, 0.0, 0.0]  # atom 3: > 0.36 Å from where it was at the build
    atoms.get_forces()
    assert calc.nl_builds == 2
    same_as_fresh(atoms)

    atoms.positions[3] -= [0.6, 0.0, 0.0]  # 0.6 Å from the new build
    atoms.get_forces()
    assert calc.nl_builds == 3

    # A cell change keeps the list while strain and moves fit in the skin:
    # Rc / sigma_min(h0^-1 h) + 2 max|R h^-1 h0 - R0| <= Rc + skin (Rc 6.5, skin 0.5).
    atoms.set_cell(atoms.cell.array * 1.001, scale_atoms=True)  # stretch: no pair comes closer
    atoms.get_forces()
    assert calc.nl_builds == 3
    same_as_fresh(atoms)
    shear = np.eye(3)
    shear[0, 1] = 0.02  # sigma_min ~ 0.99: reach 6.57
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.positions[5] += [0.15, 0.0, 0.0]  # 6.57 + 0.30 <= 7.0
    atoms.get_forces()
    assert calc.nl_builds == 3
    same_as_fresh(atoms)
    atoms.positions[5] += [0.1, 0.0, 0.0]  # 6.57 + 0.50 > 7.0
    atoms.get_forces()
    assert calc.nl_builds == 4
    same_as_fresh(atoms)
    # 8 % compression brings pairs from beyond Rc + skin (7.0 / 0.92 ...) inside Rc: a list
    # kept across it would miss them, and same_as_fresh would fail.
    atoms.set_cell(atoms.cell.array * 0.92, scale_atoms=True)
    atoms.get_forces()
    assert calc.nl_builds == 5
    same_as_fresh(atoms)


def test_unknown_element(model, structures):
    atoms = bare(structures[THIN])
    atoms.symbols[2] = "Cu"
    atoms.calc = BPNNCalculator(model)
    with pytest.raises(StructureError, match=r"Cu.*O, Ti"):
        atoms.get_potential_energy()


def test_extrapolation_warning(model, structures):
    atoms = bare(structures[THIN])  # one of the structures the statistics come from
    calc = BPNNCalculator(model)
    atoms.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        atoms.get_potential_energy()
    assert calc.last_extrapolation == []

    squeezed = bare(atoms)
    squeezed.set_cell(atoms.cell.array * 0.7, scale_atoms=True)
    squeezed.calc = calc
    with pytest.warns(ExtrapolationWarning, match=r"of 6 atoms .*atom 0 \(\d+ functions\)"):
        squeezed.get_potential_energy()
    report = calc.last_extrapolation
    assert report and all(k > 0 for _, k in report)
    assert [a for a, _ in report] == sorted({a for a, _ in report})
    # Not repeated along a trajectory of the same system...
    squeezed.positions[0] += 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        squeezed.get_forces()
    assert calc.last_extrapolation
    # ...and can be switched off.
    quiet = bare(squeezed)
    quiet.calc = BPNNCalculator(model, warn_extrapolation=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        quiet.get_potential_energy()
    assert quiet.calc.last_extrapolation == report


def test_extrapolation_report(model):
    lo = np.asarray(model.sf_min)
    hi = np.asarray(model.sf_max)
    species = np.array([0, 1, 1, 0])
    sf = 0.5 * (lo + hi)[species]
    assert extrapolation_report(model, sf, species) == []
    width = (hi - lo)[species]
    sf[1, 3] = hi[1, 3] + 0.04 * width[1, 3]  # inside the 5 % margin
    assert extrapolation_report(model, sf, species) == []
    sf[1, 3] = hi[1, 3] + 0.2 * width[1, 3]
    sf[1, 7] = lo[1, 7] - 0.2 * width[1, 7]
    sf[3, 0] = lo[0, 0] - 0.2 * width[3, 0]
    assert extrapolation_report(model, sf, species) == [(1, 2), (3, 1)]
    assert extrapolation_report(model, sf, species, tolerance=0.5) == []


def test_nve_conserves_energy(model, structures):
    atoms = bare(structures[BULK])
    atoms.calc = BPNNCalculator(model, warn_extrapolation=False)
    # Maxwell-Boltzmann momenta at 300 K (by hand: ASE's helper moved in 3.29).
    rng = np.random.default_rng(11)
    kt = units.kB * 300.0
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses()[:, None] * kt))
    Stationary(atoms)
    energies = []
    md = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    md.attach(lambda: energies.append((atoms.get_potential_energy(), atoms.get_kinetic_energy())), interval=1)
    md.run(20)
    potential, kinetic = np.array(energies).T
    total = potential + kinetic
    assert len(total) == 21
    assert np.ptp(potential) > 0.05  # eV: the dynamics is not trivial (0.2 eV seen)
    drift = np.abs(total - total[0]).max() / len(atoms)
    assert drift < 1e-4, drift  # eV/atom over 20 fs (~1e-5 seen)


def test_lazy_exports():
    code = (
        "import sys, bpnn_jax; assert 'keras' not in sys.modules, 'keras imported eagerly'; "
        "from bpnn_jax import BPNNCalculator, load_model; "
        "from bpnn_jax.calculators.ase import BPNNCalculator as C; from bpnn_jax.model import load_model as L; "
        "assert BPNNCalculator is C and load_model is L"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        bpnn_jax.no_such_name  # noqa: B018


def test_large_cells_are_padded_tightly():
    from bpnn_jax.calculators.ase import LARGE_CELL_PAD, calculator_padding
    from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS

    sizes = np.arange(1, 20000, 7)
    padded = np.array([calculator_padding(int(n)) for n in sizes])
    assert np.all(padded >= sizes) and np.all(np.diff(padded) >= 0)
    large = sizes > ATOM_BUCKETS[-1]
    assert np.all(padded[large] - sizes[large] < LARGE_CELL_PAD)
    assert np.all(padded[large] % LARGE_CELL_PAD == 0)
    assert calculator_padding(10200) == 10240  # the x1.5 ladder gave 15136


def test_cell_relaxation_compiles_a_bounded_number_of_programs(data_dir):
    """BFGS + FrechetCellFilter on a strained 24-atom cell: the cell changes at every step, the programs do not.

    Counted with JAX's monitoring events (one lowering per compiled program,
    whether or not the persistent cache then serves it), not timed.
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    from bpnn_jax.model import load_model

    atoms = read_xsf(data_dir / "structure0001.xsf")
    atoms.set_cell(atoms.cell.array * 1.03, scale_atoms=True)
    calc = BPNNCalculator(load_model("tio2"), warn_extrapolation=False)
    atoms.calc = calc
    atoms.get_potential_energy()  # the first program
    lowered = []

    def listener(name, duration, **kw):
        if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        opt = BFGS(FrechetCellFilter(atoms), logfile=None)
        opt.run(fmax=0.02, steps=25)
    finally:
        jax.monitoring.clear_event_listeners()
    assert opt.nsteps >= 10  # a real relaxation: the cell moved many times
    # The strain-aware skin keeps the list across most of the cell's moves.
    assert calc.nl_builds < opt.nsteps // 2, (calc.nl_builds, opt.nsteps)
    fresh = atoms.copy()
    fresh.calc = BPNNCalculator(load_model("tio2"), warn_extrapolation=False)
    assert abs(atoms.get_potential_energy() - fresh.get_potential_energy()) < 1e-6 * abs(fresh.get_potential_energy())
    np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-4)
    # Measured: 25 steps, 2 neighbour-list builds, one program (before the
    # strain-aware skin: 26 builds, and the neighbour-slot buckets shrank
    # twice as the cell contracted, 3 programs).
    assert len(lowered) <= 3, (len(lowered), calc.compiled_shapes)
    assert len(calc.compiled_programs) <= 4


def test_calculator_slots_ladder_and_hysteresis():
    """Slots hold the peak counts on multiples of 8; a rebuild keeps them unless short or 16+ too wide."""
    from ase.spacegroup import crystal

    from bpnn_jax.calculators.ase import SLOT_MULTIPLE, SLOT_SHRINK, calculator_slots
    from bpnn_jax.descriptors.neighbors import neighbor_list, species_counts

    atoms = crystal(["Ti", "O"], basis=[(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136,
                    cellpar=[4.594, 4.594, 2.959, 90, 90, 90]).repeat((2, 2, 3))  # rutile
    species = np.array([0 if s == "O" else 1 for s in atoms.get_chemical_symbols()])
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 7.0)
    peak = species_counts(nl, species, 2).max(axis=0)
    slots = calculator_slots(nl, species, 2)
    assert all(s % SLOT_MULTIPLE == 0 and c <= s < c + SLOT_MULTIPLE for s, c in zip(slots, peak)), (slots, peak)
    assert slots == (104, 56)  # 102 O and 52 Ti neighbours within 7 Å of some atom
    wider = tuple(s + SLOT_SHRINK - SLOT_MULTIPLE for s in slots)
    assert calculator_slots(nl, species, 2, previous=wider) == wider  # kept: no recompilation
    assert calculator_slots(nl, species, 2, previous=tuple(s + SLOT_SHRINK for s in slots)) == slots
    assert calculator_slots(nl, species, 2, previous=(slots[0] - SLOT_MULTIPLE, slots[1])) == slots  # too short


def test_fine_slots_give_the_coarse_slots_results(model, structures, monkeypatch):
    """Energy, forces and stress do not depend on the slot ladder (float64, to round-off)."""
    from bpnn_jax.calculators import ase as calculator
    from bpnn_jax.descriptors.neighbors import NEIGHBOR_BUCKETS

    atoms = bare(structures[BULK])
    fine = BPNNCalculator(model, warn_extrapolation=False)
    results = []
    for calc in (fine, None):
        if calc is None:
            monkeypatch.setattr(calculator, "SLOT_LADDER", NEIGHBOR_BUCKETS)
            calc = BPNNCalculator(model, warn_extrapolation=False)
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(),
                        next(iter(calc.compiled_shapes))[2]))
    (e1, f1, s1, slots1), (e2, f2, s2, slots2) = results
    assert slots1 != slots2 and sum(slots1) < sum(slots2), (slots1, slots2)
    assert abs(e1 - e2) <= 1e-10 * abs(e1)
    np.testing.assert_allclose(f1, f2, rtol=0, atol=1e-11)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-12)
