"""The rarity score source: unigram surprisal from the train split, no model."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from support.fairseq_data import split_tokens, write_mmap_split

from se_fairseq import rarity
from se_fairseq.data import score_file


def flat(split_path):
    return np.concatenate(split_tokens(split_path)).astype(np.int64)


def test_counts_are_the_split_tokens_read_by_fairseq(corpus):
    tokens = flat(os.path.join(corpus, "train"))
    np.testing.assert_array_equal(rarity.load_tokens(os.path.join(corpus, "train")), tokens)
    unigram = rarity.Unigram.from_data(corpus)
    assert unigram.counts.sum() == len(tokens)
    np.testing.assert_array_equal(unigram.counts[: tokens.max() + 1], np.bincount(tokens))


def test_scores_are_smoothed_surprisal_and_rank_rarest_highest(corpus):
    unigram = rarity.Unigram.from_data(corpus)
    probs = np.exp(unigram.logp)
    assert probs.sum() == pytest.approx(1.0)
    assert all(probs[s] == 0 for s in unigram.special)
    # add-1 smoothing: an id never seen in train gets the lowest nonzero probability
    vocab = len(unigram.counts)
    assert len(unigram.special) == 5  # <s> <pad> </s> <unk> <mask>
    total = unigram.counts.sum() - unigram.counts[unigram.special].sum() + (vocab - 5)
    word = int(np.argmax(np.where(np.isin(np.arange(vocab), unigram.special), -1, unigram.counts)))
    assert probs[word] == pytest.approx((unigram.counts[word] + 1) / total)
    tokens = flat(os.path.join(corpus, "valid"))
    scores = unigram.scores(tokens)
    eos = tokens == 2
    assert (scores[eos] == 0).all() and (scores[~eos] > 0).all()
    # rarer in train -> higher score
    order = np.argsort(unigram.counts[tokens[~eos]])
    assert (np.diff(scores[~eos][order]) <= 1e-12).all()


def test_cross_entropy_and_accuracy(corpus):
    unigram = rarity.Unigram.from_data(corpus)
    tokens = flat(os.path.join(corpus, "valid"))
    tokens = tokens[~np.isin(tokens, unigram.special)]
    expected = -np.mean(unigram.logp[tokens]) / np.log(2)
    assert unigram.cross_entropy(tokens) == pytest.approx(expected)
    assert unigram.accuracy(tokens) == pytest.approx(
        100 * np.mean(tokens == np.argmax(unigram.logp))
    )
    with pytest.raises(ValueError, match="special"):
        unigram.cross_entropy(np.array([2, 5]))


@pytest.mark.slow
@pytest.mark.subprocess
def test_se_score_writes_a_rarity_file_without_a_checkpoint(corpus, tmp_path):
    data = str(tmp_path / "data-bin")
    shutil.copytree(corpus, data)
    for split in ("train", "valid"):
        out = subprocess.run(
            ["se-score", data, "--metric", "rarity", "--split", split],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "rarity:" in out.stdout and "wrote" in out.stdout
        split_path = os.path.join(data, split)
        scores = score_file.ScoreFile(score_file.default_prefix(split_path), split_path)
        assert scores.metric == "rarity"
        # the valid split is scored under the *train* unigram
        expected = rarity.Unigram.from_data(data).scores(flat(split_path))
        np.testing.assert_allclose(np.asarray(scores.scores, dtype=np.float32), expected, rtol=1e-3)
        meta = json.load(open(scores.meta_path))
        assert meta["checkpoint"] is None
        assert meta["rarity"]["counts_from"].endswith("train")
    # other metrics still need a checkpoint
    out = subprocess.run(["se-score", data], capture_output=True, text=True)
    assert out.returncode != 0 and "--path" in out.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_se_mlm_trains_on_rarity_scores(corpus, tmp_path):
    """fairseq-train --task se_mlm --se-metric rarity masks the rarest tokens of each block."""
    from support.fairseq_data import TINY_ROBERTA

    data = str(tmp_path / "data-bin")
    shutil.copytree(corpus, data)
    prefix = str(tmp_path / "train.rarity")
    subprocess.run(
        ["se-score", data, "--metric", "rarity", "--out", prefix], check=True, capture_output=True
    )
    cmd = [
        sys.executable,
        "-m",
        "fairseq_cli.train",
        data,
        *TINY_ROBERTA,
        "--task",
        "se_mlm",
        "--se-select",
        "topk",
        "--se-metric",
        "rarity",
        "--se-scores",
        prefix,
        "--criterion",
        "masked_lm",
        "--optimizer",
        "adam",
        "--lr",
        "1e-4",
        "--batch-size",
        "8",
        "--max-update",
        "3",
        "--cpu",
        "--no-save",
        "--disable-validation",
        "--num-workers",
        "0",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "rarity scores" in out.stdout + out.stderr


def test_rarity_score_file_has_the_summary_of_model_score_files(corpus, tmp_path):
    """Every score file carries a summary; rarity's is of the non-special tokens."""
    prefix = str(tmp_path / "train.rarity")
    (_, meta_path), _ = rarity.write_score_file(corpus, "train", prefix)
    summary = json.load(open(meta_path))["summary"]
    tokens = flat(os.path.join(corpus, "train"))
    unigram = rarity.Unigram.from_data(corpus)
    plain = tokens[~np.isin(tokens, unigram.special)]
    expected = (-unigram.logp[plain]).astype(np.float16).astype(np.float32)  # as stored
    assert summary["tokens"] == len(plain) and summary["special_tokens"] == len(tokens) - len(plain)
    assert summary["mean"] == pytest.approx(float(expected.mean()), rel=1e-3)
    assert summary["max"] == pytest.approx(float(expected.max()), rel=1e-3)
    assert summary["quantiles"]["50%"] == pytest.approx(float(np.median(expected)), rel=1e-2)
    assert sum(summary["histogram"]["counts"]) == len(plain)
    # every token is scored: no block is skipped (rarity needs no model positions)
    assert summary["tokens_not_scored"] == 0 and summary["blocks_skipped_too_long"] == 0
    assert summary["tokens_in_skipped_blocks"] == 0
    # the fields of a model score file's summary, where meaningful
    for key in (
        "tokens",
        "mean",
        "std",
        "min",
        "max",
        "quantiles",
        "histogram",
        "tokens_not_scored",
        "blocks_skipped_too_long",
        "tokens_in_skipped_blocks",
    ):
        assert key in summary


