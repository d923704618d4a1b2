"""The Behler-Parrinello model: Keras 3 on the JAX backend.

positions, cell, neighbour tensors → symmetry functions (pure JAX) →
per-element standardisation → one MLP per element → atomic energies → sum.
The whole map is one differentiable JAX function,
:func:`bpnn_jax.model.potential.evaluate_potential`, so forces are F = -dE/dR by
autodiff inside ``call``.  The model is trained outside Keras, by the
committee trainer (:mod:`bpnn_jax.training.jacobian`), which evaluates the
same networks on cached descriptors and their Jacobians and writes the
weights into a BPNN at the end.

Energies.  The network predicts the energy *relative to the free-atom
reference energies* (the cohesive energy, eV); references are subtracted
from DFT totals in float64 on the host (:func:`bpnn_jax.descriptors.batch.
prepare_structures`) and added back in float64 by :func:`total_energy`, so
float32 weights never see ~-20000 eV totals.  Each element network's output
is scaled and shifted (``energy_scale``, ``energy_shift``), fitted on the
training set, so the raw network output is O(1).

Inputs are a dict (see :meth:`bpnn_jax.descriptors.batch.Batch.inputs`):

* geometry mode: ``positions`` (B, N, 3) Å, ``cell`` (B, 3, 3) Å,
  ``species`` (B, N) int, ``atom_mask`` (B, N) bool, ``neighbors`` (B, N, M)
  int, ``shifts`` (B, N, M, 3), and one ``neighbor_mask_<element>``
  (B, N, M_s) per element whose shapes give the element-sorted slot layout;
* descriptor mode (energies of cached SFs): ``sf`` (B, N, F),
  ``species``, ``atom_mask``.  No forces in this mode.

Outputs: ``{"energy": (B,) eV, "forces": (B, N, 3) eV/Å}`` (forces only in
geometry mode with ``compute_forces=True``); a committee adds
``energy_members`` (K, B) eV and, with forces, ``forces_members``
(K, B, N, 3) eV/Å.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras import ops

from ..descriptors.symmetry import descriptor_from_config
from ..errors import ModelError
from .card import PRETRAINED_DIR, shipped_models
from .layers import ElementMLP
from .potential import (
    descriptors_from_displacements,
    evaluate_potential,
    member_backward,
    neighbor_geometry,
    site_energies,
)
from .repulsion import PairRepulsion

__all__ = ["BPNN", "load_model", "with_dtype", "total_energy", "member_backward", "PRETRAINED_DIR"]


#: Float64-preserving versions of Keras activations (used by float64 models).
_JAX_ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu,
                    "softplus": jax.nn.softplus, "silu": jax.nn.silu, "swish": jax.nn.silu}


@keras.saving.register_keras_serializable(package="bpnn_jax")
class BPNN(keras.Model):
    """Behler-Parrinello neural-network potential.

    Args:
        descriptor: ``to_config()`` dict of a SymmetryFunctionSet or ChebyshevBasis; its elements
            are the model's elements, in species-index order.
        hidden: nodes per hidden layer (same for every element).
        activation: hidden activation (Keras name), e.g. "tanh".
        dropout: dropout rate of the hidden layers while training (a
            record of the training set-up; the model applies none).
        reference_energies: {element: eV} free-atom energies subtracted from
            the targets (added back by :func:`total_energy`).
        compute_forces: return forces from ``call`` (geometry mode).
        energy_weight, force_weight, energy_loss, force_loss, huber_delta:
            the training loss, recorded in the model's config (the
            committee trainer, :mod:`bpnn_jax.training.jacobian`, trains
            it; the model itself has no loss).  ``energy_loss`` "mse",
            "mae" or "huber", ``force_loss`` "mse" or "huber",
            ``huber_delta`` in eV/Å.
        chunk_size: atoms per vmapped chunk in the descriptor kernel.
        seed: seed of the (unused, saved) dropout generator of the former Keras trainer.
        members: committee size K.  With K > 1 every element network is a
            committee of K networks evaluated together; energies and forces
            are the members' means, and ``call`` also returns
            ``energy_members`` (K, B) eV and, with forces,
            ``forces_members`` (K, B, N, 3) eV/Å (their spread is the
            committee's uncertainty).
        uncertainty_threshold: committee energy spread (standard deviation
            of the members' energies per atom, eV/atom) above which the
            calculator warns that the model is extrapolating; calibrated
            on the validation set by training.  None: no such warning.
        uncertainty_calibration: the (a, w) of the committee's ranking
            score (:mod:`bpnn_jax.model.uncertainty`), fitted on the
            validation set by training; None: the energy spread alone.
        repulsion: ``to_config()`` of a fitted
            :class:`~bpnn_jax.model.repulsion.PairRepulsion` added under the
            networks (geometry mode; the same for every member), or None.
            Descriptor-mode outputs (``sf`` inputs) are the networks' part
            only: the baseline needs the geometry.
    """

    def __init__(
        self,
        descriptor: dict,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        dropout: float = 0.0,
        reference_energies: dict | None = None,
        compute_forces: bool = True,
        energy_weight: float = 1.0,
        force_weight: float = 0.0,
        energy_loss: str = "mse",
        force_loss: str = "mse",
        huber_delta: float = 1.0,
        chunk_size: int = 8,
        seed: int = 0,
        members: int = 1,
        uncertainty_threshold: float | None = None,
        repulsion: dict | None = None,
        uncertainty_calibration: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.spec = descriptor_from_config(descriptor)
        self.elements = self.spec.elements
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.dropout = float(dropout)
        self.reference_energies = {str(k): float(v) for k, v in (reference_energies or {}).items()}
        self.compute_forces = bool(compute_forces)
        self.energy_weight = float(energy_weight)
        self.force_weight = float(force_weight)
        if energy_loss not in ("mse", "mae", "huber"):
            raise ValueError(f"energy_loss must be 'mse', 'mae' or 'huber', got {energy_loss!r}")
        self.energy_loss = energy_loss
        if force_loss not in ("mse", "huber"):
            raise ValueError(f"force_loss must be 'mse' or 'huber', got {force_loss!r}")
        if not huber_delta > 0:
            raise ValueError(f"huber_delta must be > 0 (eV/Å), got {huber_delta!r}")
        self.force_loss = force_loss
        self.huber_delta = float(huber_delta)
        self.chunk_size = int(chunk_size)
        self.seed = int(seed)
        self.members = int(members)
        self.uncertainty_threshold = None if uncertainty_threshold is None else float(uncertainty_threshold)
        self.uncertainty_calibration = None if not uncertainty_calibration else dict(uncertainty_calibration)
        self.repulsion = None if repulsion is None else PairRepulsion.from_config(repulsion)
        if self.repulsion is not None:
            if self.repulsion.elements != tuple(self.elements):
                raise ModelError(f"repulsion elements {self.repulsion.elements} differ from the model's "
                                 f"{tuple(self.elements)}")
            if self.repulsion.max_cutoff > self.spec.cutoff:
                raise ModelError(f"repulsion cut-off {self.repulsion.max_cutoff} Å exceeds the descriptor "
                                 f"cut-off {self.spec.cutoff} Å (the neighbour lists would miss its pairs)")
        S, F = len(self.elements), self.spec.n_functions
        self.nets = [
            ElementMLP(self.hidden, activation, self.dropout, members=self.members, dtype=self.dtype_policy,
                       name=f"net_{el}")
            for el in self.elements
        ]
        for net in self.nets:
            # ElementMLP creates its Dense layers with the global policy; give
            # them the model's (e.g. dtype="float64") before they are built.
            for layer in (*net.dense, *([net.out] if net.out is not None else [])):
                layer.dtype_policy = self.dtype_policy
            if self.compute_dtype == "float64" and activation in _JAX_ACTIVATIONS:
                # Keras's unary ops (ops.tanh, ...) return float32 for float64
                # inputs on the JAX backend; JAX's own keep float64.
                for layer in net.dense:
                    layer.activation = _JAX_ACTIVATIONS[activation]
                net.act_fn = _JAX_ACTIVATIONS[activation]
        # Statistics fitted on the training set; saved with the weights.
        self.sf_mean = self.add_weight(shape=(S, F), initializer="zeros", trainable=False, name="sf_mean")
        self.sf_std = self.add_weight(shape=(S, F), initializer="ones", trainable=False, name="sf_std")
        self.sf_min = self.add_weight(shape=(S, F), initializer="zeros", trainable=False, name="sf_min")
        self.sf_max = self.add_weight(shape=(S, F), initializer="zeros", trainable=False, name="sf_max")
        self.energy_shift = self.add_weight(shape=(S,), initializer="zeros", trainable=False, name="energy_shift")
        self.energy_scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="energy_scale")
        # The Keras trainer's dropout generator: unused, kept because every saved model holds its state.
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="dropout_seed")
        for net in self.nets:
            net.build((None, F))
        # Every variable exists now, whatever the input mode: mark the model
        # built so stateless_call and weight loading work before a first call.
        self.built = True

    # ------------------------------------------------------------ utilities
    @property
    def n_functions(self) -> int:
        return self.spec.n_functions

    def set_statistics(self, sf_mean, sf_std, sf_min, sf_max, energy_shift, energy_scale) -> None:
        """Store training-set statistics (arrays (S, F), (S, F), (S, F), (S, F), (S,), scalar)."""
        std = np.where(np.asarray(sf_std) > 1e-12, sf_std, 1.0)
        self.sf_mean.assign(np.asarray(sf_mean, np.float32))
        self.sf_std.assign(np.asarray(std, np.float32))
        self.sf_min.assign(np.asarray(sf_min, np.float32))
        self.sf_max.assign(np.asarray(sf_max, np.float32))
        self.energy_shift.assign(np.asarray(energy_shift, np.float32))
        self.energy_scale.assign(np.float32(energy_scale))

    def _dtype(self):
        return self.compute_dtype or "float32"

    # --------------------------------------------------------------- forward
    def atomic_energies(self, sf, species, atom_mask):
        """Atomic energies (B, N) in eV relative to the references; 0 for padding.

        For a committee, the members' mean.
        """
        e = self.member_atomic_energies(sf, species, atom_mask)
        return e if self.members == 1 else jnp.mean(e, axis=0)  # ops.mean reduces float64 in float32 (Keras 3.15)

    def member_atomic_energies(self, sf, species, atom_mask):
        """Atomic energies in eV relative to the references: (B, N), or (K, B, N) for a committee."""
        dtype = self._dtype()
        sf = ops.cast(sf, dtype)
        shape = tuple(ops.shape(species))
        e = ops.zeros(shape if self.members == 1 else (self.members,) + shape, dtype)
        for s, net in enumerate(self.nets):
            x = (sf - self.sf_mean[s]) / self.sf_std[s]
            out = net(x)
            e_s = self.energy_shift[s] + self.energy_scale * out
            e = ops.where(species == s, e_s, e)
        return ops.where(atom_mask, e, ops.zeros_like(e))

    def descriptors(self, positions, cell, inputs):
        """Symmetry functions (B, N, F) from geometry inputs (positions (B, N, 3) Å, cell (B, 3, 3) Å)."""
        disp, nmask, slots, _ = neighbor_geometry(self, positions, cell, inputs)
        return descriptors_from_displacements(self, disp, nmask, slots)

    def repulsion_energies(self, positions, cell, inputs):
        """Atomic energies (B, N) of the pair baseline, eV (zeros without one)."""
        species = inputs["species"]
        if self.repulsion is None:
            return jnp.zeros(species.shape, positions.dtype)
        disp, nmask, _, species_j = neighbor_geometry(self, positions, cell, inputs)
        e = self.repulsion.atomic_energies(disp, nmask, species, species_j)
        return jnp.where(inputs["atom_mask"], e, 0.0)

    def structure_energies(self, positions, cell, inputs):
        """Energies (B,) in eV (relative to the references) from geometry, the baseline included.

        A committee's members' mean; :func:`~bpnn_jax.model.potential.site_energies` summed.
        """
        disp, nmask, slots, species_j = neighbor_geometry(self, positions, cell, inputs)
        e, _ = site_energies(self, disp, nmask, slots, inputs["species"], species_j, inputs["atom_mask"])
        return ops.sum(e, axis=-1)

    def call(self, inputs, training=False):
        """Energies (and forces) of a batch; see the module docstring for the inputs and outputs.

        Geometry inputs go through :func:`~bpnn_jax.model.potential.evaluate_potential`
        (forces when ``compute_forces``; a committee's members' forces with
        them); ``sf`` inputs give the networks' energies only.
        """
        del training  # the same function in training and inference: the model is trained outside Keras
        species = inputs["species"]
        if "sf" in inputs:
            e = self.member_atomic_energies(inputs["sf"], species, inputs["atom_mask"])
            if self.members == 1:
                return {"energy": ops.sum(e, axis=-1)}
            e = ops.sum(e, axis=-1)
            return {"energy": jnp.mean(e, axis=0), "energy_members": e}
        out = evaluate_potential(self, inputs, forces=self.compute_forces, member_forces=True)
        return {k: out[k] for k in ("energy", "forces", "energy_members", "forces_members") if k in out}

    # --------------------------------------------------------- serialisation
    def get_config(self):
        config = super().get_config()
        config.update(
            descriptor=self.spec.to_config(),
            hidden=list(self.hidden),
            activation=self.activation,
            dropout=self.dropout,
            reference_energies=dict(self.reference_energies),
            compute_forces=self.compute_forces,
            energy_weight=self.energy_weight,
            force_weight=self.force_weight,
            energy_loss=self.energy_loss,
            force_loss=self.force_loss,
            huber_delta=self.huber_delta,
            chunk_size=self.chunk_size,
            seed=self.seed,
            members=self.members,
            uncertainty_threshold=self.uncertainty_threshold,
            repulsion=None if self.repulsion is None else self.repulsion.to_config(),
        )
        if self.uncertainty_calibration:  # models without one keep their config as it was
            config["uncertainty_calibration"] = dict(self.uncertainty_calibration)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def total_energy(model: BPNN, energy_ev, species_lists) -> np.ndarray:
    """Add the reference energies back, in float64.

    Args:
        model: the model (its ``reference_energies``).
        energy_ev: (B,) model energies (relative to references), eV.
        species_lists: per structure, a sequence of element symbols.

    Returns:
        (B,) float64 total energies on the scale of the DFT data, eV.
    """
    refs = model.reference_energies
    out = np.asarray(energy_ev, np.float64).copy()
    for b, symbols in enumerate(species_lists):
        out[b] += math.fsum(refs.get(s, 0.0) for s in symbols)
    return out


def with_dtype(model: BPNN, dtype) -> BPNN:
    """A copy of ``model`` whose descriptors *and* networks compute in ``dtype``.

    The weights are the same numbers (float32 weights are exactly
    representable in float64), so a float64 copy of a float32 model is the
    same function evaluated without float32 rounding: its forces are the
    gradient of its energy to ~1e-10, which finite differences can check.
    Returns ``model`` itself when it already computes in ``dtype``.
    """
    dtype = str(np.dtype(dtype))
    if (model.compute_dtype or "float32") == dtype:
        return model
    config = model.get_config()
    config.pop("dtype", None)
    config.pop("name", None)
    copy = BPNN(**config, dtype=dtype)
    for dst, src in zip(copy.variables, model.variables):
        dst.assign(np.asarray(keras.ops.convert_to_numpy(src.value)).astype(dst.dtype))
    return copy


def load_model(name_or_path, dtype=None) -> BPNN:
    """Load a saved model: a ``.keras`` path or a shipped name (e.g. "tio2").

    Args:
        name_or_path: file or shipped name.
        dtype: None keeps the saved compute dtype; "float64" evaluates the
            descriptors and the networks in float64 (:func:`with_dtype`).

    Raises:
        ModelError: the file does not exist, is not a readable Keras archive
            or does not hold a BPNN.
    """
    path = Path(name_or_path)
    if not path.exists() and not path.suffix:
        candidate = PRETRAINED_DIR / f"{name_or_path}.keras"
        if candidate.exists():
            path = candidate
        else:
            shipped = shipped_models()
            raise ModelError(
                f"{name_or_path}: no such model file, and no shipped model of that name "
                f"(shipped: {', '.join(shipped) or 'none'})"
            )
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # zip, h5 or config errors all mean the same to a user
        raise ModelError(f"{path}: not a readable bpnn_jax model ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, BPNN):
        raise ModelError(f"{path}: holds a {type(model).__name__}, not a bpnn_jax BPNN model")
    return model if dtype is None else with_dtype(model, dtype)
