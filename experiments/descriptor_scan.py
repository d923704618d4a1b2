"""Which symmetry-function set carries the most energy information for TiO2?  A cheap proxy scan.

Usage::

    python -m experiments.descriptor_scan [--data ../shared/data/tio2] [--epochs 300] [--members 2]
                                          [--hidden 128,128] [--out experiments/results/descriptor_scan]
                                          [--only NAME ...]

For every candidate set (the shipped presets and variants of the Imbalzano
grids: more radial shifts, more angular widths, other cut-offs), the same
energy-only committee is trained on the seed-0 split (structures <= +1
eV/atom; the trainer of ``train --members K`` without the force term, so no
descriptor Jacobians are needed and a candidate costs about a minute on a
2-core CPU) and its committee energy error is measured on the validation
and test splits.  Energies alone are a proxy: a set that cannot describe
the energy surface cannot give its gradient either, but the ranking with
forces in the loss can differ; the winner is then trained with forces.

Writes ``descriptor_scan.json`` and ``descriptor_scan.md`` (one row per
set: functions, validation and test energy RMSE/MAE in meV/atom, train
RMSE, seconds) to ``--out``; rows already there are kept, so an
interrupted scan resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def candidates(elements):
    """name -> SymmetryFunctionSet of the scan."""
    from bpnn_jax.descriptors import SymmetryFunctionSet as SFS

    im = SFS.imbalzano
    return {
        "artrith-urban (Rc 6.5)": SFS.artrith_urban(elements),
        "imbalzano Rc 6.5 (shipped)": im(elements, 6.5),
        "imbalzano Rc 6.0": im(elements, 6.0),
        "imbalzano Rc 7.0": im(elements, 7.0),
        "imbalzano Rc 6.5, 10 shifted G2": im(elements, 6.5, n_shifted=10),
        "imbalzano Rc 6.5, 10 shifted + 8 centred G2": im(elements, 6.5, n_shifted=10, n_centred=8),
        "imbalzano Rc 6.5, 5 angular eta": im(elements, 6.5, n_angular_eta=5),
        "imbalzano Rc 6.5, zeta 1,2,4,8,16": im(elements, 6.5, zetas=(1, 2, 4, 8, 16)),
        "imbalzano Rc 6.5, 10 shifted G2, 5 angular eta": im(elements, 6.5, n_shifted=10, n_angular_eta=5),
    }


def errors(params, stats, groups, activation):
    """Committee-mean energy RMSE and MAE (meV/atom) over groups (the trainer's own validation)."""
    from bpnn_jax.training import jacobian as jt

    m = jt.committee_validation(params, stats, groups, activation)
    return m["mean_energy_rmse_mev_atom"], m["mean_energy_mae_mev_atom"]


def markdown(rows, settings) -> str:
    lines = [
        "# Descriptor scan: energy-only committees on the TiO2 seed-0 split",
        "",
        f"{settings['members']} members of {settings['hidden']} tanh per element, {settings['epochs']} epochs of "
        f"AdamW (lr {settings['lr']} → {settings['final_lr']}, weight decay {settings['weight_decay']}), energies "
        f"only; committee-mean errors in meV/atom. {settings['machine']}.",
        "",
        "| descriptor set | functions | val RMSE | val MAE | test RMSE | test MAE | train RMSE | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['n_functions']} | {r['val_rmse']:.2f} | {r['val_mae']:.2f} | "
                     f"{r['test_rmse']:.2f} | {r['test_mae']:.2f} | {r['train_rmse']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/tio2")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--hidden", default="128,128")
    ap.add_argument("--out", default="experiments/results/descriptor_scan")
    ap.add_argument("--only", nargs="*", default=None, help="names (substrings) of the candidates to run")
    args = ap.parse_args(argv)

    import bpnn_jax  # noqa: F401  (backend first)
    from bpnn_jax.training import (
        TrainConfig,
        compute_statistics,
        featurize_host,
        load_training_data,
    )
    from bpnn_jax.training import jacobian as jt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "descriptor_scan.json"
    done = json.loads(path.read_text()) if path.exists() else {"rows": []}
    hidden = tuple(int(h) for h in args.hidden.split(","))
    settings = {"members": args.members, "hidden": "x".join(map(str, hidden)), "epochs": args.epochs,
                "lr": 2e-3, "final_lr": 1e-5, "weight_decay": 5e-4,
                "machine": f"{platform.machine()} CPU, {__import__('os').cpu_count()} cores"}
    t = time.time()
    # Neighbour lists once, at the largest cut-off of the scan (featurize accepts any Rc <= that).
    data = load_training_data([args.data], TrainConfig(preset="imbalzano", cutoff=7.0), progress=False)
    S, split = data["structures"], data["split"]
    parts = {name: [S[i] for i in split[name]] for name in ("train", "val", "test")}
    print(f"data: {len(S)} structures, {time.time() - t:.0f} s", flush=True)
    for name, spec in candidates(data["elements"]).items():
        if any(r["name"] == name for r in done["rows"]):
            continue
        if args.only and not any(o in name for o in args.only):
            continue
        t = time.time()
        sf = {k: featurize_host(v, spec) for k, v in parts.items()}
        stats = compute_statistics(sf["train"], [s.species for s in parts["train"]],
                                   [s.energy for s in parts["train"]], len(data["elements"]))
        groups = {k: jt.group_by_size(sf[k], [s.species for s in v], [s.energy for s in v])
                  for k, v in parts.items()}
        cfg = jt.CommitteeConfig(members=args.members, hidden=hidden, epochs=args.epochs, learning_rate=2e-3,
                                 final_learning_rate=1e-5, weight_decay=5e-4, force_weight=0.0)
        fit = jt.fit_committee(groups["train"], groups["val"], stats, cfg, verbose=2)
        row = {"name": name, "n_functions": spec.n_functions, "spec": spec.to_config(),
               "seconds": time.time() - t}
        for k in ("train", "val", "test"):
            row[f"{k}_rmse"], row[f"{k}_mae"] = errors(fit["params"], stats, groups[k], cfg.activation)
        print(f"{name}: {spec.n_functions} functions, val {row['val_rmse']:.2f}/{row['val_mae']:.2f}, "
              f"test {row['test_rmse']:.2f}/{row['test_mae']:.2f}, train {row['train_rmse']:.2f} meV/atom, "
              f"{row['seconds']:.0f} s", flush=True)
        done["rows"].append(row)
        done["settings"] = settings
        path.write_text(json.dumps(done, indent=1))
        (out / "descriptor_scan.md").write_text(markdown(done["rows"], settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
