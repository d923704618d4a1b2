"""Committees of committees: several trained models merged into one committee.

Members trained on different descriptor sets make less correlated errors
than members that differ only in their initial weights (on TiO2 the test
energy errors of an Imbalzano committee and a Chebyshev one correlate at
0.29), so their joint mean is more accurate and their joint spread a
better error estimate.  :func:`merge_committees` builds one
:class:`~bpnn_jax.model.BPNN` with ``members = Σ K_m`` on a
:class:`~bpnn_jax.descriptors.CombinedDescriptors` of the models' sets:
each member's first layer reads its own model's columns (zero weights on
the others) with its own model's standardisation, and its output layer is
rescaled to the merged energy shift and scale, so every member computes
exactly what it computed before (to float round-off).  Everything that
takes a model (calculator, evaluate, predict, LAMMPS export, float64
evaluation) takes the merged one unchanged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..descriptors.symmetry import CombinedDescriptors
from ..errors import ModelError
from .bpnn import BPNN

__all__ = ["descriptor_parts", "merge_committees", "model_statistic", "parts_read", "select_members"]


def model_statistic(model, name: str) -> np.ndarray:
    """A stored statistic of ``model`` (``sf_mean``, ``sf_std``, ``sf_min``, ``sf_max``, ``energy_shift``,
    ``energy_scale``) as a float64 NumPy array."""
    return np.asarray(getattr(model, name).value, np.float64)


def descriptor_parts(model) -> tuple[tuple, list]:
    """A model's descriptor parts and their column ranges (one part for a set that is not combined)."""
    if isinstance(model.spec, CombinedDescriptors):
        return model.spec.parts, model.spec.column_ranges()
    return (model.spec,), [(0, model.spec.n_functions)]


def parts_read(model) -> np.ndarray:
    """(members, parts) bool: member k's first layer has non-zero weights on part p's columns in some
    element's network (:func:`descriptor_parts` order)."""
    _, ranges = descriptor_parts(model)
    first = [np.asarray(net.member_weights()[0][0]) for net in model.nets]  # per element (K, F, H)
    return np.array([[any(np.any(W[k, a:b] != 0) for W in first) for (a, b) in ranges]
                     for k in range(int(model.members))], dtype=bool).reshape(int(model.members), len(ranges))


def _committee_like(model, parts, members: int, uncertainty_threshold, dtype) -> BPNN:
    """A new BPNN with ``model``'s elements, networks' shape, references and baseline on ``parts``."""
    spec = parts[0] if len(parts) == 1 else CombinedDescriptors(tuple(parts), name="+".join(
        s.name or "custom" for s in parts))
    return BPNN(spec.to_config(), hidden=model.hidden, activation=model.activation,
                reference_energies=model.reference_energies, members=members, chunk_size=model.chunk_size,
                uncertainty_threshold=uncertainty_threshold, dtype=dtype,
                repulsion=None if model.repulsion is None else model.repulsion.to_config())


