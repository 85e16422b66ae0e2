#!/usr/bin/env bash
# CI's second set-up: the transformers-only install on Python 3.13, where fairseq has no
# wheel. A fresh venv (.venv-hf313), torch from the registry (the CUDA build), then
# pip install --no-build-isolation ".[hf,finetune]" with the CPU operator only
# (SE_FAIRSEQ_CUDA=0: compiling the CUDA kernel takes minutes and no GPU runs it here);
# no fairseq may end up in it. Then every test that needs no fairseq (the core, the operator,
# the transformers path, the README's transformers commands, each fairseq command's one-line
# refusal): the tests marked fairseq are deselected. No Python 3.13: the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PY313=""
for candidate in "$(command -v python3.13 || true)" \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13; do
  # a pyenv shim is on PATH even where 3.13 is not the selected version: it must run
  if [ -n "$candidate" ] && [ -x "$candidate" ] \
      && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
    PY313=$candidate; break
  fi
done
if [ -z "$PY313" ]; then
  echo "[ci] error: no Python 3.13 (python3.13 on PATH or under pyenv's versions/):" \
    "the transformers-only install cannot be checked" >&2
  exit 1
fi
VENV=.venv-hf313
EXTRAS=hf,finetune PYTHON=$PY313 VENV=$VENV SE_FAIRSEQ_CUDA=0 bash examples/setup.sh
# the [test] extra's tools at their pins (pytest, sentencepiece, matplotlib, ...), without its
# se-fairseq[all], which would ask for fairseq
test_reqs=$("$VENV/bin/python" -c "import tomllib; print(' '.join(r for r in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test'] if not r.startswith('se-fairseq')))")
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q --disable-pip-version-check $test_reqs
echo "[ci] $VENV: $("$VENV/bin/python" --version), $("$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -E '^(torch|transformers|se-fairseq) ' | tr -s ' ' | paste -sd ',' -)"
if "$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -i fairseq | grep -v '^se-fairseq '; then
  echo "[ci] error: fairseq was installed in the transformers-only venv" >&2
  exit 1
fi
if "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  echo "[ci] error: fairseq imports in the transformers-only venv" >&2
  exit 1
fi
echo "[ci] transformers-only set-up: $((SECONDS - start)) s"
"$VENV/bin/python" -m pytest -m "not fairseq" -p no:cacheprovider tests/
echo "[ci] transformers-only job: $((SECONDS - start)) s"
