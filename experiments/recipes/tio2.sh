#!/usr/bin/env bash
# tio2_v8 (shipped as tio2 2026-12-03 ... 12-07; experiments/recipes/tio2_refit.sh trains the same on more data, the
# shipped tio2): three committees of 5 (one on Imbalzano symmetry functions, two on aenet's Chebyshev
# descriptor), all on one short-range repulsive pair baseline, merged into one committee of 15.
#
#   bash experiments/recipes/tio2.sh            (from the repository root, data in ../shared/data/tio2)
#
# 1. the Imbalzano committee (experiments/recipes/tio2.yaml + --repulsion),
# 2. the Chebyshev committee (experiments/recipes/tio2_chebyshev65.yaml + --repulsion: aenet's Chebyshev
#    basis at Rc 6.5 Å, 60 functions; same split, schedule and force weights: members' λ 0.02, 0.03, 0.045,
#    0.065, 0.09 eV²/Å² against eV²/atom²),
#    each run first fits the pair baseline (zero beyond Ti-Ti 2.4, Ti-O 1.8, O-O 2.2 Å) to the training
#    energies and forces (1 s; both runs fit the same one) and trains its networks on what it leaves,
# 3. a second Chebyshev committee: step 2 with --member-seed 1 (other initial weights and batch order),
# 4. merge: every member kept as trained (the two Chebyshev committees share their descriptor columns); the
#    extrapolation threshold calibrated on the validation split.
# 2-core CPU (AMD EPYC, AVX-512, 2.6 GHz): ~9 + ~2.5 min of descriptor Jacobians (step 3 starts from step 2's
# cache, hard-linked: the same descriptors of the same data) and ~31 + ~28 + ~25 min of training (on a
# 2.0 GHz EPYC about 5x that); each step resumes (python -m bpnn_jax train ... --resume) if interrupted, and
# a finished step is skipped.
# tio2_v7 (shipped before) was steps 1, 2 and the merge with the λ of the recipes then (0.005, 0.008, 0.01,
# 0.015, 0.02; run directories runs/*_rep), tio2_v6 that with REPULSION=Ti-Ti:2.0,Ti-O:1.6,O-O:1.8, tio2_v5 without
# --repulsion (runs/tio2, runs/tio2_chebyshev65); see experiments/results/repulsion/ and force_weights/.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${BPNN_DATA_DIR:-../shared/data/tio2}
OUT=${1:-runs}
REPULSION=Ti-Ti:2.4,Ti-O:1.8,O-O:2.2
# part:member-seed; the third step is a second Chebyshev committee on the same split (--member-seed 1).
for step in tio2:0 tio2_chebyshev65:0 tio2_chebyshev65:1; do
    part=${step%:*}
    seed=${step#*:}
    run="$OUT/${part}_rep_fw"
    extra=()
    if [ "$seed" != 0 ]; then
        run="${run}_s$seed"
        extra=(--member-seed "$seed")
        # The Jacobians depend on the data and the descriptor set, not the seed: reuse the first run's (the
        # cache is keyed, so a stale one is recomputed; writes replace files, never the linked originals).
        if [ -d "$OUT/${part}_rep_fw/cache" ] && [ ! -e "$run" ]; then
            mkdir -p "$run"
            cp -al "$OUT/${part}_rep_fw/cache" "$run/cache"
        fi
    fi
    if [ -f "$run/model.keras" ]; then
        echo "$run: done"
    elif [ -f "$run/ef_state.npz" ]; then
        python -m bpnn_jax train "$DATA" --out "$run" --resume
    else
        python -m bpnn_jax train --config "experiments/recipes/$part.yaml" --repulsion "$REPULSION" "${extra[@]}" \
            --out "$run" "$DATA"
    fi
done
python -m bpnn_jax merge "$OUT/tio2_rep_fw/model.keras" "$OUT/tio2_chebyshev65_rep_fw/model.keras" \
    "$OUT/tio2_chebyshev65_rep_fw_s1/model.keras" --split "$OUT/tio2_rep_fw/split.json:val" --out "$OUT/tio2_merged.keras"
