"""Epoch time of the committee trainer: its JAX loop against the same step in Keras's ``fit``.

Issue "One trainer" asks for Keras's own machinery (a ``keras.Model`` with its
own ``train_step`` on the JAX backend, Keras's AdamW with EMA, a Keras
schedule) if it holds the Jacobian mode's epoch time within 20 % of the JAX
loop's.  This script measures both on the same data, the same batches, the
same loss (:func:`bpnn_jax.training.jacobian.member_losses`) and the same
network (:func:`~bpnn_jax.training.jacobian.committee_outputs`), alternating
the two so that machine load affects them alike:

* ``jax``: :func:`~bpnn_jax.training.jacobian.fit_committee` (optax AdamW,
  EMA, groups on the device, batches gathered inside the jitted step);
* ``keras``: a ``keras.Model`` whose variables are the committee's
  parameters, ``train_step`` overridden (stateless, JAX backend), Keras's
  ``AdamW(use_ema=True)`` with a cosine schedule, batches from a
  ``keras.utils.PyDataset`` (gathered on the host, as Keras feeds data).

Only training epochs are timed (no validation); the first epoch of every call of each trainer is not
counted (the JAX loop's first validation, Keras's set-up of ``fit``).

    python -m experiments.keras_trainer_timing ../shared/data/mlearn/Ge_train.extxyz \
        --cache RUN/cache --epochs 4 --json benchmarks/results/trainer_keras_vs_jax_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np


def _data(path, cache, cutoff):
    from bpnn_jax.descriptors.jacobian_cache import cached_jacobians
    from bpnn_jax.training import jacobian as jt
    from bpnn_jax.training.config import TrainConfig
    from bpnn_jax.training.data import compute_statistics, featurize_host, load_training_data

    cfg = TrainConfig(preset="dense", cutoff=cutoff, reference_energies=None, members=5, test_fraction=0.0)
    data = load_training_data([path], cfg, progress=False)
    S = [data["structures"][i] for i in data["split"]["train"]]
    sf = featurize_host(S, data["spec"])
    stats = compute_statistics(sf, [s.species for s in S], [s.energy for s in S], len(data["elements"]))
    jac, _ = cached_jacobians(S, data["spec"], cache)
    groups = jt.group_by_size(sf, [s.species for s in S], [s.energy for s in S], [s.forces for s in S], list(jac))
    return groups, stats


def _keras_model(cfg, stats, n_elements, n_functions, steps_per_epoch, norms):
    import jax
    import jax.numpy as jnp
    import keras

    from bpnn_jax.training import jacobian as jt

    st = {k: jnp.asarray(v) for k, v in jt._stats_arrays(stats, "float32").items()}
    lam = jnp.asarray(cfg.weights(0), jnp.float32)
    init = jt.init_params(jax.random.PRNGKey(cfg.seed), cfg.members, n_elements, n_functions, cfg.hidden)

    class KerasCommittee(keras.Model):
        def __init__(self):
            super().__init__()
            self.W = [self.add_weight(shape=w.shape, initializer=keras.initializers.Constant(np.asarray(w)), name=f"W{i}")
                      for i, w in enumerate(init["W"])]
            self.b = [self.add_weight(shape=b.shape, initializer="zeros", name=f"b{i}")
                      for i, b in enumerate(init["b"])]

        def call(self, batch):  # energies of every member (K, B)
            return jt.committee_outputs(self._params([v.value for v in self.W + self.b]), st, batch["sf"],
                                        batch["species"], batch["mask"], cfg.activation)["energy"]

        def _params(self, values):
            n = len(self.W)
            return {"W": list(values[:n]), "b": list(values[n:])}

        def train_step(self, state, data):
            trainable, non_trainable, opt_vars, metric_vars = state
            batch = data

            def loss(values):
                p = self._params(values)
                return jnp.sum(jt.member_losses(p, st, batch, lam, cfg.activation, batch["w"],
                                                normalizers=(e_norm, f_norm)))

            value, grads = jax.value_and_grad(loss)(trainable)
            trainable, opt_vars = self.optimizer.stateless_apply(opt_vars, grads, trainable)
            return {"loss": value}, (trainable, non_trainable, opt_vars, metric_vars)

    e_norm, f_norm = norms
    model = KerasCommittee()
    total = cfg.epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate / 10, total, alpha=0.01,
                                                      warmup_target=cfg.learning_rate,
                                                      warmup_steps=cfg.warmup_epochs * steps_per_epoch)
    opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay, use_ema=True,
                                 ema_momentum=cfg.ema_decay)
    opt.exclude_from_weight_decay(var_names=[f"b{i}" for i in range(len(model.b))])
    model.compile(optimizer=opt, jit_compile=True)
    model.built = True
    opt.build(model.trainable_variables)
    _own_buffers(model)
    return model


def _own_buffers(model):
    """Give every variable its own buffer.

    The EMA copies start as the weights' buffers, and ``fit`` ends by writing
    the EMA into the weights (``use_ema``): the next ``fit`` would donate one
    buffer twice.
    """
    import jax.numpy as jnp

    for v in model.variables + model.optimizer.variables:
        v.assign(jnp.array(v.value, copy=True))


class _EpochClock:
    """Wall seconds of every epoch of a ``fit`` (a Keras callback)."""

    def __new__(cls):
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.t0)

        return Clock()


class _Batches:
    """The JAX loop's batches for one epoch, gathered on the host (a PyDataset)."""

    def __new__(cls, groups, cfg, epoch):
        import keras

        from bpnn_jax.training import jacobian as jt

        class Batches(keras.utils.PyDataset):
            def __init__(self):
                super().__init__()
                self.epoch = epoch
                self.plan = jt._epoch_batches(groups, cfg, epoch)

            def on_epoch_end(self):  # the JAX loop's shuffle of the next epoch
                self.epoch += 1
                self.plan = jt._epoch_batches(groups, cfg, self.epoch)

            def __len__(self):
                return len(self.plan)

            def __getitem__(self, i):
                gi, idx, valid = self.plan[i]
                g = groups.arrays[gi]
                out = {k: g[k][idx] for k in jt._DEVICE_KEYS if k in g}
                out.update({k: g[k][idx] for k in g if k.startswith("atoms_of_")})
                out["w"] = np.broadcast_to(valid.astype(np.float32), (cfg.members, len(idx))).copy()
                return out

        return Batches()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("--cache", default=None, help="Jacobian cache directory (reused if present)")
    p.add_argument("--cutoff", type=float, default=6.4)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--epochs", type=int, default=4, help="timed epochs per trainer per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import jax

    from bpnn_jax.training import jacobian as jt

    groups, stats = _data(a.data, a.cache, a.cutoff)
    cfg = jt.CommitteeConfig(members=a.members, hidden=tuple(int(h) for h in a.hidden.split(",")),
                             activation="silu", epochs=1000, atoms_per_batch=512, force_weight=0.04,
                             weight_decay=5e-4)
    steps = len(jt._epoch_batches(groups, cfg, 0))
    S, F = stats["sf_mean"].shape
    model = _keras_model(cfg, stats, S, F, steps, (groups.n_structures / steps, 3.0 * groups.n_atoms / steps))
    times = {"jax": [], "keras": []}
    model.fit(_Batches(groups, cfg, 0), epochs=1, verbose=0)  # compile
    _own_buffers(model)
    jt.fit_committee(groups, groups, stats, jt.CommitteeConfig(**{**cfg.__dict__, "epochs": 1}), verbose=0)
    for r in range(a.rounds):
        res = jt.fit_committee(groups, groups, stats, jt.CommitteeConfig(**{**cfg.__dict__, "epochs": a.epochs + 1}),
                               verbose=0)
        times["jax"] += [h["seconds"] for h in res["history"][1:]]
        clock = _EpochClock()
        model.fit(_Batches(groups, cfg, 1), epochs=a.epochs + 1, verbose=0, callbacks=[clock])
        _own_buffers(model)
        times["keras"] += clock.seconds[1:]
    med = {k: float(np.median(v)) for k, v in times.items()}
    result = {
        "what": "committee trainer, Jacobian mode: seconds per training epoch (no validation), median",
        "data": os.path.basename(a.data), "structures": groups.n_structures, "atoms": groups.n_atoms,
        "steps_per_epoch": steps, "members": cfg.members, "hidden": list(cfg.hidden),
        "seconds_per_epoch": med, "keras_over_jax": med["keras"] / med["jax"], "all_seconds": times,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_end": os.getloadavg()[0],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "all_seconds"}, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
