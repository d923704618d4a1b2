"""The model: Keras layers, the Behler-Parrinello network, committees, the pair baseline, model cards.

* :mod:`.bpnn` — the :class:`~.bpnn.BPNN` Keras model, :func:`~.bpnn.load_model`;
* :mod:`.potential` — the one energy function (energy, forces, strain
  derivative, committee members) that every route evaluates;
* :mod:`.layers` — per-element networks and the masked loss;
* :mod:`.ensemble` — committees of committees (merge, select members);
* :mod:`.repulsion` — the short-range repulsive pair baseline;
* :mod:`.card` — the model cards of the shipped models.

The names of :mod:`.bpnn` are importable from here; they are imported on
first use (PEP 562), since they import Keras.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {name: ".bpnn" for name in
         ("BPNN", "PRETRAINED_DIR", "load_model", "member_backward", "total_energy", "with_dtype")}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = ["BPNN", "PRETRAINED_DIR", "load_model", "member_backward", "total_energy", "with_dtype"]
