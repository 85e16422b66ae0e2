#!/usr/bin/env bash
# Vanilla model -> SE model on real English text, with a report. CPU only, no hub.
#
#   bash examples/quickstart.sh                 # full demo (about 15 min on 2 CPU cores)
#   QUICKSTART_SCALE=ci bash examples/quickstart.sh   # a reduced run in a couple of minutes (CI)
#   WORK=/path/to/run bash examples/quickstart.sh     # where everything goes (default: ./quickstart-run)
#
# Steps: 1 text, 2 SentencePiece + fairseq-preprocess, 3 vanilla masked_lm pretraining,
# 4 se-score, 5 continued pretraining (a) random (b) SE (c) online SE, 6 evaluation, 7 report.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash examples/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONWARNINGS=ignore

SCALE=${QUICKSTART_SCALE:-full}
WORK=${WORK:-$ROOT/quickstart-run}
if [ "$SCALE" = ci ]; then
  MAX_WORDS=30000 VOCAB=1000 LAYERS=2 DIM=64 FFN=128 HEADS=2 BATCH=16
  VANILLA_UPDATES=40 CONTINUE_UPDATES=20 VALID_EVERY=10
else
  MAX_WORDS=0 VOCAB=8000 LAYERS=4 DIM=128 FFN=512 HEADS=4 BATCH=32
  VANILLA_UPDATES=600 CONTINUE_UPDATES=150 VALID_EVERY=25
fi
TPS=128
rm -rf "$WORK"
mkdir -p "$WORK"
: >"$WORK/commands.txt"
: >"$WORK/timings.txt"
START=$SECONDS

step() {  # step NAME: print a header and remember when it began
  STEP_NAME=$1
  STEP_START=$SECONDS
  echo
  echo "=== [$(( SECONDS - START ))s] $STEP_NAME"
}
done_step() {
  printf '%-52s %5ds\n' "$STEP_NAME" $(( SECONDS - STEP_START )) >>"$WORK/timings.txt"
}
run() {  # run CMD...: record the command, then run it
  printf '%s\n' "$*" | sed "s|$WORK|\$WORK|g; s|$ROOT/||g" >>"$WORK/commands.txt"
  "$@"
}
train() {  # train OUT_DIR ARGS...: fairseq-train with the shared model and schedule options
  local out=$1; shift
  mkdir -p "$out"
  run fairseq-train "$WORK/data-bin" --arch roberta_base --encoder-layers $LAYERS \
    --encoder-embed-dim $DIM --encoder-ffn-embed-dim $FFN --encoder-attention-heads $HEADS \
    --max-positions $TPS --tokens-per-sample $TPS --sample-break-mode none \
    --batch-size $BATCH --optimizer adam --adam-betas '(0.9,0.98)' --weight-decay 0.01 \
    --dropout 0.1 --attention-dropout 0.1 --cpu --seed 1 --num-workers 0 \
    --log-format simple --log-interval 10 --no-epoch-checkpoints --save-dir "$out" "$@" \
    2>&1 | tee "$out/train.log" | grep --line-buffered -E "train_inner|valid on|done training|Error" || true
  [ -f "$out/checkpoint_last.pt" ] || { echo "fairseq-train failed, see $out/train.log"; exit 1; }
}

step "1. real text: CPython's own documentation (PSF licence)"
run python examples/quickstart/make_text.py "$WORK/text" --max-words $MAX_WORDS
done_step

step "2. SentencePiece vocabulary + fairseq-preprocess"
run python examples/quickstart/tokenize_text.py "$WORK/text" "$WORK/spm" --vocab-size $VOCAB
run fairseq-preprocess --only-source --trainpref "$WORK/spm/train.spm" --validpref "$WORK/spm/valid.spm" \
  --testpref "$WORK/spm/test.spm" --destdir "$WORK/data-bin" --workers 2 2>&1 | grep -E "tokens|Wrote" || true
done_step

step "3. vanilla model: fairseq masked_lm, $VANILLA_UPDATES updates"
train "$WORK/vanilla" --task masked_lm --criterion masked_lm --lr 1e-3 --lr-scheduler polynomial_decay \
  --warmup-updates $(( VANILLA_UPDATES / 10 )) --total-num-update $VANILLA_UPDATES \
  --max-update $VANILLA_UPDATES --validate-interval-updates $(( VANILLA_UPDATES / 4 ))
done_step

step "4. self-questioning: se-score (train split, and test for the hard-token evaluation)"
for split in train test; do
  run se-score "$WORK/data-bin" --path "$WORK/vanilla/checkpoint_last.pt" --split $split --cpu
done
done_step

CONTINUE=(--restore-file "$WORK/vanilla/checkpoint_last.pt" --reset-optimizer --reset-dataloader
  --reset-meters --reset-lr-scheduler --lr 1e-4 --lr-scheduler fixed --max-update $CONTINUE_UPDATES
  --validate-interval-updates $VALID_EVERY --leave-unmasked-prob 0 --random-token-prob 0
  --validate-interval 1000)

step "5a. continued pretraining: random masking, MLM loss"
train "$WORK/random" "${CONTINUE[@]}" --task se_mlm --se-select random --criterion masked_lm
done_step
step "5b. continued pretraining: SE (top-k masking + token_ls)"
train "$WORK/se" "${CONTINUE[@]}" --task se_mlm --se-select topk --criterion token_ls --tls-alpha 0.1
done_step
step "5c. continued pretraining: online SE"
train "$WORK/online" "${CONTINUE[@]}" --task se_mlm --se-online --se-select topk --criterion token_ls \
  --tls-alpha 0.1
done_step

step "6. evaluation on the held-out test split"
run python examples/quickstart/evaluate.py "$WORK/data-bin" --split test --curve-split valid --tokens-per-sample $TPS \
  --model vanilla="$WORK/vanilla/checkpoint_last.pt" --model random="$WORK/random/checkpoint_last.pt" \
  --model se="$WORK/se/checkpoint_last.pt" --model online="$WORK/online/checkpoint_last.pt" \
  --out "$WORK/results.json"
done_step

step "7. report"
printf '%-52s %5ds\n' "total" $(( SECONDS - START )) >>"$WORK/timings.txt"
python examples/quickstart/report.py "$WORK"
echo
echo "Report: $WORK/report.md (plot: $WORK/report.png); total $(( SECONDS - START ))s"
