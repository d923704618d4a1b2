"""A training run from start to end: the resolved options, the data, then the committee stage or
the two single-network stages, the model saved."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Sequence


import keras

from ..descriptors.symmetry import descriptor_preset
from ..errors import BPNNInputError
from ..model.bpnn import BPNN
from .config import TrainConfig
from .data import load_training_data, read_training_frames
from .defaults import DERIVED, derive_defaults, summarize_data
from .run_state import atomic_save, batch_multiple, data_parallel_distribution, write_json, write_yaml_config
from .committee_stage import train_committee
from .repulsion_fit import run_repulsion_stage
from .energy_stage import run_energy_stage
from .force_stage import run_force_stage


def build_model(config: TrainConfig, elements: Sequence[str], reference_energies: dict) -> BPNN:
    """A fresh, uncompiled model for ``config``."""
    spec = descriptor_preset(config.preset, elements, config.cutoff)
    keras.utils.set_random_seed(config.seed)
    return BPNN(
        spec.to_config(), hidden=config.hidden, activation=config.activation, dropout=config.dropout,
        reference_energies=reference_energies, compute_forces=True, energy_weight=1.0,
        force_weight=config.force_weight, energy_loss=config.energy_loss, force_loss=config.force_loss,
        huber_delta=config.huber_delta, seed=config.seed,
    )


#: Options a fine-tuned committee (``--init``) takes from its model, never from the data.
FROM_INIT_MODEL = ("members", "preset", "cutoff", "hidden", "activation", "repulsion")


def resolve_defaults(config: TrainConfig, atoms) -> tuple[TrainConfig, list[str]]:
    """``config`` with its ``derive`` options set from the data (:mod:`.defaults`), and the reasons."""
    derive = [name for name in config.derive if not (config.init_model and name in FROM_INIT_MODEL)]
    given = [name for name in DERIVED if name not in derive]
    values, reasons = derive_defaults(summarize_data(atoms), given, current=config.to_json())
    return dataclasses.replace(config, **values, derive=()), reasons


def fine_tune_config(config: TrainConfig, init: BPNN) -> tuple[TrainConfig, list[str]]:
    """``config`` for fine-tuning ``init`` as a committee: what the model fixes, and the reasons."""
    pinned = [f"fine-tuning {config.init_model}: its committee of {init.members}, networks "
              f"{'x'.join(map(str, init.hidden))} ({init.activation}), descriptors ({init.spec.describe()}), "
              f"reference energies" + (" and repulsive baseline" if init.repulsion is not None else "")]
    config = dataclasses.replace(config, cutoff=float(init.spec.cutoff), repulsion=None,
                                 repulsion_from=config.init_model if init.repulsion is not None else None)
    return config, pinned


def init_model(config: TrainConfig) -> tuple[BPNN, TrainConfig]:
    """Load ``config.init_model`` and make ``config`` describe it."""
    from ..model.bpnn import load_model

    model = load_model(config.init_model)
    model.force_weight = config.force_weight
    model.force_loss = config.force_loss
    model.huber_delta = float(config.huber_delta)
    model.energy_loss = config.energy_loss
    config = dataclasses.replace(config, hidden=tuple(model.hidden), activation=model.activation,
                                 dropout=model.dropout, reference_energies=dict(model.reference_energies))
    return model, config


def train(paths, run_dir, config: TrainConfig, *, resume: bool = False, verbose: int = 1, data=None,
          resume_overrides: dict | None = None) -> BPNN:
    """Train a model and save everything to ``run_dir`` (see module doc).

    With ``config.data_parallel`` the model is built (or loaded) and fitted
    under :func:`data_parallel_distribution`: weights are replicated on
    every local device and each batch is split over them, so the gradient
    step is the same as on one device (up to the order of floating-point
    sums).  The L-BFGS refinement then runs replicated, not split.

    Args:
        paths: XSF files or directories.
        run_dir: output directory.
        config: settings.
        resume: continue from ``run_dir/checkpoints/last.keras`` and
            ``state.json`` (stage and epoch) instead of starting over.
        verbose: Keras verbosity (1 = progress bars, also for reading and
            featurising; 2 = one line per epoch, no bars; 0 = silent).
        data: optional output of :func:`load_training_data` (reuse).
        resume_overrides: with ``resume``, values of :data:`RESUME_OPTIONS`
            that replace the saved ones (e.g. more polish iterations after
            a finished Adam stage, or a new time limit).

    Returns:
        The trained model (also saved as ``run_dir/model.keras``).

    Raises:
        BPNNInputError: bad input, nothing to resume, or (data-parallel) a
            batch size that is not a multiple of the device count.
    """
    scope = data_parallel_distribution().scope() if config.data_parallel else contextlib.nullcontext()
    with scope:
        return _train(paths, run_dir, config, resume=resume, verbose=verbose, data=data,
                      resume_overrides=resume_overrides)


def _train(paths, run_dir, config: TrainConfig, *, resume: bool, verbose: int, data, resume_overrides=None) -> BPNN:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if config.time_limit_minutes is None else time.time() + 60.0 * config.time_limit_minutes
    state = {}
    if resume:
        if not (run_dir / "state.json").exists() and not (run_dir / "ef_state.npz").exists():
            raise BPNNInputError(f"{run_dir}: nothing to resume (no state.json or ef_state.npz); start without "
                                 f"--resume")
        state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
        saved = TrainConfig.from_json(json.loads((run_dir / "config.json").read_text()))
        config = dataclasses.replace(saved, data_parallel=config.data_parallel, **(resume_overrides or {}))
        if resume_overrides:
            write_json(run_dir / "config.json", config.to_json())
    multiple = batch_multiple()
    if config.batch_size is not None and config.batch_size % multiple:
        raise BPNNInputError(
            f"batch size {config.batch_size} is not a multiple of the {multiple} devices that data-parallel "
            f"training splits each batch over; choose a multiple of {multiple}, or no batch size (it is then "
            f"rounded up to one)")
    init = None
    # A committee (members given > 0, or left to derive) fine-tunes on the committee path; --members 0
    # on the single-network stages.
    committee_init = bool(config.init_model) and (config.members > 0 or "members" in config.derive)
    # The single-network stages resume from their checkpoint; a committee always needs the model (its
    # descriptors define the data's, its statistics the networks' inputs).
    if config.init_model and (committee_init or not (resume and (run_dir / "checkpoints" / "last.keras").exists())):
        init, config = init_model(config)  # its references define the targets
    if committee_init and init is not None:
        if "members" not in config.derive and config.members != init.members:
            raise BPNNInputError(f"--init {config.init_model}: the model has {init.members} members, --members asks "
                                 f"for {config.members}; leave --members out to fine-tune all of them (or give "
                                 f"--members 0 for the single-network stages)")
        config = dataclasses.replace(config, members=init.members)  # derived force weights follow it
    reasons = []
    if data is None:
        # Before anything in run_dir changes: bad input leaves an earlier run intact.
        atoms = None
        if config.derive and not resume:
            atoms = read_training_frames(paths, config, progress=verbose == 1)
            config, reasons = resolve_defaults(config, atoms)
        if committee_init and init is not None:
            config, pinned = fine_tune_config(config, init)
            reasons = pinned + reasons
        if reasons and verbose:
            print("options from the data (give any of them to override it):\n  "
                  + "\n  ".join(reasons), flush=True)
        data = load_training_data(paths, config, progress=verbose == 1, atoms=atoms,
                                  spec=init.spec if committee_init and init is not None else None)
    if not resume:
        # The references used (given or fitted), not the TiO2 defaults: config.yaml then reproduces the run.
        config = dataclasses.replace(config, reference_energies=dict(data["references"]))
        write_json(run_dir / "config.json", config.to_json())
        write_yaml_config(run_dir / "config.yaml", config, paths, run_dir, reasons=reasons)
        for stale in ("state.json", "history.csv"):
            (run_dir / stale).unlink(missing_ok=True)
    S = data["structures"]
    split = data["split"]
    elements = data["elements"]
    spec = data["spec"]
    if verbose:
        refs = ", ".join(f"{el} {data['references'][el]:.6f}" for el in elements)
        print(f"{len(S)} structures, elements {', '.join(elements)}; {spec.describe()}; reference energies (eV): "
              f"{refs}", flush=True)
    if not resume:
        write_json(run_dir / "split.json", {
            "seed": config.seed, "references": data["references"], "excluded_above_max_energy": data["excluded"],
            "trained_on_test": bool(config.train_on_test),
            **{k: [data["files"][i] for i in v] for k, v in split.items()},
        })
    train_s = [S[i] for i in split["train"]]
    val_s = [S[i] for i in split["val"]]
    if not train_s or not val_s:
        raise BPNNInputError(
            f"{len(S)} structures: too few for a training and a validation split ({len(train_s)} training, "
            f"{len(val_s)} validation at --val-fraction {config.val_fraction:g}); need at least "
            f"{math.ceil(1.5 / max(config.val_fraction, 1e-9))} structures, better a few hundred")

    if config.members > 0:
        return train_committee(data, train_s, val_s, run_dir, config, resume=resume, verbose=verbose,
                                deadline=deadline, init=init if config.init_model else None)
    if resume and (run_dir / "checkpoints" / "last.keras").exists():
        try:
            model = keras.saving.load_model(run_dir / "checkpoints" / "last.keras", compile=True)
        except Exception as exc:  # a checkpoint damaged outside bpnn_jax (writes are atomic)
            raise BPNNInputError(f"{run_dir / 'checkpoints' / 'last.keras'}: cannot resume from this checkpoint "
                                 f"({type(exc).__name__}: {exc})") from None
    elif init is not None:
        if list(init.elements) != list(elements):
            raise BPNNInputError(f"{config.init_model}: model elements {list(init.elements)} differ from the "
                                 f"data's {elements}")
        model = init
    else:
        model = build_model(config, elements, data["references"])
    # Stages on cached descriptors learn what the pair baseline leaves; the end-to-end stage runs the
    # whole model (baseline included) on the data as they are.
    desc_train_s, desc_val_s = train_s, val_s
    if config.repulsion or config.repulsion_from:
        if init is not None:
            raise BPNNInputError("--init with a repulsion baseline is not supported: the loaded model's "
                                 "networks were trained without it")
        model.repulsion, desc_train_s, desc_val_s = run_repulsion_stage(train_s, val_s, elements, config, run_dir,
                                                                        verbose=verbose)
    stage_done = state.get("stage")
    epoch_done = int(state.get("epoch", 0))
    energy_done = state.get("energy") or {}
    if (resume and stage_done == "force" and epoch_done == 0 and energy_done
            and config.energy_epochs > int(energy_done.get("epochs", config.energy_epochs))):
        # Stage 1 had finished, and config.json now asks for more energy
        # epochs: continue stage 1 where it ended.
        stage_done, epoch_done = "energy", int(energy_done["epoch"])
        write_json(run_dir / "state.json", {"stage": "energy", "epoch": epoch_done, "best": energy_done["best"]})

    # ---- stage 1: energies on cached descriptors
    if (config.energy_epochs > 0 or config.lbfgs_steps > 0) and stage_done != "force":
        run_energy_stage(model, config, desc_train_s, desc_val_s, spec, run_dir, resume=resume, stage_done=stage_done,
                         epoch_done=epoch_done, verbose=verbose, deadline=deadline, multiple=multiple)
        state = {"stage": "force", "epoch": 0}
        epoch_done, stage_done = 0, "force"
    # ---- stage 2: energies and forces, end to end
    if config.force_epochs > 0:
        run_force_stage(model, config, train_s, val_s, spec, run_dir, resume=resume, state=state,
                        epoch_done=epoch_done, verbose=verbose, deadline=deadline, multiple=multiple)
    atomic_save(model, run_dir / "model.keras")
    return model
