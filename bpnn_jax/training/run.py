"""A training run from start to end: the resolved options, the data, the committee stage
(:mod:`.committee_stage`), the model saved."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from ..errors import BPNNInputError
from ..model.bpnn import BPNN
from .config import TrainConfig
from .data import load_training_data, read_training_frames
from .defaults import DERIVED, derive_defaults, summarize_data
from .run_state import write_json, write_yaml_config
from .committee_stage import train_committee


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
    config = dataclasses.replace(config, hidden=tuple(model.hidden), activation=model.activation,
                                 reference_energies=dict(model.reference_energies))
    return model, config


def _check_devices(config: TrainConfig) -> None:
    """Data parallelism with one device stops here, before the data are read and featurised."""
    if config.data_parallel:
        from .jacobian import data_mesh

        data_mesh(True)


def train(paths, run_dir, config: TrainConfig, *, resume: bool = False, verbose: int = 1, data=None,
          resume_overrides: dict | None = None) -> BPNN:
    """Train a committee and save everything to ``run_dir`` (see module doc).

    Args:
        paths: structure files or directories.
        run_dir: output directory.
        config: settings.
        resume: continue from ``run_dir/ef_state.npz`` with the saved
            ``config.json`` instead of starting over.
        verbose: 1 = one line per epoch and progress bars for reading and
            featurising; 2 = about ten lines, no bars; 0 = silent.
        data: optional output of :func:`load_training_data` (reuse).
        resume_overrides: with ``resume``, values of :data:`RESUME_OPTIONS`
            that replace the saved ones (e.g. more polish iterations after
            a finished Adam stage, or a new time limit).

    Returns:
        The trained model (also saved as ``run_dir/model.keras``).

    Raises:
        BPNNInputError: bad input, nothing to resume, ``members`` < 1, or
            ``data_parallel`` where JAX sees one device.
    """
    run_dir = Path(run_dir)
    if config.members < 1 and "members" not in config.derive:
        raise BPNNInputError(f"members {config.members}: the single-network Keras stages are gone; use members 1 "
                             f"(--members 1) for one network on the committee trainer")
    _check_devices(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if config.time_limit_minutes is None else time.time() + 60.0 * config.time_limit_minutes
    if resume:
        if not (run_dir / "ef_state.npz").exists():
            raise BPNNInputError(f"{run_dir}: nothing to resume (no ef_state.npz); start without --resume")
        saved = TrainConfig.from_json(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
        config = dataclasses.replace(saved, **(resume_overrides or {}))
        if config.members < 1:
            raise BPNNInputError(f"{run_dir}: a run of the removed single-network Keras stages (members 0) cannot be "
                                 f"resumed; start a new run with --members 1")
        _check_devices(config)
        if resume_overrides:
            write_json(run_dir / "config.json", config.to_json())
    init = None
    if config.init_model:
        init, config = init_model(config)  # its references define the targets
        if "members" not in config.derive and config.members != init.members:
            raise BPNNInputError(f"--init {config.init_model}: the model has {init.members} members, --members asks "
                                 f"for {config.members}; leave --members out to fine-tune all of them")
        config = dataclasses.replace(config, members=init.members)  # derived force weights follow it
    reasons = []
    if data is None:
        # Before anything in run_dir changes: bad input leaves an earlier run intact.
        atoms = None
        if config.derive and not resume:
            atoms = read_training_frames(paths, config, progress=verbose == 1)
            config, reasons = resolve_defaults(config, atoms)
        if init is not None:
            config, pinned = fine_tune_config(config, init)
            reasons = pinned + reasons
        if reasons and verbose:
            print("options from the data (give any of them to override it):\n  "
                  + "\n  ".join(reasons), flush=True)
        data = load_training_data(paths, config, progress=verbose == 1, atoms=atoms,
                                  spec=None if init is None else init.spec)
    if not resume:
        # The references used (given or fitted), not the TiO2 defaults: config.yaml then reproduces the run.
        config = dataclasses.replace(config, reference_energies=dict(data["references"]))
        write_json(run_dir / "config.json", config.to_json())
        write_yaml_config(run_dir / "config.yaml", config, paths, run_dir, reasons=reasons)
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

    return train_committee(data, train_s, val_s, run_dir, config, resume=resume, verbose=verbose, deadline=deadline,
                           init=init)
