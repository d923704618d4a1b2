"""Training defaults derived from the data: what ``train DATA`` does when no option says otherwise.

:func:`summarize_data` measures the structures (size, elements, labels,
neighbour shells); :func:`derive_defaults` turns that into the options a
committee run needs, each with a one-line reason that ``train`` prints and
writes to ``RUN_DIR/config.yaml``.  Options given on the command line or in
a ``--config`` file are never derived.

The rules, in short (lengths in Å):

* **cut-off**: every element's neighbours must be sampled well inside the
  cut-off: Rc is the largest, over elements X, of the radius of a sphere
  that holds NEIGHBOUR_COUNT atoms of X at the data's median local
  density of X (atoms of X within 9 Å of an atom, median over atoms),
  rounded up to 0.1 Å and clipped to [4, 6.5] Å.  A density, not a
  neighbour rank, so shells do not make it jump; the median over atoms
  keeps slabs and vacancies from shrinking it: 6.4 Å for the mlearn Ge
  set, 6.0 Å for Li, 6.5 Å (clipped from 7.1) for TiO2 (the benchmark's
  own potentials used 3.9-5.2 Å for such elements, aenet 6.5 Å for
  TiO2).  44 neighbours: on mlearn Ge and Li, 24-36 (5.6/5.4 Å) gave
  test energy errors 7 and 34 % higher, ~58 (6.8/6.6 Å) no lower.
* **descriptors**: the ``dense`` G2/G4 symmetry functions on that cut-off
  (:meth:`~bpnn_jax.descriptors.SymmetryFunctionSet.dense`).
* **size of the fit**: network width by the number of training atoms;
  Adam epochs so that the run costs about the same number of atom-epochs
  whatever the data (minutes for 200 structures, 1-2 h on 2 cores for
  7 000), with the last fifth an energy-weighted final phase.
* **force weights**: a spread across the members (0.02 to 0.09 eV²/Å²
  per eV²/atom², as the shipped TiO2 recipe), which makes the committee
  diverse and lets the members with the better trade-off carry the mean.
* **stress**: trained on when at least a tenth of the structures have one.
* **repulsive baseline**: for every element pair whose shortest distance
  in the data is below 0.7 x its median nearest-neighbour distance (close
  contacts), a pair term zero beyond 0.85 x that median
  (:mod:`bpnn_jax.model.repulsion`), fitted first.
* **split**: no internal test split below 1 000 structures (every one is
  needed for training; score on a test file of your own), 10 % above.

Constants here were chosen on the development data (mlearn Ge and Li,
TiO2); see ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


#: Options derived from the data unless given (TrainConfig field names).
DERIVED = ("members", "preset", "cutoff", "hidden", "activation", "ef_epochs", "ef_force_weight",
           "ef_final_epochs", "ef_final_force_factor", "ef_learning_rate", "weight_decay", "ef_atoms_per_batch",
           "patience", "test_fraction", "stress_weight", "repulsion")

#: Atoms of each element a sphere of radius Rc holds at the data's median density (the cut-off rule).
NEIGHBOUR_COUNT = 44
#: Bounds of the derived cut-off, Å.  Above ~44 neighbours per element the mlearn test energies stopped
#: improving (Ge: 6.2 Å better than 6.8 Å), while the descriptor Jacobians keep growing; 6.5 Å is aenet's
#: TiO2 cut-off, which a dilute element (Ti in TiO2: 7.1 Å by the rule) is clipped to.
CUTOFF_RANGE = (4.0, 6.5)
#: Committee size of a default run.
MEMBERS = 5
#: Atom-epochs a default run aims at (training atoms x Adam epochs); epochs are clipped to EPOCH_RANGE.
ATOM_EPOCHS = 3.0e7
EPOCH_RANGE = (300, 2000)
#: A pair whose shortest distance in the data is below CLOSE_CONTACT x its median nearest-neighbour distance
#: gets the repulsive baseline, zero beyond REPULSION_FRACTION x that median.
CLOSE_CONTACT = 0.7
REPULSION_FRACTION = 0.85
#: Hidden activation of a default run (smooth, for forces; see docs/training.md).
ACTIVATION = "silu"
#: Peak learning rate when fine-tuning a trained committee (``--init``): a tenth of training from scratch.
FINE_TUNE_LEARNING_RATE = 2e-4
#: Range of the members' force weights (eV²/Å² against eV²/atom²), first to last, spaced geometrically.
FORCE_WEIGHT_RANGE = (0.02, 0.09)


def force_weight_spread(members: int, lo: float = FORCE_WEIGHT_RANGE[0], hi: float = FORCE_WEIGHT_RANGE[1]):
    """``members`` force weights spaced geometrically from ``lo`` to ``hi`` (two significant digits)."""
    if members <= 1:
        return float(f"{math.sqrt(lo * hi):.2g}")
    return tuple(float(f"{w:.2g}") for w in np.geomspace(lo, hi, members))


@dataclasses.dataclass(frozen=True)
class DataSummary:
    """What the defaults are derived from.

    Attributes:
        n_structures: structures read.
        n_atoms: atoms in all of them.
        elements: sorted element symbols.
        n_forces: structures with forces.
        n_stress: structures with a stress.
        radius: per element X, the radius of a sphere that holds
            :data:`NEIGHBOUR_COUNT` atoms of X at the median over atoms (of
            every element) of the number density of X within ``max_radius``,
            Å (NaN where no atom has an X neighbour).
        nearest: per unordered element pair "A-B" (A <= B), the (minimum,
            median) over atoms of either element of the distance to the
            nearest neighbour of the other, Å.
    """

    n_structures: int
    n_atoms: int
    elements: tuple[str, ...]
    n_forces: int
    n_stress: int
    radius: dict
    nearest: dict


def _has(atoms, kind: str) -> bool:
    """Whether a frame from :func:`bpnn_jax.io.read_structures` has a ``kind`` label (in its calculator's results)."""
    calc = atoms.calc
    return calc is not None and calc.results.get(kind) is not None


def summarize_data(atoms_list: Sequence, *, max_radius: float = 9.0, max_atoms: int = 20000,
                   seed: int = 0) -> DataSummary:
    """Measure structures for :func:`derive_defaults`.

    Args:
        atoms_list: ``ase.Atoms`` as :func:`bpnn_jax.io.read_structures`
            returns them (labels in ``info``/``arrays``).
        max_radius: neighbour search radius, Å.
        max_atoms: neighbour statistics from at most about this many atoms
            (whole structures drawn at random, reproducibly by ``seed``).
        seed: that draw's seed.
    """
    from vesin import NeighborList

    elements = tuple(sorted({s for a in atoms_list for s in a.get_chemical_symbols()}))
    n_atoms = sum(len(a) for a in atoms_list)
    order = np.random.default_rng(seed).permutation(len(atoms_list))
    density = {el: [] for el in elements}
    sphere = 4.0 / 3.0 * math.pi * max_radius**3
    nearest = {}
    seen = 0
    for k in order:
        if seen >= max_atoms:
            break
        a = atoms_list[k]
        seen += len(a)
        periodic = bool(np.all(a.pbc))
        nl = NeighborList(cutoff=max_radius, full_list=True)
        box = a.cell[:] if periodic else np.zeros((3, 3))
        i, j, d = nl.compute(points=a.positions, box=box, periodic=periodic, quantities="ijd")
        sym = np.asarray(a.get_chemical_symbols())
        order_ij = np.lexsort((d, i))  # by centre, then distance
        i, j, d = i[order_ij], j[order_ij], d[order_ij]
        for el in elements:
            m = sym[j] == el
            ii, dd = i[m], d[m]
            counts = np.bincount(ii, minlength=len(a))
            density[el].extend((counts / sphere).tolist())
            starts = np.searchsorted(ii, np.arange(len(a)))
            for c in np.nonzero(counts)[0]:
                pair = "-".join(sorted((str(sym[c]), el)))
                nearest.setdefault(pair, []).append(float(dd[starts[c]]))
    median = {el: float(np.median(v)) if v else 0.0 for el, v in density.items()}
    return DataSummary(
        n_structures=len(atoms_list), n_atoms=n_atoms, elements=elements,
        n_forces=sum(_has(a, "forces") for a in atoms_list), n_stress=sum(_has(a, "stress") for a in atoms_list),
        radius={el: (3.0 * NEIGHBOUR_COUNT / (4.0 * math.pi * n)) ** (1.0 / 3.0) if n > 0 else float("nan")
                for el, n in median.items()},
        nearest={p: (float(np.min(v)), float(np.median(v))) for p, v in sorted(nearest.items())})


def derived_cutoff(summary: DataSummary) -> tuple[float, str]:
    """The cut-off rule of the module doc: (Rc in Å, reason)."""
    radii = {el: r for el, r in summary.radius.items() if math.isfinite(r)}
    lo, hi = CUTOFF_RANGE
    if not radii:
        return hi, f"cut-off {hi:g} Å: most atoms have no neighbour within 9 Å (sparse data)"
    el, r = max(radii.items(), key=lambda kv: kv[1])
    rc = min(max(math.ceil(r * 10 - 1e-9) / 10, lo), hi)
    shown = ", ".join(f"{e} {v:.2f}" for e, v in radii.items())
    return rc, (f"cut-off {rc:g} Å: a sphere of this radius holds {NEIGHBOUR_COUNT} atoms of each element at the "
                f"data's median density ({shown} Å; {el} sets it), clipped to {lo:g}-{hi:g} Å")


def derive_defaults(summary: DataSummary, given: Sequence[str] = (),
                    current: dict | None = None) -> tuple[dict, list[str]]:
    """Options for a run on the summarised data.

    Args:
        summary: :func:`summarize_data` of every structure the run reads.
        given: option names set by the user (never derived).
        current: the run's option values (TrainConfig fields); derived
            options follow the given ones (the force weights the committee
            size, the final phase the epochs).

    Returns:
        ``(values, reasons)``: TrainConfig field values for the options in
        :data:`DERIVED` that are not in ``given``, and one line of reason
        per decision.

    Too few structures for a validation split are refused later, by
    :func:`bpnn_jax.training.train`, after every structure was checked.
    """
    given = set(given)
    current = dict(current or {})
    n = summary.n_structures
    values, reasons = {}, []

    def put(name, value, reason):
        if name not in given:
            values[name] = value
            reasons.append(reason)

    has_forces = summary.n_forces == n
    if not has_forces:
        put("members", MEMBERS, f"committee of {MEMBERS} on energies only: {n - summary.n_forces} of {n} "
                                f"structures have no forces")
    else:
        put("members", MEMBERS, f"committee of {MEMBERS} on energies and forces: its spread flags extrapolation")
    rc, why = derived_cutoff(summary)
    put("cutoff", rc, why)
    if "preset" not in given:
        from ..descriptors.symmetry import SymmetryFunctionSet

        values["preset"] = "dense"
        spec = SymmetryFunctionSet.dense(summary.elements, float(values.get("cutoff", rc)))
        reasons.append(f"descriptors: {spec.describe()}")
    atoms_train = summary.n_atoms * (0.9 if n < 1000 else 0.8)
    if atoms_train < 30000:
        hidden, why = (64, 64), "fewer than 30 000 training atoms"
    elif atoms_train < 150000:
        hidden, why = (96, 96), "30 000-150 000 training atoms"
    else:
        hidden, why = (128, 128), "over 150 000 training atoms"
    put("hidden", hidden, f"networks {'x'.join(map(str, hidden))} per element: {why}")
    put("activation", ACTIVATION, f"{ACTIVATION} activation: lower energy and force errors than tanh on the "
                                  f"mlearn Ge and Li sets")
    epochs = int(min(max(round(ATOM_EPOCHS / atoms_train, -1), EPOCH_RANGE[0]), EPOCH_RANGE[1]))
    put("ef_epochs", epochs, f"{epochs} Adam epochs: ~{ATOM_EPOCHS:.0e} atom-epochs over {atoms_train:.0f} "
                             f"training atoms, clipped to {EPOCH_RANGE[0]}-{EPOCH_RANGE[1]}")
    epochs = int(values.get("ef_epochs", current.get("ef_epochs", epochs)))
    final = max(epochs // 5, 1)
    put("ef_final_epochs", final, f"the last {final} epochs form a final phase (best points chosen afresh in it)")
    put("ef_final_force_factor", 0.1, "the final phase weighs energies 10x more (force weights x 0.1)")
    put("patience", epochs, "no early stopping: the cosine schedule and the final phase run to their end "
                            "(each member keeps its best validation point)")
    if current.get("init_model"):  # fine-tuning a trained committee
        put("ef_learning_rate", FINE_TUNE_LEARNING_RATE,
            f"peak learning rate {FINE_TUNE_LEARNING_RATE:g} (fine-tuning: a tenth of training from scratch), "
            f"warm-up then cosine decay")
    else:
        put("ef_learning_rate", 2e-3, "peak learning rate 2e-3, warm-up then cosine decay")
    put("weight_decay", 5e-4, "AdamW weight decay 5e-4")
    if has_forces:
        weights = force_weight_spread(int(values.get("members", current.get("members", MEMBERS))))
        shown = ", ".join(map(str, np.atleast_1d(weights)))
        put("ef_force_weight", weights, f"force weights {shown} eV²/Å² per eV²/atom² across the members")
    else:
        put("ef_force_weight", 0.0, "force weight 0: energies only")
    put("ef_atoms_per_batch", 512, "512 padded atoms per mini-batch")
    test = 0.0 if n < 1000 else 0.1
    put("test_fraction", test, "no internal test split (under 1 000 structures): score on data of your own"
        if test == 0 else "10 % of the structures held out as a test split (split.json)")
    if "repulsion" not in given and not current.get("repulsion_from"):
        close = {p: round(REPULSION_FRACTION * med, 2) for p, (lo_d, med) in summary.nearest.items()
                 if lo_d < CLOSE_CONTACT * med}
        if close:
            shown = ", ".join(f"{p} {summary.nearest[p][0]:.2f}/{summary.nearest[p][1]:.2f}" for p in close)
            put("repulsion", close, f"short-range repulsive baseline, zero beyond {close} Å: close contacts "
                                    f"(shortest/median nearest distance {shown} Å)")
        else:
            put("repulsion", None, f"no repulsive baseline: no pair closer than {CLOSE_CONTACT:g} x its median "
                                   f"nearest-neighbour distance")
    with_stress = summary.n_stress >= max(1, n // 10)
    put("stress_weight", 1e-4 if with_stress and has_forces else 0.0,
        f"stress weight 1e-4 GPa⁻² ({summary.n_stress} structures have a stress)" if with_stress and has_forces
        else "no stress term (fewer than a tenth of the structures have a stress)")
    return values, reasons
