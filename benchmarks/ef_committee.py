"""Benchmark: energy+force committee training on cached descriptor Jacobians (``train --members K``).

Usage::

    python benchmarks/ef_committee.py [--train N] [--members 5] [--hidden 96,96] [--epochs 4]
                                      [--cache DIR] [--out-dir DIR] [--data DIR] [--tag TAG]

What runs is the code of ``train --members K``: the seed-0 split
(structures <= +1 eV/atom; the first N training structures, all by
default, and the whole validation split), symmetry functions, descriptor
Jacobians (from ``--cache`` when it holds them for these structures, e.g.
a training run's ``RUN_DIR/cache``, else computed and stored there), the
size groups, then :func:`bpnn_jax.training.jacobian.fit_committee` for a
few epochs.

Measured: Jacobian time (and whether the cache was hit), Jacobian memory
(the grouped float32 arrays, n_atoms² · F · 3 values per structure, padded
to the group size), seconds per E+F epoch over the training structures
(first epoch = compilation included; steady = mean of the later ones,
validation excluded), validation seconds per epoch, peak RSS.

Writes ``<out-dir>/ef_committee_<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    e = res.get("epochs", {})
    lines = [
        f"# E+F committee training on cached descriptor Jacobians ({res['tag']})",
        "",
        f"{res['date']} · {res.get('train_structures')} training structures ({res.get('train_atoms')} atoms) + "
        f"{res.get('val_structures')} validation · {s['members']} members of {s['hidden']} tanh per element · "
        f"{s['atoms_per_batch']} padded atoms per mini-batch",
        "",
        machine_line(res),
        "",
        "| step | result |",
        "|---|---|",
        f"| symmetry functions, train + val | {fmt(res.get('featurize_s'))} s |",
        f"| descriptor Jacobians, train + val ({'read from the cache' if res.get('cache_hit') else 'computed'}) | "
        f"{fmt(res.get('jacobian_s'))} s |",
        f"| Jacobian memory, grouped (float32): train / val | {fmt(res.get('train_gb'))} / {fmt(res.get('val_gb'))} GB |",
        f"| first E+F epoch (compilation included) | {fmt(e.get('first_s'))} s |",
        f"| steady E+F epoch, all {s['members']} members | **{fmt(e.get('steady_s'))} s** "
        f"({fmt(e.get('steady_us_per_atom_member'))} µs per atom and member) |",
        f"| validation pass per epoch | {fmt(e.get('val_s'))} s |",
        f"| peak RSS | {fmt(res.get('peak_rss_mb'))} MB |",
        "",
        "An epoch is one pass of mini-batch AdamW over the training structures for every member at once "
        "(energies and Jacobian forces, loss gradient included). The end-to-end force stage "
        "(`--force-epochs`) differentiates the symmetry functions at every step instead: ~20 min per epoch "
        "on this CPU (`training_cpu.md`).",
    ]
    lines += footer(res)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--train", type=int, default=None, help="training structures (default: the whole split)")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--hidden", default="96,96")
    ap.add_argument("--epochs", type=int, default=4, help="epochs to time (default 4)")
    ap.add_argument("--atoms-per-batch", type=int, default=768)
    ap.add_argument("--cache", default=None, help="Jacobian cache directory (default: a temporary one)")
    args = ap.parse_args(argv)

    import tempfile

    import bpnn_jax  # noqa: F401
    from bpnn_jax.training import jacobian as jt
    from bpnn_jax.descriptors.jacobian_cache import cached_jacobians
    from bpnn_jax.training import TrainConfig, compute_statistics, featurize_host, load_training_data

    args.tag = args.tag or default_tag()
    res = new_result("ef_committee", args, "float32")
    hidden = tuple(int(h) for h in args.hidden.split(","))
    res["settings"] = {"members": args.members, "hidden": "x".join(map(str, hidden)), "epochs": args.epochs,
                       "atoms_per_batch": args.atoms_per_batch}
    stem = f"ef_committee_{args.tag}"
    log(f"reading {args.data}")
    data = load_training_data([args.data], TrainConfig(), progress=False)
    S, split, spec = data["structures"], data["split"], data["spec"]
    train = [S[i] for i in split["train"]]
    if args.train is not None:
        train = train[:args.train]
    val = [S[i] for i in split["val"]]
    res.update(train_structures=len(train), val_structures=len(val),
               train_atoms=int(sum(s.n_atoms for s in train)))
    t = time.time()
    sf_train, sf_val = featurize_host(train, spec), featurize_host(val, spec)
    res["featurize_s"] = round(time.time() - t, 2)
    cache = args.cache or tempfile.mkdtemp(prefix="bpnn_jac_")
    t = time.time()
    jac, hit = cached_jacobians(train + val, spec, cache)
    res["jacobian_s"], res["cache_hit"] = round(time.time() - t, 2), hit
    log(f"Jacobians: {res['jacobian_s']} s (cache hit: {hit})")
    stats = compute_statistics(sf_train, [s.species for s in train], [s.energy for s in train], len(data["elements"]))
    tg = jt.group_by_size(sf_train, [s.species for s in train], [s.energy for s in train],
                          [s.forces for s in train], jac[:len(train)])
    vg = jt.group_by_size(sf_val, [s.species for s in val], [s.energy for s in val],
                          [s.forces for s in val], jac[len(train):])
    del jac
    res["train_gb"], res["val_gb"] = round(tg.nbytes / 1e9, 3), round(vg.nbytes / 1e9, 3)
    cfg = jt.CommitteeConfig(members=args.members, hidden=hidden, epochs=args.epochs,
                             atoms_per_batch=args.atoms_per_batch)
    stamps = []
    t0 = time.time()
    out = jt.fit_committee(tg, vg, stats, cfg, verbose=1,
                           on_epoch=lambda epoch, rec: stamps.append((time.time(), rec["seconds"])))
    hist = out["history"]
    walls = [b[0] - a[0] for a, b in zip([(t0, 0)] + stamps[:-1], stamps)]
    steady = [h["seconds"] for h in hist[1:]]
    res["epochs"] = {
        "first_s": round(hist[0]["seconds"], 2),
        "steady_s": round(sum(steady) / len(steady), 3) if steady else None,
        "val_s": round(sum(w - h["seconds"] for w, h in zip(walls[1:], hist[1:])) / max(len(steady), 1), 3),
        "per_epoch_s": [round(h["seconds"], 3) for h in hist],
    }
    if steady:
        res["epochs"]["steady_us_per_atom_member"] = round(
            1e6 * res["epochs"]["steady_s"] / (res["train_atoms"] * args.members), 3)
    res["peak_rss_mb"] = rss_peak_mb()
    log(f"epochs: {res['epochs']}")
    write_results(res, args.out_dir, stem, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
