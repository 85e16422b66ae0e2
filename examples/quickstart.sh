#!/usr/bin/env bash
# Does SE help? A vanilla model on real English text, then continued pretraining by SE and by
# the controls a reviewer asks for first, each compared with random masking at the same updates
# and at the same compute, with a report. CPU only, no model hub.
#
#   bash examples/quickstart.sh                       # the demo (about 20 min on 2 free CPU cores, plus set-up)
#   QUICKSTART_SCALE=full bash examples/quickstart.sh # a 4x longer vanilla (about 50 min; estimated)
#   QUICKSTART_SCALE=ci bash examples/quickstart.sh   # every step, reduced, in a few minutes (CI)
#   WORK=/path/to/run bash examples/quickstart.sh     # where everything goes (default: ./quickstart-run)
#
# Steps: 1 text, 2 SentencePiece + fairseq-preprocess, 3 vanilla masked_lm pretraining,
# 4 se-score (vanilla's correctness; rarity, no model), 5 continued pretraining from the same
# checkpoint: (a) random (b) SE + TLS (c) rarity control (d) online SE (e) SE with half the
# budget random (f) excess loss against the vanilla (g) random share scheduled from 1 to 0; then
# random masking continued to each method's compute (token passes, scoring included),
# 6 evaluation, 7 downstream: the vanilla, (a), (b) and random masking at (b)'s compute
# fine-tuned with se-finetune on two labelled tasks, 3 seeds each, 8 report.
# To stay within about 20 minutes, two rows of earlier versions are no longer run (SE with the
# plain MLM loss, the reference code's threshold rule) and only SE is fine-tuned; their last
# figures are in examples/quickstart/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash examples/setup.sh
SETUP_SECONDS=$SECONDS
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONWARNINGS=ignore

SCALE=${QUICKSTART_SCALE:-default}
WORK=${WORK:-$ROOT/quickstart-run}
# The vanilla's hyper-parameters were chosen for the vanilla alone (test loss against the
# unigram baseline); every continuation then runs with the same fixed settings.
case "$SCALE" in
  ci)
    MAX_WORDS=30000 VOCAB=800 LAYERS=2 DIM=64 FFN=128 HEADS=2 BATCH=16 TPS=32
    VANILLA_UPDATES=40 CONTINUE_UPDATES=6 VALID_EVERY=3
    FT_TRAIN=64 FT_DEV=32 FT_SEEDS=1,2 FT_EPOCHS=1 ;;
  default)
    MAX_WORDS=0 VOCAB=2000 LAYERS=4 DIM=128 FFN=512 HEADS=4 BATCH=64 TPS=32
    VANILLA_UPDATES=3000 CONTINUE_UPDATES=100 VALID_EVERY=50
    FT_TRAIN=2000 FT_DEV=400 FT_SEEDS=1,2,3 FT_EPOCHS=3 ;;
  full)  # a 4x longer vanilla (about 45 minutes on 2 cores, estimated from its 37-minute vanilla)
    MAX_WORDS=0 VOCAB=2000 LAYERS=4 DIM=128 FFN=512 HEADS=4 BATCH=64 TPS=32
    VANILLA_UPDATES=12000 CONTINUE_UPDATES=100 VALID_EVERY=50
    FT_TRAIN=2000 FT_DEV=400 FT_SEEDS=1,2,3 FT_EPOCHS=3 ;;
  *) echo "QUICKSTART_SCALE must be ci, default or full (got $SCALE)"; exit 2 ;;
esac
# vanilla only: peak learning rate and mask rate (40 % learns context about twice as fast per
# update as 15 % here); every continuation masks 15 % (--mask-prob's default) at lr 1e-4
VANILLA_LR=1e-3 VANILLA_MASK=0.4
DATA=$WORK/data-bin
rm -rf "$WORK"
mkdir -p "$WORK"
: >"$WORK/commands.txt"
: >"$WORK/timings.txt"
printf '%-60s %5ds\n' "0. set-up (examples/setup.sh)" $SETUP_SECONDS >>"$WORK/timings.txt"
echo "scale \`$SCALE\`: vocabulary $VOCAB, $LAYERS layers x $DIM, blocks of $TPS tokens, batches of $BATCH blocks; vanilla $VANILLA_UPDATES updates at peak lr $VANILLA_LR masking $VANILLA_MASK of the tokens (80/10/10); continuations $CONTINUE_UPDATES updates at lr 1e-4, masking 15 %; downstream: $FT_EPOCHS epochs of up to $FT_TRAIN train examples per task, batches of 32, peak lr 1e-4 (6 % warmup, polynomial decay), seeds $FT_SEEDS" >"$WORK/settings.txt"
START=$SECONDS

