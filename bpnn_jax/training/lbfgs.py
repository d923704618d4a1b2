"""Full-batch L-BFGS of a single network on cached descriptors (energies, optionally forces
from the descriptor Jacobians): the end of stage 1."""

from __future__ import annotations

import math
import time

import numpy as np


from ..errors import BPNNInputError
from ..model.bpnn import BPNN
from .run_state import physical_memory_gb, require_forces


def force_training_data(structures, spec, verbose) -> tuple[list, list]:
    """(target forces, descriptor Jacobians) of prepared structures, for :func:`refine_lbfgs`."""
    from ..descriptors.featurize import descriptor_jacobians

    require_forces(structures)
    t0 = time.time()
    gb = sum(s.n_atoms ** 2 for s in structures) * spec.n_functions * 12 / 1e9
    ram = physical_memory_gb()
    # The per-structure arrays, their padded groups and the device copy
    # coexist for a moment: about three times the Jacobians' size.
    if 3 * gb > 0.9 * ram:
        raise BPNNInputError(
            f"force L-BFGS needs ~{3 * gb:.0f} GB for the descriptor Jacobians of {len(structures)} structures "
            f"(n_atoms² · {spec.n_functions} · 3 floats each), this machine has {ram:.0f} GB; train energies only "
            f"in L-BFGS (--lbfgs-force-weight 0) and forces end to end (--force-epochs), or use fewer or smaller "
            f"structures")
    jac = descriptor_jacobians(structures, spec, dtype=np.float32, progress=verbose == 1, sparse=False)
    if verbose:
        print(f"descriptor Jacobians of {len(structures)} structures ({gb:.2f} GB): {time.time() - t0:.0f} s",
              flush=True)
    return [np.asarray(s.forces, np.float32) for s in structures], jac


def _size_groups(sf_list, species_list, energies, forces_list=None, jac_list=None):
    """Full-batch arrays grouped by padded atom count, as :func:`refine_lbfgs` takes them.

    :func:`bpnn_jax.training.jacobian.group_by_size` in tuples
    ``(inputs, energies, n_atoms[, forces, jacobians])``; the per-structure
    Jacobians are released as they are copied.
    """
    from .jacobian import group_by_size

    groups = group_by_size(sf_list, species_list, energies, forces_list, jac_list)
    out = []
    for g in groups.arrays:
        group = ({"sf": g["sf"], "species": g["species"], "atom_mask": g["mask"]}, g["energy"], g["n"])
        if jac_list is not None:
            group = group + (g["forces"], g["jac"])
        out.append(group)
    return out


