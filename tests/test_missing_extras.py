"""Without the ``[fairseq]`` extra (the transformers-only install, e.g. Python 3.13), each
command that needs fairseq ends in one line naming the extra and how to install it, not in
a traceback. Run in an interpreter that cannot import fairseq (tests/support/blocked_imports)."""

import pytest
from support.blocked_imports import assert_flow_ran, run_blocked

FAIRSEQ = ("fairseq", "fairseq_cli", "omegaconf", "hydra")

FLOW = """
import contextlib, io

from se_fairseq.cli import bench, convert, finetune, score

EXTRA = "pip install 'se-fairseq[fairseq]'"
with open("model.pt", "wb") as f:
    f.write(b"not read")

def refusal(command, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = command(argv)
        except SystemExit as end:
            code = end.code
    message = code if isinstance(code, str) else err.getvalue().strip()
    assert code not in (0, None), f"{command.__module__} did not refuse"
    assert EXTRA in message and "\\n" not in message and "Traceback" not in message, message
    return message

print(refusal(score.main, ["data-bin", "--path", "model.pt", "--out", "scores"]))
print(refusal(bench.cli_main, ["data-bin", "--task", "se_mlm"]))
print(refusal(convert.main, ["to-hf", "model.pt", "hf-out"]))
print(refusal(finetune.cli_main, ["--checkpoint", "model.pt", "--task", "RTE", "--out", "ft"]))
"""


@pytest.mark.subprocess
def test_each_fairseq_command_names_the_missing_extra_in_one_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    result = run_blocked(FLOW, FAIRSEQ, tmp_path)
    assert_flow_ran(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("se-score: se-score on a data-bin folder"), lines
    assert lines[1].startswith("se-bench: "), lines
    assert lines[2].startswith("se-convert: "), lines
    assert lines[3].startswith("se-finetune: error: checkpoint model.pt"), lines
