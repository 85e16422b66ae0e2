#!/usr/bin/env bash
# Mutation score of the modules that decide what is trained on, with mutmut 3 (pinned).
#
#   bash benchmarks/mutation.sh                 # this work tree; 49 min on 2 cores (2026-12-02)
#   MUTATION_REV=c9d8c12 bash benchmarks/mutation.sh   # the sources and tests of a commit
#   MUTATION_RERUN='se_fairseq.rarity.*' bash benchmarks/mutation.sh
#       # keep the last run's scratch copy and results, take this tree's tests again, and
#       # rerun the named mutants only (fnmatch patterns; e.g. the survivors after new tests)
#
# Mutated: se_fairseq/core/masking.py (data/se_masking.py before the core existed),
# core/options.py (the one table of option rules), core/tls.py (the TLS loss),
# data/score_file.py, criterions/token_ls.py (the criterion), tasks/se_mlm_config.py (the
# fairseq side of the option checks: _check_config, resolved_replacement, build_masker; the
# rest of that module is fenced off; a MUTATION_REV from before the split takes them in
# tasks/se_mlm.py), rarity.py, ops/select.py, ops/reference.py. A module a MUTATION_REV does
# not have is left out. mutmut 3 mutates inside functions only, forks a worker per mutant from
# a process that has imported everything, and runs only the tests that reach the mutated
# function, fastest first, stopping at the first failure. The tests are the fast unit
# tests of those modules (TEST_FILES below, -m "not slow and not subprocess": a child
# process would import the unmutated work tree, so such a test can kill no mutant).
#
# Runs in a scratch copy ($WORK, default /tmp/se-fairseq-mutation[-REV]) so the work tree
# is never mutated; takes the shared heavy lock (RULES: long CPU jobs). Output:
# $WORK/summary.txt (per-module table, survivors) and $WORK/summary.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
REV=${MUTATION_REV:-}
WORK=${WORK:-/tmp/se-fairseq-mutation${REV:+-$REV}}
MUTMUT_VERSION=3.8.1
JOBS=${JOBS:-2}
read -r -a TEST_FILES <<< "${TEST_FILES:-tests/test_masking_device.py tests/test_options.py \
  tests/test_oracles.py tests/test_select_op.py tests/test_score_file.py tests/test_token_ls.py \
  tests/test_rarity.py tests/test_se_mlm.py tests/test_online.py tests/test_core_options.py \
  tests/test_hf_collator.py tests/test_hf_trainer.py}"
read -r -a MUTATE <<< "${MUTATE:-core/masking.py core/options.py core/tls.py data/score_file.py \
  criterions/token_ls.py tasks/se_mlm_config.py rarity.py ops/select.py ops/reference.py}"

"$PY" -c "import mutmut, sys; sys.exit(mutmut.__version__ != '$MUTMUT_VERSION')" 2>/dev/null \
  || "$PY" -m pip install -q --disable-pip-version-check "mutmut==$MUTMUT_VERSION"

RERUN=${MUTATION_RERUN:-}
read -r -a RERUN_NAMES <<< "$RERUN"  # no glob expansion: the patterns go to mutmut
if [ -n "$RERUN" ]; then
  [ -d "$WORK/mutants" ] || { echo "[mutation] MUTATION_RERUN: no earlier run in $WORK" >&2; exit 2; }
  [ -z "$REV" ] || { echo "[mutation] MUTATION_RERUN takes this tree's tests, not MUTATION_REV's" >&2; exit 2; }
  # the sources stay as mutated; only the tests are new (mutmut copies tests/ into mutants/)
  rm -rf "$WORK/tests" "$WORK/mutants/tests"
  (cd "$ROOT" && tar -c --exclude=__pycache__ tests) | tar -x -C "$WORK"
else
  rm -rf "$WORK"
  mkdir -p "$WORK"
  if [ -n "$REV" ]; then
    git -C "$ROOT" archive "$REV" se_fairseq tests pytest.ini | tar -x -C "$WORK"
    # the sources of that commit, run against this build of the C++ extension (same op)
    cp "$ROOT"/se_fairseq/_C*.so "$WORK/se_fairseq/"
  else
    (cd "$ROOT" && tar -c --exclude=__pycache__ se_fairseq tests pytest.ini) | tar -x -C "$WORK"
  fi
