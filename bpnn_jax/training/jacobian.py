"""Energy+force training of a committee on cached descriptor Jacobians.

The symmetry functions G and their Jacobians dG_i/dR_k do not depend on the
weights, so they are computed once (:mod:`bpnn_jax.descriptors.jacobian_cache`) and a
training step only evaluates the networks:

    E_s = sum_i e(G_i)                      (eV, relative to the references)
    F_k = -sum_i (dE/dG_i) . dG_i/dR_k      (eV/Å, exactly -dE/dR_k)

with dE/dG_i from the network's input gradient.  Loss per member k:

    L_k = mean_s w_ks ((E_ks - E_s^DFT) / n_s)²  +  lambda_k mean_{s,a,c} w_ks (F_ksac - F_sac^DFT)²

(eV²/atom² and eV²/Å²; w_ks the member's bootstrap counts, all 1 without
bootstrap).  The squares are the default penalties: ``energy_loss`` "mae"
or "huber" and ``force_loss`` "huber" replace them (:func:`penalty`), with
the same weights and normalisers.  Validation, which chooses every member's
best point, always scores squared errors (the form above), whatever the
training penalty: the objective stays an RMSE-like quantity that the
members and runs with different losses can be compared on.  A mini-batch step takes the sums over its structures divided
by the average number of structures (force components) per step, so an
epoch is the full-batch objective: every structure counts the same
whatever the size of the batch it was drawn in.  K members with independent initialisations are trained at
once: every parameter carries a leading member axis, the descriptors and
Jacobians are read once per step for all members, and the Jacobian
contraction is one matrix product (B, 3N, N·F) x (B, N·F, K).  Each
element's network runs on that element's atoms only (gathered by the
``atoms_of_s`` lists of :class:`Groups`), not on every atom with the others
masked out: for TiO2 half the network work, which is most of a step.  Adam (with
decoupled weight decay on the kernels, aenet uses L2) runs on mini-batches
with a linear warm-up and cosine decay of the learning rate; an
exponential moving average of the weights is what is validated; each
member keeps its own best epoch by its validation objective (early
stopping per member), and a full-batch L-BFGS polish of all members at
once may follow (:func:`polish_lbfgs`).

An optional final phase (``final_epochs`` > 0, as the second stage of
MACE's schedule) multiplies every lambda_k by ``final_force_factor`` (< 1
weighs energies more) for the last epochs of the cosine schedule; the
members' best points are then chosen afresh, on the phase's own
validation objective, from the phase's epochs only.

The parameters are a plain pytree (:class:`CommitteeParams`), turned into a
Keras :class:`~bpnn_jax.model.BPNN` with ``members=K`` by
:func:`to_model`; its autodiff forces equal the Jacobian ones (tested).

Everything the stage needs to resume is in ``run_dir/ef_state.npz``
(parameters, optimizer state, EMA, best parameters, epoch, history),
written atomically every ``checkpoint_seconds`` and at the end; batches
are ordered by (seed, epoch) alone, so a resumed run repeats the
uninterrupted one.  A run with a final phase also keeps the state at the
phase's start in ``run_dir/ef_state_phase1.npz`` (same layout).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..descriptors.batch import atoms_by_species, species_atom_lists
from ..units import EV_PER_A3_IN_GPA

__all__ = [
    "CommitteeConfig",
    "Groups",
    "group_by_size",
    "atoms_per_batch_for",
    "init_params",
    "committee_outputs",
    "member_losses",
    "penalty",
    "fit_committee",
    "polish_lbfgs",
    "calibrate_threshold",
    "committee_energies",
    "committee_validation",
    "to_model",
    "params_from_model",
]


#: Penalties of the per-atom energy error and of the force components' errors (:func:`penalty`).
ENERGY_LOSSES = ("mse", "mae", "huber")
FORCE_LOSSES = ("mse", "huber")


@dataclasses.dataclass(frozen=True)
class CommitteeConfig:
    """Settings of the committee E+F stage.

    Attributes:
        members: committee size K.
        hidden: nodes per hidden layer (every element, every member).
        activation: "tanh", "silu", "softplus" or "sigmoid".
        epochs: Adam epochs over the training set.
        learning_rate: peak Adam learning rate.
        final_learning_rate: learning rate at the end of the cosine decay.
        warmup_epochs: linear warm-up from ``learning_rate / 10``.
        weight_decay: decoupled weight decay on the kernels (per step, times
            the learning rate, as in AdamW).
        force_weight: lambda (eV²/Å² against eV²/atom²); one value for all
            members, or a tuple of K values.
        ema_decay: per-step decay of the weight average that is validated
            and kept (0 = no average).
        atoms_per_batch: padded atoms per mini-batch (structures per batch
            = this // padded size of their group, at least 1).
        bootstrap: draw each member's training structures with replacement
            (Poisson(1) counts per structure, fixed for the run).
        patience: the run ends when no member's validation objective has
            improved for this many epochs (each member keeps its best point).
        seed: initialisation, bootstrap and shuffling seed.
        lbfgs_steps: full-batch L-BFGS iterations after Adam (0 = none).
        stress_weight: weight of the mean squared stress error (GPa², per
            Voigt component of the structures that have a stress) against
            the energy term (eV²/atom²); 0 = no stress term.  Needs
            ``sjac`` and ``stress`` in the groups.
        final_epochs: the last this many of ``epochs`` form the final
            phase (0 = none).  Patience counts within each phase; a run
            that patience ends before its final phase has none.
        final_force_factor: every force weight is multiplied by this in
            the final phase.
        energy_loss: penalty of the per-atom energy error ΔE/n (eV/atom):
            "mse" (squared), "mae" (absolute; the force weight then weighs
            eV²/Å² against eV/atom) or "huber" (squared up to
            ``energy_huber_delta``, linear beyond, with a continuous slope).
        force_loss: penalty of each force component's error (eV/Å): "mse"
            or "huber" (squared up to ``huber_delta``, linear beyond, so
            that the few atoms of strongly compressed structures do not
            dominate the force term).
        huber_delta: where the Huber force penalty turns linear, eV/Å.
        energy_huber_delta: where the Huber energy penalty turns linear, eV/atom.
        dropout: inverted-dropout rate of every hidden layer while training
            (a fresh mask per step, atom and member); validation, the
            L-BFGS polish and the exported model run without it.
        data_parallel: split each mini-batch's structures across every
            local device (:func:`data_mesh`): the same objective and,
            up to float rounding, the same weights as on one device (with
            dropout, a batch padded to a multiple of the device count
            draws other masks of the same rate; other batches the same).  The L-BFGS polish stays
            on one device.
    """

    members: int = 5
    hidden: tuple[int, ...] = (96, 96)
    activation: str = "tanh"
    epochs: int = 300
    learning_rate: float = 2e-3
    final_learning_rate: float = 2e-5
    warmup_epochs: int = 5
    weight_decay: float = 1e-5
    force_weight: float | tuple[float, ...] = 1e-3
    ema_decay: float = 0.99
    atoms_per_batch: int = 768
    bootstrap: bool = False
    patience: int = 1000
    seed: int = 0
    lbfgs_steps: int = 0
    stress_weight: float = 0.0
    final_epochs: int = 0
    final_force_factor: float = 1.0
    energy_loss: str = "mse"
    force_loss: str = "mse"
    huber_delta: float = 1.0
    energy_huber_delta: float = 0.01
    dropout: float = 0.0
    data_parallel: bool = False

    def __post_init__(self):
        if self.energy_loss not in ENERGY_LOSSES:
            raise ValueError(f"energy_loss must be one of {ENERGY_LOSSES}, got {self.energy_loss!r}")
        if self.force_loss not in FORCE_LOSSES:
            raise ValueError(f"force_loss must be one of {FORCE_LOSSES}, got {self.force_loss!r}")
        if not (self.huber_delta > 0 and self.energy_huber_delta > 0):
            raise ValueError(f"Huber deltas must be > 0, got {self.huber_delta} eV/Å and "
                             f"{self.energy_huber_delta} eV/atom")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0 <= self.final_epochs <= self.epochs:
            raise ValueError(f"final_epochs must lie in [0, epochs={self.epochs}], got {self.final_epochs}")
        if not self.final_force_factor > 0:
            raise ValueError(f"final_force_factor must be > 0, got {self.final_force_factor}")

    @property
    def final_start(self) -> int:
        """Epoch index (0-based) at which the final phase begins (``epochs`` when there is none)."""
        return self.epochs - self.final_epochs if self.final_epochs else self.epochs

    def force_factor(self, epoch: int) -> float:
        """Factor of every force weight in (0-based) ``epoch``: ``final_force_factor`` once the final phase has begun."""
        return self.final_force_factor if self.final_epochs and epoch >= self.final_start else 1.0

    def weights(self, epoch: int = 0) -> np.ndarray:
        """(K,) force weights in (0-based) ``epoch``: the final phase's once it has begun."""
        w = np.atleast_1d(np.asarray(self.force_weight, np.float64))
        if w.size == 1:
            w = np.full(self.members, float(w[0]))
        if w.shape != (self.members,):
            raise ValueError(f"force_weight needs 1 or {self.members} values, got {w.size}")
        return w * self.force_factor(epoch)

    @property
    def loss_options(self) -> dict:
        """The keyword arguments of :func:`member_losses` that choose its penalties."""
        return {"energy_loss": self.energy_loss, "force_loss": self.force_loss,
                "huber_delta": float(self.huber_delta), "energy_huber_delta": float(self.energy_huber_delta)}

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        if isinstance(self.force_weight, tuple):
            d["force_weight"] = list(self.force_weight)
        return d


# ------------------------------------------------------------------ data
@dataclasses.dataclass
class Groups:
    """Structures grouped by padded atom count N (one array set per group).

    Each entry of ``arrays`` is a dict of NumPy arrays for G structures:
    ``sf`` (G, N, F) symmetry functions; ``species`` (G, N) int32; ``mask``
    (G, N) bool (real atoms); ``energy`` (G,) eV relative to the references;
    ``n`` (G,) atom counts; ``forces`` (G, N, 3) eV/Å; ``jac`` (G, 3N, N·F)
    Å⁻¹ with ``jac[g, 3k + c, F i + f] = dG_if / dR_kc`` (zero for padding),
    or, for a group of sparse Jacobians (:class:`~bpnn_jax.descriptors.featurize.SparseJacobian`,
    wide cells), ``jac_values`` (G, N, 3W, F) with ``jac_values[g, i, 3q + c, f]
    = dG_if / dR_{p,c}`` for p = ``jac_partners[g, i, q]`` ((G, N, W) int32;
    unused entries point at the atom itself, with zero values);
    ``index`` (G,) positions of the structures in the input lists;
    ``atoms_of_s`` (G, M_s) int32 for every element index s, the positions of
    that element's atoms in each structure (-1 after the last; M_s the
    group's largest count of it), so that each element's network runs on
    its own atoms only.  For
    stress training also ``sjac`` (G, 6, N·F) with ``sjac[g, v, F i + f] =
    dG_if / dε_v`` (Voigt order), ``stress`` (G, 6) GPa, ``has_stress`` (G,)
    (1 where the structure has a stress) and ``volume`` (G,) Å³.
    """

    arrays: list[dict]

    @property
    def n_structures(self) -> int:
        return sum(len(a["energy"]) for a in self.arrays)

    @property
    def n_atoms(self) -> int:
        return int(sum(a["n"].sum() for a in self.arrays))

    @property
    def n_stress(self) -> int:
        """Structures with a stress target."""
        return int(sum(a["has_stress"].sum() for a in self.arrays if "has_stress" in a))

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for a in self.arrays for v in a.values())


