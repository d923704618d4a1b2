"""Keras datasets of a run: padded geometry batches (end to end) and descriptor batches (energies)."""

from __future__ import annotations

import math

import numpy as np

import keras

from ..descriptors.batch import collate, plan_batches


class GeometryDataset(keras.utils.PyDataset):
    """Batches of geometry inputs and (energy, forces) targets for ``fit``.

    Args:
        structures: prepared structures (energies relative to references).
        elements: element order of the model.
        atoms_per_batch / batch_size: see :func:`bpnn_jax.descriptors.batch.plan_batches`.
        shuffle: reshuffle batches (and draw a new subset) every epoch.
        subset: number of structures drawn per epoch (None: all).
        seed: shuffling seed.
        dtype: float dtype of positions/cell.
        with_forces: include force targets.
        batch_multiple: batch sizes are rounded up to a multiple of this
            (the device count of data-parallel training).
    """

    def __init__(self, structures, elements, *, atoms_per_batch=256, batch_size=None, shuffle=False,
                 subset=None, seed=0, dtype=np.float32, with_forces=True, batch_multiple=1):
        super().__init__()
        self.structures = list(structures)
        self.elements = tuple(elements)
        self.atoms_per_batch = atoms_per_batch
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.subset = subset
        self.seed = seed
        self.epoch = 0
        self.dtype = dtype
        self.with_forces = with_forces
        self.batch_multiple = int(batch_multiple)
        self._plan()

    def set_epoch(self, epoch: int) -> None:
        """Start at ``epoch`` (resume): the order of each epoch depends only on (seed, epoch)."""
        self.epoch = int(epoch)
        self._plan()

    def _plan(self):
        # A fresh generator per epoch, so a resumed run sees the same batches.
        self.rng = np.random.default_rng([self.seed, self.epoch])
        members = np.arange(len(self.structures))
        if self.subset is not None and self.subset < len(members):
            members = np.sort(self.rng.choice(members, self.subset, replace=False))
        sub = [self.structures[i] for i in members]
        plan = plan_batches(sub, self.atoms_per_batch, batch_size=self.batch_size,
                            shuffle_rng=self.rng if self.shuffle else None, batch_multiple=self.batch_multiple)
        plan = [(members[idx], b, n, m) for idx, b, n, m in plan]
        # Keras fixes the number of steps per epoch from the first epoch; a
        # new random subset can pack into a different number of batches, so
        # keep the count (repeat the first batches or drop the last ones).
        if getattr(self, "n_batches", None) is None:
            self.n_batches = len(plan)
        while len(plan) < self.n_batches:
            plan.extend(plan[: self.n_batches - len(plan)])
        self.plan = plan[: self.n_batches]

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, i):
        idx, b, n, slots = self.plan[i]
        batch = collate([self.structures[k] for k in idx], b, n, slots, dtype=self.dtype)
        y = {"energy": batch.energy.astype(np.float32)}
        if self.with_forces and batch.forces is not None:
            y["forces"] = batch.forces.astype(np.float32)
        return batch.inputs(self.elements), y

    def on_epoch_end(self):
        self.epoch += 1
        if self.shuffle or self.subset is not None:
            self._plan()


class DescriptorDataset(keras.utils.PyDataset):
    """Batches of cached symmetry functions and energy targets (energy stage).

    Args:
        sf: list of (n_atoms, F) float32 arrays.
        species: list of (n_atoms,) int arrays.
        energy: (n_struct,) energies relative to references, eV.
        batch_size: structures per batch.
        shuffle: reshuffle every epoch.
        seed: shuffling seed.
    """

    def __init__(self, sf, species, energy, *, batch_size=32, shuffle=False, seed=0):
        super().__init__()
        self.sf, self.species = sf, species
        self.energy = np.asarray(energy, np.float64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.n_max = max(len(s) for s in species)
        # Pad every batch to the largest structure: the MLP is cheap, and one
        # shape means one compilation.
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Start at ``epoch`` (resume): the order of each epoch depends only on (seed, epoch)."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(len(self.sf)) if self.shuffle else np.arange(len(self.sf))

    def __len__(self):
        return int(math.ceil(len(self.sf) / self.batch_size))

    def __getitem__(self, i):
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        B, N, F = self.batch_size, self.n_max, self.sf[0].shape[1]
        sf = np.zeros((B, N, F), np.float32)
        species = np.zeros((B, N), np.int32)
        mask = np.zeros((B, N), bool)
        energy = np.zeros((B,), np.float32)
        for b, k in enumerate(idx):
            n = len(self.species[k])
            sf[b, :n] = self.sf[k]
            species[b, :n] = self.species[k]
            mask[b, :n] = True
            energy[b] = self.energy[k]
        return {"sf": sf, "species": species, "atom_mask": mask}, {"energy": energy}

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)
