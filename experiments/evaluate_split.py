"""Score models on the held-out test split of a training run.

    python -m experiments.evaluate_split RUN_DIR [DATA_DIR] --models tio2_v8 RUN_DIR/model.keras --out FILE.json

Reads ``RUN_DIR/split.json`` (written by ``python -m bpnn_jax train``) and
scores each model on its ``test`` files (cohesive energy <= the run's
``max_energy``) and, separately, on the structures the run excluded as too
high in energy, with energies and forces.  The JSON holds, per model, the
metrics of ``bpnn_jax.training.evaluation.energy_metrics`` for "test" and
"excluded" and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import bpnn_jax  # noqa: F401  (selects the JAX backend for Keras)

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.evaluate_split", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("data", nargs="?", type=Path,
                   default=Path(os.environ.get("BPNN_DATA_DIR", REPO.parent / "shared" / "data" / "tio2")))
    p.add_argument("--models", nargs="+", default=["tio2_v8"],
                   help="model files or shipped names (default tio2_v8: the shipped tio2 was trained on the test split)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)

    from bpnn_jax.training.evaluation import evaluate_structures
    from bpnn_jax.io import atomic_write, read_xsf
    from bpnn_jax.errors import ModelError
    from bpnn_jax.model import load_model

    split = json.loads((args.run_dir / "split.json").read_text())
    groups = {"test": split["test"], "excluded": split.get("excluded_above_max_energy", [])}
    # split.json holds the paths as given to train: use them, or their names under DATA_DIR.
    atoms = {g: [read_xsf(f if Path(f).exists() else args.data / Path(f).name) for f in files]
             for g, files in groups.items()}
    result = {"run_dir": str(args.run_dir), "n": {g: len(v) for g, v in atoms.items()}, "models": {}}
    for name in args.models:
        try:
            model = load_model(name)
        except ModelError as exc:  # e.g. a fine-tune that produced no model: score the others
            result["models"][name] = {"error": str(exc)}
            print(f"error: {exc}", flush=True)
            continue
        entry = {}
        t0 = time.time()
        for g, lst in atoms.items():
            if lst:
                entry[g] = evaluate_structures(model, lst, forces=True, max_energy=None)["all"]
        entry["seconds"] = time.time() - t0
        result["models"][name] = entry
        t = entry.get("test", {})
        print(f"{name}: test energy RMSE {t.get('energy_rmse_mev_atom', float('nan')):.2f} meV/atom, "
              f"force RMSE {t.get('force_rmse_ev_a', float('nan')):.3f} eV/Å ({entry['seconds']:.0f} s)", flush=True)
    with atomic_write(args.out) as fh:
        json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
