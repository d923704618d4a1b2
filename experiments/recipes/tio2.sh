#!/usr/bin/env bash
# The shipped tio2: two committees of 5 on different descriptor sets, merged into one committee of 10.
#
#   bash experiments/recipes/tio2.sh            (from the repository root, data in ../shared/data/tio2)
#
# 1. the Imbalzano committee (experiments/recipes/tio2.yaml; shipped alone as tio2_v4),
# 2. the Chebyshev committee (experiments/recipes/tio2_chebyshev65.yaml: aenet's Chebyshev basis at
#    Rc 6.5 Å, 60 functions; same split, schedule and force weights),
# 3. merge: every member kept as trained; the extrapolation threshold calibrated on the validation split.
# 2-core CPU: ~7 + ~2 min of descriptor Jacobians and ~36 + ~27 min of training; each step resumes
# (python -m bpnn_jax train ... --resume) if interrupted, and a finished step is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${BPNN_DATA_DIR:-../shared/data/tio2}
OUT=${1:-runs}
for part in tio2 tio2_chebyshev65; do
    run="$OUT/$part"
    if [ -f "$run/model.keras" ]; then
        echo "$run: done"
    elif [ -f "$run/ef_state.npz" ]; then
        python -m bpnn_jax train "$DATA" --out "$run" --resume
    else
        python -m bpnn_jax train --config "experiments/recipes/$part.yaml" --out "$run" "$DATA"
    fi
done
python -m bpnn_jax merge "$OUT/tio2/model.keras" "$OUT/tio2_chebyshev65/model.keras" \
    --split "$OUT/tio2/split.json:val" --out "$OUT/tio2_merged.keras"
