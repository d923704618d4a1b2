"""Full-batch L-BFGS polish of a trained committee (the last stage of ``train --ef-lbfgs-steps N``, for a finished model).

Usage::

    python -m experiments.polish MODEL --out FILE.keras [--steps 100] [--force-weights 5e-3,...]
                                 [--data ../shared/data/tio2] [--cache DIR]

Rebuilds the model's training and validation split (seed 0, structures <=
+1 eV/atom: the split of every shipped model), takes the descriptor
Jacobians (cached in ``--cache``), and runs
:func:`bpnn_jax.training.jacobian.polish_lbfgs` from the model's weights
with its own descriptor statistics: all members at once, each with its own
force weight (default: the force weights of its model card's parts, from its
shipped JSON), each keeping its best point by its validation objective,
so the validation objective of no member gets worse.  Writes the polished
committee (threshold recalibrated on validation) to ``--out`` and a JSON
summary next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.polish", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model file or shipped name")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--force-weights", default=None, help="comma-separated λ per member (default: the model's JSON)")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BPNN_DATA_DIR", REPO.parent / "shared" / "data" / "tio2")))
    p.add_argument("--cache", type=Path, default=None, help="descriptor Jacobian cache directory")
    args = p.parse_args(argv)

    import numpy as np

    import bpnn_jax  # noqa: F401
    from bpnn_jax.descriptors.jacobian_cache import cached_jacobians
    from bpnn_jax.model import load_model
    from bpnn_jax.training import TrainConfig, featurize_host, load_training_data
    from bpnn_jax.training import jacobian as jt

    model = load_model(args.model)
    K = model.members
    if args.force_weights:
        lam = tuple(float(x) for x in args.force_weights.split(","))
    else:
        # The model card lists each part's force weights, members in order.
        card = json.loads((REPO / "bpnn_jax" / "pretrained" / f"{args.model}.json").read_text())
        parts = card.get("details", {}).get("parts", {})
        lam = tuple(w for part in parts.values() for w in part.get("force_weights", []))
        if len(lam) != K:
            raise SystemExit(f"{args.model}'s card gives {len(lam)} force weights for {K} members: "
                             f"pass --force-weights with {K} values")
    spec = model.spec
    config = TrainConfig(preset="imbalzano", cutoff=spec.cutoff, reference_energies=dict(model.reference_energies))
    data = load_training_data([args.data], config, progress=False)
    S, split = data["structures"], data["split"]
    train, val = [S[i] for i in split["train"]], [S[i] for i in split["val"]]
    t0 = time.time()
    sf_train, sf_val = featurize_host(train, spec), featurize_host(val, spec)
    jac, hit = cached_jacobians(train + val, spec, args.cache, verbose=True)
    stats = {k: np.asarray(getattr(model, k).value, np.float64)
             for k in ("sf_mean", "sf_std", "sf_min", "sf_max", "energy_shift", "energy_scale")}
    groups = [jt.group_by_size(sf, [s.species for s in part], [s.energy for s in part], [s.forces for s in part],
                               list(jac[a:b]))
              for sf, part, (a, b) in ((sf_train, train, (0, len(train))),
                                       (sf_val, val, (len(train), len(train) + len(val))))]
    del jac
    print(f"data: {len(train)} + {len(val)} structures, Jacobians {'cached' if hit else 'computed'}, "
          f"{time.time() - t0:.0f} s", flush=True)
    cfg = jt.CommitteeConfig(members=K, hidden=tuple(model.hidden), activation=model.activation, force_weight=lam)
    fit_stats = {k: stats[k] for k in ("sf_mean", "sf_std", "energy_shift", "energy_scale")}
    out = jt.polish_lbfgs(jt.params_from_model(model), groups[0], groups[1], fit_stats, cfg, steps=args.steps,
                          verbose=1)
    polished = jt.to_model(out["params"], stats, spec, cfg, dict(model.reference_energies))
    polished.uncertainty_threshold = jt.calibrate_threshold(polished, groups[1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    polished.save(args.out)
    summary = {"model": args.model, "steps": args.steps, "force_weights": lam, "seconds": out["seconds"],
               "best_objective": np.asarray(out["best_objective"]).tolist(),
               "uncertainty_threshold_ev_atom": polished.uncertainty_threshold,
               "history": out["history"]}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