# -- the functions themselves, against numbers written out by hand ------------------------


def test_log_probs_is_add_alpha_over_the_non_special_ids():
    counts = np.array([5, 7, 0, 3, 0])
    np.testing.assert_allclose(
        np.exp(rarity.log_probs(counts, alpha=0.5, special=[0, 2])),
        [0, 7.5 / 11.5, 0, 3.5 / 11.5, 0.5 / 11.5],
    )
    np.testing.assert_allclose(np.exp(rarity.log_probs(counts)), np.array([6, 8, 1, 4, 1]) / 20)
    assert rarity.log_probs(counts, special=[2])[2] == -np.inf
    assert counts.tolist() == [5, 7, 0, 3, 0]  # not modified in place


def test_unigram_scores_cross_entropy_accuracy_by_hand():
    u = rarity.Unigram([0, 0, 0, 0, 10, 30, 0], special=[3, 0, 2, 1], source="x/train")
    p = {4: 11 / 43, 5: 31 / 43, 6: 1 / 43}
    assert u.special == [0, 1, 2, 3] and u.alpha == 1.0
    np.testing.assert_allclose(
        u.scores([4, 5, 6, 2, 0]), [-np.log(p[4]), -np.log(p[5]), -np.log(p[6]), 0, 0]
    )
    expected = -(np.log(p[5]) * 2 + np.log(p[4])) / 3
    assert u.cross_entropy([5, 5, 4], base=np.e) == pytest.approx(expected)
    assert u.cross_entropy([5, 5, 4]) == pytest.approx(expected / np.log(2))
    assert np.isnan(u.cross_entropy([])) and np.isnan(u.accuracy([]))
    with pytest.raises(ValueError, match="special"):
        u.cross_entropy([4, 3])
    assert u.accuracy([5, 4, 5, 6]) == 50.0 and u.accuracy([4]) == 0.0
    assert u.describe() == {
        "counts_from": "x/train",
        "counts_tokens": 40,
        "smoothing": "add-1",
        "log": "natural",
    }
    assert rarity.Unigram([1, 2], special=[], alpha=0.25).describe()["smoothing"] == "add-0.25"