step() {  # step NAME: print a header and remember when it began
  STEP_NAME=$1
  STEP_START=$SECONDS
  echo
  echo "=== [$(( SECONDS - START ))s] $STEP_NAME"
}
done_step() {
  printf '%-60s %5ds\n' "$STEP_NAME" $(( SECONDS - STEP_START )) >>"$WORK/timings.txt"
}
run() {  # run CMD...: record the command as shell text that reruns it ($WORK: the run folder)
  python "$ROOT/examples/quickstart/record.py" "$WORK" "$ROOT" -- "$@" >>"$WORK/commands.txt"
  "$@"
}
train() {  # train OUT_DIR ARGS...: fairseq-train with the shared model and schedule options
  local out=$1; shift
  mkdir -p "$out"
  run fairseq-train "$DATA" --arch roberta_base --encoder-layers $LAYERS \
    --encoder-embed-dim $DIM --encoder-ffn-embed-dim $FFN --encoder-attention-heads $HEADS \
    --max-positions $TPS --tokens-per-sample $TPS --sample-break-mode none \
    --batch-size $BATCH --optimizer adam --adam-betas '(0.9,0.98)' --weight-decay 0.01 \
    --dropout 0.1 --attention-dropout 0.1 --cpu --seed 1 --num-workers 0 \
    --log-format simple --log-interval 20 --no-epoch-checkpoints --save-dir "$out" "$@" \
    2>&1 | tee "$out/train.log" | grep --line-buffered -E "train_inner|valid on|done training|Error" || true
  [ -f "$out/checkpoint_last.pt" ] || { echo "fairseq-train failed, see $out/train.log"; exit 1; }
}

step "1. real text: CPython's own documentation (PSF licence)"
run python examples/quickstart/make_text.py "$WORK/text" --max-words $MAX_WORDS
done_step

step "2. SentencePiece vocabulary ($VOCAB pieces) + fairseq-preprocess"
run python examples/quickstart/tokenize_text.py "$WORK/text" "$WORK/spm" --vocab-size $VOCAB
run fairseq-preprocess --only-source --trainpref "$WORK/spm/train.spm" --validpref "$WORK/spm/valid.spm" \
  --testpref "$WORK/spm/test.spm" --destdir "$DATA" --workers 2 2>&1 | grep -E "tokens|Wrote" || true
done_step

step "3. vanilla model: fairseq masked_lm, $VANILLA_UPDATES updates"
train "$WORK/vanilla" --task masked_lm --criterion masked_lm --mask-prob $VANILLA_MASK --lr $VANILLA_LR --lr-scheduler polynomial_decay \
  --warmup-updates $(( VANILLA_UPDATES / 10 )) --total-num-update $VANILLA_UPDATES \
  --max-update $VANILLA_UPDATES --validate-interval-updates $(( VANILLA_UPDATES / 4 )) --validate-interval 1000
done_step

step "4. scores: se-score correctness (vanilla model) and rarity (no model), train and test"
for split in train test; do
  run se-score "$DATA" --path "$WORK/vanilla/checkpoint_last.pt" --split $split --cpu --no-progress-bar
  run se-score "$DATA" --metric rarity --split $split --out "$DATA/$split.rarity"
done
done_step

# Fixed for every continuation: same start, seed, learning rate, replacement policy; every method
# runs CONTINUE_UPDATES updates.
FROM_VANILLA=(--restore-file "$WORK/vanilla/checkpoint_last.pt" --reset-optimizer --reset-dataloader
  --reset-meters --reset-lr-scheduler)
SHARED=(--lr 1e-4 --lr-scheduler fixed --validate-interval-updates $VALID_EVERY
  --leave-unmasked-prob 0 --random-token-prob 0 --validate-interval 1000 --task se_mlm)
