"""Score files: one self-questioning score per token of a binarized split.

A split ``data-bin/train.{bin,idx}`` gets two files beside it:

- ``train.se_scores.npy``: a flat float16 array (plain ``.npy``, no pickle) with
  one score per token of ``train.bin``, in the same order; sequence ``i``'s
  scores start at the sum of the sizes of the sequences before it.
- ``train.se_scores.json``: what the scores were computed from: metric,
  checkpoint, blocking, a fingerprint of the corpus, and ``unscored_ranges``:
  the ``[start, end)`` token offsets (file order) that hold no score (blocks
  se-score skipped as longer than the model). Their array entries are 0; they
  are not scores, and readers must not rank them (ScoreDataset marks them NaN
  in memory, se_mlm never selects them by score).

float16 keeps the file at the size of the token file; numpy, not torch, holds
it (torch's uint16/float16 memory-mapping support is thin). Readers memory-map
the array. Writers write to a temporary name and rename (``se_fairseq.core.files``),
so a file that exists is complete.
"""

import hashlib
import json
import os

import numpy as np

from se_fairseq.core.files import atomic_save_npy, atomic_write_json

FORMAT = "se-fairseq-scores"
VERSION = 1
SCORE_DTYPE = np.float16
_SAMPLED_CHUNKS = 64
_CHUNK_BYTES = 1 << 16


class ScoreFileError(ValueError):
    """A score file that is missing, damaged or does not match its data."""


def default_prefix(split_path):
    """``data-bin/train`` -> ``data-bin/train.se_scores``."""
    return f"{split_path}.se_scores"


def prefix_of(path):
    """The prefix a user may name either way: ``x``, ``x.npy`` or ``x.json`` -> ``x``."""
    for ext in (".npy", ".json"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def paths(prefix):
    return prefix + ".npy", prefix + ".json"


def corpus_fingerprint(split_path):
    """Identify a binarized split: its sizes and a sample of its token bytes.

    Reads the fairseq mmap ``.idx`` for the sizes and hashes all of them plus
    up to 64 evenly spaced 64 KiB chunks of ``.bin`` (the whole file when it is
    small), so a re-binarized corpus (other text, other dictionary) is caught
    without reading a large corpus in full.
    """
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    idx, bin_ = split_path + ".idx", split_path + ".bin"
    if not os.path.exists(idx) or not os.path.exists(bin_):
        raise ScoreFileError(f"no binarized split at {split_path}.{{bin,idx}}")
    if not MMapIndexedDataset.exists(split_path):
        raise ScoreFileError(f"{idx}: score files need fairseq's mmap dataset format")
    index = MMapIndexedDataset.Index(idx)  # its sizes are a view of its mmap: copy first
    sizes = np.array(index.sizes, dtype=np.int64)
    del index
    digest = hashlib.sha256()
    digest.update(sizes.tobytes())
    nbytes = os.path.getsize(bin_)
    with open(bin_, "rb") as f:
        if nbytes <= _SAMPLED_CHUNKS * _CHUNK_BYTES:
            digest.update(f.read())
        else:
            for offset in np.linspace(0, nbytes - _CHUNK_BYTES, _SAMPLED_CHUNKS).astype(np.int64):
                f.seek(int(offset))
                digest.update(f.read(_CHUNK_BYTES))
    return {
        "num_sequences": int(len(sizes)),
        "num_tokens": int(sizes.sum()),
        "bin_bytes": int(nbytes),
        "sha256": digest.hexdigest(),
    }


def write(
    prefix, scores, *, metric, checkpoint, blocking, fingerprint, extra=None, unscored_ranges=()
):
    """Atomically write a score file (array + metadata). Returns the paths.

    ``unscored_ranges``: ``(start, end)`` token offsets that hold no score (0 in the
    array); recorded so that no reader ranks them as scores.
    """
    scores = np.asarray(scores)
    unscored_ranges = [[int(a), int(b)] for a, b in unscored_ranges]
    for a, b in unscored_ranges:
        if not 0 <= a < b <= len(scores):
            raise ScoreFileError(
                f"{prefix}: unscored range [{a}, {b}) outside the {len(scores)} scores"
            )
    if scores.ndim != 1:
        raise ScoreFileError(f"{prefix}: scores must be a flat array, got shape {scores.shape}")
    if len(scores) != fingerprint["num_tokens"]:
        raise ScoreFileError(
            f"{prefix}: {len(scores)} scores for a corpus of {fingerprint['num_tokens']} tokens"
        )
    if np.isnan(scores).any():
        raise ScoreFileError(f"{prefix}: refusing to write NaN scores")
    if any(b[0] < a[1] for a, b in zip(unscored_ranges, unscored_ranges[1:])):
        raise ScoreFileError(f"{prefix}: unscored ranges must be sorted and disjoint")
    array_path, meta_path = paths(prefix)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": np.dtype(SCORE_DTYPE).name,
        "metric": metric,
        "checkpoint": checkpoint,
        "blocking": blocking,
        "corpus": fingerprint,
        "unscored_ranges": unscored_ranges,
    }
    meta.update(extra or {})
    atomic_save_npy(array_path, scores.astype(SCORE_DTYPE))
    atomic_write_json(meta_path, meta)
    return array_path, meta_path


