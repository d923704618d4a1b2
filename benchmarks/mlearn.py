"""The mlearn benchmark with the defaults: ``train X_train.extxyz`` (no options), then ``evaluate`` on X_test.

    python benchmarks/mlearn.py [--elements Ge,Li] [--mlearn-dir ../shared/data/mlearn] [--runs runs/mlearn]

Each element's training runs as its own process, exactly as a user types it, and is timed as a whole
(reading, descriptors, Jacobians, training, saving); then ``evaluate RUN/model.keras X_test.extxyz``.
Writes ``benchmarks/results/mlearn_<tag>.json`` and ``.md`` with the test-set energy and force MAE/RMSE
beside the published GAP and MTP figures (Zuo et al., J. Phys. Chem. A 124, 731 (2020)) and the target
of the defaults.  A finished element's run directory is reused (delete it to train again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_common import REPO, add_common_args, default_tag, footer, log, machine_line, new_result, write_results

#: Published test-set MAE (energy meV/atom, force eV/Å) on the benchmark's own split.
PUBLISHED = {
    "Ge": {"GAP": (2.06, 0.05), "MTP": (1.79, 0.05)},
    "Li": {"GAP": (0.49, 0.01), "MTP": (0.49, 0.01)},
}
#: What the defaults are to reach (energy MAE, force MAE) within 15 min on 2 cores.
TARGET = {"Ge": (2.0, 0.05), "Li": (0.6, 0.015)}


def run_element(el: str, mlearn: Path, runs: Path, extra: list[str]) -> dict:
    run = runs / el
    train_file, test_file = mlearn / f"{el}_train.extxyz", mlearn / f"{el}_test.extxyz"
    out = {"element": el, "train_file": str(train_file), "test_file": str(test_file), "run_dir": str(run)}
    cmd = [sys.executable, "-m", "bpnn_jax", "train", str(train_file), "--out", str(run), "--quiet", *extra]
    if not (run / "model.keras").exists():
        log(" ".join(cmd[1:]))
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=REPO)
        out["train_seconds"] = round(time.time() - t0, 1)
    else:
        log(f"{run}/model.keras exists: reused")
        out["train_seconds"] = json.loads((run / "bench.json").read_text()).get("train_seconds") \
            if (run / "bench.json").exists() else None
    (run / "bench.json").write_text(json.dumps({"train_seconds": out["train_seconds"]}))
    metrics = run / "test_metrics.json"
    subprocess.run([sys.executable, "-m", "bpnn_jax", "evaluate", str(run / "model.keras"), str(test_file),
                    "--json", str(metrics)], check=True, cwd=REPO)
    m = json.loads(metrics.read_text())
    out.update({k: m[k] for k in ("n_structures", "energy_mae_mev_atom", "energy_rmse_mev_atom", "force_mae_ev_a",
                                  "force_rmse_ev_a")})
    out["config_yaml"] = (run / "config.yaml").read_text()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--elements", default="Ge,Li")
    ap.add_argument("--mlearn-dir", default=str(REPO.parent / "shared" / "data" / "mlearn"))
    ap.add_argument("--runs", default=str(REPO / "runs" / "mlearn"))
    ap.add_argument("--train-flag", action="append", default=[],
                    help="an extra flag for train (repeatable; the benchmark's point is to give none)")
    args = ap.parse_args()
    args.tag = args.tag or default_tag()
    args.data = args.mlearn_dir
    res = new_result("mlearn", args, "float32")
    res["elements"] = []
    for el in args.elements.split(","):
        res["elements"].append(run_element(el, Path(args.mlearn_dir), Path(args.runs), args.train_flag))
    lines = ["# mlearn benchmark with `train` defaults (no options)", "", machine_line(res), "",
             "Test-set MAE (RMSE) on the benchmark's own split; energy meV/atom, forces eV/Å; training time is the "
             "whole `train` process.", "",
             "| element | bpnn_jax energy | bpnn_jax forces | train time | GAP E / F | MTP E / F | target E / F |",
             "|---|---|---|---|---|---|---|"]
    for r in res["elements"]:
        el = r["element"]
        pub = PUBLISHED.get(el, {})
        gap, mtp = pub.get("GAP", (None, None)), pub.get("MTP", (None, None))
        t = r["train_seconds"]
        lines.append(
            f"| {el} | {r['energy_mae_mev_atom']:.2f} ({r['energy_rmse_mev_atom']:.2f}) | "
            f"{r['force_mae_ev_a']:.4f} ({r['force_rmse_ev_a']:.4f}) | "
            f"{'—' if t is None else f'{t / 60:.1f} min'} | {gap[0]} / {gap[1]} | {mtp[0]} / {mtp[1]} | "
            f"{TARGET.get(el, ('—', '—'))[0]} / {TARGET.get(el, ('—', '—'))[1]} |")
    lines += footer(res)
    write_results(res, args.out_dir, f"mlearn_{args.tag}", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
