"""The data of a run: reading and filtering, reference energies, the split, descriptors, statistics."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


from ..descriptors.batch import HostStructure, prepare_structures
from ..descriptors.symmetry import SymmetryFunctionSet, descriptor_preset
from ..errors import BPNNInputError
from ..io.frames import read_structures
from .config import TrainConfig


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Reproducible random split of ``range(n)`` into train/val/test."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


def fit_energy_references(structures: Sequence, elements: Sequence[str],
                          known: dict[str, float] | None = None) -> dict[str, float]:
    """Per-element energies (eV) by least squares: E_total ≈ Σ_s n_s μ_s.

    Used for the elements whose free-atom references are not given; in
    float64.  ``known`` references are held fixed (subtracted first), so
    the fitted ones complement them.
    """
    known = dict(known or {})
    comp = np.zeros((len(structures), len(elements)))
    energy = np.zeros(len(structures))
    for k, atoms in enumerate(structures):
        symbols = atoms.get_chemical_symbols()
        for s, el in enumerate(elements):
            comp[k, s] = symbols.count(el)
        energy[k] = atoms.info["energy"] - math.fsum(known[x] for x in symbols if x in known)
    mu, *_ = np.linalg.lstsq(comp, energy, rcond=None)
    return {el: float(m) for el, m in zip(elements, mu)}


def compute_statistics(sf_list, species_list, energies, n_elements):
    """Per-element SF mean/std/min/max and the energy shift/scale.

    Args:
        sf_list: per structure (n, F) descriptors.
        species_list: per structure (n,) element indices.
        energies: (n_struct,) energies relative to references, eV.
        n_elements: S.

    Returns:
        dict with sf_mean, sf_std, sf_min, sf_max (S, F), energy_shift (S,)
        eV/atom (least squares on composition), energy_scale (eV, the std of
        the per-atom residual, at least 0.01).
    """
    sf = np.concatenate(sf_list).astype(np.float64)
    sp = np.concatenate(species_list)
    F = sf.shape[1]
    mean = np.zeros((n_elements, F)); std = np.ones((n_elements, F))
    lo = np.zeros((n_elements, F)); hi = np.zeros((n_elements, F))
    for s in range(n_elements):
        rows = sf[sp == s]
        if len(rows):
            mean[s], std[s] = rows.mean(0), rows.std(0)
            lo[s], hi[s] = rows.min(0), rows.max(0)
    comp = np.stack([np.bincount(s, minlength=n_elements) for s in species_list]).astype(np.float64)
    shift, *_ = np.linalg.lstsq(comp, np.asarray(energies, np.float64), rcond=None)
    resid = (np.asarray(energies) - comp @ shift) / comp.sum(1)
    return dict(sf_mean=mean, sf_std=std, sf_min=lo, sf_max=hi, energy_shift=shift,
                energy_scale=max(float(resid.std()), 0.01))


def featurize_host(structures: Sequence[HostStructure], spec: SymmetryFunctionSet, *, atoms_per_batch=256,
                   dtype=np.float32, progress=False) -> list[np.ndarray]:
    """Descriptors of prepared structures: list of (n_atoms, F) arrays.

    A thin wrapper of :func:`bpnn_jax.descriptors.featurize.featurize`, whose jitted
    function is cached per spec, so the training and validation sets (and
    later calls) share one compilation per shape.
    """
    from ..descriptors.featurize import featurize

    return featurize(structures, spec, dtype=dtype, atoms_per_batch=atoms_per_batch, progress=progress)


def read_training_frames(paths, config: TrainConfig, *, progress=True) -> list:
    """The structures of ``paths`` with their labels (energies required), as ``ase.Atoms``."""
    from ..io.frames import FrameKeys

    keys = FrameKeys(config.energy_key, config.forces_key, config.stress_key)
    atoms, _ = read_structures(paths, require_energy=True, progress=progress, keys=keys)
    return atoms


def load_training_data(paths, config: TrainConfig, *, progress=True, atoms=None, spec=None):
    """Read structures, choose references, filter by energy, prepare, split.

    ``atoms``: the frames of ``paths`` already read (:func:`read_training_frames`).
    ``spec``: the descriptor set to use (a fine-tuned model's) instead of
    ``config.preset``; its elements are the data's, and every structure's
    elements must be among them.

    Returns:
        dict with elements, references, structures (HostStructure, energies
        relative to references), atoms, split (indices into the kept
        structures), files, excluded (file names above ``max_energy``).
    """
    if atoms is None:
        atoms = read_training_frames(paths, config, progress=progress)
    elements = sorted({s for a in atoms for s in a.get_chemical_symbols()})
    if spec is not None:
        for a in atoms:
            unknown = sorted(set(a.get_chemical_symbols()) - set(spec.elements))
            if unknown:
                raise BPNNInputError(f"{a.info['file']}: element {unknown[0]} is not one of the model's "
                                     f"{list(spec.elements)}")
        elements = list(spec.elements)
    refs = config.reference_energies
    # The data's elements only: given values where there are, the others fitted with those held fixed.
    given = {el: float(refs[el]) for el in elements if refs is not None and el in refs}
    missing = [el for el in elements if el not in given]
    refs = {**given, **(fit_energy_references(atoms, missing, given) if missing else {})}
    refs = {el: refs[el] for el in elements}
    cohesive = np.array([
        (a.info["energy"] - math.fsum(refs[s] for s in a.get_chemical_symbols())) / len(a) for a in atoms
    ])
    keep = np.ones(len(atoms), bool) if config.max_energy is None else cohesive <= config.max_energy
    excluded = [a.info["file"] for a, k in zip(atoms, keep) if not k]
    atoms = [a for a, k in zip(atoms, keep) if k]
    if spec is None:
        spec = descriptor_preset(config.preset, elements, config.cutoff)
    structures = prepare_structures(atoms, elements, spec.cutoff, progress=progress, energy_offsets=refs)
    split = split_indices(len(structures), config.val_fraction, config.test_fraction, config.seed)
    if config.train_on_test:  # the same split; its test part trained on, validation unchanged
        split["train"] = np.union1d(split["train"], split["test"])
    return dict(elements=elements, references=refs, structures=structures, atoms=atoms, split=split,
                files=[a.info["file"] for a in atoms], excluded=excluded, spec=spec)