class ScoreFile:
    """A memory-mapped score file checked against the split it belongs to."""

    def __init__(self, prefix, split_path, fingerprint=None):
        array_path, meta_path = paths(prefix)
        for p in (array_path, meta_path):
            if not os.path.exists(p):
                raise ScoreFileError(
                    f"score file {p} not found for data {split_path}; run se-score on this "
                    "split first, or pass --se-scores"
                )
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ScoreFileError(f"{meta_path}: unreadable score metadata ({err})") from err
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise ScoreFileError(f"{meta_path}: not a se-fairseq score file of version {VERSION}")
        try:
            self.scores = np.load(array_path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:  # truncated or damaged .npy
            raise ScoreFileError(f"{array_path}: damaged score array ({err})") from err
        if self.scores.ndim != 1 or self.scores.dtype != np.dtype(self.meta["dtype"]):
            raise ScoreFileError(
                f"{array_path}: expected a flat {self.meta['dtype']} array, got "
                f"{self.scores.dtype} of shape {self.scores.shape}"
            )
        expected = fingerprint or corpus_fingerprint(split_path)
        recorded = self.meta.get("corpus", {})
        if recorded != expected:
            diffs = ", ".join(
                f"{k}: score file {recorded.get(k)!r} vs data {expected[k]!r}"
                for k in expected
                if recorded.get(k) != expected[k]
            )
            raise ScoreFileError(
                f"score file {meta_path} was computed for another corpus than {split_path} "
                f"({diffs}); recompute it with se-score"
            )
        if len(self.scores) != expected["num_tokens"]:
            raise ScoreFileError(
                f"{array_path}: holds {len(self.scores)} scores but {split_path} has "
                f"{expected['num_tokens']} tokens (truncated file?)"
            )
        self.array_path, self.meta_path = array_path, meta_path
        ranges = self.meta.get("unscored_ranges", [])
        self.unscored_ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        starts, ends = self.unscored_ranges[:, 0], self.unscored_ranges[:, 1]
        if len(starts) and (
            (starts >= ends).any()
            or starts.min() < 0
            or ends.max() > len(self.scores)
            or (starts[1:] < ends[:-1]).any()
        ):
            raise ScoreFileError(f"{meta_path}: damaged unscored_ranges")

    @property
    def metric(self):
        return self.meta.get("metric")

    @property
    def blocking(self):
        return self.meta.get("blocking") or {}

    @property
    def records_unscored(self):
        """False for files written before unscored tokens were recorded: their skipped
        blocks hold 0 like a score (the summary still counts them)."""
        return "unscored_ranges" in self.meta

    @property
    def num_unscored(self):
        if self.records_unscored:
            return int((self.unscored_ranges[:, 1] - self.unscored_ranges[:, 0]).sum())
        return int((self.meta.get("summary") or {}).get("tokens_not_scored", 0))

    def blocking_mismatch(self, tokens_per_sample, sample_break_mode):
        """The blocking this file was scored with where it differs from a run's:
        {option: (score file, run)}; empty when they agree or the scores do not depend
        on blocking. Keys the file does not record are not compared."""
        recorded = self.blocking
        if recorded.get("independent_of_blocking"):
            return {}
        run = {
            "tokens_per_sample": int(tokens_per_sample),
            "sample_break_mode": str(sample_break_mode),
        }
        return {k: (recorded[k], v) for k, v in run.items() if k in recorded and recorded[k] != v}
