#!/usr/bin/env bash
# tio2_refit: the shipped tio2 with its two Chebyshev committees trained again on the test part of the
# seed-0 split too (6241 structures instead of 5548; validation unchanged), on tio2's own pair baseline
# (--repulsion-from: not refitted, so the committees merge), then merged with tio2's Imbalzano committee
# (members 1-5) and nothing else: 15 members, the same descriptor sets, the same cost per MD step.
#
#   bash experiments/recipes/tio2_refit.sh [OUT]       (from the repository root; data in ../shared/data/tio2)
#
# 2-core CPU (AMD EPYC, AVX-512): ~3 min of descriptor Jacobians (the second run hard-links the first's
# cache) and ~35 + ~32 min of training (beside other work); each step resumes if interrupted.
# MODEL: the committee whose Imbalzano half (members 1-5) and baseline are kept (default: the shipped tio2).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${BPNN_DATA_DIR:-../shared/data/tio2}
OUT=${1:-runs}
MODEL=${MODEL:-tio2}
for seed in 2 3; do
    run="$OUT/tio2_chebyshev65_tt_s$seed"
    if [ "$seed" != 2 ] && [ -d "$OUT/tio2_chebyshev65_tt_s2/cache" ] && [ ! -e "$run" ]; then
        mkdir -p "$run"
        cp -al "$OUT/tio2_chebyshev65_tt_s2/cache" "$run/cache"
    fi
    if [ -f "$run/model.keras" ]; then
        echo "$run: done"
    elif [ -f "$run/ef_state.npz" ]; then
        python -m bpnn_jax train "$DATA" --out "$run" --resume
    else
        python -m bpnn_jax train --config experiments/recipes/tio2_chebyshev65.yaml --repulsion-from "$MODEL" \
            --train-on-test --member-seed "$seed" --out "$run" "$DATA"
    fi
done
python -m bpnn_jax merge "$MODEL" "$OUT/tio2_chebyshev65_tt_s2/model.keras" "$OUT/tio2_chebyshev65_tt_s3/model.keras" \
    --members 1-5,16-25 --split "$OUT/tio2_chebyshev65_tt_s2/split.json:val" --out "$OUT/tio2_refit.keras"
