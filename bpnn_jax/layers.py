"""Keras 3 layers of the BPNN: per-element atomic-energy networks.

These layers act on symmetry-function vectors; the geometry → SF map lives
in :mod:`bpnn_jax.descriptors` (pure JAX) and is called by the model.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["ElementMLP", "MaskedRMSE"]


@keras.saving.register_keras_serializable(package="bpnn_jax")
class ElementMLP(keras.layers.Layer):
    """A multilayer perceptron (F → hidden... → 1) for one element.

    Dropout masks are passed in explicitly rather than drawn inside the
    layer: the model differentiates the energy with respect to positions
    (forces) inside its own ``call``, and drawing random numbers (a state
    update of Keras's seed generator) inside that inner ``jax.grad`` would
    leak tracers.

    Args:
        hidden: number of nodes of each hidden layer.
        activation: activation of the hidden layers (Keras name).
        dropout: dropout rate of the hidden layers (0 disables).
    """

    def __init__(self, hidden=(64, 64), activation: str = "tanh", dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.dropout = float(dropout)
        self.dense = [
            keras.layers.Dense(h, activation=activation, name=f"hidden_{k}") for k, h in enumerate(self.hidden)
        ]
        self.out = keras.layers.Dense(1, name="atomic_energy")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.dense:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.out.build(shape)

    def dropout_masks(self, shape_prefix, seed_generator, dtype="float32"):
        """Inverted-dropout masks (values 0 or 1/(1-rate)) for every hidden layer.

        Args:
            shape_prefix: leading shape, e.g. (B, N).
            seed_generator: a ``keras.random.SeedGenerator``.

        Returns:
            List of arrays (*shape_prefix, hidden_k), or None when dropout is off.
        """
        if self.dropout <= 0:
            return None
        keep = 1.0 - self.dropout
        return [
            ops.cast(keras.random.uniform(tuple(shape_prefix) + (h,), seed=seed_generator) < keep, dtype) / keep
            for h in self.hidden
        ]

    def call(self, x, masks=None):
        """Atomic energies (in units of the model's energy scale).

        Args:
            x: (..., F) standardised symmetry functions.
            masks: optional dropout masks from :meth:`dropout_masks`.

        Returns:
            (...) outputs.
        """
        for k, layer in enumerate(self.dense):
            x = layer(x)
            if masks is not None:
                x = x * masks[k]
        return ops.squeeze(self.out(x), -1)

    def get_config(self):
        config = super().get_config()
        config.update(hidden=list(self.hidden), activation=self.activation, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="bpnn_jax")
class MaskedRMSE(keras.metrics.Metric):
    """Root of a running, weighted mean of squared errors.

    ``update_state(sq_err_sum, count)`` adds a sum of squared errors and the
    number of terms; ``result()`` is sqrt(total / count) times ``scale``.

    Args:
        scale: factor applied to the result (e.g. 1000 for eV → meV).
    """

    def __init__(self, name="rmse", scale: float = 1.0, **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = float(scale)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, sq_err_sum, count):
        self.total.assign_add(ops.cast(sq_err_sum, self.total.dtype))
        self.count.assign_add(ops.cast(count, self.count.dtype))

    def result(self):
        # NaN when nothing was accumulated (e.g. no force targets in this stage).
        mean = ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), float("nan"))
        return ops.sqrt(mean) * self.scale

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale)
        return config
