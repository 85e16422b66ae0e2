"""Score files: round trip, no pickle, and refusal of files that do not fit the data."""

import json
import os
import shutil

import numpy as np
import pytest
from support.fairseq_data import split_tokens, write_mmap_split, write_scores

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


def test_scores_of_another_corpus_are_refused(corpus, other_corpus, tmp_path):
    data = shutil.copytree(corpus, tmp_path / "d")
    split = os.path.join(data, "train")
    write_scores(split, np.zeros(sum(map(len, split_tokens(split)))))
    # other text binarized with the same dictionary, put in the same place
    for ext in (".bin", ".idx"):
        shutil.copy(os.path.join(other_corpus, "train" + ext), split + ext)
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
    paths = score_file.write(
        str(tmp_path / "s"),
        np.linspace(0, 5, n),
        metric="confidence",
        checkpoint={"path": "c.pt"},
        blocking={"tokens_per_sample": 9},
        fingerprint=fingerprint,
        **extra,
    )
    return split, paths, fingerprint


def test_metadata_records_what_the_scores_come_from(corpus, tmp_path):
    split, (array, meta_path), fingerprint = written(corpus, tmp_path, extra={"summary": {"a": 1}})
    meta = json.load(open(meta_path))
    assert meta == {
        "format": "se-fairseq-scores",
        "version": 1,
        "dtype": "float16",
        "metric": "confidence",
        "checkpoint": {"path": "c.pt"},
        "blocking": {"tokens_per_sample": 9},
        "corpus": fingerprint,
        "unscored_ranges": [],
        "summary": {"a": 1},
    }
    assert np.load(array).dtype == np.float16
    loaded = ScoreFile(str(tmp_path / "s"), split, fingerprint=fingerprint)
    assert (loaded.array_path, loaded.meta_path) == (array, meta_path)
    assert fingerprint["num_sequences"] == len(split_tokens(split))
    assert fingerprint["bin_bytes"] == os.path.getsize(split + ".bin")
    assert len(fingerprint["sha256"]) == 64
    with pytest.raises(ScoreFileError, match="flat array"):
        score_file.write(
            str(tmp_path / "t"),
            np.zeros((2, 3)),
            metric="m",
            checkpoint=None,
            blocking={},
            fingerprint=fingerprint,
        )


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda a, m: open(m, "w").write("{not json"), "unreadable score metadata"),
        (lambda a, m: _edit_meta(m, format="other"), "not a se-fairseq score file"),
        (lambda a, m: _edit_meta(m, version=2), "not a se-fairseq score file"),
        (lambda a, m: np.save(a, np.load(a).astype(np.float32)), "expected a flat float16 array"),
        (lambda a, m: np.save(a, np.zeros((2, 2), np.float16)), "expected a flat float16"),
        (lambda a, m: np.save(a, np.load(a)[:-1]), "holds .* scores but .* tokens"),
        (lambda a, m: _edit_meta(m, corpus={"num_tokens": 1}), "another corpus"),
    ],
)
def test_reader_refusals(corpus, tmp_path, damage, message):
    split, (array, meta_path), _ = written(corpus, tmp_path)
    damage(array, meta_path)
    with pytest.raises(ScoreFileError, match=message):
        ScoreFile(str(tmp_path / "s"), split)


def _edit_meta(path, **changes):
    meta = json.load(open(path))
    meta.update(changes)
    json.dump(meta, open(path, "w"))


def _random_split(prefix, sequences, seed):
    """``sequences`` random sequences of 1,000 int32 ids: 4 KB each on disk."""
    rng = np.random.default_rng(seed)
    return write_mmap_split(
        prefix, [rng.integers(4, 1000, 1000) for _ in range(sequences)], dtype=np.int32
    )


@pytest.mark.fairseq
def test_fingerprint_of_a_large_split_samples_its_bytes(tmp_path):
    """Above 64 chunks of 64 KiB the fingerprint hashes 64 evenly spaced chunks (and all
    sizes): a change inside a sampled chunk is caught, one between them is not."""
    prefix = _random_split(str(tmp_path / "big"), 1100, seed=0)
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


