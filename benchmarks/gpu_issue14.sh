#!/usr/bin/env bash
# Issue 14's GPU figures in one time-boxed run: at most 505 s of capped steps (one device command may run
# 600 s; a lent device has 15 minutes in all, its start included).  Run it as the device's one command, e.g.
#   bash benchmarks/gpu_issue14.sh "$OUT"        (then commit OUT's files under benchmarks/results/)
#   1. featurise all structures of DATA_DIR (float32, forward only; target <= 0.3 s for the 7033),
#   2. MD steps of the shipped tio2 on rutile, ~100 / 1000 / 10 000 atoms, forces of the committee's mean
#      energy as the calculator gives them by default (target <= 1.5 us/atom/step at 10 k),
#   3. E+F committee epochs on cached descriptor Jacobians, the training path of the shipped model
#      (5 members 2 x 128, all training structures; target <= 1 s per epoch),
#   4. two points of the study's grid (energy-only Keras fits, all data, 40 epochs each), whose mean trial
#      time x 54 estimates the full grid (target <= 30 min),
#   5. pytest -m gpu (GPU against CPU and aenet in float64).
# Each step has its own cap, so a slow one cannot starve the others; everything lands in OUT_DIR/work,
# packed into OUT_DIR/results.tgz every 20 s (a run cut short still returns what it finished).
#
# Usage: bash benchmarks/gpu_issue14.sh OUT_DIR [DATA_DIR]        (DATA_DIR: $BPNN_DATA_DIR or ../shared/data/tio2)
#        DRY=1 bash benchmarks/gpu_issue14.sh OUT_DIR              (tiny sizes: checks the commands on a CPU)
set -u
OUT=${1:?usage: gpu_issue14.sh OUT_DIR [DATA_DIR]}
DATA=${2:-${BPNN_DATA_DIR:-../shared/data/tio2}}
W=${WORK_DIR:-/tmp/bpnn_gpu14}
mkdir -p "$W" "$OUT"
export BPNN_DATA_DIR=$DATA PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
if [ "${DRY:-0}" = 1 ]; then
    LIMIT=(--limit 40); SIZES=100; STEPS=2; TRAIN=(--train 40); EPOCHS=2; GRID=(--subset 60 --epochs 1); TESTS=(--co)
else
    LIMIT=(); SIZES=100,1000,10000; STEPS=20; TRAIN=(); EPOCHS=4; GRID=(); TESTS=()
fi

. "$(dirname "$0")/gpu_steps.sh"  # pack, step, the background packer

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import jax, keras, sys; print(jax.__version__, keras.__version__, sys.version.split()[0], jax.devices())" 2>&1
} > "$W/device.txt"
cat "$W/device.txt"

step featurize 45 $PY benchmarks/featurize.py "$DATA" "${LIMIT[@]}" --dtypes float32 --no-grad --atoms-per-batch 8192 \
    --repeats 3 --out-dir "$W/bench"
# The calculator's default: forces of the committee's mean energy (one backward pass).
step md 90 $PY benchmarks/md_inference.py --sizes "$SIZES" --steps "$STEPS" --max-seconds 15 --no-member-forces \
    --out-dir "$W/bench" --tag gpu14
step ef_epoch 170 $PY benchmarks/ef_committee.py "${TRAIN[@]}" --members 5 --hidden 128,128 --epochs "$EPOCHS" \
    --data "$DATA" --out-dir "$W/bench" --tag gpu14
step grid 80 $PY -m experiments.grid --data "$DATA" --layers 4 --nodes 16 64 --learning-rates 5e-4 --dropouts 0.0 \
    "${GRID[@]}" --no-retrain --verbose 0 --out "$W/grid"
step gpu_tests 120 $PY -m pytest -m gpu -q -p no:cacheprovider "${TESTS[@]}" tests/test_gpu.py
kill $PACKER 2>/dev/null
pack
cat "$W/steps.txt"
