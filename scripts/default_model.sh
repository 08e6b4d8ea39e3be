#!/usr/bin/env bash
# Rebuild the default model's comparison from a teacher run dir: teacher pairs for the distillation baseline,
# then D2O-F, the full fine-tune and distillation side by side at the same number of images (one CPU thread
# each), then the evaluation report. Shipping the D2O-F result is the separate last step in docs/results.md.
#
#   bash scripts/default_model.sh runs/00000-fmnist-teacher 24 [OUT [BATCH [PAIR_SEED_START]]]
#
# The second argument is the fine-tune length in kimg; keep it at most 5% of the teacher's images (the paper's budget).
# BATCH defaults to the preset's 32 (the shipped model: 60 kimg at batch 8, pairs from seed 1000000, so that no
# pair shares its noise with an evaluation sample).
set -euo pipefail
cd "$(dirname "$0")/.."
teacher="${1:?usage: default_model.sh TEACHER_RUN_DIR KIMG [EVAL_OUT [BATCH [PAIR_SEED_START]]]}"
kimg="${2:?usage: default_model.sh TEACHER_RUN_DIR KIMG [EVAL_OUT [BATCH [PAIR_SEED_START]]]}"
out="${3:-runs/eval-default-model}"
batch="${4:-32}"
pair_seed="${5:-0}"
py=.venv/bin/python
tag="$(date +%Y%m%d-%H%M)"
common=(--preset fmnist --teacher "$teacher" --duration "$kimg" --batch "$batch" --tick 1 --snap 2 --threads 1)

run_dir() { ls -d runs/[0-9]*-"$1" | tail -n 1; }

"$py" -m training.finetune "${common[@]}" --desc "d2o-f-$tag" > "runs/ft-d2o-f-$tag.log" 2>&1 &
d2o=$!
"$py" -m training.finetune "${common[@]}" --freeze none --desc "full-$tag" > "runs/ft-full-$tag.log" 2>&1 &
full=$!
"$py" -m training.make_pairs --teacher "$teacher" --num 1000 --nfe 35 --seed-start "$pair_seed" \
  --out "runs/pairs-$tag" --threads 1
"$py" -m training.finetune "${common[@]}" --objective distill --pairs "runs/pairs-$tag" --desc "distill-$tag" \
  > "runs/ft-distill-$tag.log" 2>&1
wait "$d2o" "$full"

"$py" -m training.evaluate report --model teacher="$teacher" --model d2o-f="$(run_dir "d2o-f-$tag")" \
  --model full="$(run_dir "full-$tag")" --model distill="$(run_dir "distill-$tag")" --out "$out" \
  --num-samples 1000 --curve-samples 500 --threads 2
echo "D2O-F run: $(run_dir "d2o-f-$tag"); report: $out/report.md"
