"""se-score: scores against a dense computation, resume, sharding, refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.fairseq_data import binarize, split_tokens, write_zipf_corpus

from se_fairseq.data.score_file import ScoreFile


def se_score(data, ckpt, *extra, env=None, check=True):
    run_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    result = subprocess.run(
        ["se-score", data, "--path", ckpt, "--no-progress-bar", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=run_env,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:]
    return result


@pytest.fixture
def data(corpus, tmp_path):
    return str(shutil.copytree(corpus, tmp_path / "data-bin"))


def dense_scores(ckpt, data, metric):
    """Independent: fairseq's own loader, full logits at every position, log-softmax."""
    from fairseq import checkpoint_utils
    from fairseq.data import PrependTokenDataset, TokenBlockDataset, data_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [ckpt], arg_overrides={"data": data}
    )
    model = models[0].eval()
    d = task.source_dictionary
    tokens = data_utils.load_indexed_dataset(os.path.join(data, "train"), d)
    blocks = TokenBlockDataset(
        tokens,
        tokens.sizes,
        cfg.task.tokens_per_sample - 1,
        pad=d.pad(),
        eos=d.eos(),
        break_mode=cfg.task.sample_break_mode,
    )
    items = PrependTokenDataset(blocks, d.bos())
    out = np.zeros(int(tokens.sizes.sum()), dtype=np.float64)
    with torch.no_grad():
        for b in range(len(items)):
            src = items[b].unsqueeze(0)
            lprobs = torch.log_softmax(model(src)[0][0].double(), dim=-1)
            if metric == "correctness":
                s = -lprobs[torch.arange(len(src[0])), src[0]]
            else:
                s = -(lprobs.exp() * lprobs).sum(-1)
            start, end = blocks.slice_indices[b]
            out[start:end] = s[1:].numpy()
    return out


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("metric", ["correctness", "confidence"])
def test_scores_equal_a_dense_computation(vanilla_checkpoint, data, metric):
    result = se_score(data, vanilla_checkpoint, "--metric", metric, "--max-tokens", "512")
    assert "quantiles" in result.stdout and "tokens" in result.stdout
    split = os.path.join(data, "train")
    loaded = ScoreFile(split + ".se_scores", split)
    assert loaded.metric == metric
    assert loaded.meta["blocking"]["tokens_per_sample"] == 64  # the checkpoint's own
    assert loaded.meta["checkpoint"]["path"] == os.path.abspath(vanilla_checkpoint)
    expected = dense_scores(vanilla_checkpoint, data, metric)
    np.testing.assert_allclose(loaded.scores.astype(np.float64), expected, rtol=1e-3, atol=1e-3)
    assert loaded.meta["summary"]["tokens"] == len(expected)


@pytest.mark.subprocess
@pytest.mark.slow
def test_stop_and_resume_gives_the_uninterrupted_file(vanilla_checkpoint, data, tmp_path):
    full = str(tmp_path / "full")
    se_score(data, vanilla_checkpoint, "--out", full, "--chunk-tokens", "500")
    part = str(tmp_path / "part")
    first = se_score(
        data, vanilla_checkpoint, "--out", part, "--chunk-tokens", "500", "--stop-after-chunks", "3"
    )
    assert "run the same command again to resume" in first.stdout
    assert not os.path.exists(part + ".npy")  # partial output is never the score file
    assert len([f for f in os.listdir(part + ".partial") if f.startswith("chunk-")]) == 3
    second = se_score(data, vanilla_checkpoint, "--out", part, "--chunk-tokens", "500")
    assert "resuming: 3 chunk(s)" in second.stdout
    assert open(part + ".npy", "rb").read() == open(full + ".npy", "rb").read()
    assert not os.path.exists(part + ".partial")


