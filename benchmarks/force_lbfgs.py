"""Benchmark: force training on cached descriptor Jacobians (``train --lbfgs-force-weight``).

Usage::

    python benchmarks/force_lbfgs.py [--train 500] [--val 100] [--steps 20] [--weight 1e-4]
                                     [--out-dir DIR] [--data DIR] [--tag TAG]

What runs is the code of ``train --lbfgs-force-weight``: a random subset of
the training split (seed 0, structures <= +1 eV/atom) and of the validation
split, symmetry functions (:func:`bpnn_jax.training.featurize_host`),
descriptor Jacobians (:func:`bpnn_jax.descriptors.featurize.descriptor_jacobians`,
float32), then :func:`bpnn_jax.training.refine_lbfgs` from the shipped
``tio2`` model, once on energies only and once with forces.

Measured:

* descriptor Jacobians: wall time of the first call (compilation included)
  and of a second call on the first 100 structures (steady ms per atom);
  their memory (n_atoms² · F · 3 float32 per structure);
* L-BFGS: seconds of the first iteration (compilation) and per later
  iteration (line search and validation included), with and without the
  force term; the validation energy and force RMSEs before and after;
* peak RSS of the process.

Writes ``<out-dir>/force_lbfgs_<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    add_common_args,
    default_tag,
    fmt,
    footer,
    log,
    machine_line,
    new_result,
    rss_peak_mb,
    write_results,
)


def markdown(res: dict) -> str:
    s = res["settings"]
    j = res.get("jacobians", {})
    lines = [
        f"# Force training on cached descriptor Jacobians ({res['tag']})",
        "",
        f"{res['date']} · {s['train']} training + {s['val']} validation structures drawn from the seed-0 split "
        f"({res.get('train_atoms')} + {res.get('val_atoms')} atoms) · start: shipped `tio2` · force weight "
        f"{s['weight']} · {s['steps']} L-BFGS iterations per run",
        "",
        machine_line(res),
        "",
        "| step | result |",
        "|---|---|",
        f"| symmetry functions, train + val | {fmt(res.get('featurize_s'))} s |",
        f"| descriptor Jacobians, train + val, first call (compilation included) | {fmt(j.get('first_s'))} s |",
        f"| descriptor Jacobians, steady (second call, {j.get('steady_atoms')} atoms) | "
        f"{fmt(j.get('steady_ms_per_atom'))} ms/atom |",
        f"| Jacobian memory, train + val (float32) | {fmt(j.get('gb'))} GB |",
    ]
    for key, label in (("energy", "L-BFGS, energies only"), ("force", "L-BFGS, energies + forces")):
        r = res.get(key)
        if not r:
            continue
        lines.append(f"| {label}: first iteration (compilation) / later iterations | {fmt(r['first_step_s'])} s / "
                     f"{fmt(r['s_per_iteration'])} s |")
        force = "" if r["val_force_before"] is None else (
            f", forces {fmt(r['val_force_before'])} → {fmt(r['val_force_after'])} eV/Å")
        lines.append(f"| {label}: validation change in {r['iterations']} iterations | energy "
                     f"{fmt(r['val_energy_before'])} → {fmt(r['val_energy_after'])} meV/atom{force} |")
    lines += [
        f"| peak RSS | {fmt(res.get('peak_rss_mb'))} MB |",
        "",
        "Later iterations = (loop time − first iteration) / (iterations − 1), with the full-batch line search "
        "and a validation pass every 10 iterations. The end-to-end force stage (`--force-epochs`) "
        "differentiates the symmetry functions at every step instead; see `training_<tag>.md`.",
    ]
    lines += footer(res)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--train", type=int, default=500, help="training structures (default 500)")
    ap.add_argument("--val", type=int, default=100, help="validation structures (default 100)")
    ap.add_argument("--steps", type=int, default=20, help="L-BFGS iterations per run (default 20)")
    ap.add_argument("--weight", type=float, default=1e-4, help="force weight (default 1e-4)")
    args = ap.parse_args(argv)

    import bpnn_jax
    from bpnn_jax.descriptors.featurize import descriptor_jacobians
    from bpnn_jax.training import TrainConfig, force_training_data, featurize_host, load_training_data, refine_lbfgs

    args.tag = args.tag or default_tag()
    res = new_result("force_lbfgs", args, "float32")
    res["settings"] = {"train": args.train, "val": args.val, "steps": args.steps, "weight": args.weight}
    stem = f"force_lbfgs_{args.tag}"
    log(f"reading {args.data}")
    data = load_training_data([args.data], TrainConfig(), progress=False)
    rng = np.random.default_rng(0)
    S, split, spec = data["structures"], data["split"], data["spec"]
    train = [S[i] for i in rng.choice(split["train"], min(args.train, len(split["train"])), replace=False)]
    val = [S[i] for i in rng.choice(split["val"], min(args.val, len(split["val"])), replace=False)]
    res["train_atoms"] = int(sum(s.n_atoms for s in train))
    res["val_atoms"] = int(sum(s.n_atoms for s in val))

    t = time.time()
    sf_train, sf_val = featurize_host(train, spec), featurize_host(val, spec)
    res["featurize_s"] = round(time.time() - t, 2)
    t = time.time()
    f_train, f_val = force_training_data(train, spec, 0), force_training_data(val, spec, 0)
    jac = {"first_s": round(time.time() - t, 2),
           "gb": round(sum(s.n_atoms ** 2 for s in train + val) * spec.n_functions * 12 / 1e9, 3)}
    sample = train[:100]
    t = time.time()
    descriptor_jacobians(sample, spec, dtype=np.float32)
    jac["steady_atoms"] = int(sum(s.n_atoms for s in sample))
    jac["steady_ms_per_atom"] = round(1e3 * (time.time() - t) / jac["steady_atoms"], 3)
    res["jacobians"] = jac
    log(f"Jacobians: {jac}")
    write_results(res, args.out_dir, stem, markdown(res))

    def data_of(hosts, sf, fd):
        return (sf, [h.species for h in hosts], [h.energy for h in hosts], list(fd[0]), list(fd[1]))

    for key, weight in (("energy", 0.0), ("force", args.weight)):
        model = bpnn_jax.load_model("tio2")
        # _size_groups empties the Jacobian lists it is given: pass copies.
        r = refine_lbfgs(model, data_of(train, sf_train, f_train), data_of(val, sf_val, f_val),
                         force_weight=weight, steps=args.steps, log_every=10, verbose=True)
        first, last = r["history"][0], r["history"][-1]
        res[key] = {
            "iterations": r["iterations_run"],
            "first_step_s": round(r["first_step_seconds"], 2),
            "s_per_iteration": round((r["seconds"] - r["first_step_seconds"]) / max(r["iterations_run"] - 1, 1), 3),
            "val_energy_before": round(first[2], 3), "val_energy_after": round(last[2], 3),
            "val_force_before": None if first[3] is None else round(first[3], 4),
            "val_force_after": None if last[3] is None else round(last[3], 4),
        }
        log(f"{key}: {res[key]}")
        res["peak_rss_mb"] = rss_peak_mb()
        write_results(res, args.out_dir, stem, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
