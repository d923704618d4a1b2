#!/usr/bin/env bash
# Everything that needs a GPU, in one time-boxed run (about 12 minutes; the
# 2026-11-26 H200 run used a 60 s training-benchmark cap, too short for its
# ~120 s of compilation):
#   GPU tests (pytest -m gpu), an energy+force fine-tune of the shipped tio2
#   model on all structures with its test-split evaluation, the benchmarks
#   (featurisation, training epoch, MD inference) and a 5 ps NVE run.
#
# Usage: bash benchmarks/gpu_suite.sh OUT_DIR [DATA_DIR]
#   DATA_DIR defaults to $BPNN_DATA_DIR or ../shared/data/tio2.
# Every step has its own time cap so that a slow step cannot starve the
# others; everything lands in OUT_DIR/work, packed into OUT_DIR/results.tgz
# every 20 s (so a run cut short still returns what it finished).
set -u
OUT=${1:?usage: gpu_suite.sh OUT_DIR [DATA_DIR]}
DATA=${2:-${BPNN_DATA_DIR:-../shared/data/tio2}}
W=/tmp/bpnn_gpu_work
mkdir -p "$W" "$OUT"
export BPNN_DATA_DIR=$DATA PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
FT_MIN=${FT_MIN:-2.5}           # fine-tune wall-time limit (minutes)
FT_ARGS=${FT_ARGS:---force-loss huber --huber-delta 1.0 --ef-atoms-per-batch 2048}

. "$(dirname "$0")/gpu_steps.sh"  # pack, step, the background packer

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$W/device.txt" 2>&1
$PY -c "import jax, keras, sys; print(jax.__version__, keras.__version__, sys.version.split()[0], jax.devices())" >> "$W/device.txt" 2>&1
cat "$W/device.txt"

# GPU tests run beside the fine-tune (mostly compilation; not a timing).
( step gpu_tests 200 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py ) &
TESTS=$!

# 1. fine-tune the shipped model with forces on every structure <= 1 eV/atom, then score the test split
step finetune $(( ${FT_MIN%.*} * 60 + 100 )) $PY -m bpnn_jax train "$DATA" --out "$W/finetune" --init tio2 \
  --ef-epochs 500 --time-limit "$FT_MIN" --quiet $FT_ARGS
step finetune_eval 60 $PY -m experiments.evaluate_split "$W/finetune" "$DATA" --models tio2 "$W/finetune/model.keras" \
  --out "$W/finetune/test_metrics.json"
wait $TESTS
pack

# 2. benchmarks (GPU to themselves)
step bench_featurize 70 $PY benchmarks/featurize.py "$DATA" --dtypes float32 --atoms-per-batch 8192 \
  --repeats 2 --out-dir "$W/bench" --device-name gpu
step bench_md 50 $PY benchmarks/md_inference.py --sizes 100,1000,10000 --steps 20 --max-seconds 12 --out-dir "$W/bench" --tag gpu

# 3. NVE, 3 ps of rutile (216 atoms) with the shipped model
step nve 55 $PY -m experiments.md --ensemble nve --steps 3000 --out "$W/md"
kill $PACKER 2>/dev/null
pack
cat "$W/steps.txt"