def test_counts_refuse_ids_outside_the_dictionary_and_missing_splits(corpus, tmp_path):
    split = os.path.join(corpus, "train")
    with pytest.raises(ValueError, match="outside a dictionary of 10 entries"):
        rarity.unigram_counts(split, 10)
    tokens = flat(split)
    np.testing.assert_array_equal(
        rarity.unigram_counts(split, tokens.max() + 3),
        np.bincount(tokens, minlength=tokens.max() + 3),
    )
    # the largest id must lie inside the dictionary: ids 0..V-1
    with pytest.raises(ValueError, match=f"token id {tokens.max()}, outside"):
        rarity.unigram_counts(split, int(tokens.max()))
    counts = rarity.unigram_counts(split, int(tokens.max()) + 1)
    assert counts.dtype == np.int64 and counts[-1] == (tokens == tokens.max()).sum()
    with pytest.raises(FileNotFoundError, match="no binarized split"):
        rarity.load_tokens(str(tmp_path / "nothing"))


def test_write_score_file_in_process(corpus, tmp_path):
    """The library call behind se-score --metric rarity: valid scored under train's (or
    another split's) unigram, the file's metadata naming where the counts come from."""
    data = str(shutil.copytree(corpus, tmp_path / "data-bin"))
    (array, meta_path), scores = rarity.write_score_file(data, "valid", out=str(tmp_path / "r.npy"))
    assert (array, meta_path) == (str(tmp_path / "r.npy"), str(tmp_path / "r.json"))
    valid = flat(os.path.join(data, "valid"))
    np.testing.assert_allclose(scores, rarity.Unigram.from_data(data).scores(valid), rtol=1e-6)
    assert scores.dtype == np.float32
    meta = json.load(open(meta_path))
    assert meta["metric"] == "rarity" and meta["checkpoint"] is None
    assert meta["blocking"] == {"independent_of_blocking": True}
    assert meta["rarity"]["counts_from"] == os.path.join(data, "train")
    assert meta["rarity"]["counts_fingerprint"] == score_file.corpus_fingerprint(
        os.path.join(data, "train")
    )
    own, unigram = rarity.score_split(data, "valid", counts_split="valid", alpha=2.0)
    assert unigram.alpha == 2.0 and unigram.source == os.path.join(data, "valid")
    assert unigram.counts.sum() == len(valid) and not np.allclose(own, scores)


def test_defaults_score_train_under_train_and_forward_alpha(corpus, tmp_path):
    data = str(shutil.copytree(corpus, tmp_path / "data-bin"))
    scores, unigram = rarity.score_split(data)
    assert unigram.source == os.path.join(data, "train")
    assert len(scores) == len(flat(os.path.join(data, "train")))
    (array, meta_path), written = rarity.write_score_file(data, alpha=3.0)
    assert array == os.path.join(data, "train.se_scores.npy")
    assert json.load(open(meta_path))["rarity"]["smoothing"] == "add-3"
    np.testing.assert_allclose(written, rarity.score_split(data, alpha=3.0)[0])
    assert not np.allclose(written, scores)
    u = rarity.Unigram([0, 0, 0, 0, 10, 30], special=[0, 1, 2, 3])
    assert u.cross_entropy([5]) == pytest.approx(-np.log(31 / 42) / np.log(2))


@pytest.mark.fairseq
@pytest.mark.parametrize("sequences", [[], [[]], [[7]], [[5, 6], [], [9, 2, 3]]])
def test_load_tokens_reads_every_token_as_int64(tmp_path, sequences):
    """Small splits as fairseq writes them (uint16 ids): empty, one empty sequence, one
    token, several; the ids come back in file order as int64, whatever the file's dtype."""
    split = write_mmap_split(str(tmp_path / "train"), sequences)
    tokens = rarity.load_tokens(split)
    assert tokens.dtype == np.int64
    assert tokens.tolist() == [t for seq in sequences for t in seq]
    assert (
        rarity.unigram_counts(split, 10).tolist()
        == np.bincount(
            np.array([t for seq in sequences for t in seq], dtype=np.int64), minlength=10
        ).tolist()
    )
