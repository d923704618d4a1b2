#!/usr/bin/env bash
# The shipped tio2: two committees of 5 on different descriptor sets, both on one short-range repulsive
# pair baseline, merged into one committee of 10.
#
#   bash experiments/recipes/tio2.sh            (from the repository root, data in ../shared/data/tio2)
#
# 1. the Imbalzano committee (experiments/recipes/tio2.yaml + --repulsion),
# 2. the Chebyshev committee (experiments/recipes/tio2_chebyshev65.yaml + --repulsion: aenet's Chebyshev
#    basis at Rc 6.5 Å, 60 functions; same split, schedule and force weights),
#    each run first fits the pair baseline (zero beyond Ti-Ti 2.4, Ti-O 1.8, O-O 2.2 Å) to the training
#    energies and forces (1 s; both runs fit the same one) and trains its networks on what it leaves,
# 3. merge: every member kept as trained; the extrapolation threshold calibrated on the validation split.
# 2-core CPU (AMD EPYC, AVX-512, 2.6 GHz): ~5 + ~2.5 min of descriptor Jacobians and ~25 + ~29 min of
# training (on a 2.0 GHz EPYC about 5x that); each step resumes (python -m bpnn_jax train ... --resume) if
# interrupted, and a finished step is skipped.
# tio2_v6 (shipped before) was the same with REPULSION=Ti-Ti:2.0,Ti-O:1.6,O-O:1.8, tio2_v5 without --repulsion
# (run directories runs/tio2, runs/tio2_chebyshev65); see experiments/results/repulsion/.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${BPNN_DATA_DIR:-../shared/data/tio2}
OUT=${1:-runs}
REPULSION=Ti-Ti:2.4,Ti-O:1.8,O-O:2.2
for part in tio2 tio2_chebyshev65; do
    run="$OUT/${part}_rep"
    if [ -f "$run/model.keras" ]; then
        echo "$run: done"
    elif [ -f "$run/ef_state.npz" ]; then
        python -m bpnn_jax train "$DATA" --out "$run" --resume
    else
        python -m bpnn_jax train --config "experiments/recipes/$part.yaml" --repulsion "$REPULSION" --out "$run" "$DATA"
    fi
done
python -m bpnn_jax merge "$OUT/tio2_rep/model.keras" "$OUT/tio2_chebyshev65_rep/model.keras" \
    --split "$OUT/tio2_rep/split.json:val" --out "$OUT/tio2_merged.keras"