def refine_lbfgs(model: BPNN, train_data, val_data, *, force_weight: float = 0.0, steps: int = 500,
                 log_every: int = 25, verbose: bool = True, on_improve=None, deadline: float | None = None) -> dict:
    """Full-batch L-BFGS on cached descriptors: per-atom energy MSE (+ forces).

    Adam on mini-batches stalls at a noise floor; a full-batch quasi-Newton
    method (what aenet uses for energies) goes further for networks of this
    size.  With ``force_weight > 0`` the objective is

        mean_s ((E_s - E_s^DFT) / n_s)²  +  force_weight · mean_{k,c} (F_kc - F_kc^DFT)²

    (eV²/atom² and eV²/Å²), with forces F_k = -sum_i (dE/dG_i) · dG_i/dR_k
    from the network's input gradient and the cached descriptor Jacobians
    (:func:`bpnn_jax.descriptors.featurize.descriptor_jacobians`): exactly the model's
    autodiff forces, without differentiating the symmetry functions at
    every step.  The best parameters by the validation objective are kept.

    Args:
        model: a model whose statistics are set.
        train_data, val_data: tuples (sf_list, species_list, energies) and,
            when ``force_weight > 0``, also (forces_list, jacobian_list)
            (the Jacobian list is emptied to save memory).
        force_weight: weight of the force MSE (eV²/Å²) against the per-atom
            energy MSE (eV²/atom²); 0 = energies only.
        steps: L-BFGS iterations (each a full pass plus line search).
        log_every: validation interval in iterations.
        on_improve: optional callable run after the model's weights are set
            to a new best (e.g. to checkpoint, so an interruption loses
            at most ``log_every`` iterations).
        deadline: ``time.time()`` after which to stop at the next
            validation (None = run all steps).

    Returns:
        dict with ``best_val_rmse_mev_atom`` (energy), ``best_val_force_rmse_ev_a``
        (None without forces), ``steps``, ``iterations_run``, ``force_weight``,
        ``seconds`` (the iterations, validation included),
        ``first_step_seconds`` (compilation included) and ``history`` (list
        of (step, train objective, val energy RMSE meV/atom, val force RMSE
        eV/Å or None)).
    """
    import jax
    import jax.numpy as jnp
    import optax

    with_forces = force_weight > 0
    if with_forces and (len(train_data) < 5 or len(val_data) < 5):
        raise ValueError("force_weight > 0 needs forces and descriptor Jacobians in train_data and val_data")
    if not with_forces:
        train_data, val_data = train_data[:3], val_data[:3]
    train_g = _size_groups(*train_data)
    val_g = _size_groups(*val_data)
    non_trainable = [v.value for v in model.non_trainable_variables]
    n_train = sum(len(e) for _, e, *_ in train_g)
    n_val = sum(len(e) for _, e, *_ in val_g)
    f_train = 3.0 * sum(float(g[0]["atom_mask"].sum()) for g in train_g)
    f_val = 3.0 * sum(float(g[0]["atom_mask"].sum()) for g in val_g)

    def energies(params, x):
        out, _ = model.stateless_call(params, non_trainable, x, training=False)
        return out["energy"]

    def sq_errs(params, groups):
        """(sum of squared per-atom energy errors, sum of squared force-component errors)."""
        se, sf = 0.0, 0.0
        for g in groups:
            x, e, n = g[:3]
            if with_forces:
                f_ref, jac = g[3:]
                pred, vjp = jax.vjp(lambda d: energies(params, {**x, "sf": d}), x["sf"])
                (dedg,) = vjp(jnp.ones_like(pred))  # dE_s/dG_i, (B, N, F)
                B, N, F = dedg.shape
                forces = -jnp.matmul(jac, dedg.reshape(B, N * F, 1)).reshape(B, N, 3)
                sf = sf + jnp.sum(jnp.where(x["atom_mask"][..., None], forces - f_ref, 0.0) ** 2)
            else:
                pred = energies(params, x)
            de = (pred - e) / n
            se = se + jnp.sum(de * de)
        return se, sf

    def objective(se, sf, n_s, n_f):
        return se / n_s + (force_weight * sf / n_f if with_forces else 0.0)

    opt = optax.lbfgs()

    # The data are jit arguments, not closure constants: XLA would otherwise
    # try to constant-fold through hundreds of MB of descriptors.
    @jax.jit
    def step(params, state, groups):
        def loss(p):
            return objective(*sq_errs(p, groups), n_train, f_train)

        value, grad = optax.value_and_grad_from_state(loss)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state, value

    val_fn = jax.jit(sq_errs)
    train_g = jax.device_put(train_g)
    val_g = jax.device_put(val_g)

    def validate(p):
        se, sf = (float(v) for v in val_fn(p, val_g))
        rmse_e = 1e3 * math.sqrt(se / n_val)
        rmse_f = math.sqrt(sf / f_val) if with_forces else None
        return objective(se, sf, n_val, f_val), rmse_e, rmse_f

    params = [v.value for v in model.trainable_variables]
    state = opt.init(params)
    obj, rmse_e, rmse_f = validate(params)
    best = (obj, rmse_e, rmse_f, params)
    history = [(0, float("nan"), rmse_e, rmse_f)]
    t0 = time.time()
    first_step_s = None
    for it in range(1, steps + 1):
        params, state, value = step(params, state, train_g)
        if first_step_s is None:
            jax.block_until_ready(value)
            first_step_s = time.time() - t0  # compilation included
        if it % log_every == 0 or it == steps:
            obj, rmse_e, rmse_f = validate(params)
            history.append((it, float(value), rmse_e, rmse_f))
            if verbose:
                fpart = f", forces {rmse_f:.3f} eV/Å" if with_forces else ""
                print(f"L-BFGS {it}/{steps}: train objective {float(value):.4g}, val energy {rmse_e:.2f} meV/atom"
                      f"{fpart} ({time.time() - t0:.0f} s)", flush=True)
            if not math.isfinite(obj):
                break
            stop = deadline is not None and time.time() > deadline
            if obj < best[0]:
                best = (obj, rmse_e, rmse_f, params)
                if on_improve is not None:
                    for var, p in zip(model.trainable_variables, params):
                        var.assign(p)
                    on_improve()
            if stop:
                if verbose:
                    print(f"L-BFGS: time limit reached after {it} iterations", flush=True)
                break
    for var, p in zip(model.trainable_variables, best[3]):
        var.assign(p)
    return {"best_val_rmse_mev_atom": best[1], "best_val_force_rmse_ev_a": best[2], "steps": steps,
            "force_weight": force_weight, "history": history, "seconds": time.time() - t0,
            "first_step_seconds": first_step_s, "iterations_run": it if steps else 0}
