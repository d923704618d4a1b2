"""Keras 3 layers of the BPNN: per-element atomic-energy networks.

These layers act on symmetry-function vectors; the geometry → SF map lives
in :mod:`bpnn_jax.descriptors` (pure JAX) and is called by the model.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["ElementMLP"]


@keras.saving.register_keras_serializable(package="bpnn_jax")
class ElementMLP(keras.layers.Layer):
    """A multilayer perceptron (F → hidden... → 1) for one element.

    With ``members=K > 1`` the layer is a committee of K networks of the
    same shape, evaluated together: kernels (K, fan_in, fan_out), biases
    (K, fan_out), and :meth:`call` returns (K, ...) outputs.  One network
    (``members=1``) keeps Keras ``Dense`` layers.

    Args:
        hidden: number of nodes of each hidden layer.
        activation: activation of the hidden layers (Keras name).
        dropout: dropout rate of the hidden layers while training, a
            record of the set-up (the committee trainer applies it, the
            layer never does).
        members: committee size K.
    """

    def __init__(self, hidden=(64, 64), activation: str = "tanh", dropout: float = 0.0, members: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.dropout = float(dropout)
        self.members = int(members)
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.act_fn = keras.activations.get(activation)
        if self.members == 1:
            self.dense = [
                keras.layers.Dense(h, activation=activation, name=f"hidden_{k}") for k, h in enumerate(self.hidden)
            ]
            self.out = keras.layers.Dense(1, name="atomic_energy")
        else:
            self.dense, self.out = [], None
            self.kernels, self.biases = [], []

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.members > 1:
            sizes = [int(shape[-1]), *self.hidden, 1]
            for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
                name = f"hidden_{k}" if k < len(self.hidden) else "atomic_energy"
                self.kernels.append(self.add_weight(shape=(self.members, fan_in, fan_out),
                                                    initializer="glorot_uniform", name=f"{name}_kernel"))
                self.biases.append(self.add_weight(shape=(self.members, fan_out), initializer="zeros",
                                                   name=f"{name}_bias"))
            self.built = True
            return
        for layer in self.dense:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.out.build(shape)

    def set_member_weights(self, kernels, biases) -> None:
        """Assign committee weights: per layer (K, fan_in, fan_out) and (K, fan_out)."""
        if self.members == 1:
            layers = [*self.dense, self.out]
            for layer, W, b in zip(layers, kernels, biases):
                layer.kernel.assign(np.asarray(W)[0])
                layer.bias.assign(np.asarray(b)[0])
            return
        for var, W in zip(self.kernels, kernels):
            var.assign(np.asarray(W))
        for var, b in zip(self.biases, biases):
            var.assign(np.asarray(b))

    def member_weights(self) -> tuple[list, list]:
        """Per layer (K, fan_in, fan_out) kernels and (K, fan_out) biases (NumPy)."""
        if self.members == 1:
            layers = [*self.dense, self.out]
            return ([np.asarray(ops.convert_to_numpy(l.kernel))[None] for l in layers],
                    [np.asarray(ops.convert_to_numpy(l.bias))[None] for l in layers])
        return ([np.asarray(ops.convert_to_numpy(v)) for v in self.kernels],
                [np.asarray(ops.convert_to_numpy(v)) for v in self.biases])

    def call(self, x):
        """Atomic energies (in units of the model's energy scale).

        Args:
            x: (..., F) standardised symmetry functions.

        Returns:
            (...) outputs, or (K, ...) for a committee.
        """
        if self.members > 1:
            n = len(self.kernels)
            for k, (W, b) in enumerate(zip(self.kernels, self.biases)):
                if k == 0:
                    x = ops.einsum("...i,kio->k...o", x, ops.cast(W, x.dtype))
                else:
                    x = ops.einsum("k...i,kio->k...o", x, ops.cast(W, x.dtype))
                x = x + ops.reshape(ops.cast(b, x.dtype), (self.members,) + (1,) * (len(x.shape) - 2) + (-1,))
                if k < n - 1:
                    x = self.act_fn(x)
            return ops.squeeze(x, -1)
        for layer in self.dense:
            x = layer(x)
        return ops.squeeze(self.out(x), -1)

    def get_config(self):
        config = super().get_config()
        config.update(hidden=list(self.hidden), activation=self.activation, dropout=self.dropout,
                      members=self.members)
        return config
