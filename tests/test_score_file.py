"""Score files: round trip, no pickle, and refusal of files that do not fit the data."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

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


# -- prefixes, metadata and every refusal of the reader -----------------------------------

def test_prefix_rules():
    assert score_file.default_prefix("d/train") == "d/train.se_scores"
    for name in ("d/x", "d/x.npy", "d/x.json"):
        assert score_file.prefix_of(name) == "d/x"
    assert score_file.prefix_of("d/x.npz") == "d/x.npz"
    assert score_file.paths("d/x") == ("d/x.npy", "d/x.json")


def written(corpus, tmp_path, **extra):
    data = shutil.copytree(corpus, tmp_path / "d")
    split = os.path.join(data, "train")
    n = sum(map(len, split_tokens(split)))
    fingerprint = score_file.corpus_fingerprint(split)
    paths = score_file.write(str(tmp_path / "s"), np.linspace(0, 5, n), metric="confidence",
                             checkpoint={"path": "c.pt"}, blocking={"tokens_per_sample": 9},
                             fingerprint=fingerprint, **extra)
    return split, paths, fingerprint


def test_metadata_records_what_the_scores_come_from(corpus, tmp_path):
    split, (array, meta_path), fingerprint = written(corpus, tmp_path, extra={"summary": {"a": 1}})
    meta = json.load(open(meta_path))
    assert meta == {"format": "se-fairseq-scores", "version": 1, "dtype": "float16",
                    "metric": "confidence", "checkpoint": {"path": "c.pt"},
                    "blocking": {"tokens_per_sample": 9}, "corpus": fingerprint,
                    "unscored_ranges": [], "summary": {"a": 1}}
    assert np.load(array).dtype == np.float16
    loaded = ScoreFile(str(tmp_path / "s"), split, fingerprint=fingerprint)
    assert (loaded.array_path, loaded.meta_path) == (array, meta_path)
    assert fingerprint["num_sequences"] == len(split_tokens(split))
    assert fingerprint["bin_bytes"] == os.path.getsize(split + ".bin")
    assert len(fingerprint["sha256"]) == 64
    with pytest.raises(ScoreFileError, match="flat array"):
        score_file.write(str(tmp_path / "t"), np.zeros((2, 3)), metric="m", checkpoint=None,
                         blocking={}, fingerprint=fingerprint)


@pytest.mark.parametrize("damage, message", [
    (lambda a, m: open(m, "w").write("{not json"), "unreadable score metadata"),
    (lambda a, m: _edit_meta(m, format="other"), "not a se-fairseq score file"),
    (lambda a, m: _edit_meta(m, version=2), "not a se-fairseq score file"),
    (lambda a, m: np.save(a, np.load(a).astype(np.float32)), "expected a flat float16 array"),
    (lambda a, m: np.save(a, np.zeros((2, 2), np.float16)), "expected a flat float16"),
    (lambda a, m: np.save(a, np.load(a)[:-1]), "holds .* scores but .* tokens"),
    (lambda a, m: _edit_meta(m, corpus={"num_tokens": 1}), "another corpus"),
])
def test_reader_refusals(corpus, tmp_path, damage, message):
    split, (array, meta_path), _ = written(corpus, tmp_path)
    damage(array, meta_path)
    with pytest.raises(ScoreFileError, match=message):
        ScoreFile(str(tmp_path / "s"), split)


def _edit_meta(path, **changes):
    meta = json.load(open(path))
    meta.update(changes)
    json.dump(meta, open(path, "w"))


def test_fingerprint_of_a_large_split_samples_its_bytes(tmp_path):
    """Above 64 chunks of 64 KiB the fingerprint hashes 64 evenly spaced chunks (and all
    sizes): a change inside a sampled chunk is caught, one between them is not."""
    from fairseq.data import indexed_dataset

    prefix = str(tmp_path / "big")
    builder = indexed_dataset.MMapIndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    rng = np.random.default_rng(0)
    for _ in range(1100):
        builder.add_item(torch.from_numpy(rng.integers(4, 1000, 1000).astype(np.int32)))
    builder.finalize(prefix + ".idx")
    size = os.path.getsize(prefix + ".bin")
    assert size > 64 * 65536
    base = score_file.corpus_fingerprint(prefix)
    assert base["num_tokens"] == 1_100_000 and base["num_sequences"] == 1100

    def flipped(offset):
        raw = bytearray(open(prefix + ".bin", "rb").read())
        raw[offset] ^= 1
        open(prefix + ".bin", "wb").write(bytes(raw))
        out = score_file.corpus_fingerprint(prefix)["sha256"]
        raw[offset] ^= 1
        open(prefix + ".bin", "wb").write(bytes(raw))
        return out

    starts = np.linspace(0, size - 65536, 64).astype(np.int64)
    assert flipped(int(starts[10]) + 5) != base["sha256"]
    assert flipped(size - 1) != base["sha256"]  # the last chunk ends at the end of the file
    assert flipped(int(starts[10]) + 65536 + 7) == base["sha256"]  # between two chunks
    assert score_file.corpus_fingerprint(prefix) == base


def test_fingerprint_of_a_missing_split(tmp_path):
    with pytest.raises(ScoreFileError, match="no binarized split"):
        score_file.corpus_fingerprint(str(tmp_path / "none"))


def test_reader_refuses_a_pickled_array(corpus, tmp_path):
    """No pickle is ever loaded: an object array in the .npy is refused as damaged."""
    split, (array, _), _ = written(corpus, tmp_path)
    np.save(array, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ScoreFileError, match="damaged score array"):
        ScoreFile(str(tmp_path / "s"), split)


def _with_blocking(blocking):
    """A ScoreFile whose metadata records ``blocking`` (the comparison reads nothing else)."""
    scores = ScoreFile.__new__(ScoreFile)
    scores.meta = {"blocking": blocking}
    return scores


class _Mode:  # a config enum value: compared by its string, as the metadata stores it
    def __str__(self):
        return "complete"


def test_blocking_mismatch_compares_only_what_the_file_records():
    recorded = {"tokens_per_sample": 512, "sample_break_mode": "complete"}
    assert _with_blocking(recorded).blocking_mismatch(512, "complete") == {}
    assert _with_blocking(recorded).blocking_mismatch(np.int64(512), _Mode()) == {}
    assert _with_blocking(recorded).blocking_mismatch(32, "complete") == {
        "tokens_per_sample": (512, 32)}
    assert _with_blocking(recorded).blocking_mismatch(32, "none") == {
        "tokens_per_sample": (512, 32), "sample_break_mode": ("complete", "none")}
    # keys the file does not record are not compared; nothing recorded, nothing differs
    assert _with_blocking({"tokens_per_sample": 512}).blocking_mismatch(512, "none") == {}
    assert _with_blocking({"sample_break_mode": "eos"}).blocking_mismatch(7, "eos") == {}
    assert _with_blocking({"sample_break_mode": "eos"}).blocking_mismatch(7, "none") == {
        "sample_break_mode": ("eos", "none")}
    assert _with_blocking({}).blocking_mismatch(512, "complete") == {}
    assert _with_blocking(None).blocking_mismatch(512, "complete") == {}
    # scores that do not depend on the blocking (rarity) never differ
    independent = {"independent_of_blocking": True, "tokens_per_sample": 512}
    assert _with_blocking(independent).blocking_mismatch(32, "none") == {}
