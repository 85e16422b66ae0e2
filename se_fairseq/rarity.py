"""Rarity: a score source that needs no model.

The score of a token is its surprisal under the train split's unigram
distribution, ``-log p_train(token)`` (natural log, as the self-questioning
scores), with add-``alpha`` (Laplace) smoothing over the dictionary so that a
token never seen in train gets a finite, maximal score. Masking the top-k of
these scores masks the rarest tokens of each block: the control that answers
"is SE just rare-token masking?".

Counts are read from the binarized split with fairseq's own reader, so they
are the token ids the task trains on. ``se-score DATA --metric rarity``
writes a score file of these scores (no checkpoint needed); the same unigram
distribution gives the unigram baseline of an evaluation
(:func:`cross_entropy`).
"""

import os

import numpy as np

METRIC = "rarity"
DEFAULT_ALPHA = 1.0


def load_tokens(split_path):
    """All token ids of a binarized split (``data-bin/train``), in file order.

    fairseq's mmap index gives the dtype and sizes; the ``.bin`` of that format
    is the sequences back to back, so one memory map reads it whole.
    """
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    if not MMapIndexedDataset.exists(split_path):
        raise FileNotFoundError(
            f"no binarized split (fairseq mmap format) at {split_path}.{{bin,idx}}"
        )
    index = MMapIndexedDataset.Index(split_path + ".idx")
    dtype, total = index.dtype, int(np.asarray(index.sizes, dtype=np.int64).sum())
    del index
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    flat = np.memmap(split_path + ".bin", dtype=dtype, mode="r", shape=(total,))
    tokens = np.array(flat, dtype=np.int64)
    del flat
    return tokens


def unigram_counts(split_path, vocab_size):
    """Occurrences of every dictionary id in the split (length ``vocab_size``)."""
    tokens = load_tokens(split_path)
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise ValueError(
            f"{split_path} holds token id {int(tokens.max())}, outside a dictionary "
            f"of {vocab_size} entries"
        )
    return np.bincount(tokens, minlength=vocab_size).astype(np.int64)


def log_probs(counts, alpha=DEFAULT_ALPHA, special=()):
    """Smoothed unigram log-probabilities (natural log) from counts.

    ``special`` ids get no probability mass (they are never predicted and never
    masked); every other id gets ``(count + alpha) / (total + alpha * V)``.
    """
    counts = np.asarray(counts, dtype=np.float64).copy()
    smoothed = counts + alpha
    smoothed[list(special)] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(smoothed / smoothed.sum())


class Unigram:
    """The train split's smoothed unigram distribution over a fairseq dictionary.

    >>> u = Unigram.from_data("data-bin")           # counts of data-bin/train
    >>> u.scores(tokens)                              # -log p(token), per token
    """

    def __init__(self, counts, special, alpha=DEFAULT_ALPHA, source=None):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.special = sorted(int(s) for s in special)
        self.alpha = float(alpha)
        self.logp = log_probs(self.counts, self.alpha, self.special)
        self.source = source

    @classmethod
    def from_data(cls, data, split="train", alpha=DEFAULT_ALPHA):
        from fairseq.data import Dictionary

        dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
        dictionary.add_symbol("<mask>")  # as masked_lm and se_mlm do
        special = list(range(dictionary.nspecial)) + [dictionary.index("<mask>")]
        split_path = os.path.join(data, split)
        counts = unigram_counts(split_path, len(dictionary))
        return cls(counts, special, alpha, source=split_path)

    def scores(self, tokens):
        """Rarity of each token id: -log p_train (0 for special tokens)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        out = -self.logp[tokens]
        out[np.isin(tokens, self.special)] = 0.0
        return out

    def cross_entropy(self, tokens, base=2.0):
        """Mean -log p of ``tokens`` (non-special ids) under this distribution, in bits by
        default."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) == 0:
            return float("nan")
        if np.isin(tokens, self.special).any():
            raise ValueError("cross_entropy: special tokens have no unigram probability")
        return float(-self.logp[tokens].mean() / np.log(base))

    def accuracy(self, tokens):
        """Share of ``tokens`` equal to the most frequent (non-special) id, in percent."""
        tokens = np.asarray(tokens, dtype=np.int64)
        return (
            100.0 * float((tokens == int(np.argmax(self.logp))).mean())
            if len(tokens)
            else float("nan")
        )

    def describe(self):
        return {
            "counts_from": self.source,
            "counts_tokens": int(self.counts.sum()),
            "smoothing": f"add-{self.alpha:g}",
            "log": "natural",
        }


def score_split(data, split="train", counts_split="train", alpha=DEFAULT_ALPHA):
    """Rarity scores of every token of ``data/<split>`` (file order, float32), under the
    unigram of ``data/<counts_split>``; returns (scores, Unigram)."""
    unigram = Unigram.from_data(data, counts_split, alpha)
    tokens = load_tokens(os.path.join(data, split))
    return unigram.scores(tokens).astype(np.float32), unigram


def write_score_file(data, split="train", out=None, counts_split="train", alpha=DEFAULT_ALPHA):
    """Write ``data/<split>.se_scores`` (or ``out``) holding rarity scores, with the same
    metadata and corpus fingerprint as se-score's; returns (paths, scores)."""
    from se_fairseq.data import score_file

    split_path = os.path.join(data, split)
    prefix = score_file.prefix_of(out or score_file.default_prefix(split_path))
    scores, unigram = score_split(data, split, counts_split, alpha)
    fingerprint = score_file.corpus_fingerprint(split_path)
    source = dict(
        unigram.describe(), counts_fingerprint=score_file.corpus_fingerprint(unigram.source)
    )
    paths = score_file.write(
        prefix,
        scores,
        metric=METRIC,
        checkpoint=None,
        blocking={"independent_of_blocking": True},
        fingerprint=fingerprint,
        extra={"rarity": source, "summary": summary(split_path, scores, unigram.special)},
    )
    return paths, scores


def summary(split_path, scores, special_ids):
    """The score file's summary, as se-score's for model scores: statistics of the
    scores of the non-special tokens (special tokens score 0 and are never masked);
    every token is scored (no blocking, nothing skipped)."""
    from se_fairseq.core.job import summarize

    special = np.isin(load_tokens(split_path), special_ids)
    out = summarize(np.asarray(scores, dtype=np.float32)[~special])
    out.update(
        special_tokens=int(special.sum()),
        tokens_not_scored=0,
        blocks_skipped_too_long=0,
        tokens_in_skipped_blocks=0,
    )
    return out
