"""se-bench: both pipelines run whole epochs and the printed ratio is theirs."""

import re
import subprocess

import pytest

pytest.importorskip("fairseq", reason="the fairseq side: pip install 'se-fairseq[fairseq]'")


@pytest.mark.slow
@pytest.mark.subprocess
def test_se_bench_compares_se_mlm_with_masked_lm(scored_corpus):
    result = subprocess.run(
        [
            "se-bench",
            scored_corpus,
            "--task",
            "se_mlm",
            "--se-select",
            "topk",
            "--tokens-per-sample",
            "64",
            "--batch-size",
            "8",
            "--num-workers",
            "1",
            "--rounds",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    rates = dict(
        re.findall(
            r"^(masked_lm \(baseline\)|se_mlm --se-select topk)\s+([\d.]+)",
            result.stdout,
            flags=re.M,
        )
    )
    assert len(rates) == 2, result.stdout
    ratio = float(
        re.search(r"ratio se_mlm / masked_lm \(batches/s\): ([\d.]+)", result.stdout).group(1)
    )
    expected = float(rates["se_mlm --se-select topk"]) / float(rates["masked_lm (baseline)"])
    assert abs(ratio - expected) < 0.02 * expected + 0.01
    rounds = re.findall(r"^round (\d)/2 .* (\d+) batches", result.stdout, flags=re.M)
    assert len(rounds) == 4 and len({b for _, b in rounds}) == 1  # same batches per epoch


def test_se_bench_help_is_one_text_with_data_and_the_task_options(capsys):
    from se_fairseq.cli.bench import parse

    with pytest.raises(SystemExit) as stop:
        parse(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.count("usage:") == 1 and text.startswith("usage: se-bench DATA")
    for option in (
        "--se-select",
        "--se-online",
        "--mask-prob",
        "--tokens-per-sample",
        "--max-tokens",
        "--num-workers",
        "--baseline-task",
        "--split",
        "--max-batches",
    ):
        assert option in text, option
    with pytest.raises(SystemExit):
        parse(["--task", "masked_lm", "-h"])
    text = capsys.readouterr().out
    assert "task masked_lm" in text and "--se-threshold-fallback" not in text


def test_se_bench_refuses_online_se_saying_why(scored_corpus):
    from se_fairseq.cli.bench import parse
    from se_fairseq.pipeline_bench import compare_pipelines

    with pytest.raises(SystemExit, match="--se-online masks in the train step"):
        parse([scored_corpus, "--se-online", "--tokens-per-sample", "64", "--batch-size", "8"])
    args, base_args, _ = parse([scored_corpus, "--tokens-per-sample", "64", "--batch-size", "8"])
    args.se_online = True  # the library refuses too
    with pytest.raises(ValueError, match="no masking to time"):
        compare_pipelines(args, base_args, rounds=1)


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("task", ["masked_lm", "se_mlm"])
def test_se_bench_stopping_epochs_early_exits_cleanly(scored_corpus, task):
    """--max-batches well below an epoch, data loading in the main process: fairseq's
    prefetch thread must be stopped, not left blocked at exit (was rc 134, 'terminate
    called without an active exception', in most runs)."""
    for _ in range(3):
        result = subprocess.run(
            [
                "se-bench",
                scored_corpus,
                "--task",
                task,
                "--tokens-per-sample",
                "64",
                "--batch-size",
                "1",
                "--max-batches",
                "5",
                "--num-workers",
                "0",
                "--rounds",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-3000:]
        assert "terminate called" not in result.stdout
        assert len(re.findall(r"^round 1/1 .* 5 batches", result.stdout, flags=re.M)) == 2
