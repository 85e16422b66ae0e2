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
echo "[setup] installing the build tools"
pip install -q "setuptools>=77" wheel ninja
# The pins of fairseq (ve-fairseq==0.12.3), transformers, scikit-learn, pytest... are the
# package's own (pyproject.toml, extra [test] = [hf] + [finetune] + the test tools).
echo "[setup] building se-fairseq and its extension with its test extras (pip install --no-build-isolation -e '.[test]')"
pip install -q --no-build-isolation -e ".[test]"

# ve-fairseq requires torchaudio (for fairseq's speech tasks, which import it lazily)
# and pip picks the newest release, built for another torch: it does not load, and
# transformers, which imports torchaudio whenever it is installed, then fails to
# import. Keep the torchaudio release of torch's own version when the registry has
# one that loads (--no-deps: never another torch), else none. After every install
# above: each one puts the dependency back.
if .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchaudio') is None)" \
    && ! .venv/bin/python -c "import torchaudio" >/dev/null 2>&1; then
  if pip install -q --no-deps "torchaudio==$TORCH_VERSION" >/dev/null 2>&1 \
      && .venv/bin/python -c "import torchaudio" >/dev/null 2>&1; then
    echo "[setup] torchaudio==$TORCH_VERSION installed: the torchaudio ve-fairseq pulled does not load with torch $TORCH_VERSION"
  else
    pip uninstall -q -y torchaudio
    echo "[setup] removed torchaudio: no release loads with torch $TORCH_VERSION, and a broken one breaks 'import transformers'; fairseq needs it only for speech tasks"
  fi
fi
# The environment users work in, each in a fresh interpreter as a user's script is: fairseq
# training and the extension load (fairseq imports torchaudio only for speech tasks), and
# transformers imports (it imports torchaudio whenever one is installed).
if ! out=$(.venv/bin/python -c "import fairseq, fairseq_cli.train, se_fairseq.ops as o; assert o.extension_available(), 'the se-fairseq extension did not load'; print('[setup] ok: fairseq', fairseq.__version__, '+ se-fairseq extension')" 2>&1); then
  echo "$out" | tail -5
  echo "[setup] error: fairseq training or the se-fairseq extension does not import in .venv" >&2
  exit 1
fi
echo "$out" | grep '^\[setup\]'
if ! out=$(.venv/bin/python -c "from transformers import RobertaForMaskedLM" 2>&1); then
  echo "$out" | tail -5
  echo "[setup] error: transformers does not import in .venv" >&2
  exit 1
fi
echo "[setup] ok: transformers imports"
