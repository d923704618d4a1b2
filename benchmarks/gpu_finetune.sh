#!/usr/bin/env bash
# Second GPU run: three energy+force fine-tunes of the shipped model side by
# side on one GPU (different force weights / losses / learning rates), then
# the training-step benchmark alone on the GPU.
# Usage: bash benchmarks/gpu_finetune.sh OUT_DIR DATA_DIR
set -u
OUT=${1:?}; DATA=${2:?}
W=/tmp/bpnn_gpu_ft; mkdir -p "$W"
export BPNN_DATA_DIR=$DATA PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
pack() { tar czf "$OUT/.r.tmp" -C "$W" . 2>/dev/null && mv "$OUT/.r.tmp" "$OUT/results.tgz"; }
(while sleep 15; do pack; done) &
PACKER=$!
ft() {  # ft NAME ARGS...
  local name=$1; shift
  timeout -s INT -k 10 200 $PY -m bpnn_jax train "$DATA" --out "$W/$name" --init tio2 --energy-epochs 0 \
    --lbfgs-steps 0 --force-epochs 500 --time-limit 2.6 --atoms-per-batch 2048 --quiet "$@" > "$W/$name.log" 2>&1
  echo "$name rc=$?" >> "$W/steps.txt"
}
ft mse_w1e-2_lr2e-5 --force-loss mse --force-weight 1e-2 --lr 2e-5 & P1=$!
ft huber_w3e-2_lr2e-5 --force-loss huber --force-weight 3e-2 --lr 2e-5 & P2=$!
ft mse_w1e-3_lr1e-5 --force-loss mse --force-weight 1e-3 --lr 1e-5 & P3=$!
wait $P1 $P2 $P3
pack
t0=$(date +%s)
timeout -s INT -k 10 110 $PY benchmarks/training.py --data "$DATA" --epochs 3 --batch-atoms 2048 --out-dir "$W/bench" \
  --tag gpu > "$W/bench_training.log" 2>&1
echo "bench_training rc=$? seconds=$(( $(date +%s) - t0 ))" >> "$W/steps.txt"
kill $PACKER; pack
cat "$W/steps.txt"; for f in "$W"/*/history.csv; do echo "$f"; cut -d, -f1-8 "$f" | tail -4; done
