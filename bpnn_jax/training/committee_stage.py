"""The committee stage (``--members K``): energies, forces (and stress) on cached descriptor
Jacobians, all members at once; see :mod:`bpnn_jax.training.jacobian`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..errors import BPNNInputError
from ..model.bpnn import BPNN
from ..units import EV_PER_A3_IN_GPA
from .config import TrainConfig
from .data import compute_statistics, featurize_host
from .repulsion_fit import run_repulsion_stage
from .run_state import atomic_save, physical_memory_gb, require_forces, write_json

#: Peak memory of the full-batch L-BFGS polish / the grouped Jacobians it runs over (at least
#: this: the full TiO2 set, 4.5 GB grouped, passed 23 GB before the kernel killed it).
LBFGS_MEMORY_FACTOR = 5.5


def train_committee(data, train_s, val_s, run_dir: Path, config: TrainConfig, *, resume: bool, verbose: int,
                     deadline, init: BPNN | None = None) -> BPNN:
    """The E+F committee stage (``config.members >= 1``); see :mod:`bpnn_jax.training.jacobian`.

    ``init``: a trained committee to fine-tune (``--init``): training starts from its weights and keeps its
    descriptor and energy statistics (``data`` was prepared with its descriptor set).
    """
    from ..descriptors.jacobian_cache import cached_jacobians
    from . import jacobian as jt

    spec = data["spec"]
    cfg = config.committee_config()
    if config.batch_size is not None:  # structures per batch, as the study gave it: the trainer counts padded atoms
        atoms = jt.atoms_per_batch_for(config.batch_size, [s.n_atoms for s in train_s])
        cfg = dataclasses.replace(cfg, atoms_per_batch=atoms)
        if verbose:
            print(f"--batch-size {config.batch_size}: {config.batch_size} structures x "
                  f"{atoms / config.batch_size:.1f} padded atoms per training structure on average = "
                  f"{atoms} atoms per batch (the trainer batches by padded atoms, ~{config.batch_size} "
                  f"structures of the mean size per batch)", flush=True)
    with_forces = bool(np.any(cfg.weights(0) > 0))
    if with_forces:
        try:
            require_forces(train_s + val_s)
        except BPNNInputError as exc:
            raise BPNNInputError(f"{exc}; to train on energies only give --ef-force-weight 0 (what train "
                                 f"chooses by itself for such data when the option is not given)") from None
    elif cfg.stress_weight > 0:
        raise BPNNInputError("--stress-weight > 0 needs force training (a force weight above 0)")
    repulsion = None
    val_labelled = val_s  # the targets as given (the baseline's share is removed below)
    if config.repulsion or config.repulsion_from:
        # The networks learn what the baseline leaves (the Jacobian cache keys on geometry, not targets).
        repulsion, train_s, val_s = run_repulsion_stage(train_s, val_s, data["elements"], config, run_dir,
                                                        verbose=verbose)
    t0 = time.time()
    sf_train = featurize_host(train_s, spec, atoms_per_batch=config.atoms_per_batch, progress=verbose == 1)
    sf_val = featurize_host(val_s, spec, atoms_per_batch=config.atoms_per_batch, progress=verbose == 1)
    if init is None:
        stats = compute_statistics(sf_train, [s.species for s in train_s], [s.energy for s in train_s],
                                   len(data["elements"]))
    else:  # the networks were trained on the model's standardisation: keep it
        stats = jt.stats_from_model(init, np.float64)
    init_params = None if init is None else jt.params_from_model(init)
    if verbose:
        print(f"descriptors of {len(train_s)} + {len(val_s)} structures: {time.time() - t0:.1f} s", flush=True)
    if not with_forces:  # energies only: no descriptor Jacobians
        train_g = jt.group_by_size(sf_train, [s.species for s in train_s], [s.energy for s in train_s])
        val_g = jt.group_by_size(sf_val, [s.species for s in val_s], [s.energy for s in val_s])
        return _fit_and_save(train_g, val_g, stats, cfg, data, spec, repulsion, run_dir, resume=resume,
                             verbose=verbose, deadline=deadline, init_params=init_params, val_labelled=val_labelled)
    from ..descriptors.featurize import jacobian_nbytes

    # Dense n² blocks for small cells, n · (atoms within the cut-off) for wide ones (sparse storage).
    gb = sum(jacobian_nbytes(s, spec.n_functions) for s in train_s + val_s) / 1e9
    ram = physical_memory_gb()
    if 2.2 * gb > 0.9 * ram:
        raise BPNNInputError(
            f"the descriptor Jacobians of {len(train_s) + len(val_s)} structures need ~{2.2 * gb:.0f} GB "
            f"(n_atoms · min(n_atoms, partners) · {spec.n_functions} · 3 floats each, grouped); this machine has "
            f"{ram:.0f} GB: use fewer or smaller structures, or --ef-force-weight 0 to train on energies only")
    if cfg.lbfgs_steps > 0 and LBFGS_MEMORY_FACTOR * gb > 0.9 * ram:
        # Refused before the Jacobians and the Adam epochs, not found by the kernel's OOM killer after them.
        raise BPNNInputError(
            f"--ef-lbfgs-steps {cfg.lbfgs_steps}: the full-batch L-BFGS polish needs ~{LBFGS_MEMORY_FACTOR * gb:.0f} GB "
            f"for these ~{gb:.1f} GB of descriptor Jacobians (it went past 23 GB on the full TiO2 set's 4.5 GB); "
            f"this machine has {ram:.0f} GB: use --ef-lbfgs-steps 0 or fewer structures")
    jac, _ = cached_jacobians(train_s + val_s, spec, run_dir / "cache", progress=verbose == 1, verbose=verbose > 0)
    jac_train, jac_val = jac[:len(train_s)], jac[len(train_s):]
    del jac
    stress_kw = {"train": {}, "val": {}}
    if cfg.stress_weight > 0:
        from ..descriptors.jacobian_cache import cached_strain_jacobians

        if not any(s.stress is not None for s in train_s):
            raise BPNNInputError("--stress-weight > 0 but no training structure has a stress (ASE's results, "
                                 "an info 'stress'/'virial' key, or --stress-key)")
        sj = cached_strain_jacobians(train_s + val_s, spec, run_dir / "cache", progress=verbose == 1,
                                     verbose=verbose > 0)
        for name, part, jacs in (("train", train_s, sj[:len(train_s)]), ("val", val_s, sj[len(train_s):])):
            stress_kw[name] = dict(
                strain_list=jacs,
                stress_list=[None if s.stress is None else s.stress * EV_PER_A3_IN_GPA for s in part],
                volumes=[abs(float(np.linalg.det(s.cell))) for s in part])
    train_g = jt.group_by_size(sf_train, [s.species for s in train_s], [s.energy for s in train_s],
                               [s.forces for s in train_s], jac_train, **stress_kw["train"])
    val_g = jt.group_by_size(sf_val, [s.species for s in val_s], [s.energy for s in val_s],
                             [s.forces for s in val_s], jac_val, **stress_kw["val"])
    del jac_train, jac_val
    return _fit_and_save(train_g, val_g, stats, cfg, data, spec, repulsion, run_dir, resume=resume, verbose=verbose,
                         deadline=deadline, init_params=init_params, val_labelled=val_labelled)


def _fit_and_save(train_g, val_g, stats, cfg, data, spec, repulsion, run_dir: Path, *, resume, verbose,
                  deadline, init_params=None, val_labelled=None) -> BPNN:
    """Fit the committee on grouped data, polish, convert, calibrate and save.

    ``val_labelled``: the validation structures with their targets as given, on which the uncertainty
    score is calibrated (:func:`calibrate_uncertainty`).
    """
    from . import jacobian as jt

    if verbose:
        what = "E+F" if "forces" in train_g.arrays[0] else "energy-only"
        print(f"{what} committee of {cfg.members}: {train_g.n_structures} training structures "
              f"({train_g.n_atoms} atoms), {val_g.n_structures} validation; {train_g.nbytes / 1e9:.2f} + "
              f"{val_g.nbytes / 1e9:.2f} GB", flush=True)
    # Without the polish, nothing after the Adam epochs needs the Jacobians on the host.
    result = jt.fit_committee(train_g, val_g, stats, cfg, run_dir=run_dir, resume=resume, verbose=verbose,
                              deadline=deadline, release_host_jacobians=cfg.lbfgs_steps == 0,
                              start_params=init_params)
    params = result["params"]
    summary = {k: v for k, v in result.items() if k not in ("params", "history")}
    if result["complete"] and cfg.lbfgs_steps > 0:
        polish = jt.polish_lbfgs(params, train_g, val_g, stats, cfg, steps=cfg.lbfgs_steps, verbose=verbose,
                                 deadline=deadline)
        params = polish["params"]
        summary["lbfgs"] = {k: v for k, v in polish.items() if k != "params"}
    model = jt.to_model(params, stats, spec, cfg, data["references"],
                        repulsion=None if repulsion is None else repulsion.to_config())
    model.uncertainty_threshold = jt.calibrate_threshold(model, val_g)
    summary["uncertainty_threshold_ev_atom"] = model.uncertainty_threshold
    if val_labelled is not None and result["complete"]:
        model.uncertainty_calibration = calibrate_uncertainty(model, val_labelled, verbose=verbose)
        summary["uncertainty_calibration"] = model.uncertainty_calibration
    write_json(run_dir / "ef.json", summary)
    atomic_save(model, run_dir / "model.keras" if result["complete"] else run_dir / "checkpoints" / "last.keras")
    if not result["complete"]:
        print(f"E+F stage stopped before its last epoch; the best point so far is in "
              f"{run_dir / 'checkpoints' / 'last.keras'}; continue with --resume", flush=True)
    return model


def calibrate_uncertainty(model: BPNN, val_structures, *, verbose: int = 1) -> dict | None:
    """The committee's uncertainty calibration (:mod:`bpnn_jax.model.uncertainty`) on validation structures.

    ``val_structures``: prepared structures with energies relative to the model's references (and forces),
    as the model sees them (its pair baseline included).  None for a single network or too few structures.
    """
    from ..model.uncertainty import MIN_STRUCTURES, fit_uncertainty_calibration
    from .predict import predict_structures

    if model.members < 2 or len(val_structures) < MIN_STRUCTURES:  # nothing to fit: spare the predictions
        return None
    forces = all(s.forces is not None for s in val_structures)
    e, _, e_std, f_std = predict_structures(model, val_structures, forces=forces, uncertainty=True)
    n = np.array([s.n_atoms for s in val_structures], np.float64)
    err = np.abs(e - np.array([s.energy for s in val_structures])) / n
    f_mean = np.array([float(np.mean(f)) for f in f_std]) if forces else None
    cal = fit_uncertainty_calibration(e_std / n, n, f_mean, err)
    if verbose and cal is not None:
        print(f"uncertainty score: energy spread x N^{cal['size_exponent']:g} + "
              f"{cal['force_weight_ev_atom_per_ev_a']:.3g} x force spread ranks the validation errors with "
              f"Spearman {cal['validation_spearman']:.2f} (energy spread alone: "
              f"{cal['validation_spearman_energy_spread']:.2f})", flush=True)
    return cal

