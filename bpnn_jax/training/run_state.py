"""What a run keeps on disk and what it checks first: atomic saves, the resolved config, forces and memory."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


import keras

from ..errors import BPNNInputError
from ..io.atomic import atomic_write
from .config import TrainConfig


def atomic_save(model: keras.Model, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    with open(tmp, "rb+") as fh:  # on disk before the rename, as io.atomic_write does
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_yaml_config(path: Path, config: TrainConfig, paths, run_dir: Path, reasons=()) -> None:
    """The fully resolved config, as ``train --config`` reads it (data and out included).

    ``reasons``: lines saying why options were derived from the data, written as comments.
    """
    import yaml

    d = {"data": [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else (paths or []))],
         "out": str(run_dir), **config.to_json()}
    if isinstance(d.get("ef_force_weight"), tuple):
        d["ef_force_weight"] = list(d["ef_force_weight"])
    with atomic_write(path) as fh:
        fh.write("# bpnn_jax train config: python -m bpnn_jax train --config THIS_FILE (flags override it)\n")
        if reasons:
            fh.write("# options derived from the data:\n" + "".join(f"#   {line}\n" for line in reasons))
        yaml.safe_dump(d, fh, sort_keys=False)


def write_json(path: Path, obj) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, default=float)


def require_forces(structures) -> None:
    """Force training needs forces on every structure: name the first that has none."""
    missing = [s.name for s in structures if s.forces is None]
    if missing:
        raise BPNNInputError(f"{missing[0]}: no forces, needed for force training"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def physical_memory_gb() -> float:
    """The machine's memory in GB (inf where the platform does not report it)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return math.inf