fi
# The option checks live in tasks/se_mlm_config.py; in a MUTATION_REV from before the split
# of the task module, in tasks/se_mlm.py. Everything else in that module is fenced off.
OPTION_CHECKS=tasks/se_mlm_config.py
[ -f "$WORK/se_fairseq/$OPTION_CHECKS" ] || OPTION_CHECKS=tasks/se_mlm.py
MUTATE=("${MUTATE[@]/#tasks\/se_mlm_config.py/$OPTION_CHECKS}")
# before the core existed, the masker was data/se_masking.py; modules a revision lacks are
# left out
[ -f "$WORK/se_fairseq/core/masking.py" ] || MUTATE=("${MUTATE[@]/#core\/masking.py/data/se_masking.py}")
present=()
for m in "${MUTATE[@]}"; do [ -f "$WORK/se_fairseq/$m" ] && present+=("$m"); done
MUTATE=("${present[@]}")
[ -n "$RERUN" ] || "$PY" "$ROOT/benchmarks/mutation/only_option_checks.py" "$WORK/se_fairseq/$OPTION_CHECKS"
selection=()
for f in "${TEST_FILES[@]}"; do [ -f "$WORK/$f" ] && selection+=("$f"); done
{
  echo "[mutmut]"
  echo "source_paths = se_fairseq"
  echo "only_mutate ="
  for m in "${MUTATE[@]}"; do echo "    se_fairseq/$m"; done
  echo "pytest_add_cli_args_test_selection ="
  for f in "${selection[@]}"; do echo "    $f"; done
  echo "pytest_add_cli_args ="
  printf '    %s\n' -m "not slow and not subprocess" -p no:cacheprovider -W ignore
  # messages, not decisions: the text of errors, warnings and log lines is not mutated
  # (the conditions that raise or warn are)
  echo "do_not_mutate_patterns ="
  printf '    %s\n' '^\s*raise \w+\(' '^\s*_refuse\(' 'warnings\.warn\(' 'logger\.\w+\(' '^\s*print\('
  echo "use_git_change_detection = false"
  echo "timeout_multiplier = 5.0"
} > "$WORK/setup.cfg"
# One binarized test corpus for every mutant's pytest session (each worker starts a new
# session; the conftest fixture would run fairseq-preprocess again for each mutant).
[ -d "$WORK/corpus/data-bin" ] || PYTHONPATH="$WORK/tests" "$PY" -c "import sys; from support.fairseq_data import write_zipf_corpus, binarize; write_zipf_corpus(sys.argv[1]); binarize(sys.argv[1], sys.argv[1] + '/data-bin')" "$WORK/corpus"
cat >> "$WORK/tests/conftest.py" <<'PY'


@pytest.fixture(scope="session")
def corpus():  # added by benchmarks/mutation.sh: the corpus built once, as the fixture above
    return os.environ["SE_FAIRSEQ_MUTATION_CORPUS"]
PY
export SE_FAIRSEQ_MUTATION_CORPUS="$WORK/corpus/data-bin"

cd "$WORK"
start=$SECONDS
echo "[mutation] mutmut $MUTMUT_VERSION in $WORK over ${#selection[@]} test files, $JOBS workers"
LOCK=(flock /tmp/heavy.lock)
[ -n "${MUTATION_LOCK_HELD:-}" ] && LOCK=()  # the caller holds the lock (both runs in one go)
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "${LOCK[@]}" \
  "$PY" "$ROOT/benchmarks/mutation/run_mutmut.py" run --max-children "$JOBS" "${RERUN_NAMES[@]}" > mutmut.log 2>&1 \
  || { tail -40 mutmut.log; echo "[mutation] mutmut failed, see $WORK/mutmut.log" >&2; exit 1; }
elapsed=$((SECONDS - start))
MERGE=()
if [ -n "$RERUN" ] && [ -f summary.json ]; then
  cp summary.json summary-before-rerun.json
  MERGE=(--merge summary-before-rerun.json)  # the verdicts of the mutants not rerun
fi
"$PY" "$ROOT/benchmarks/mutation/summarize.py" --json summary.json "${MERGE[@]}" \
  --equivalent "$ROOT/benchmarks/mutation/equivalent.txt" | tee summary.txt
echo "[mutation] $elapsed s (mutmut run, incl. waiting for the lock); $WORK/summary.txt" | tee -a summary.txt
