"""Training compute in token passes (se_fairseq.core.compute) on the fairseq path: each
step counts its tokens times 3 (forward and backward) plus one per extra forward without
gradient, and the run's total holds the score file's scoring pass; written out by hand
from the definitions."""

import os
import re

import numpy as np
import pytest
from support.fairseq_data import TINY_ROBERTA, fairseq_train, setup_task

from se_fairseq.data import score_file


def _task(data, *extra):
    return setup_task(data, *TINY_ROBERTA, "--cpu", "--seed", "5", "--task", "se_mlm", *extra)


@pytest.mark.parametrize(
    "extra, passes",
    [
        (["--se-select", "random", "--criterion", "masked_lm"], 3),
        (["--se-select", "random", "--criterion", "token_ls", "--tls-alpha", "0"], 3),
        (["--criterion", "token_ls"], 4),  # offline TLS: p_ref's forward
        (["--criterion", "token_ls", "--tls-ref", "uniform"], 3),
        (["--se-online", "--criterion", "token_ls"], 4),  # one forward: scores and p_ref
    ],
)
def test_a_steps_passes(scored_corpus, extra, passes):
    task, cfg = _task(scored_corpus, *extra)
    assert task.step_passes(task.build_criterion(cfg.criterion)) == passes


def test_the_total_holds_the_scoring_pass_and_every_step(corpus, tmp_path):
    """A score file of 1,000 scored tokens (excess: two forwards each) and two steps of
    512 and 256 tokens at 4 passes: 2,000 + 3,072."""
    import shutil

    from fairseq.logging import metrics

    data = str(tmp_path / "data-bin")
    shutil.copytree(corpus, data)
    split = os.path.join(data, "train")
    fingerprint = score_file.corpus_fingerprint(split)
    score_file.write(
        score_file.default_prefix(split),
        np.zeros(fingerprint["num_tokens"]),
        metric="excess",
        checkpoint={"path": "synthetic"},
        blocking={"independent_of_blocking": True},
        fingerprint=fingerprint,
        extra={"summary": {"tokens": 1000}},
    )
    task, cfg = _task(data, "--criterion", "token_ls", "--se-metric", "excess")
    task.load_dataset("train")
    criterion = task.build_criterion(cfg.criterion)
    metrics.reset()
    with metrics.aggregate("interval") as interval:
        task.reduce_metrics([{"tok_passes": 512 * 4, "sample_size": 1}], criterion)
        task.reduce_metrics([{"tok_passes": 256 * 4, "sample_size": 1}], criterion)
    values = interval.get_smoothed_values()
    assert values["tok_passes"] == 3072
    assert values["tok_passes_total"] == 2000 + 3072
    assert task.state_dict() == {"scoring_passes": 2000}
    # loading the split again does not count the scoring twice
    task.load_dataset("train")
    assert task.state_dict() == {"scoring_passes": 2000}


@pytest.mark.slow
@pytest.mark.subprocess
def test_fairseq_train_logs_the_runs_compute_and_resumes_it(scored_corpus, tmp_path):
    save = str(tmp_path / "ckpt")
    common = ("--task", "se_mlm", "--criterion", "token_ls", "--log-interval", "1")
    first = fairseq_train(scored_corpus, save, *common, max_update=3)
    assert first.returncode == 0, first.stdout[-3000:]
    second = fairseq_train(scored_corpus, save, *common, max_update=5)
    assert second.returncode == 0, second.stdout[-3000:]

    def inner(log):
        lines = [line for line in log.splitlines() if "| train_inner |" in line]
        return [
            (int(re.search(r"wpb=(\d+)", line).group(1)),
             int(re.search(r"tok_passes_total=(\d+)", line).group(1)))
            for line in lines
        ]  # fmt: skip

    steps = inner(first.stdout) + inner(second.stdout)
    assert len(steps) == 5
    running = 0
    for tokens, total in steps:  # offline TLS: 4 passes per token, counted across the resume
        running += 4 * tokens
        assert total == running
