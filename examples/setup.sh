#!/usr/bin/env bash
# Set up se-fairseq in a virtual environment: torch, the build tools, then this package
# (editable, with its C++ extension) and the extras asked for.
#
#   bash examples/setup.sh                          # ./.venv: everything, tests included
#   EXTRAS=hf PYTHON=python3.13 VENV=.venv-hf bash examples/setup.sh   # transformers only
#
# Settings (environment variables):
#   PYTHON           the interpreter the venv is made from (default: python3)
#   VENV             the venv's folder (default: .venv)
#   EXTRAS           the pip extras (default: test = fairseq, hf, finetune and the test tools;
#                    fairseq has wheels for Python 3.11 and 3.12 only; e.g. hf,finetune)
#   TORCH_VERSION    default 2.13.0
#   TORCH_INDEX_URL  where torch comes from. Unset: the registry's default, which on Linux
#                    is the CUDA build (about 3.5 GB with its nvidia wheels), except where
#                    a local CPU wheel is configured. https://download.pytorch.org/whl/cpu
#                    gives the CPU-only build (about 200 MB) for machines without a GPU.
#   SE_FAIRSEQ_CUDA  0: build the CPU operator only, even with a CUDA torch (docs/install.md)
# Idempotent: re-running it installs only what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
pip() { "$PY" -m pip --disable-pip-version-check "$@"; }
has() { "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)" 2>/dev/null; }

# The build needs setuptools >= 77 (pyproject.toml's PEP 639 licence fields); a fresh venv
# often has an older one (65 or 66), which stops the build with "invalid pyproject.toml".
echo "[setup] installing the build tools (setuptools>=77, wheel, ninja)"
pip install -q "setuptools>=77" wheel ninja

# torch first and pinned: anything that lets pip resolve torch itself (an isolated build,
# an unpinned range) downloads a build of its own choosing.
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "[setup] installing torch==$TORCH_VERSION from $TORCH_INDEX_URL"
    pip install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  else
    echo "[setup] installing torch==$TORCH_VERSION (from the registry: on Linux the CUDA build," \
      "about 3.5 GB, a few minutes; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for CPU-only)"
    pip install "torch==$TORCH_VERSION"
  fi
fi
echo "[setup] torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA " + str(torch.version.cuda) if torch.version.cuda else "CPU-only")')"

# The package's own pins: pyproject.toml (extras fairseq, hf, finetune, test, all).
echo "[setup] building se-fairseq and its extension with extras [$EXTRAS]" \
  "(pip install --no-build-isolation -e '.[$EXTRAS]'; compiling takes 1 to 2 minutes," \
  "about 7 with the CUDA operator)"
pip install -q --no-build-isolation -e ".[$EXTRAS]"

# ve-fairseq requires torchaudio (for fairseq's speech tasks, which import it lazily), and
# pip may pick a release built for another torch. transformers imports torchaudio whenever
# it is installed, so one that does not load breaks 'import transformers'. If the one
# installed loads, it stays; else the release of torch's own version, if it loads (--no-deps:
# never another torch); else none. After every install above: each one can put it back.
if has torchaudio && ! "$PY" -c "import torchaudio" >/dev/null 2>&1; then
  if pip install -q --no-deps "torchaudio==$TORCH_VERSION" >/dev/null 2>&1 \
      && "$PY" -c "import torchaudio" >/dev/null 2>&1; then
    echo "[setup] torchaudio==$TORCH_VERSION installed: the torchaudio that came with ve-fairseq does not load with torch $TORCH_VERSION"
  else
    pip uninstall -q -y torchaudio
    echo "[setup] removed torchaudio: no release loads with torch $TORCH_VERSION, and a broken one breaks 'import transformers'; fairseq needs it only for speech tasks"
  fi
fi

# What users run, each in a fresh interpreter as a user's script is.
if ! out=$("$PY" -c "import se_fairseq.ops as o; assert o.extension_available(), 'the se-fairseq extension did not load'" 2>&1); then
  echo "$out" | tail -5
  echo "[setup] error: the se-fairseq extension does not load in $VENV" >&2
  exit 1
fi
echo "[setup] ok: se-fairseq extension"
if has fairseq; then
  if ! out=$("$PY" -c "import fairseq, fairseq_cli.train; print(fairseq.__version__)" 2>&1); then
    echo "$out" | tail -5
    echo "[setup] error: fairseq training does not import in $VENV" >&2
    exit 1
  fi
  echo "[setup] ok: fairseq $out"
fi
if has transformers; then
  if ! out=$("$PY" -c "from transformers import RobertaForMaskedLM" 2>&1); then
    echo "$out" | tail -5
    echo "[setup] error: transformers does not import in $VENV" >&2
    exit 1
  fi
  echo "[setup] ok: transformers imports"
fi