@pytest.mark.fairseq
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
        "tokens_per_sample": (512, 32)
    }
    assert _with_blocking(recorded).blocking_mismatch(32, "none") == {
        "tokens_per_sample": (512, 32),
        "sample_break_mode": ("complete", "none"),
    }
    # keys the file does not record are not compared; nothing recorded, nothing differs
    assert _with_blocking({"tokens_per_sample": 512}).blocking_mismatch(512, "none") == {}
    assert _with_blocking({"sample_break_mode": "eos"}).blocking_mismatch(7, "eos") == {}
    assert _with_blocking({"sample_break_mode": "eos"}).blocking_mismatch(7, "none") == {
        "sample_break_mode": ("eos", "none")
    }
    assert _with_blocking({}).blocking_mismatch(512, "complete") == {}
    assert _with_blocking(None).blocking_mismatch(512, "complete") == {}
    # scores that do not depend on the blocking (rarity) never differ
    independent = {"independent_of_blocking": True, "tokens_per_sample": 512}
    assert _with_blocking(independent).blocking_mismatch(32, "none") == {}


# -- unscored ranges, at the edges of what the writer and the reader accept -----------------


@pytest.mark.parametrize("ranges", [[], [(0, 1)], [(0, 2), (2, 4)], [(3, 5), (7, 9)], "last"])
def test_unscored_ranges_inside_the_scores_are_written_and_read(corpus, tmp_path, ranges):
    """Ranges [start, end) with 0 <= start < end <= n, sorted, disjoint (touching is fine),
    stored as plain ints and read back as an int64 (k, 2) array; num_unscored is their
    total length."""
    split, _, fingerprint = written(corpus, tmp_path)
    n = fingerprint["num_tokens"]
    ranges = [(n - 1, n)] if ranges == "last" else ranges
    prefix = str(tmp_path / "u")
    _, meta_path = score_file.write(
        prefix,
        np.ones(n),
        metric="m",
        checkpoint=None,
        blocking={},
        fingerprint=fingerprint,
        unscored_ranges=[(np.int64(a), np.int64(b)) for a, b in ranges],
    )
    assert json.load(open(meta_path))["unscored_ranges"] == [[a, b] for a, b in ranges]
    loaded = ScoreFile(prefix, split)
    assert loaded.records_unscored
    assert loaded.unscored_ranges.dtype == np.int64 and loaded.unscored_ranges.shape == (
        len(ranges),
        2,
    )
    assert loaded.unscored_ranges.tolist() == [[a, b] for a, b in ranges]
    assert loaded.num_unscored == sum(b - a for a, b in ranges)


@pytest.mark.parametrize(
    "ranges,message",
    [
        ([(-1, 2)], "outside"),
        ([(2, 2)], "outside"),
        ([(3, 2)], "outside"),
        ("past", "outside"),
        ([(0, 3), (2, 4)], "sorted and disjoint"),
        ([(4, 6), (0, 2)], "sorted and disjoint"),
        ([(0, 2), (3, 5), (4, 6)], "sorted and disjoint"),  # only the 2nd and 3rd overlap
        ([(0, 5), (6, 8), (7, 9), (10, 11)], "sorted and disjoint"),
    ],
)
def test_writer_refuses_unscored_ranges_outside_or_overlapping(corpus, tmp_path, ranges, message):
    split, _, fingerprint = written(corpus, tmp_path)
    n = fingerprint["num_tokens"]
    ranges = [(n - 1, n + 1)] if ranges == "past" else ranges
    with pytest.raises(ScoreFileError, match=message):
        score_file.write(
            str(tmp_path / "u"),
            np.ones(n),
            metric="m",
            checkpoint=None,
            blocking={},
            fingerprint=fingerprint,
            unscored_ranges=ranges,
        )
    assert not os.path.exists(str(tmp_path / "u.json"))


@pytest.mark.parametrize(
    "ranges",
    [
        [[2, 2]],
        [[3, 2]],
        [[-1, 2]],
        "past",
        [[0, 3], [2, 4]],
        [[0, 2], [3, 5], [4, 6]],
        [[4, 6], [0, 2]],
    ],
)
def test_reader_refuses_damaged_unscored_ranges(corpus, tmp_path, ranges):
    split, (_, meta_path), fingerprint = written(corpus, tmp_path)
    n = fingerprint["num_tokens"]
    _edit_meta(meta_path, unscored_ranges=[[n - 1, n + 1]] if ranges == "past" else ranges)
    with pytest.raises(ScoreFileError, match="damaged unscored_ranges"):
        ScoreFile(str(tmp_path / "s"), split)


