"""se-score --max-tokens auto: the documented rule (GPU memory), the fixed default on the CPU."""

import shutil

import pytest
import torch

from se_fairseq.cli.score import build_parser
from se_fairseq.core.scores import LOGITS_BUDGET
from se_fairseq.scoring_job import DEFAULT_MAX_TOKENS, ScoringError, ScoringJob, auto_max_tokens


@pytest.fixture
def data(corpus, tmp_path):
    return str(shutil.copytree(corpus, tmp_path / "data-bin"))


def test_the_option_takes_auto_or_a_number():
    assert build_parser().parse_args(["d", "--max-tokens", "auto"]).max_tokens == "auto"
    assert build_parser().parse_args(["d", "--max-tokens", "4096"]).max_tokens == 4096
    with pytest.raises(SystemExit):
        build_parser().parse_args(["d", "--max-tokens", "lots"])


def test_auto_on_the_cpu_is_the_default_and_on_a_gpu_follows_free_memory(
    untrained_checkpoint, data, monkeypatch
):
    job = ScoringJob(data, untrained_checkpoint, max_tokens="auto")
    assert job.max_tokens == DEFAULT_MAX_TOKENS
    with pytest.raises(ScoringError, match="exclude each other"):
        ScoringJob(data, untrained_checkpoint, max_tokens="auto", batch_size=4)
    free = 8 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    # TINY_ROBERTA: dim 32, ffn 64, 2 heads, 64-token blocks, fp32
    per_token = 4 * (6 * 32 + 2 * 64 + 2 * 2 * 64)
    expected = int((0.6 * free - 12 * LOGITS_BUDGET) // per_token) // 64 * 64
    assert auto_max_tokens(job.model, "cuda", 64) == min(expected, 1 << 20)
    free = 1 << 20  # too little: one block all the same
    assert auto_max_tokens(job.model, "cuda", 64) == 64