@pytest.mark.subprocess
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_file(vanilla_checkpoint, data, tmp_path):
    """SIGKILL right after the third chunk is saved (from inside the process, so the kill
    lands mid-run whatever the machine's speed), then a plain rerun."""
    full = str(tmp_path / "full")
    se_score(data, vanilla_checkpoint, "--out", full, "--chunk-tokens", "200", "--batch-size", "1")
    out = str(tmp_path / "killed")
    killer = (
        "import os, signal, sys\n"
        "from se_fairseq import scoring_job\n"
        "from se_fairseq.cli import score\n"
        "save = scoring_job.ScoringJob.score_chunk\n"
        "done = []\n"
        "def score_chunk(self, i, progress=None):\n"
        "    save(self, i, progress)\n"
        "    done.append(i)\n"
        "    if len(done) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "scoring_job.ScoringJob.score_chunk = score_chunk\n"
        "sys.exit(score.main(sys.argv[1:]))\n"
    )
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            killer,
            data,
            "--path",
            vanilla_checkpoint,
            "--out",
            out,
            "--chunk-tokens",
            "200",
            "--batch-size",
            "1",
            "--no-progress-bar",
        ],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    chunks = [f for f in os.listdir(out + ".partial") if f.startswith("chunk-")]
    total = len(json.load(open(os.path.join(out + ".partial", "manifest.json")))["chunks"])
    assert len(chunks) == 3 < total  # killed mid-run, not after the end
    assert not os.path.exists(out + ".npy")
    resumed = se_score(
        data, vanilla_checkpoint, "--out", out, "--chunk-tokens", "200", "--batch-size", "1"
    )
    assert "resuming: 3 chunk(s)" in resumed.stdout
    assert open(out + ".npy", "rb").read() == open(full + ".npy", "rb").read()


@pytest.fixture
def long_sentence_data(corpus, tmp_path):
    """The corpus's words (same dictionary), with train lines of up to 150 tokens: in
    complete/eos mode they make blocks longer than the tiny model's 64 positions."""
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(200)]
    text = tmp_path / "long-text"
    text.mkdir()
    for split, n in (("train", 200), ("valid", 20)):
        longest = 150 if split == "train" else 40
        with open(text / f"{split}.txt", "w") as f:
            for _ in range(n):
                f.write(" ".join(rng.choice(words, size=rng.integers(3, longest))) + "\n")
    return binarize(str(text), str(tmp_path / "long-bin"), srcdict=os.path.join(corpus, "dict.txt"))


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("break_mode", ["complete", "eos"])
def test_blocks_longer_than_the_model_are_skipped_as_fairseq_train_does(
    vanilla_checkpoint, long_sentence_data, tmp_path, break_mode
):
    from fairseq.data import Dictionary, TokenBlockDataset, data_utils
    from support.fairseq_data import fairseq_train

    data = long_sentence_data
    result = se_score(data, vanilla_checkpoint, "--sample-break-mode", break_mode)
    split = os.path.join(data, "train")
    d = Dictionary.load(os.path.join(data, "dict.txt"))
    tokens = data_utils.load_indexed_dataset(split, d)
    blocks = TokenBlockDataset(
        tokens, tokens.sizes, 63, pad=d.pad(), eos=d.eos(), break_mode=break_mode
    )
    spans = np.asarray(blocks.slice_indices)
    too_long = spans[:, 1] - spans[:, 0] + 1 > 64  # with <s>, past the 64 positions
    assert too_long.sum() > 5
    loaded = ScoreFile(split + ".se_scores", split)
    summary = loaded.meta["summary"]
    assert summary["blocks_skipped_too_long"] == int(too_long.sum())
    skipped_tokens = int((spans[too_long, 1] - spans[too_long, 0]).sum())
    assert summary["tokens_in_skipped_blocks"] == skipped_tokens
    assert f"skipped {int(too_long.sum())} blocks longer than 64 positions" in result.stdout
    kept = np.zeros(len(loaded.scores), dtype=bool)
    for start, end in spans[~too_long]:
        kept[start:end] = True
    assert summary["tokens"] == int(kept.sum())
    assert (loaded.scores[~kept] == 0).all() and (loaded.scores[kept] > 0).mean() > 0.99
    trained = fairseq_train(
        data,
        str(tmp_path / "ck"),
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        "--sample-break-mode",
        break_mode,
        "--num-workers",
        "1",  # fairseq-train's default
        "--restore-file",
        vanilla_checkpoint,
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        max_update=4,
    )
    assert trained.returncode == 0, trained.stdout[-3000:]
    assert f"{int(too_long.sum())} samples have invalid sizes and will be skipped" in trained.stdout


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_ranks_under_torchrun_equal_one_process(vanilla_checkpoint, data, tmp_path):
    one = str(tmp_path / "one")
    se_score(data, vanilla_checkpoint, "--out", one, "--chunk-tokens", "700", "--cpu")
    two = str(tmp_path / "two")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "--no-python",
            "se-score",
            data,
            "--path",
            vanilla_checkpoint,
            "--out",
            two,
            "--chunk-tokens",
            "700",
            "--cpu",
            "--no-progress-bar",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 rank(s)" in result.stdout
    assert open(two + ".npy", "rb").read() == open(one + ".npy", "rb").read()


