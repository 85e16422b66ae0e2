"""Score files: round trip, no pickle, and refusal of files that do not fit the data."""
import json
import os
import shutil

import numpy as np
import pytest

from se_fairseq.testing import binarize, split_tokens, write_zipf_corpus, write_scores
from se_fairseq.data import score_file
from se_fairseq.data.score_file import ScoreFile, ScoreFileError


def test_round_trip_is_aligned_with_the_split(corpus, tmp_path):
    data = shutil.copytree(corpus, tmp_path / "d")
    split = os.path.join(data, "train")
    tokens = split_tokens(split)
    flat = np.concatenate(tokens)
    scores = np.arange(len(flat)) % 1000 / 10.0
    array_path, meta_path = write_scores(split, scores, metric="confidence")
    loaded = ScoreFile(score_file.default_prefix(split), split)
    assert loaded.metric == "confidence"
    assert isinstance(loaded.scores, np.memmap)
    np.testing.assert_allclose(loaded.scores, scores.astype(np.float16))
    meta = json.load(open(meta_path))
    assert meta["corpus"]["num_tokens"] == len(flat)
    assert meta["corpus"]["num_sequences"] == len(tokens)
    # plain .npy, readable without pickle
    np.load(array_path, allow_pickle=False)
    assert not any(f.endswith(".tmp") or ".tmp-" in f for f in os.listdir(data))


def test_scores_of_another_corpus_are_refused(corpus, tmp_path):
    data = shutil.copytree(corpus, tmp_path / "d")
    split = os.path.join(data, "train")
    write_scores(split, np.zeros(sum(map(len, split_tokens(split)))))
    # re-binarize other text with the same dictionary into the same place
    other = tmp_path / "other"
    other.mkdir()
    write_zipf_corpus(str(other), seed=7)
    binarize(str(other), str(tmp_path / "other-bin"), srcdict=os.path.join(corpus, "dict.txt"))
    for ext in (".bin", ".idx"):
        shutil.copy(str(tmp_path / "other-bin" / ("train" + ext)), split + ext)
    with pytest.raises(ScoreFileError) as err:
        ScoreFile(score_file.default_prefix(split), split)
    message = str(err.value)
    assert "train.se_scores.json" in message and split in message and "another corpus" in message


def test_same_sizes_other_content_is_refused(corpus, tmp_path):
    data = shutil.copytree(corpus, tmp_path / "d")
    split = os.path.join(data, "train")
    write_scores(split, np.zeros(sum(map(len, split_tokens(split)))))
    raw = bytearray(open(split + ".bin", "rb").read())
    raw[10] ^= 1  # one token changed, sizes identical
    open(split + ".bin", "wb").write(bytes(raw))
    with pytest.raises(ScoreFileError, match="sha256"):
        ScoreFile(score_file.default_prefix(split), split)


def test_truncated_score_file_is_refused(corpus, tmp_path):
    data = shutil.copytree(corpus, tmp_path / "d")
    split = os.path.join(data, "train")
    array_path, _ = write_scores(split, np.ones(sum(map(len, split_tokens(split)))))
    size = os.path.getsize(array_path)
    with open(array_path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(ScoreFileError, match="damaged|truncated"):
        ScoreFile(score_file.default_prefix(split), split)


def test_missing_score_file_names_both(corpus):
    split = os.path.join(corpus, "valid")
    with pytest.raises(ScoreFileError) as err:
        ScoreFile(score_file.default_prefix(split), split)
    assert "valid.se_scores" in str(err.value) and "not found" in str(err.value)


def test_writer_refuses_nan_and_wrong_length(corpus, tmp_path):
    data = shutil.copytree(corpus, tmp_path / "d")
    split = os.path.join(data, "train")
    n = sum(map(len, split_tokens(split)))
    bad = np.zeros(n)
    bad[5] = np.nan
    with pytest.raises(ScoreFileError, match="NaN"):
        write_scores(split, bad)
    with pytest.raises(ScoreFileError, match="scores for a corpus"):
        write_scores(split, np.zeros(n - 1))
    assert not os.path.exists(score_file.default_prefix(split) + ".npy")
