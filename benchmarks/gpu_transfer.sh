#!/usr/bin/env bash
# The transfer-set measurement on a lent GPU, in one call: train the U-Net ResNet-34 edge teacher
# on BSDS500 train (80 epochs, as benchmarks/results/bsds500-teacher.json's), then
# benchmarks/edge_transfer.sh's four rows per seed at the paper's budget (15 epochs) and at 4x
# it (60), writing benchmarks/results/bsds500-transfer-gpu-e15.json and -e60.json. The data
# (BSDS500, McMaster, Set5) is read from DATA: shared/data in the working tree, else ../shared/data.
#
#   benchmarks/gpu_transfer.sh            # OUT_DIR=$OUT on the device machine gets the JSONs
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-$( [ -d shared/data ] && echo shared/data || echo ../shared/data )}
PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-${OUT:-benchmarks/results}}
TEACHER_RUNS=${TEACHER_RUNS:-runs/gpu-teacher}
export HF_HUB_OFFLINE=1 PYTHON

if ! ls "$TEACHER_RUNS"/*/checkpoints/teacher/best.safetensors > /dev/null 2>&1; then
  "$PYTHON" -m kdengine run recipes/edge-bsds500.toml --output-dir "$TEACHER_RUNS" --no-progress \
    --set "data.params.root=$DATA/BSDS500" \
    --set teacher.params.encoder_weights=none --set student.params.encoder_weights=none \
    --set data.params.val_limit=30 --set data.params.val_scale=0.5 --set 'metric[1].params.thresholds=25' \
    --set train.mixed_precision=bf16 --set train.channels_last=true --set train.num_workers=8 \
    --set teacher.train.epochs=80 --set 'teacher.train.optimizer={name="adam",lr=1e-3}' \
    --set 'teacher.train.scheduler={name="cosine"}' --set teacher.train.eval_every=4 \
    --set train.epochs=1 --set train.baseline=false --set 'train.report_epochs=[]'
fi
TEACHER=$(ls "$TEACHER_RUNS"/*/checkpoints/teacher/best.safetensors | head -1)
for epochs in 15 60; do
  ROOT="$DATA/BSDS500" TEACHER="$TEACHER" EPOCHS=$epochs JOBS=${JOBS:-3} OMP_NUM_THREADS=4 \
    RUNS="runs/gpu-transfer-e$epochs" OUT="$OUT_DIR/bsds500-transfer-gpu-e$epochs.json" \
    EXTRA="--set train.num_workers=4 ${EXTRA:-}" LOAD="one GPU, this script alone" benchmarks/edge_transfer.sh
done