@pytest.mark.subprocess
@pytest.mark.slow
def test_checkpoint_with_another_dictionary_is_refused(vanilla_checkpoint, tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    write_zipf_corpus(str(text), seed=3)
    with open(text / "train.txt", "a") as f:  # new words: a bigger dictionary
        f.write(" ".join(f"extra{i}" for i in range(50)) + "\n")
    other = binarize(str(text), str(tmp_path / "other-bin"))
    result = se_score(other, vanilla_checkpoint, check=False)
    assert result.returncode != 0
    assert "dictionary" in result.stdout and "dict.txt" in result.stdout
    assert not os.path.exists(os.path.join(other, "train.se_scores.npy"))


@pytest.mark.subprocess
@pytest.mark.slow
def test_partial_results_of_other_options_are_refused(vanilla_checkpoint, data, tmp_path):
    out = str(tmp_path / "s")
    se_score(
        data, vanilla_checkpoint, "--out", out, "--chunk-tokens", "500", "--stop-after-chunks", "1"
    )
    result = se_score(
        data,
        vanilla_checkpoint,
        "--out",
        out,
        "--chunk-tokens",
        "500",
        "--metric",
        "confidence",
        check=False,
    )
    assert result.returncode != 0 and "partial results of another run" in result.stdout
    assert "metric" in result.stdout


@pytest.mark.subprocess
@pytest.mark.slow
def test_se_mlm_trains_on_se_score_output(vanilla_checkpoint, data, tmp_path):
    from support.fairseq_data import fairseq_train

    se_score(data, vanilla_checkpoint)
    result = fairseq_train(
        data,
        str(tmp_path / "ck"),
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        "--restore-file",
        vanilla_checkpoint,
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        max_update=5,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    meta = json.load(open(os.path.join(data, "train.se_scores.json")))
    assert meta["corpus"]["num_tokens"] == sum(map(len, split_tokens(os.path.join(data, "train"))))


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_split_where_every_block_is_too_long_is_an_error(vanilla_checkpoint, data):
    """Blocks of 5 positions, complete: every sentence (4+ words, </s>, and <s>) is longer,
    so nothing could be scored: a non-zero exit with the reason, and no score file."""
    result = se_score(
        data,
        vanilla_checkpoint,
        "--tokens-per-sample",
        "5",
        "--sample-break-mode",
        "complete",
        check=False,
    )
    assert result.returncode != 0
    assert "se-score: every one of the" in result.stdout and "nothing to score" in result.stdout
    assert "Traceback" not in result.stdout
    assert not os.path.exists(os.path.join(data, "train.se_scores.npy"))


@pytest.mark.subprocess
@pytest.mark.slow
def test_skipped_blocks_are_recorded_as_unscored_ranges(vanilla_checkpoint, long_sentence_data):
    from fairseq.data import Dictionary, TokenBlockDataset, data_utils

    data = long_sentence_data
    se_score(data, vanilla_checkpoint, "--sample-break-mode", "complete")
    split = os.path.join(data, "train")
    tokens = data_utils.load_indexed_dataset(split, Dictionary.load(os.path.join(data, "dict.txt")))
    blocks = TokenBlockDataset(tokens, tokens.sizes, 63, pad=1, eos=2, break_mode="complete")
    spans = np.asarray(blocks.slice_indices)
    too_long = spans[:, 1] - spans[:, 0] + 1 > 64
    expected = np.zeros(int(tokens.sizes.sum()), dtype=bool)
    for start, end in spans[too_long]:
        expected[start:end] = True
    loaded = ScoreFile(split + ".se_scores", split)
    recorded = np.zeros_like(expected)
    for start, end in loaded.unscored_ranges:
        recorded[start:end] = True
    assert too_long.sum() > 5 and (recorded == expected).all()
    assert loaded.num_unscored == loaded.meta["summary"]["tokens_not_scored"] == expected.sum()