def merge_committees(models: Sequence[BPNN], *, uncertainty_threshold: float | None = None,
                     dtype: str | None = None) -> BPNN:
    """One committee holding every member of ``models``, in order.

    Args:
        models: trained BPNN models (committees or single networks) with
            the same elements, hidden layers, activation, reference
            energies and pair baseline (:meth:`~bpnn_jax.model.repulsion.
            PairRepulsion.matches`: up to fitting round-off; the merged
            model keeps the first one's); their descriptor sets may differ (equal sets share
            their columns, the standardisation of the first model that has
            the set: a member standardised otherwise, e.g. trained on other
            data, gets the difference folded into its first layer), and a model merged before contributes its
            parts (merging ``merge([a, b])`` with ``c`` gives ``merge([a, b, c])``).
        uncertainty_threshold: the merged committee's extrapolation
            threshold, eV/atom (the members' spreads change when merged:
            calibrate it afresh on validation data; None: no threshold).
        dtype: the merged model's dtype (default: the first model's).

    Returns:
        A BPNN with ``members = Σ members`` whose mean energy is the mean
        over all members.

    Raises:
        ModelError: incompatible models (naming what differs).
    """
    models = list(models)
    if len(models) < 2:
        raise ModelError("merge_committees needs at least two models")
    first = models[0]
    for k, m in enumerate(models[1:], 1):
        for attr in ("elements", "hidden", "activation"):
            if getattr(m, attr) != getattr(first, attr):
                raise ModelError(f"model {k} has {attr} {getattr(m, attr)!r}, model 0 {getattr(first, attr)!r}: "
                                 f"only models with the same {attr} can be merged")
        refs0, refs = first.reference_energies, m.reference_energies
        if set(refs) != set(refs0) or any(abs(refs[e] - refs0[e]) > 1e-9 for e in refs0):
            raise ModelError(f"model {k} has reference energies {refs}, model 0 {refs0}: their energies are "
                             f"not on one scale")
        # Baselines fitted to the same data by separate runs agree to solver round-off, not bit for bit.
        if (m.repulsion is None) != (first.repulsion is None) or (
                m.repulsion is not None and not m.repulsion.matches(first.repulsion)):
            raise ModelError(f"model {k} has the pair baseline {m.repulsion}, model 0 {first.repulsion}: only "
                             f"models trained on the same baseline can be merged")

    # Descriptor parts: one per distinct set; a merged model contributes each of its parts.  A part keeps
    # the standardisation of its first model; members of other models that read it (trained on other
    # data: other statistics) get that folded into their first layer, and its range is the union.
    # owner[k]: per part of model k, (index of the merged part, the part's columns in model k, its statistics).
    parts, part_stats, owner = [], [], []
    for m in models:
        specs, columns = descriptor_parts(m)
        stats_m = {n: model_statistic(m, n) for n in ("sf_mean", "sf_std", "sf_min", "sf_max")}
        own = []
        for part_spec, (a, b) in zip(specs, columns):
            stats = {n: v[:, a:b] for n, v in stats_m.items()}
            for p, spec in enumerate(parts):
                if spec == part_spec:
                    st = part_stats[p]
                    st["sf_min"] = np.minimum(st["sf_min"], stats["sf_min"])
                    st["sf_max"] = np.maximum(st["sf_max"], stats["sf_max"])
                    own.append((p, (a, b), stats))
                    break
            else:
                parts.append(part_spec)
                part_stats.append(dict(stats))
                own.append((len(parts) - 1, (a, b), stats))
        owner.append(own)
    members = sum(m.members for m in models)
    merged = _committee_like(first, parts, members, uncertainty_threshold, dtype or first.dtype_policy.name)
    _, ranges = descriptor_parts(merged)
    S, F = len(first.elements), merged.spec.n_functions
    merged_stats = {n: np.concatenate([st[n] for st in part_stats], axis=1)
                    for n in ("sf_mean", "sf_std", "sf_min", "sf_max")}
    # The merged output scale: the first model's; others' output layers are rescaled to it.
    shift0, scale0 = model_statistic(first, "energy_shift"), float(model_statistic(first, "energy_scale"))

    kernels = [[[] for _ in range(len(first.hidden) + 1)] for _ in range(S)]
    biases = [[[] for _ in range(len(first.hidden) + 1)] for _ in range(S)]
    for m, own in zip(models, owner):
        shift, scale = model_statistic(m, "energy_shift"), float(model_statistic(m, "energy_scale"))
        for s, net in enumerate(m.nets):
            Ws, bs = net.member_weights()  # per layer (K, fan_in, fan_out), (K, fan_out)
            Ws, bs = [np.asarray(W, np.float64) for W in Ws], [np.asarray(v, np.float64) for v in bs]
            W0 = np.zeros((Ws[0].shape[0], F, Ws[0].shape[2]))
            for p, (a_m, b_m), stats in own:  # each of the model's parts to its merged columns
                a, b = ranges[p]
                # x = (G - μ)/σ = x' σ'/σ + (μ' - μ)/σ in the part's standardisation x' = (G - μ')/σ'.
                W = Ws[0][:, a_m:b_m]
                mu, sd = stats["sf_mean"][s], stats["sf_std"][s]
                mu0, sd0 = part_stats[p]["sf_mean"][s], part_stats[p]["sf_std"][s]
                W0[:, a:b] = W * (sd0 / sd)[None, :, None]
                bs[0] = bs[0] + np.einsum("kfh,f->kh", W, (mu0 - mu) / sd)
            Ws[0] = W0
            # e = shift + scale * out  ==  shift0 + scale0 * out'  with out' = (shift - shift0 + scale * out) / scale0
            Ws[-1] = Ws[-1] * (scale / scale0)
            bs[-1] = (bs[-1] * scale + (shift[s] - shift0[s])) / scale0
            for layer, (W, v) in enumerate(zip(Ws, bs)):
                kernels[s][layer].append(W)
                biases[s][layer].append(v)

    merged.set_statistics(**merged_stats, energy_shift=shift0, energy_scale=scale0)
    for s, net in enumerate(merged.nets):
        net.set_member_weights([np.concatenate(ws, axis=0) for ws in kernels[s]],
                               [np.concatenate(vs, axis=0) for vs in biases[s]])
    return merged


def select_members(model: BPNN, members: Sequence[int], *, uncertainty_threshold: float | None = None) -> BPNN:
    """A committee of some of ``model``'s members (0-based, in the order given), exactly as they were.

    The inverse of :func:`merge_committees`: a merged committee's part (e.g.
    one descriptor family's members, to compare it or to run it alone) or a
    committee without some members.  Descriptor parts that none of the kept
    members reads (all-zero first-layer columns) are dropped, so a subset on
    a cheap set computes only that set.

    Args:
        model: a trained BPNN (a committee).
        members: indices of the members to keep (at least one, no repeats).
        uncertainty_threshold: the new committee's extrapolation threshold,
            eV/atom (a subset's spread differs: calibrate afresh; None: none).

    Returns:
        A BPNN with ``len(members)`` members whose energies and forces are
        those of the chosen members.

    Raises:
        ModelError: indices out of range, repeated or none.
    """
    members = [int(k) for k in members]
    K = model.members
    if not members or len(set(members)) != len(members) or min(members) < 0 or max(members) >= K:
        raise ModelError(f"members {members}: choose distinct indices from 0 to {K - 1} (the model has {K})")
    weights = [net.member_weights() for net in model.nets]
    parts, ranges = descriptor_parts(model)
    # A part is kept if a chosen member of any element's network reads one of its columns.
    reads = parts_read(model)
    kept = [p for p in range(len(parts)) if reads[members, p].any()] or [0]
    columns = np.concatenate([np.arange(*ranges[p]) for p in kept])
    out = _committee_like(model, [parts[p] for p in kept], len(members), uncertainty_threshold,
                          model.dtype_policy.name)
    stats = {n: model_statistic(model, n)[:, columns] for n in ("sf_mean", "sf_std", "sf_min", "sf_max")}
    out.set_statistics(**stats, energy_shift=model_statistic(model, "energy_shift"),
                       energy_scale=float(model_statistic(model, "energy_scale")))
    for net, (Ws, bs) in zip(out.nets, weights):
        Ws = [np.asarray(W)[members] for W in Ws]
        Ws[0] = Ws[0][:, columns]
        net.set_member_weights(Ws, [np.asarray(v)[members] for v in bs])
    return out
