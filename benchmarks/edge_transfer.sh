#!/usr/bin/env bash
# Does a transfer set make edge distillation pay? recipes/edge-bsds500.toml's student, taught by a
# trained teacher, in four rows per seed, each epoch chosen on val and scored once on the 200
# BSDS500 test images (edge NMS, every annotator; benchmarks/edges_bsds_eval.py):
#   scratch              the labels alone (the baseline stage of run A; never sees the transfer set)
#   distilled            the recipe's loss, labelled rows only (run A)
#   distilled+transfer   the same, with TRANSFER_RATIO transfer rows per labelled row that the
#                        teacher alone labels (run B: [data.transfer] = photo_folder)
#   scratch+transfer     scratch on the labels and the same transfer rows with the teacher's hard
#                        labels (run B's train.baseline_transfer stage): extra images without the
#                        teacher's soft knowledge, so that the two gains can be told apart
# then benchmarks/record_bsds.py writes OUT (the committed JSON) and prints the table.
#
#   TEACHER=<teacher run>/checkpoints/teacher/best.safetensors benchmarks/edge_transfer.sh
#
# Settings (environment): ROOT (BSDS500), TEACHER (required), EPOCHS (12), SEEDS ("0 1 2"),
# JOBS (parallel runs, one thread each; 2), TRANSFER_ROOTS (photo folders: McMaster, Set5 HR and
# BSDS500 train, none of them a val or test image, which the engine checks), TRANSFER_RATIO (1.0),
# PRECISION (bf16), AUGMENT (crop_flip, or strong: the consistent-teaching views), THRESHOLDS (11), OUT, RUNS, EXTRA (more --set options for every run, e.g. a
# device's larger batch), EVAL_LIMIT (score the first N test images only: a smoke test), LOAD, PYTHON,
# ABLATION (1; 0 leaves out the scratch+transfer row, e.g. for a longer budget on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-../shared/data/BSDS500}
DATA=$(dirname "$ROOT")
: "${TEACHER:?give TEACHER=<teacher run>/checkpoints/teacher/best.safetensors}"
EPOCHS=${EPOCHS:-12}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
TRANSFER_ROOTS=${TRANSFER_ROOTS:-"\"$DATA/McMaster\",\"$DATA/Set5/HR\",\"$ROOT/images/train\""}
TRANSFER_RATIO=${TRANSFER_RATIO:-1.0}
PRECISION=${PRECISION:-bf16}
AUGMENT=${AUGMENT:-crop_flip}
THRESHOLDS=${THRESHOLDS:-11}
RUNS=${RUNS:-runs/edge-transfer-e$EPOCHS}
OUT=${OUT:-benchmarks/results/bsds500-transfer-e$EPOCHS.json}
EXTRA=${EXTRA:-}
ABLATION=${ABLATION:-1}
if [ "$ABLATION" = 1 ]; then  # the transfer run's stages, decided once
  baseline_transfer=true with_stages=distilled,scratch-transfer
  ablation_what="and scratch on the labels and that transfer set with the teacher's hard labels"
else
  baseline_transfer=false with_stages=distilled ablation_what="(no scratch+transfer row)"
fi
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1

common=(--no-progress
  --set "data.params.root=$ROOT"
  --set teacher.params.encoder_weights=none --set student.params.encoder_weights=none
  --set "teacher.checkpoint=$TEACHER"
  --set data.params.val_limit=30 --set data.params.val_scale=0.5
  --set "metric[1].params.thresholds=$THRESHOLDS" --set "train.mixed_precision=$PRECISION"
  --set "train.epochs=$EPOCHS" --set train.eval_every=2 --set 'train.report_epochs=[]'
  --set "data.params.augment=$AUGMENT"
  --set data.params.test_limit=2)  # the run's own test look is unused: scored below on all 200
transfer="data.transfer={name=\"photo_folder\",params={roots=[$TRANSFER_ROOTS],size=256,augment=\"$AUGMENT\"},ratio=$TRANSFER_RATIO}"

one() {  # one run: ROW SEED [more --set ...]
  local row=$1 seed=$2
  shift 2
  mkdir -p "$RUNS/$row-$seed"
  "$PYTHON" -m kdengine run recipes/edge-bsds500.toml --output-dir "$RUNS/$row-$seed" \
    "${common[@]}" --set "run.seed=$seed" "$@" $EXTRA > "$RUNS/$row-$seed.log" 2>&1
}

pending=0
for seed in $SEEDS; do
  for row in plain transfer; do
    if ls "$RUNS/$row-$seed"/*/results.json > /dev/null 2>&1; then continue; fi  # done before
    if [ "$row" = plain ]; then one plain "$seed" & else one transfer "$seed" --set "$transfer" \
        --set train.baseline=false --set "train.baseline_transfer=$baseline_transfer" & fi
    pending=$((pending + 1))
    if [ "$pending" -ge "$JOBS" ]; then wait -n; pending=$((pending - 1)); fi
  done
done
wait

entries=()
for seed in $SEEDS; do
  plain=$(dirname "$(ls "$RUNS/plain-$seed"/*/results.json)")
  with=$(dirname "$(ls "$RUNS/transfer-$seed"/*/results.json)")
  for pair in "$plain:scratch,distilled" "$with:$with_stages"; do
    run=${pair%%:*} stages=${pair#*:}
    if ! ls "$run"/bsds_test_best_*.json > /dev/null 2>&1; then
      "$PYTHON" benchmarks/edges_bsds_eval.py "$run" --root "$ROOT" --thresholds "$THRESHOLDS" \
        --which best --stages "$stages" ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} > "$run/eval.log" 2>&1 &
      pending=$((pending + 1))
      if [ "$pending" -ge "$JOBS" ]; then wait -n; pending=$((pending - 1)); fi
    fi
  done
  entries+=(--entry "scratch=$plain:scratch" --entry "distilled=$plain:distilled"
            --entry "distilled+transfer=$with:distilled")
  if [ "$baseline_transfer" = true ]; then entries+=(--entry "scratch+transfer=$with:scratch-transfer"); fi
done
wait

"$PYTHON" benchmarks/record_bsds.py "${entries[@]}" --out "$OUT" \
  --what "recipes/edge-bsds500.toml's U-Net MobileNetV2 student (random encoder init, $EPOCHS epochs, $PRECISION) taught by the teacher $TEACHER: scratch, distilled, distilled with a transfer set the teacher alone labels (photo_folder over $TRANSFER_ROOTS, $TRANSFER_RATIO transfer rows per labelled row), $ablation_what; $AUGMENT training views; epochs chosen by ODS on 30 val images at half size, test ODS/OIS/Dice once on the 200 test images at the val-best weights (edge NMS, $THRESHOLDS thresholds, every annotator)" \
  --command "TEACHER=$TEACHER EPOCHS=$EPOCHS SEEDS='$SEEDS' TRANSFER_RATIO=$TRANSFER_RATIO AUGMENT=$AUGMENT ABLATION=$ABLATION EXTRA='$EXTRA' benchmarks/edge_transfer.sh" \
  --load "${LOAD:-not recorded}"
