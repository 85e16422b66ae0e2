#!/usr/bin/env bash
# Set up se-fairseq in ./.venv on a fresh machine: torch (CPU wheel), the pinned
# fairseq build, test tools, then this package with its C++ extension.
# Idempotent: re-running it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

# torch first and pinned: anything that lets pip resolve torch itself (an
# isolated build, an unpinned range) downloads a multi-GB CUDA build instead.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "[setup] installing torch==$TORCH_VERSION"
  pip install -q "torch==$TORCH_VERSION"
fi
echo "[setup] installing fairseq (ve-fairseq==0.12.3), build, test and demo tools"
pip install -q "setuptools>=64" wheel ninja "ve-fairseq==0.12.3" pytest sentencepiece matplotlib \
  "transformers==5.24.0" "safetensors==0.8.0"  # transformers: se-convert (optional extra [hf])
echo "[setup] building se-fairseq and its extension (pip install --no-build-isolation -e .)"
pip install -q --no-build-isolation -e .
.venv/bin/python -c "import fairseq, se_fairseq.ops as o; assert o.extension_available(); print('[setup] ok: fairseq', fairseq.__version__, '+ se-fairseq extension')" 2>&1 | grep '^\[setup\]'