@pytest.mark.parametrize("ranges", [[[0, 1]], [[0, 2], [2, 4]], "last"])
def test_reader_accepts_unscored_ranges_at_the_edges(corpus, tmp_path, ranges):
    split, (_, meta_path), fingerprint = written(corpus, tmp_path)
    n = fingerprint["num_tokens"]
    ranges = [[n - 1, n]] if ranges == "last" else ranges
    _edit_meta(meta_path, unscored_ranges=ranges)
    assert ScoreFile(str(tmp_path / "s"), split).unscored_ranges.tolist() == ranges


def test_a_file_without_unscored_ranges_reads_as_an_older_file(corpus, tmp_path):
    split, (_, meta_path), _ = written(corpus, tmp_path)
    meta = json.load(open(meta_path))
    del meta["unscored_ranges"]
    meta["summary"] = {"tokens_not_scored": 7}
    json.dump(meta, open(meta_path, "w"))
    loaded = ScoreFile(str(tmp_path / "s"), split)
    assert not loaded.records_unscored and loaded.unscored_ranges.shape == (0, 2)
    assert loaded.num_unscored == 7  # the older files' summary count


# -- the corpus check names what differs ----------------------------------------------------


def test_another_corpus_message_lists_each_differing_field(corpus, tmp_path):
    split, (_, meta_path), fingerprint = written(corpus, tmp_path)
    recorded = dict(fingerprint, num_tokens=fingerprint["num_tokens"] + 1, sha256="0" * 64)
    _edit_meta(meta_path, corpus=recorded)
    with pytest.raises(ScoreFileError) as err:
        ScoreFile(str(tmp_path / "s"), split)
    assert (
        f"(num_tokens: score file {recorded['num_tokens']!r} vs data "
        f"{fingerprint['num_tokens']!r}, sha256: score file {'0' * 64!r} vs data "
        f"{fingerprint['sha256']!r}); recompute it with se-score"
    ) in str(err.value)
    meta = json.load(open(meta_path))
    del meta["corpus"]  # no fingerprint recorded at all: every field differs
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(ScoreFileError, match="num_sequences: score file None vs data"):
        ScoreFile(str(tmp_path / "s"), split)


@pytest.mark.parametrize("missing", [".bin", ".idx"])
def test_fingerprint_needs_both_files_of_the_split(corpus, tmp_path, missing):
    data = shutil.copytree(corpus, tmp_path / "d")
    split = os.path.join(data, "train")
    os.remove(split + missing)
    with pytest.raises(ScoreFileError, match=r"no binarized split at .*train\.\{bin,idx\}"):
        score_file.corpus_fingerprint(split)


@pytest.mark.fairseq
def test_fingerprint_hash_is_the_documented_sample(tmp_path):
    """The fingerprint's definition, written out with hashlib: sha256 of the sizes (int64
    bytes), then the whole .bin when it is at most 64 chunks of 64 KiB, else the 64 chunks
    of 64 KiB starting at np.linspace(0, size - 64 KiB, 64) (truncated to ints). Existing
    score files depend on it: any other sample would refuse them all."""
    import hashlib

    for name, sequences in (("small", 300), ("big", 1100)):
        prefix = _random_split(str(tmp_path / name), sequences, seed=1)
        sizes = [1000] * sequences
        raw = open(prefix + ".bin", "rb").read()
        digest = hashlib.sha256(np.array(sizes, dtype=np.int64).tobytes())
        if len(raw) <= 64 * 65536:
            digest.update(raw)
        else:
            for start in np.linspace(0, len(raw) - 65536, 64).astype(np.int64):
                digest.update(raw[start : start + 65536])
        assert score_file.corpus_fingerprint(prefix) == {
            "num_sequences": sequences,
            "num_tokens": sum(sizes),
            "bin_bytes": len(raw),
            "sha256": digest.hexdigest(),
        }
