#!/usr/bin/env bash
# Every CUDA check and GPU timing of se-fairseq in one go, for the first GPU machine lent.
#
#   bash benchmarks/gpu_check.sh                 # results under $OUT (default ./gpu-check-out)
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # print the steps, run nothing
#   GPU_CHECK_STEPS="venv" bash benchmarks/gpu_check.sh  # some steps only (names below)
#
# Made for the device machine: Python 3.12 with a CUDA torch (2.11+cu130) and nvcc, no
# fairseq, no network. Before: `bash benchmarks/gpu_prep_wheels.sh` on a machine with PyPI
# access; carry wheels/b in a first call with GPU_CHECK_STEPS=venv, then wheels/a with the
# full script (64 MiB per call; .gpu-venv stays on the warm machine between the two).
# Steps (estimated 6-8 minutes on one H200; never run yet):
#   1. env      nvidia-smi, torch and nvcc versions
#   2. venv     .gpu-venv (--system-site-packages: the machine's torch), the carried wheels
#               installed with --no-index --no-deps (skipped when fairseq imports already)
#   3. build    pip install --no-build-isolation --no-deps -e . with SE_FAIRSEQ_CUDA=1
#               (the CUDA operator, or a failed build that says why), for the visible GPU
#   4. cuda     pytest -m cuda on the op, masking and oracle tests (57+ variants: CUDA op
#               against the numpy reference and torch.topk, long rows, NaN asserts, no-sync)
#   5. select   all of tests/test_select_op.py and tests/test_masking_device.py (CPU + CUDA)
#   6. driver   benchmarks/gpu_check.py: CPU-vs-CUDA bit equality on real batches and on
#               --se-online live scores, se-score tokens/s fp32/fp16/bf16, training step
#               time masked_lm vs se_mlm offline vs --se-online
#   7. floor    benchmarks/bench_se_score_floor.py on the GPU, bf16 and fp32: se-score tokens/s
#               against the floor (encoder + LM head on non-pad positions) and the bare loop,
#               at the tiny and the roberta-base shape, with per-stage times (se_score_floor*.json)
#   8. recipe   benchmarks/bench_hf_recipe_step.py on the GPU: ModernBERT-base (22 layers,
#               768, vocabulary 50,368), bf16, 30 % masking, flash attention varlen where
#               flash_attn imports (else SDPA): tokens/s and peak memory of the plain sparse
#               step, online SE + TLS, padded and packed batches (recipe.json); against the
#               anchor of about 3.0e5 tokens/s per H100. The packed SE step checks once that
#               packed examples stay apart (flash attention varlen's isolation)
# Each step's log is $OUT/<step>.log; $OUT/summary.txt lists each step's exit status and
# time; gpu_check.json/.md hold the driver's figures. Later steps run even if one fails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
DRY=${GPU_CHECK_DRY_RUN:-0}
WHEELS=${WHEELS:-wheels}
BASE_PY=${PYTHON:-python3}
VENV=${GPU_VENV:-.gpu-venv}
STATUS=0

log() { echo "[gpu-check] $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME CMD...: run CMD, log into $OUT/NAME.log, record status and seconds
  local name=$1; shift
  if [ "$DRY" = 1 ]; then log "would run $name: $*"; return 0; fi
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "$name: exit $rc in $((SECONDS - start)) s"
  [ $rc -eq 0 ] || STATUS=1
  return $rc
}

env_info() {
  nvidia-smi || true
  "$BASE_PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
  command -v nvcc && nvcc --version || echo "no nvcc on PATH"
}

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$BASE_PY" -m venv --system-site-packages "$VENV" || return 1
  fi
  if "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
    echo "fairseq imports already: nothing to install"; return 0
  fi
  # the wheels carried (wheels/a, wheels/b or both), less what the machine has already
  mapfile -t wheels < <(find "$WHEELS" -name '*.whl' 2>/dev/null | sort)
  [ ${#wheels[@]} -gt 0 ] || { echo "no wheels under $WHEELS/: run benchmarks/gpu_prep_wheels.sh first"; return 1; }
  mapfile -t missing < <("$VENV/bin/python" - "${wheels[@]}" <<'PY'
import importlib.metadata as md, os, re, sys
for path in sys.argv[1:]:
    name = re.sub(r"[-_.]+", "-", os.path.basename(path).split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(path)
PY
)
  echo "installing ${#missing[@]} of ${#wheels[@]} carried wheels: ${missing[*]##*/}"
  if [ ${#missing[@]} -gt 0 ]; then
    "$VENV/bin/python" -m pip install --no-index --no-deps --disable-pip-version-check "${missing[@]}" || return 1
  fi
  "$VENV/bin/python" -c "import fairseq, torch; print('fairseq', fairseq.__version__, 'torch', torch.__version__)" \
    || { echo "fairseq does not import yet: carry the other wheels part (see gpu_prep_wheels.sh)"; return 1; }
}

build() {
  SE_FAIRSEQ_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} "$VENV/bin/python" -m pip install -v \
    --no-index --no-build-isolation --no-deps --disable-pip-version-check -e . || return 1
  "$VENV/bin/python" -c "import torch, se_fairseq.ops as o; assert o.extension_available(); assert o.has_kernel_for(torch.device('cuda')), 'no CUDA kernel'; print('CUDA operator loaded')"
}

PYTEST_FILES="tests/test_select_op.py tests/test_masking_device.py tests/test_oracles.py"
cuda_tests() {
  "$VENV/bin/python" -m pytest -m cuda -v -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml" $PYTEST_FILES
}
select_tests() {
  "$VENV/bin/python" -m pytest -v -p no:cacheprovider --junitxml="$OUT/select-tests.xml" \
    tests/test_select_op.py tests/test_masking_device.py
}
driver() {
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} "$VENV/bin/python" benchmarks/gpu_check.py --device cuda --out "$OUT"
}
recipe() {
  local attn=sdpa
  "$VENV/bin/python" -c "import flash_attn" 2>/dev/null && attn=flash_attention_2
  echo "attention: $attn"
  "$VENV/bin/python" benchmarks/bench_hf_recipe_step.py --device cuda --bf16 --attn "$attn" \
    --layers 22 --batch-size 16 --length 1024 --median-length 512 --steps 10 --warmup 3 \
    --threads 8 --configs plain-sparse,se,padded,packed,se-packed --json "$OUT/recipe.json"
}
floor() {
  for precision in bf16 fp32; do
    "$VENV/bin/python" benchmarks/bench_se_score_floor.py --device cuda --precision "$precision" \
      --base-batches 40 --json "$OUT/se_score_floor_$precision.json" || return 1
  done
}

: > "$OUT/summary.txt"
log "start $(date -u +%FT%TZ) in $PWD, results in $OUT"
STEPS=" ${GPU_CHECK_STEPS:-env venv build cuda select driver floor recipe} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
want env && step env env_info
want venv && step venv make_venv
if ! want build || step build build; then
  want cuda && step cuda cuda_tests
  want select && step select select_tests
  want driver && step driver driver
  want floor && step floor floor
  want recipe && step recipe recipe
else
  log "build failed: see $OUT/build.log; the CUDA steps are skipped"
fi
log "done $(date -u +%FT%TZ), status $STATUS"
[ "$DRY" = 1 ] || tail -n 30 "$OUT"/cuda.log 2>/dev/null | grep -E "passed|failed|error" | tail -1
exit $STATUS
