"""Branch a committee run at the start of its energy-weighted final phase, with other final-phase settings.

    python -m experiments.branch_final_phase RUN_DIR NEW_DIR --force-factor 0.03
    python -m bpnn_jax train ../shared/data/tio2 --out NEW_DIR --resume

A run with ``ef_final_epochs`` keeps the committee's state at the phase's
start in ``RUN_DIR/ef_state_phase1.npz``.  Everything before the phase
does not depend on the phase's settings (tested bit for bit), so a new run
directory holding that state as its resume point, the run's split and a
config with another ``ef_final_force_factor`` gives exactly what the whole
recipe with that factor would, for the cost of the final phase alone.  The
descriptor-Jacobian cache is linked, not copied.  Only the factor may
change: the phase's length moves its start, which would need another
starting state.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def branch(run_dir: Path, new_dir: Path, force_factor: float) -> Path:
    """Set up ``new_dir`` (see the module doc); returns it."""
    phase1 = run_dir / "ef_state_phase1.npz"
    if not phase1.exists():
        raise SystemExit(f"{run_dir}: no ef_state_phase1.npz (the run had no final phase, or has not reached it)")
    if new_dir.exists() and any(new_dir.iterdir()):
        raise SystemExit(f"{new_dir}: exists and is not empty")
    config = json.loads((run_dir / "config.json").read_text())
    if not config.get("ef_final_epochs"):
        raise SystemExit(f"{run_dir}: config.json has no ef_final_epochs")
    config["ef_final_force_factor"] = float(force_factor)
    new_dir.mkdir(parents=True, exist_ok=True)
    (new_dir / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy2(run_dir / "split.json", new_dir / "split.json")
    shutil.copy2(phase1, new_dir / "ef_state.npz")
    cache = (run_dir / "cache").resolve()
    if cache.exists():
        (new_dir / "cache").symlink_to(cache, target_is_directory=True)
    return new_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.branch_final_phase", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("new_dir", type=Path)
    p.add_argument("--force-factor", type=float, required=True, help="the new ef_final_force_factor")
    args = p.parse_args(argv)
    out = branch(args.run_dir, args.new_dir, args.force_factor)
    print(f"{out}: resume with  python -m bpnn_jax train DATA --out {out} --resume", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
