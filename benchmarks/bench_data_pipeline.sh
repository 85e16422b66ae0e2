#!/usr/bin/env bash
# One epoch of batches through --task masked_lm and --task se_mlm --se-select topk,
# same data, same process, alternated (se-bench); prints the ratio.
#   bash benchmarks/bench_data_pipeline.sh [WORKDIR]
set -euo pipefail
work=${1:-/tmp/se-bench-corpus}
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$work/data-bin/train.se_scores.npy" ] || python "$here/make_corpus.py" "$work" >/dev/null
for workers in 0 2; do
  echo "== --num-workers $workers"
  se-bench "$work/data-bin" --task se_mlm --se-select topk --tokens-per-sample 512 \
    --sample-break-mode complete --batch-size 16 --num-workers "$workers" --rounds 5
done