def group_by_size(sf_list, species_list, energies, forces_list=None, jac_list=None, dtype=np.float32, *,
                  strain_list=None, stress_list=None, volumes=None) -> Groups:
    """Group structures by padded atom count (few shapes, little padding).

    Args:
        sf_list: per structure (n, F) descriptors.
        species_list: per structure (n,) element indices.
        energies: per structure energy relative to the references (eV).
        forces_list: per structure (n, 3) target forces (eV/Å), or None.
        jac_list: per structure (n, n, F, 3) Jacobians dG_i/dR_k or
            :class:`~bpnn_jax.descriptors.featurize.SparseJacobian` (as from
            :func:`bpnn_jax.descriptors.featurize.descriptor_jacobians`), or None.
            Dense and sparse structures go to separate groups.
            Entries are released (set to None) as they are copied, to cap
            peak memory, unless the list is a tuple.
        dtype: float dtype of the arrays.
        strain_list: per structure (n, F, 6) strain Jacobians (from
            :func:`bpnn_jax.descriptors.featurize.descriptor_strain_jacobians`), or None.
        stress_list: per structure (6,) stress in GPa or None (no stress).
        volumes: per structure cell volume, Å³.

    Returns:
        :class:`Groups` (forces and Jacobians only when given).
    """
    from ..descriptors.featurize import SparseJacobian
    from ..descriptors.neighbors import ATOM_BUCKETS, bucket_size

    def is_sparse(k):
        return jac_list is not None and isinstance(jac_list[k], SparseJacobian)

    n_species = 1 + max((int(np.max(sp)) for sp in species_list if len(sp)), default=0)
    by_n: dict[tuple[int, bool], list[int]] = {}
    for k, sp in enumerate(species_list):
        by_n.setdefault((bucket_size(len(sp), ATOM_BUCKETS), is_sparse(k)), []).append(k)
    F = sf_list[0].shape[1]
    out = []
    for (n_pad, sparse), idx in sorted(by_n.items()):
        G = len(idx)
        g = {"sf": np.zeros((G, n_pad, F), dtype), "species": np.zeros((G, n_pad), np.int32),
             "mask": np.zeros((G, n_pad), bool), "energy": np.asarray([energies[k] for k in idx], dtype),
             "n": np.asarray([len(species_list[k]) for k in idx], dtype), "index": np.asarray(idx, np.int64)}
        if jac_list is not None:
            g["forces"] = np.zeros((G, n_pad, 3), dtype)
        for b, k in enumerate(idx):
            n = len(species_list[k])
            g["sf"][b, :n], g["species"][b, :n], g["mask"][b, :n] = sf_list[k], species_list[k], True
            if jac_list is not None:
                g["forces"][b, :n] = forces_list[k]
        g.update(atoms_by_species(g["species"], g["mask"], n_species))
        if sparse:
            w_pad = -(-max(jac_list[k].width for k in idx) // 8) * 8  # few shapes
            values = np.zeros((G, n_pad, w_pad, 3, F), dtype)
            partners = np.broadcast_to(np.arange(n_pad, dtype=np.int32)[None, :, None], (G, n_pad, w_pad)).copy()
            for b, k in enumerate(idx):
                n, j = len(species_list[k]), jac_list[k]
                values[b, :n, :j.width] = np.transpose(np.asarray(j.values), (0, 1, 3, 2))
                p = np.asarray(j.partners)
                partners[b, :n, :j.width] = np.where(p >= 0, p, np.arange(n, dtype=np.int32)[:, None])
                if isinstance(jac_list, list):
                    jac_list[k] = None
            g["jac_values"] = values.reshape(G, n_pad, w_pad * 3, F)
            g["jac_partners"] = partners
        elif jac_list is not None:
            jac = np.zeros((G, n_pad, 3, n_pad, F), dtype)
            for b, k in enumerate(idx):
                n = len(species_list[k])
                jac[b, :n, :, :n] = np.transpose(np.asarray(jac_list[k]), (1, 3, 0, 2))
                if isinstance(jac_list, list):
                    jac_list[k] = None
            # Stored as (G, N*3, N*F), J[g, (k, c), (i, f)] = dG_if/dR_kc: the
            # force contraction is then one batched matrix product over
            # contiguous rows, ~5x faster on a CPU than contracting the
            # (i, k, f, c) layout (which XLA transposes at every call).
            g["jac"] = jac.reshape(G, n_pad * 3, n_pad * F)
        if strain_list is not None:
            sjac = np.zeros((G, 6, n_pad, F), dtype)
            g["stress"] = np.zeros((G, 6), dtype)
            g["has_stress"] = np.zeros((G,), dtype)
            g["volume"] = np.ones((G,), dtype)
            for b, k in enumerate(idx):
                n = len(species_list[k])
                sjac[b, :, :n] = np.transpose(np.asarray(strain_list[k]), (2, 0, 1))
                if stress_list[k] is not None:
                    g["stress"][b] = stress_list[k]
                    g["has_stress"][b] = 1.0
                    g["volume"][b] = volumes[k]
            g["sjac"] = sjac.reshape(G, 6, n_pad * F)
        out.append(g)
    return Groups(out)


# -------------------------------------------------------------- the model
#: Element-wise activations, float64-preserving.
def _activation(name: str):
    import jax
    import jax.numpy as jnp

    table = {"tanh": jnp.tanh, "silu": jax.nn.silu, "swish": jax.nn.silu, "softplus": jax.nn.softplus,
             "sigmoid": jax.nn.sigmoid}
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
    return table[name]


def init_params(key, members: int, n_elements: int, n_functions: int, hidden: Sequence[int], dtype="float32"):
    """Glorot-uniform kernels, zero biases (Keras's Dense defaults), per element and member.

    Returns:
        {"W": [(S, K, fan_in, fan_out) per layer], "b": [(S, K, fan_out)]};
        the last layer has fan_out 1.
    """
    import jax
    import jax.numpy as jnp

    sizes = [n_functions, *hidden, 1]
    W, b = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        W.append(jax.random.uniform(sub, (n_elements, members, fan_in, fan_out), dtype, -lim, lim))
        b.append(jnp.zeros((n_elements, members, fan_out), dtype))
    return {"W": W, "b": b}


def committee_outputs(params, stats, sf, species, mask, activation="tanh", jac=None, sjac=None, volume=None,
                      partners=None, species_atoms=None, dropout=0.0, key=None):
    """Energies (and Jacobian forces) of every member for a batch.

    Args:
        params: :func:`init_params` pytree, leading axes (S, K).
        stats: dict of ``sf_mean``, ``sf_std`` (S, F), ``energy_shift``
            (S,) eV/atom and ``energy_scale`` () eV.
        sf: (B, N, F) symmetry functions.
        species: (B, N) element indices.
        mask: (B, N) real atoms.
        activation: hidden activation name.
        jac: optional (B, 3N, N·F) descriptor Jacobians, or with
            ``partners`` the sparse (B, N, 3W, F) ``jac_values`` of
            :class:`Groups`.
        sjac, volume: optional (B, 6, N·F) strain Jacobians and (B,) cell
            volumes (Å³), with ``jac``.
        partners: (B, N, W) int32 ``jac_partners`` of a sparse ``jac``.
        species_atoms: optional tuple over elements of (B, M_s) int32 atom
            positions (the ``atoms_of_s`` arrays of :class:`Groups`): each
            element's network then runs on that element's atoms only, not
            on every atom with the others masked out (half the work for two
            elements); the same values up to rounding.
        dropout: inverted-dropout rate of the hidden layers (training only).
        key: ``jax.random`` key of the dropout masks; None (or ``dropout``
            0) runs without dropout.  The forces are then those of the
            network with this step's masks, the gradient of its energy.

    Returns:
        dict: ``energy`` (K, B) eV; with ``jac`` also ``forces`` (K, B, N, 3)
        eV/Å; with ``sjac`` also ``stress`` (K, B, 6) GPa, Voigt order,
        σ = (1/V) dE/dε.
    """
    import jax
    import jax.numpy as jnp

    act = _activation(activation)
    S, K = params["W"][0].shape[:2]
    B, N, F = sf.shape

    drop = key is not None and dropout > 0

    def network(x, s):  # (K, B, M, F) descriptors of element s -> (K, B, M) atomic energies, eV
        x = (x - stats["sf_mean"][s]) / stats["sf_std"][s]
        for l, (W, b) in enumerate(zip(params["W"], params["b"])):
            x = jnp.einsum("kbni,kio->kbno", x, W[s]) + b[s][:, None, None, :]
            if l < len(params["W"]) - 1:
                x = act(x)
                if drop:  # one mask per element and layer: fold both into the step's key
                    keep = jax.random.bernoulli(jax.random.fold_in(key, s * 1024 + l), 1.0 - dropout, x.shape)
                    x = jnp.where(keep, x / (1.0 - dropout), 0.0)
        return stats["energy_shift"][s] + stats["energy_scale"] * x[..., 0]

    def energies(sf_k):  # (K, B, N, F) -> (K, B); per-member copies for per-member input gradients
        if species_atoms is not None:
            e = jnp.zeros((K, B), sf_k.dtype)
            for s, idx in enumerate(species_atoms[:S]):
                if idx.shape[-1] == 0:
                    continue
                valid = idx >= 0
                x = jnp.take_along_axis(sf_k, jnp.where(valid, idx, 0)[None, :, :, None], axis=2)
                e = e + jnp.sum(jnp.where(valid, network(x, s), 0.0), axis=-1)
            return e
        e = jnp.zeros((K, B, N), sf_k.dtype)
        for s in range(S):
            e = jnp.where(species == s, network(sf_k, s), e)
        e = jnp.where(mask, e, 0.0)
        return jnp.sum(e, axis=-1)

    sf_k = jnp.broadcast_to(sf, (K, B, N, F))
    if jac is None:
        return {"energy": energies(sf_k)}
    energy, vjp = jax.vjp(energies, sf_k)
    (dedg,) = vjp(jnp.ones_like(energy))  # (K, B, N, F): dE_kb/dG
    if partners is None:
        forces = -jnp.einsum("bij,kbj->kbi", jac, dedg.reshape(K, B, N * F)).reshape(K, B, N, 3)
    else:  # per atom i over its partners, then scattered onto them
        W = partners.shape[-1]
        contrib = jnp.einsum("bnjf,kbnf->bnjk", jac, dedg).reshape(B, N * W, 3, K)
        per_b = jax.vmap(lambda c, p: jax.ops.segment_sum(c, p.reshape(N * W), num_segments=N))(contrib, partners)
        forces = -jnp.transpose(per_b, (3, 0, 1, 2))  # (K, B, N, 3)
    out = {"energy": energy, "forces": forces}
    if sjac is not None:
        de_deps = jnp.einsum("bvj,kbj->kbv", sjac, dedg.reshape(K, B, N * F))
        out["stress"] = EV_PER_A3_IN_GPA * de_deps / volume[None, :, None]
    return out


def _outputs(params, stats, g, activation, dropout=0.0, key=None):
    jac = g["jac"] if "jac" in g else g.get("jac_values")
    return committee_outputs(params, stats, g["sf"], g["species"], g["mask"], activation, jac,
                             g.get("sjac"), g.get("volume"), partners=g.get("jac_partners"),
                             species_atoms=species_atom_lists(g), dropout=dropout, key=key)


def penalty(x, kind: str = "mse", delta: float = 1.0):
    """Element-wise penalty of errors ``x``: x² ("mse"), |x| ("mae") or Huber ("huber").

    The Huber penalty is x² for |x| <= ``delta`` and δ (2|x| - δ) beyond
    (twice the textbook Huber loss: equal to the squared error where that
    holds, so a Huber loss and an MSE loss of small errors weigh the same).
    """
    import jax.numpy as jnp

    if kind == "mse":
        return x * x
    a = jnp.abs(x)
    if kind == "mae":
        return a
    if kind == "huber":
        return jnp.where(a <= delta, a * a, delta * (2.0 * a - delta))
    raise ValueError(f"unknown loss {kind!r}; expected 'mse', 'mae' or 'huber'")


def _error_sums(out, g, weights=None, energy_loss="mse", force_loss="mse", huber_delta=1.0,
                energy_huber_delta=0.01):
    """Per member (the leading axis of ``out``): sums (w p(dE/n), w p(dF), w, w 3n, w dσ² (GPa²), w 6 [has stress]).

    ``p`` is :func:`penalty` of the kind ``energy_loss`` / ``force_loss`` (squared errors by default).
    """
    import jax.numpy as jnp

    K = out["energy"].shape[0]
    w = jnp.ones((K,) + g["energy"].shape, out["energy"].dtype) if weights is None else weights
    w = w * (g["n"] > 0)
    de = (out["energy"] - g["energy"]) / jnp.maximum(g["n"], 1.0)
    se = jnp.sum(w * penalty(de, energy_loss, energy_huber_delta), axis=1)
    z = jnp.zeros_like(se)
    if "forces" not in out:
        return se, z, jnp.sum(w, axis=1), z, z, z
    df = jnp.where(g["mask"][None, ..., None], out["forces"] - g["forces"], 0.0)
    sf = jnp.sum(w * jnp.sum(penalty(df, force_loss, huber_delta), axis=(2, 3)), axis=1)
    ss, ns = z, z
    if "stress" in out:
        ws = w * g["has_stress"]
        ds = out["stress"] - g["stress"]
        ss = jnp.sum(ws * jnp.sum(ds * ds, axis=-1), axis=1)
        ns = jnp.sum(6.0 * ws, axis=1)
    return se, sf, jnp.sum(w, axis=1), jnp.sum(w * 3.0 * g["n"], axis=1), ss, ns


def member_losses(params, stats, g, force_weight, activation="tanh", weights=None, normalizers=None,
                  stress_weight=0.0, *, energy_loss="mse", force_loss="mse", huber_delta=1.0,
                  energy_huber_delta=0.01, dropout=0.0, key=None):
    """(K,) per-member objectives of one batch (see the module doc).

    Args:
        params: :func:`init_params` pytree, leading axes (S, K).
        stats: as for :func:`committee_outputs`.
        g: a group (or batch) of :class:`Groups` arrays.
        force_weight: (K,) or scalar force weights lambda.
        activation: hidden activation name.
        weights: (K, B) per-member structure weights (bootstrap counts),
            None = ones.
        normalizers: ``(structures, force components[, stress
            components])`` to divide the energy, force (and stress) sums by;
            None divides by this batch's own (weighted) counts, the batch
            mean.  Fixed values make sums over batches add up to one
            objective: training passes the average counts per step (an
            epoch is then the full-batch objective), the L-BFGS polish the
            counts of the whole training set.
        stress_weight: weight of the mean squared stress error (GPa²).
        energy_loss, force_loss, huber_delta, energy_huber_delta: the
            penalties of the energy and force errors (:func:`penalty`;
            :attr:`CommitteeConfig.loss_options`); the stress term stays
            squared.  Each structure's penalty is multiplied by its weight
            and divided by the normalisers as the squared errors are.
        dropout, key: dropout of the hidden layers (:func:`committee_outputs`).
    """
    import jax.numpy as jnp

    out = _outputs(params, stats, g, activation, dropout, key)
    se, sf, ns, nf, ss, nss = _error_sums(out, g, weights, energy_loss, force_loss, huber_delta, energy_huber_delta)
    if normalizers is not None:
        ns, nf = normalizers[:2]
        if len(normalizers) > 2:
            nss = normalizers[2]
    loss = se / jnp.maximum(ns, 1e-12) + force_weight * sf / jnp.maximum(nf, 1e-12)
    if stress_weight:
        loss = loss + stress_weight * ss / jnp.maximum(nss, 1e-12)
    return loss


# ------------------------------------------------------------- training
def _lr_schedule(cfg: CommitteeConfig, steps_per_epoch: int):
    import optax

    total = max(cfg.epochs * steps_per_epoch, 1)
    warm = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    return optax.warmup_cosine_decay_schedule(cfg.learning_rate / 10, cfg.learning_rate, max(warm, 0), total,
                                              end_value=cfg.final_learning_rate)


def _optimizer(cfg: CommitteeConfig, steps_per_epoch: int):
    import optax

    def kernels(params):  # decay kernels only, never biases
        return {"W": [True] * len(params["W"]), "b": [False] * len(params["b"])}

    return optax.adamw(_lr_schedule(cfg, steps_per_epoch), weight_decay=cfg.weight_decay, mask=kernels)


def _epoch_batches(groups: Groups, cfg: CommitteeConfig, epoch: int,
                   multiple: int = 1) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(group, indices, valid) per step, seeded by (seed, epoch); the last batch of a group is padded.

    ``multiple``: pad every batch with invalid structures (index 0, valid
    False) to a multiple of this many (the device count of data-parallel
    training).  The real structures of each batch do not depend on it, so a
    data-parallel run visits the batches of the one-device run.
    """
    rng = np.random.default_rng([cfg.seed, 7, epoch])
    out = []
    for gi, g in enumerate(groups.arrays):
        G, N = g["sf"].shape[:2]
        bs = max(1, min(G, cfg.atoms_per_batch // N))
        width = -(-bs // multiple) * multiple
        perm = rng.permutation(G)
        for start in range(0, G, bs):
            idx = perm[start:start + bs]
            valid = np.ones(width, bool)
            if len(idx) < width:
                valid[len(idx):] = False
                idx = np.concatenate([idx, np.zeros(width - len(idx), idx.dtype)])
            out.append((gi, idx.astype(np.int32), valid))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def atoms_per_batch_for(structures_per_batch: int, n_atoms: Sequence[int]) -> int:
    """``atoms_per_batch`` that gives about ``structures_per_batch`` structures per mini-batch.

    The trainer fills a batch with ``atoms_per_batch // N`` structures of
    padded size N (:func:`group_by_size`); this is ``structures_per_batch``
    times the mean padded size of structures of ``n_atoms`` atoms, so a
    structure of about the mean size gets the asked number of companions.
    """
    from ..descriptors.neighbors import ATOM_BUCKETS, bucket_size

    if structures_per_batch < 1 or not len(n_atoms):
        raise ValueError(f"need >= 1 structure per batch and some structures, got {structures_per_batch} "
                         f"and {len(n_atoms)}")
    mean_padded = float(np.mean([bucket_size(int(n), ATOM_BUCKETS) for n in n_atoms]))
    return max(1, int(round(structures_per_batch * mean_padded)))


def _bootstrap_weights(groups: Groups, cfg: CommitteeConfig) -> list[np.ndarray]:
    """Per group (K, G) structure weights: Poisson(1) counts, or ones."""
    rng = np.random.default_rng([cfg.seed, 11])
    out = []
    for g in groups.arrays:
        G = len(g["energy"])
        out.append(rng.poisson(1.0, (cfg.members, G)).astype(np.float32) if cfg.bootstrap
                   else np.ones((cfg.members, G), np.float32))
    return out


def _stats_arrays(stats: dict, dtype) -> dict:
    """The statistics as the model stores them (float32, std 0 -> 1), in ``dtype``."""
    out = {k: np.asarray(stats[k], np.float32) for k in ("sf_mean", "sf_std", "energy_shift", "energy_scale")}
    out["sf_std"] = np.where(np.asarray(stats["sf_std"]) > 1e-12, out["sf_std"], np.float32(1.0))
    return {k: v.astype(dtype) for k, v in out.items()}


#: The arrays of a group that the jitted steps take (``index`` stays on the host).
_DEVICE_KEYS = ("sf", "species", "mask", "energy", "n", "forces", "jac", "jac_values", "jac_partners")
#: Present for stress training only.
_STRESS_KEYS = ("sjac", "stress", "has_stress", "volume")


#: The large arrays that :func:`_device_groups` can release from the host once they are on the device.
_JACOBIAN_KEYS = ("jac", "jac_values", "sjac")


def data_mesh(data_parallel: bool = True):
    """The one-axis ``("data",)`` mesh of every local device for data-parallel training.

    Args:
        data_parallel: False returns None (one device, nothing to check).

    Returns:
        ``jax.sharding.Mesh`` over ``jax.local_devices()``, or None.

    Raises:
        BPNNInputError: data parallelism asked for where JAX sees one device.
    """
    if not data_parallel:
        return None
    import jax
    from jax.sharding import Mesh

    from ..errors import BPNNInputError

    # Local devices: the host's batches are put on them directly (one process; several hosts would need
    # globally assembled arrays).
    devices = jax.local_devices()
    if len(devices) < 2:
        raise BPNNInputError(
            f"data-parallel training splits each batch across several devices, but JAX sees one "
            f"{devices[0].platform} device; make several GPUs visible (CUDA_VISIBLE_DEVICES), "
            f"or leave out --data-parallel (data_parallel: false).  On a CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=N set before Python starts gives N devices "
            f"(for tests: they share the same cores, so training is no faster)")
    return Mesh(np.array(devices), ("data",))


def _device_groups(groups: Groups, dtype, *, release: bool = False, sharding=None) -> list[dict]:
    """The groups' arrays on the default device (or with ``sharding``), floats in ``dtype``.

    ``release``: drop each group's Jacobians from the host once they are on
    the device (on a CPU the device copy is a second copy: the full TiO2
    set's 7.4 GB of Jacobians made 16 GB of process memory).  The groups can
    then no longer be put on a device again.  ``sharding``: a
    ``jax.sharding.Sharding`` of every array (data-parallel training
    replicates them on every device); None puts them on the default device.
    """
    import jax

    out = []
    for g in groups.arrays:
        keys = [k for k in g if k in _DEVICE_KEYS + _STRESS_KEYS or k.startswith("atoms_of_")]
        dev = {}
        for k in keys:
            dev[k] = jax.device_put(np.asarray(g[k], dtype) if np.issubdtype(g[k].dtype, np.floating) else g[k],
                                    sharding)
            if release and k in _JACOBIAN_KEYS:
                dev[k].block_until_ready()
                del g[k]
        out.append(dev)
    return out


def _evaluate_groups(fn, params, stats, groups_dev) -> dict:
    """Sums of squared errors per member and of the committee mean."""
    K = params["W"][0].shape[1]
    tot = np.zeros((6, K))
    mean_se = mean_sf = mean_ss = mean_ae = 0.0
    for g in groups_dev:
        se, sf, ns, nf, ss, nss, mse, msf, mss, mae = fn(params, stats, g)
        tot += np.asarray([se, sf, ns, nf, ss, nss], np.float64)
        mean_ae += float(mae)
        mean_se += float(mse)
        mean_sf += float(msf)
        mean_ss += float(mss)
    ns, nf, nss = tot[2], tot[3], tot[5]
    out = {"energy_rmse_mev_atom": 1e3 * np.sqrt(tot[0] / ns), "force_rmse_ev_a": np.sqrt(tot[1] / np.maximum(nf, 1)),
           "energy_mse": tot[0] / ns, "force_mse": tot[1] / np.maximum(nf, 1),
           "stress_mse": tot[4] / np.maximum(nss, 1),
           "mean_energy_rmse_mev_atom": 1e3 * math.sqrt(mean_se / ns[0]),
           "mean_energy_mae_mev_atom": 1e3 * mean_ae / ns[0],
           "mean_force_rmse_ev_a": math.sqrt(mean_sf / max(nf[0], 1))}
    if nss[0] > 0:
        out["stress_rmse_gpa"] = np.sqrt(tot[4] / nss)
        out["mean_stress_rmse_gpa"] = math.sqrt(mean_ss / nss[0])
    return out


def _validation_objective(m: dict, force_weights: np.ndarray, stress_weight: float) -> np.ndarray:
    """(K,) per-member validation objectives from :func:`_evaluate_groups` metrics (the MSE loss's form, whatever
    the training penalties)."""
    return m["energy_mse"] + force_weights * m["force_mse"] + stress_weight * m["stress_mse"]


def _validation_function(activation):
    import jax
    import jax.numpy as jnp

    @jax.jit
    def fn(params, stats, g):
        out = _outputs(params, stats, g, activation)
        members = _error_sums(out, g)
        # The committee's mean prediction, as a committee of one.
        mean_out = {k: jnp.mean(v, axis=0, keepdims=True) for k, v in out.items()}
        mean = _error_sums(mean_out, g)
        abs_err = jnp.sum(jnp.where(g["n"] > 0, jnp.abs(mean_out["energy"][0] - g["energy"]), 0.0)
                          / jnp.maximum(g["n"], 1.0))
        return members + (mean[0][0], mean[1][0], mean[4][0], abs_err)

    return fn


def committee_validation(params, stats: dict, groups: Groups, activation: str = "tanh", dtype="float32") -> dict:
    """Validation errors of a committee on ``groups``, as :func:`fit_committee` logs them.

    Returns:
        dict of per-member arrays (K,) ``energy_rmse_mev_atom``,
        ``force_rmse_ev_a``, ``energy_mse`` (eV²/atom²), ``force_mse``
        (eV²/Å²) and of the committee mean ``mean_energy_rmse_mev_atom``,
        ``mean_energy_mae_mev_atom``, ``mean_force_rmse_ev_a`` (plus stress
        where the groups have it).
    """
    import jax

    return _evaluate_groups(_validation_function(activation), jax.device_put(params),
                            jax.device_put(_stats_arrays(stats, dtype)), _device_groups(groups, dtype))


def _tree_to_npz(prefix: str, tree) -> dict:
    import jax

    leaves = jax.tree_util.tree_leaves(tree)
    return {f"{prefix}{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}


def _tree_from_npz(prefix: str, data, like):
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(like)
    new = [np.asarray(data[f"{prefix}{i:04d}"]).astype(np.asarray(x).dtype) for i, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


def _save_state(path: Path, state: dict) -> None:
    from ..io.atomic import atomic_write

    arrays = {}
    for key in ("params", "opt_state", "ema", "best_params"):
        arrays.update(_tree_to_npz(f"{key}/", state[key]))
    arrays["best_objective"] = np.asarray(state["best_objective"])
    arrays["best_epoch"] = np.asarray(state["best_epoch"])
    arrays["meta"] = np.frombuffer(json.dumps({"epoch": state["epoch"], "history": state["history"],
                                               "config": state["config"]}).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def _load_state(path: Path, like: dict) -> dict:
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        out = {key: _tree_from_npz(f"{key}/", data, like[key]) for key in ("params", "opt_state", "ema", "best_params")}
        out["best_objective"] = np.asarray(data["best_objective"])
        out["best_epoch"] = np.asarray(data["best_epoch"])
    out.update(epoch=int(meta["epoch"]), history=meta["history"], config=meta["config"])
    return out


def fit_committee(train: Groups, val: Groups, stats: dict, cfg: CommitteeConfig, *, run_dir=None,
                  resume: bool = False, verbose: int = 1, checkpoint_seconds: float = 60.0,
                  deadline: float | None = None, dtype="float32", on_epoch: Callable | None = None,
                  release_host_jacobians: bool = False, start_params=None) -> dict:
    """Train a committee with mini-batch Adam on Jacobian forces (module doc).

    Args:
        train, val: :func:`group_by_size` groups with forces and Jacobians.
        stats: :func:`bpnn_jax.training.compute_statistics` output.
        cfg: settings.
        run_dir: where ``ef_state.npz`` (resume state) and
            ``ef_history.csv`` go; None keeps nothing on disk.
        resume: continue from ``run_dir/ef_state.npz`` if it exists.
        verbose: 0 silent, 1 one line per epoch, 2 (``--quiet``) about ten lines.
        checkpoint_seconds: minimum interval between state writes.
        deadline: ``time.time()`` after which to stop after the current
            epoch (the state is saved; resume continues).
        dtype: "float32" or "float64" (the latter needs jax_enable_x64).
        on_epoch: optional callback ``f(epoch, record)`` after each epoch.
        release_host_jacobians: drop the groups' Jacobians from host memory
            once they are on the device (halves the peak memory on a CPU);
            the groups cannot then be trained on or polished again.
        start_params: start from these :func:`init_params`-shaped weights
            (fine-tuning, e.g. :func:`params_from_model`) instead of a
            random initialisation.

    Returns:
        dict: ``params`` (the best point of every member), ``history``
        (list of per-epoch records), ``best_epoch`` (K,), ``epochs_run``,
        ``seconds``, ``complete`` (False when stopped by the deadline).
        The weights are on one device, also after data-parallel training.

    Raises:
        BPNNInputError: ``cfg.data_parallel`` where JAX sees one device.
    """
    import jax
    import jax.numpy as jnp
    import optax

    K = cfg.members
    S = stats["sf_mean"].shape[0]
    F = stats["sf_mean"].shape[1]
    # Data parallelism: the batch's structure axis (indices, valid flags and so everything gathered by them)
    # is split across the mesh, and XLA's SPMD partitioner splits the step, summing the loss and gradients
    # over devices.  Everything else is replicated: weights and optimiser state (small), and the groups'
    # arrays, because a batch gathers arbitrary structures of its group with jnp.take -- sharded groups
    # would need a cross-device gather every step; replicated ones cost device memory (each device holds
    # the data set, as one device does) but no traffic.  Validation runs replicated (no speed-up, no cost).
    mesh = data_mesh(cfg.data_parallel)
    n_dev = 1 if mesh is None else mesh.size
    if mesh is None:
        replicated = batch_sharding = None  # the default device
    else:
        from jax.sharding import NamedSharding, PartitionSpec

        replicated = NamedSharding(mesh, PartitionSpec())
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    st = jax.device_put(_stats_arrays(stats, dtype), replicated)
    bweights = _bootstrap_weights(train, cfg)
    train_dev = _device_groups(train, dtype, release=release_host_jacobians, sharding=replicated)
    val_dev = _device_groups(val, dtype, release=release_host_jacobians, sharding=replicated)
    bw_dev = [jax.device_put(np.asarray(w, dtype), replicated) for w in bweights]
    steps_per_epoch = len(_epoch_batches(train, cfg, 0))
    e_norm = train.n_structures / steps_per_epoch
    f_norm = 3.0 * train.n_atoms / steps_per_epoch
    s_norm = 6.0 * train.n_stress / steps_per_epoch
    s_weight = float(cfg.stress_weight)
    if s_weight and not train.n_stress:
        raise ValueError("stress_weight > 0 needs training structures with a stress (and strain Jacobians)")
    opt = _optimizer(cfg, steps_per_epoch)
    if start_params is None:
        params = init_params(jax.random.PRNGKey(cfg.seed), K, S, F, cfg.hidden, dtype)
    else:
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), start_params)
        shapes = [tuple(W.shape) for W in params["W"]]
        want = [(S, K, a, b) for a, b in zip([F, *cfg.hidden], [*cfg.hidden, 1])]
        if shapes != want:
            raise ValueError(f"start_params have kernels {shapes}, this configuration needs {want}")
    params = jax.device_put(params, replicated)
    state = {"params": params, "opt_state": jax.device_put(opt.init(params), replicated), "ema": params,
             "best_params": params, "best_objective": np.full(K, np.inf), "best_epoch": np.zeros(K, np.int64),
             "epoch": 0, "history": [], "config": cfg.to_json()}
    path = None if run_dir is None else Path(run_dir) / "ef_state.npz"
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    if resume and path is not None and path.exists():
        state = _load_state(path, state)
        state["params"], state["opt_state"], state["ema"], state["best_params"] = jax.device_put(
            (state["params"], state["opt_state"], state["ema"], state["best_params"]), replicated)
        if verbose:
            print(f"[ef] resumed at epoch {state['epoch']} of {cfg.epochs}", flush=True)
    ema_decay = float(cfg.ema_decay)
    act = cfg.activation

    losses = cfg.loss_options
    dropout = float(cfg.dropout)
    dropout_key = jax.random.PRNGKey(cfg.seed + 1)  # not the initialisation's key

    def step(params, opt_state, ema, g, idx, valid, bw, lam, counter):  # lam an argument: the final phase compiles nothing
        batch = {k: jnp.take(v, idx, axis=0) for k, v in g.items()}
        w = jnp.take(bw, idx, axis=1) * valid
        # Masks by the global step number: a resumed run draws the ones the uninterrupted run drew.
        key = jax.random.fold_in(dropout_key, counter) if dropout > 0 else None

        def loss(p):
            # Fixed normalisers (structures and force components per step on
            # average), not this batch's counts: an epoch then sums to the
            # full-batch objective, every structure's energy and every force
            # component weigh the same whatever the size of the batch it is
            # in (per-batch means gave a 6-atom structure, batched 128 at a
            # time, 1/16 of the weight of a 95-atom one).
            return jnp.sum(member_losses(p, st, batch, lam, act, w, normalizers=(e_norm, f_norm, s_norm),
                                         stress_weight=s_weight, dropout=dropout, key=key, **losses))

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        return params, opt_state, ema, value

    # Data-parallel: the outputs (weights, state, loss) stay replicated, as the next step takes them.
    step = jax.jit(step) if mesh is None else jax.jit(step, out_shardings=replicated)
    val_fn = _validation_function(act)
    t_start = time.time()
    last_save = time.time()
    complete = True
    stopped = state["epoch"] - np.asarray(state["best_epoch"]) > cfg.patience
    hist_path = None if run_dir is None else Path(run_dir) / "ef_history.csv"
    while state["epoch"] < cfg.epochs and not np.all(stopped):
        epoch = state["epoch"]
        if cfg.final_epochs and epoch == cfg.final_start:
            # The final phase's objective differs: its best points are chosen among its own epochs
            # (the state is saved after this epoch, so a resume past it does not reset again).  The
            # first phase's state is kept beside it, so its best points stay available.
            if path is not None:
                _save_state(path.with_name("ef_state_phase1.npz"), state)
            state["best_objective"] = np.full(K, np.inf)
            state["best_epoch"] = np.full(K, epoch, np.int64)
            stopped = np.zeros(K, bool)
            if verbose:
                print(f"[ef] final phase: epochs {epoch + 1}-{cfg.epochs}, force weights x {cfg.final_force_factor:g}",
                      flush=True)
        lam_np = cfg.weights(epoch)
        lam = jnp.asarray(lam_np, dtype)
        t0 = time.time()
        loss_sum = 0.0
        p, o, e = state["params"], state["opt_state"], state["ema"]
        for i, (gi, idx, valid) in enumerate(_epoch_batches(train, cfg, epoch, n_dev)):
            if mesh is not None:  # each device gets its slice of the batch's structures
                idx, valid = jax.device_put((idx, np.asarray(valid, dtype)), batch_sharding)
            p, o, e, value = step(p, o, e, train_dev[gi], idx, jnp.asarray(valid, dtype), bw_dev[gi], lam,
                                  np.uint32(epoch * steps_per_epoch + i))
            loss_sum += value
        loss_mean = float(loss_sum) / steps_per_epoch / K
        if not math.isfinite(loss_mean):
            print(f"[ef] epoch {epoch + 1}: non-finite training loss; kept the last good state and stopped "
                  f"(try a lower learning rate)", flush=True)
            complete = False
            break
        train_s = time.time() - t0
        # Early in training the average trails far behind: use the raw weights then.
        judged = e if (ema_decay > 0 and epoch >= cfg.warmup_epochs) else p
        m = _evaluate_groups(val_fn, judged, st, val_dev)
        obj = _validation_objective(m, lam_np, s_weight)
        # Every member's best point follows its validation objective to the
        # end: freezing a member once it had not improved for `patience`
        # epochs kept points from the noisy high-learning-rate phase of long
        # schedules (seen: best epochs 73, 150, 153 of 800, the committee's
        # validation energy RMSE 11 -> 60 meV/atom).  Patience only ends the
        # run, when no member has improved for that long.
        better = obj < state["best_objective"]
        if np.any(better):
            sel = jnp.asarray(better)

            def choose(new, old):
                return jnp.where(sel.reshape((1, K) + (1,) * (new.ndim - 2)), new, old)

            state["best_params"] = jax.tree_util.tree_map(choose, judged, state["best_params"])
            state["best_objective"] = np.where(better, obj, state["best_objective"])
            state["best_epoch"] = np.where(better, epoch + 1, state["best_epoch"])
        state.update(params=p, opt_state=o, ema=e, epoch=epoch + 1)
        stopped = (epoch + 1) - np.asarray(state["best_epoch"]) > cfg.patience
        rec = {"epoch": epoch + 1, "train_loss": loss_mean, "seconds": train_s,
               "val_energy_rmse_mev_atom": float(np.mean(m["energy_rmse_mev_atom"])),
               "val_force_rmse_ev_a": float(np.mean(m["force_rmse_ev_a"])),
               "val_committee_energy_rmse_mev_atom": m["mean_energy_rmse_mev_atom"],
               "val_committee_force_rmse_ev_a": m["mean_force_rmse_ev_a"],
               "val_member_energy_rmse_mev_atom": np.round(m["energy_rmse_mev_atom"], 4).tolist(),
               "val_member_force_rmse_ev_a": np.round(m["force_rmse_ev_a"], 5).tolist(),
               **({"val_committee_stress_rmse_gpa": m["mean_stress_rmse_gpa"]} if "mean_stress_rmse_gpa" in m else {}),
               "learning_rate": float(_lr_schedule(cfg, steps_per_epoch)((epoch + 1) * steps_per_epoch)),
               "force_weight_factor": cfg.force_factor(epoch)}
        state["history"].append(rec)
        if on_epoch is not None:
            on_epoch(epoch + 1, rec)
        every = 1 if verbose == 1 else max(1, cfg.epochs // 10)  # verbose 2 (--quiet): ~10 lines
        if verbose and (epoch == 0 or (epoch + 1) % every == 0 or epoch + 1 == cfg.epochs):
            print(f"[ef] epoch {epoch + 1}/{cfg.epochs}: loss {loss_mean:.3g}, val energy "
                  f"{rec['val_energy_rmse_mev_atom']:.2f} meV/atom (committee {rec['val_committee_energy_rmse_mev_atom']:.2f}),"
                  f" forces {rec['val_force_rmse_ev_a']:.3f} eV/Å (committee {rec['val_committee_force_rmse_ev_a']:.3f}),"
                  + (f" stress (committee) {rec['val_committee_stress_rmse_gpa']:.3f} GPa,"
                     if "val_committee_stress_rmse_gpa" in rec else "")
                  + f" {train_s:.1f} s", flush=True)
        out_of_time = deadline is not None and time.time() > deadline
        if path is not None and (time.time() - last_save > checkpoint_seconds or out_of_time
                                 or state["epoch"] == cfg.epochs):
            _save_state(path, state)
            _write_history(hist_path, state["history"])
            last_save = time.time()
        if out_of_time:
            complete = state["epoch"] >= cfg.epochs
            if verbose:
                print(f"[ef] time limit reached after epoch {state['epoch']}; --resume continues", flush=True)
            break
    if path is not None:
        _save_state(path, state)
        _write_history(hist_path, state["history"])
    if mesh is not None:  # the polish, export and callers work on one device
        state["best_params"] = jax.device_put(state["best_params"], jax.local_devices()[0])
    return {"params": state["best_params"], "history": state["history"],
            "best_epoch": np.asarray(state["best_epoch"]).tolist(),
            "best_objective": np.asarray(state["best_objective"]).tolist(),
            "epochs_run": state["epoch"], "seconds": time.time() - t_start, "complete": complete}


def _write_history(path, history) -> None:
    if path is None or not history:
        return
    import csv

    from ..io.atomic import atomic_write

    fields = list(dict.fromkeys(k for r in history for k in r))
    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(history)


def polish_lbfgs(params, train: Groups, val: Groups, stats: dict, cfg: CommitteeConfig, *, steps: int,
                 verbose: int = 1, log_every: int = 10, deadline: float | None = None, dtype="float32") -> dict:
    """Full-batch L-BFGS polish of every member at once.

    Minimises the sum of the members' full-batch objectives (module doc;
    without bootstrap weights, without dropout, with ``cfg``'s penalties:
    an MAE energy loss is not smooth, which L-BFGS's line search tolerates
    but does not exploit) as one problem: the members are independent,
    so the sum's Hessian is block-diagonal, and one pass over the data
    serves all of them (a vmap of K separate L-BFGS states would broadcast
    the Jacobians to every member, K x their memory).  Each member keeps its
    best point by its own validation objective.

    Returns:
        dict: ``params``, ``history``, ``best_objective`` (K,), ``seconds``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    K = cfg.members
    lam = jnp.asarray(cfg.weights(cfg.epochs), dtype)
    st = jax.device_put(_stats_arrays(stats, dtype))
    tr, va = _device_groups(train, dtype), _device_groups(val, dtype)
    n_s = float(train.n_structures)
    n_f = 3.0 * train.n_atoms
    n_ss = 6.0 * train.n_stress
    s_weight = float(cfg.stress_weight)

    # Each group's loss is rematerialised in the backward pass, so the
    # full-batch gradient does not keep every group's residuals at once.
    # Even so, on the full TiO2 training set (4.5 GB of Jacobians) the
    # compiled L-BFGS step (line search included) outgrows a 24 GB machine;
    # it fits sets a few times smaller.
    @jax.checkpoint
    def group_loss(p, g):
        return jnp.sum(member_losses(p, st, g, lam, cfg.activation, normalizers=(n_s, n_f, n_ss),
                                     stress_weight=s_weight, **cfg.loss_options))

    def objective(p, groups):
        return sum(group_loss(p, g) for g in groups)

    opt = optax.lbfgs()

    # The data are arguments, not closure constants (XLA would fold GBs of them).
    @jax.jit
    def step(p, s, groups):
        fn = lambda q: objective(q, groups)  # noqa: E731
        value, grad = optax.value_and_grad_from_state(fn)(p, state=s)
        updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=fn)
        return optax.apply_updates(p, updates), s, value

    val_fn = _validation_function(cfg.activation)
    lam_np = cfg.weights(cfg.epochs)
    P = jax.device_put(params)
    state = opt.init(P)
    m = _evaluate_groups(val_fn, P, st, va)
    best_obj = _validation_objective(m, lam_np, s_weight)
    best = P
    history = [{"iteration": 0, **{k: np.asarray(v).tolist() for k, v in m.items()}}]
    t0 = time.time()
    for it in range(1, steps + 1):
        P, state, value = step(P, state, tr)
        if it % log_every == 0 or it == steps:
            m = _evaluate_groups(val_fn, P, st, va)
            obj = _validation_objective(m, lam_np, s_weight)
            if not np.all(np.isfinite(obj)):
                if verbose:
                    print(f"[lbfgs] {it}: non-finite validation objective; kept the best point", flush=True)
                break
            better = obj < best_obj
            if np.any(better):
                sel = jnp.asarray(better)
                best = jax.tree_util.tree_map(
                    lambda n, o: jnp.where(sel.reshape((1, K) + (1,) * (n.ndim - 2)), n, o), P, best)
                best_obj = np.where(better, obj, best_obj)
            history.append({"iteration": it, "train_objective": float(value) / K,
                            **{k: np.asarray(v).tolist() for k, v in m.items()}})
            if verbose == 1 or (verbose and it % max(log_every, steps // 10 // log_every * log_every) == 0):
                print(f"[lbfgs] {it}/{steps}: train objective {float(value) / K:.4g}, val energy "
                      f"{np.mean(m['energy_rmse_mev_atom']):.2f} meV/atom (committee {m['mean_energy_rmse_mev_atom']:.2f}), "
                      f"forces {np.mean(m['force_rmse_ev_a']):.3f} eV/Å (committee {m['mean_force_rmse_ev_a']:.3f}), "
                      f"{time.time() - t0:.0f} s", flush=True)
            if deadline is not None and time.time() > deadline:
                if verbose:
                    print(f"[lbfgs] time limit reached after {it} iterations; the best points are kept", flush=True)
                break
    return {"params": best, "history": history, "best_objective": best_obj.tolist(), "seconds": time.time() - t0,
            "iterations_run": it if steps else 0}


#: Factor on the 99th percentile of the validation spread (see calibrate_threshold).
THRESHOLD_FACTOR = 2.0


def threshold_from_spread(spread_per_atom) -> float:
    """The extrapolation threshold (eV/atom) from validation spreads per atom: ``THRESHOLD_FACTOR`` × 99th percentile."""
    return float(THRESHOLD_FACTOR * np.percentile(np.asarray(spread_per_atom, np.float64), 99))


def calibrate_threshold(model, val: Groups) -> float | None:
    """Committee spread above which a structure counts as extrapolation (eV/atom).

    ``THRESHOLD_FACTOR`` times the 99th percentile, over the validation
    structures, of the standard deviation of the members' energies per
    atom.  None for a single network.
    """
    if model.members < 2:
        return None
    e = committee_energies(params_from_model(model), stats_from_model(model), val, model.activation)
    n = np.concatenate([g["n"] for g in val.arrays])[np.argsort(np.concatenate([g["index"] for g in val.arrays]))]
    return threshold_from_spread(e.std(axis=0) / np.maximum(n, 1))


def committee_energies(params, stats: dict, groups: Groups, activation: str = "tanh") -> np.ndarray:
    """(K, n_structures) float64 energies (eV, relative to the references) of every member, in input order.

    The networks as they are exported (no dropout); ``stats`` as for :func:`committee_outputs`
    (the model's, or a run's :func:`~bpnn_jax.training.compute_statistics`).
    """
    import jax

    st = _stats_arrays(stats, np.asarray(params["W"][0]).dtype)
    fn = jax.jit(lambda p, st, g: committee_outputs(p, st, g["sf"], g["species"], g["mask"], activation)["energy"])
    out = np.zeros((params["W"][0].shape[1], groups.n_structures))
    for g in groups.arrays:
        sub = {k: np.asarray(g[k], st["sf_mean"].dtype) if k == "sf" else g[k] for k in ("sf", "species", "mask")}
        out[:, g["index"]] = np.asarray(fn(params, st, sub), np.float64)
    return out


# ------------------------------------------------------- Keras conversion
def to_model(params, stats: dict, spec, cfg: CommitteeConfig, reference_energies: dict, dtype=None,
             repulsion: dict | None = None):
    """A :class:`~bpnn_jax.model.BPNN` committee (``members=K``) holding ``params``.

    ``repulsion``: the ``to_config()`` of the pair baseline the networks were trained on top of
    (their targets were E - E_rep, F - F_rep), or None.
    """
    from ..model.bpnn import BPNN

    kw = {} if dtype is None else {"dtype": dtype}
    # The training set-up is recorded in the model's config (dropout is off outside training).
    model = BPNN(spec.to_config(), hidden=cfg.hidden, activation=cfg.activation, dropout=cfg.dropout,
                 reference_energies=reference_energies, members=cfg.members, repulsion=repulsion,
                 energy_loss=cfg.energy_loss, force_loss=cfg.force_loss, huber_delta=cfg.huber_delta, **kw)
    model.set_statistics(**stats)
    for s, net in enumerate(model.nets):
        net.set_member_weights([np.asarray(W[s]) for W in params["W"]], [np.asarray(b[s]) for b in params["b"]])
    return model


def stats_from_model(model, dtype=None) -> dict:
    """The statistics a BPNN holds (the ``stats`` of :func:`to_model`): descriptor mean, std, min, max (S, F),
    energy shift (S,) eV/atom and scale () eV; in ``dtype`` (None: as stored)."""
    return {k: np.asarray(getattr(model, k).value, dtype)
            for k in ("sf_mean", "sf_std", "sf_min", "sf_max", "energy_shift", "energy_scale")}


def params_from_model(model) -> dict:
    """The :func:`init_params` pytree of a BPNN committee (inverse of :func:`to_model`)."""
    Ws, bs = zip(*(net.member_weights() for net in model.nets))
    L = len(Ws[0])
    return {"W": [np.stack([W[l] for W in Ws]) for l in range(L)], "b": [np.stack([b[l] for b in bs]) for l in range(L)]}
