"""Shared fixtures: a small binarized corpus made on the spot, and a tiny RoBERTa; and the
check that keeps the markers true.

Helpers (corpus writer, binarize, argument parsing, fairseq-train runner) live in
tests/support/, shared with the benchmarks.

Markers, checked on every test's call (not its fixtures): a test that starts a program
through ``subprocess`` must be marked ``subprocess``; a test that trains (fairseq-train,
fairseq's train entry point in process, torchrun, or the trained ``vanilla_checkpoint``
fixture) must be marked ``slow``, so that ``-m "not slow"`` trains nothing.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
from support.fairseq_data import binarize, fairseq_train, write_scores, write_zipf_corpus

# The transformers-only install (no [fairseq] extra, e.g. Python 3.13) runs the tests that
# need no fairseq: the others are marked ``fairseq`` (by hand, or here for using a fixture
# that binarizes or trains with it) and skipped there; CI's no-fairseq set-up deselects them.
FAIRSEQ_INSTALLED = importlib.util.find_spec("fairseq") is not None
if FAIRSEQ_INSTALLED:
    import fairseq  # noqa: F401  (registers se_mlm / token_ls through the plugin hook)

# Console scripts (fairseq-train, se-score, ...) of the environment running the
# tests, whether or not it is activated (CI calls .venv/bin/python directly).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


# The programs whose run is a training run (argv[0]'s name, or `-m MODULE`).
TRAINING_PROGRAMS = ("fairseq-train", "fairseq_cli.train", "torchrun", "se-finetune")
TRAINING_FIXTURES = ("vanilla_checkpoint",)
FAIRSEQ_FIXTURES = (
    "corpus",
    "other_corpus",
    "scored_corpus",
    "vanilla_checkpoint",
    "untrained_checkpoint",
)


def pytest_collection_modifyitems(items):
    for item in items:
        if any(name in item.fixturenames for name in TRAINING_FIXTURES):
            item.add_marker(pytest.mark.slow)
        if any(name in item.fixturenames for name in FAIRSEQ_FIXTURES):
            item.add_marker(pytest.mark.fairseq)
        if not FAIRSEQ_INSTALLED and item.get_closest_marker("fairseq") is not None:
            item.add_marker(
                pytest.mark.skip(reason="needs fairseq: pip install 'se-fairseq[fairseq]'")
            )


def _command_line(args):
    if isinstance(args, (str, bytes)):
        return os.fsdecode(args).split()
    return [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]


def _trains(argv):
    program = os.path.basename(argv[0]) if argv else ""
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    return any(name in (program, module) for name in TRAINING_PROGRAMS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    spawned, trained = [], []
    real_execute_child = subprocess.Popen._execute_child

    def recording(self, args, *rest, **kwargs):
        argv = _command_line(args)
        spawned.append(argv)
        if _trains(argv):
            trained.append(argv)
        return real_execute_child(self, args, *rest, **kwargs)

    subprocess.Popen._execute_child = recording
    fairseq_train_module = real_main = None
    if FAIRSEQ_INSTALLED:
        import fairseq_cli.train as fairseq_train_module

        real_main = fairseq_train_module.main

        def recording_main(*args, **kwargs):
            trained.append(["fairseq_cli.train.main (in process)"])
            return real_main(*args, **kwargs)

        fairseq_train_module.main = recording_main
    try:
        outcome = yield
    finally:
        subprocess.Popen._execute_child = real_execute_child
        if fairseq_train_module is not None:
            fairseq_train_module.main = real_main
    problems = []
    if spawned and item.get_closest_marker("subprocess") is None:
        problems.append(f"starts a process without the `subprocess` marker: {spawned[0][:3]}")
    if trained and item.get_closest_marker("slow") is None:
        problems.append(f"trains without the `slow` marker: {trained[0][:3]}")
    if problems and outcome.excinfo is None:
        outcome.force_exception(pytest.fail.Exception("; ".join(problems), pytrace=False))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A binarized corpus: data-bin with train/valid splits and dict.txt."""
    root = tmp_path_factory.mktemp("corpus")
    write_zipf_corpus(str(root))
    return binarize(str(root), str(root / "data-bin"))


@pytest.fixture(scope="session")
def other_corpus(corpus, tmp_path_factory):
    """Other text (another seed) binarized with ``corpus``'s dictionary."""
    root = tmp_path_factory.mktemp("other-corpus")
    write_zipf_corpus(str(root), seed=7)
    return binarize(str(root), str(root / "data-bin"), srcdict=os.path.join(corpus, "dict.txt"))


@pytest.fixture
def scored_corpus(corpus, tmp_path):
    """A private copy of the corpus with a random (gamma(2, 2)) score file for train."""
    data = str(tmp_path / "data-bin")
    shutil.copytree(corpus, data)
    write_scores(os.path.join(data, "train"))
    return data


@pytest.fixture(scope="session")
def vanilla_checkpoint(corpus, tmp_path_factory):
    """A tiny RoBERTa trained with fairseq's own masked_lm task."""
    save = str(tmp_path_factory.mktemp("vanilla"))
    result = fairseq_train(corpus, save, "--task", "masked_lm", "--criterion", "masked_lm")
    assert result.returncode == 0, result.stdout[-3000:]
    return os.path.join(save, "checkpoint_last.pt")


@pytest.fixture(scope="session")
def untrained_checkpoint(corpus, tmp_path_factory):
    """A tiny RoBERTa with random weights, saved as fairseq 0.12 saves checkpoints (built
    with fairseq's task/model API, no training run): for tests that need a checkpoint of
    the corpus's dictionary but not a trained model."""
    from support.fairseq_data import TINY_ROBERTA, save_untrained_checkpoint

    path = str(tmp_path_factory.mktemp("untrained") / "checkpoint.pt")
    return save_untrained_checkpoint(corpus, path, TINY_ROBERTA)
