"""The environment that examples/setup.sh leaves is one users can work in.

A user who converts a checkpoint with se-convert and then fine-tunes it with
transformers does so in the same venv. ve-fairseq depends on torchaudio and pip
gives it the newest one, built for another torch: with it installed,
``import transformers`` fails (transformers imports torchaudio whenever it is
installed), so examples/setup.sh keeps a torchaudio that loads, or none.
Each check runs in a fresh interpreter, as a user's script would: no module of
the test session (se-convert's own workaround included) is loaded there.
"""

import importlib.util
import subprocess
import sys

import pytest


def run_fresh(code):
    return subprocess.run(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def test_transformers_roberta_imports_in_a_fresh_interpreter():
    """examples/setup.sh installs transformers (se-convert's extra): missing is a failure."""
    assert importlib.util.find_spec("transformers") is not None, (
        "transformers is not installed in this environment; examples/setup.sh installs it "
        "(or pip install 'se-fairseq[hf]')"
    )
    result = run_fresh("from transformers import RobertaForMaskedLM; print('ok')")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout[-3000:]


def test_torchaudio_loads_or_is_absent():
    """The cause above, checked directly: an installed torchaudio must load."""
    if importlib.util.find_spec("torchaudio") is None:
        pytest.skip(
            "torchaudio is not installed (examples/setup.sh removes the one "
            "ve-fairseq pulls in when it does not load): nothing to load; the "
            "transformers import above checks the consequence"
        )
    result = run_fresh("import torchaudio; print('ok')")
    assert result.returncode == 0, (
        "torchaudio is installed but does not load with this torch (rerun "
        "examples/setup.sh):\n" + result.stdout[-3000:]
    )


def test_fairseq_training_imports_in_a_fresh_interpreter():
    """fairseq imports torchaudio only lazily (speech tasks): training works without it."""
    result = run_fresh("import fairseq, fairseq_cli.train; import se_fairseq; print('ok')")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout[-3000:]