TLS="--criterion token_ls --tls-alpha 0.1"
RANDOM_OPTS="--se-select random --criterion masked_lm"
# name | label | task options (also what evaluate.py counts masks with) | criterion options
METHODS=(
  "random|(a) random masking, MLM loss|--se-select random|--criterion masked_lm"
  "se|(b) SE: top-k + TLS|--se-select topk|$TLS"
  "rarity|(c) rarity control: rarest top-k + TLS|--se-select topk --se-metric rarity --se-scores $DATA/train.rarity|$TLS"
  "online|(d) online SE: top-k + TLS|--se-online --se-select topk|$TLS"
  "mixed|(e) SE top-k, half the budget random + TLS|--se-select topk --se-random-share 0.5|$TLS"
  "excess|(f) excess loss against the vanilla, online: top-k + TLS|--se-online --se-select topk --se-metric excess --se-reference $WORK/vanilla/checkpoint_last.pt|$TLS"
  "schedule|(g) SE top-k, random share scheduled 1 to 0 + TLS|--se-select topk --se-random-share-schedule linear:1,0|$TLS"
)
EVAL_MODELS=(--model vanilla="$WORK/vanilla/checkpoint_last.pt")
MASK_SHARES=()
NAMES=()
for method in "${METHODS[@]}"; do
  IFS='|' read -r name label task_opts crit_opts <<<"$method"
  step "5. continued pretraining $label"
  # shellcheck disable=SC2086
  train "$WORK/$name" "${FROM_VANILLA[@]}" "${SHARED[@]}" --max-update $CONTINUE_UPDATES $task_opts $crit_opts
  done_step
  EVAL_MODELS+=(--model "$name=$WORK/$name/checkpoint_last.pt")
  [ "$name" = random ] || NAMES+=("$name")
  case "$name" in
    online|excess|schedule) ;;  # masks chosen in the train step (live model, or a scheduled share)
    *) MASK_SHARES+=(--mask-share "$name=--task se_mlm --leave-unmasked-prob 0 --random-token-prob 0 $task_opts") ;;
  esac
done

# Random masking at each method's compute: the random run's compute per update divides each
# method's total (fairseq-train's tok_passes_total, which counts the scoring pass of the score
# file a method trains on); random masking is continued along one trajectory to each of those
# update counts (fairseq-train resumed from the previous checkpoint: optimizer, data position
# and meters restored), a checkpoint at each.
step "5. random masking at each method's compute: the update counts"
LEGS=$(run python examples/quickstart/equal_compute.py plan "$WORK" --random random "${NAMES[@]}")
done_step
PREVIOUS=$WORK/random
for updates in $LEGS; do
  step "5. random masking continued to $updates updates (equal compute)"
  # shellcheck disable=SC2086
  train "$WORK/random_u$updates" --restore-file "$PREVIOUS/checkpoint_last.pt" "${SHARED[@]}" \
    --max-update $updates $RANDOM_OPTS
  done_step
  EVAL_MODELS+=(--model "random_u$updates=$WORK/random_u$updates/checkpoint_last.pt")
  PREVIOUS=$WORK/random_u$updates
done

step "6. evaluation on the held-out test split"
run python examples/quickstart/evaluate.py "$DATA" --split test --tokens-per-sample $TPS "${EVAL_MODELS[@]}" \
  --hard-scores "$DATA/test.se_scores" --rarity-scores "$DATA/test.rarity" "${MASK_SHARES[@]}" \
  --out "$WORK/results.json"
done_step

# Fine-tuning settings fixed on the vanilla alone, before any continued model was fine-tuned:
# RoBERTa's GLUE recipe (fairseq sentence_prediction, batches of 32, 6 % warmup, polynomial
# decay, dropout 0.1, weight decay 0.1, best dev checkpoint) at lr 1e-4 (the recipe's 1e-5 is for
# a 125M-parameter model and 10 epochs) and 3 epochs: the fine-tuned vanilla then beats the
# majority class by about 30 points on module and 15 on source (2 epochs of the earlier tasks,
# and up to 10 epochs of a signature/docstring pair task, left them within 4 points of it).
FT_NAMES=(vanilla random se)
# shellcheck disable=SC2207
FT_NAMES+=($(python examples/quickstart/equal_compute.py controls "$WORK" se))
step "7. downstream: ${FT_NAMES[*]} fine-tuned on two labelled tasks, seeds $FT_SEEDS"
run python examples/quickstart/make_tasks.py "$WORK/text" "$WORK/tasks" --train $FT_TRAIN --dev $FT_DEV
FT_MODELS=()
for name in "${FT_NAMES[@]}"; do
  FT_MODELS+=(--checkpoint "$name=$WORK/$name/checkpoint_last.pt")
done
run env OMP_NUM_THREADS=1 se-finetune "${FT_MODELS[@]}" --task "$WORK/tasks/module" --task "$WORK/tasks/source" \
  --seeds $FT_SEEDS --baseline random --out "$WORK/downstream" --bpe sentencepiece \
  --sentencepiece-model "$WORK/spm/spm.model" --lr 1e-4 --batch-size 32 --epochs $FT_EPOCHS \
  --jobs 2 --devices cpu --keep-checkpoints none --fairseq-args "--num-workers 0"
done_step

step "8. report"
printf '%-60s %5ds\n' "total, set-up included" $SECONDS >>"$WORK/timings.txt"
echo "machine: $(getconf _NPROCESSORS_ONLN) CPU cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)" >>"$WORK/timings.txt"
python examples/quickstart/report.py "$WORK"
echo
echo "Report: $WORK/report.md (plot: $WORK/report.png); total ${SECONDS}s, set-up included"
