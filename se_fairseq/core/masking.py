"""Batch-level SE masking: scores -> selected positions -> masked input and target.

Called once per batch from the collater. Every random draw is a counter-based
hash of the row seed, and the row seed is a hash of (seed, epoch, sample index),
so a sample's mask does not depend on the batch it lands in, the worker that
builds it, or how many times it was built: resuming reproduces it exactly.
"""

from collections.abc import Iterable, Sequence
from typing import Optional, Protocol

import numpy as np
import torch

from se_fairseq.core.options import (
    MASKED_LM_LEAVE_UNMASKED_PROB,
    MASKED_LM_RANDOM_TOKEN_PROB,
    OptionError,
    Spelling,
    check_masking,
)
from se_fairseq.core.schedule import Rates
from se_fairseq.ops import select
from se_fairseq.ops.reference import splitmix64


class Vocabulary(Protocol):
    """What the masker reads of a vocabulary (fairseq's ``Dictionary`` has it): its size,
    its first ``nspecial`` ids are special, ``pad()`` fills the target, ``count`` weighs
    random replacements with ``freq_weighted_replacement``."""

    nspecial: int
    count: list

    def __len__(self) -> int: ...

    def pad(self) -> int: ...


_REPLACE_STREAM = 0x5E1EC7ED5E1EC7ED
_RANDOM_STREAM = 0x2A17C0DE0BADF00D  # uniform picks: threshold fallback, random share
_BERNOULLI_STREAM = 0x7F4A7C15BE7A5EED  # mode "random": one independent draw per unit

# the masker's own arguments, as its refusals name them
MASKER_SPELLING = Spelling(
    {
        "mask_prob": "mask_prob",
        "select": "mode",
        "random_share": "random_share",
        "temperature": "temperature",
        "replace_first": "leave_unmasked_prob",
        "replace_second": "random_token_prob",
    },
    flags=False,
)


def row_seeds(seed, epoch, indices):
    """int64 seed per sample: a hash of (seed, epoch, index)."""
    indices = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    base = splitmix64(splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) ^ np.uint64(epoch))
    return splitmix64(base ^ indices).view(np.int64)


class SelfEvolutionMasker:
    """Turns padded (tokens, scores) batches into (masked source, target).

    ``mode`` is the op's: topk, sample or threshold. With ``threshold``, rows where no
    token scores above it get random masking (mask_prob, 80/10/10) unless
    ``threshold_fallback`` is False, as in the reference code. With topk or sample,
    ``random_share`` of each row's budget goes to uniformly drawn eligible positions.
    Mode ``random`` ignores the scores: every eligible position (or word) is selected
    independently with probability ``mask_prob`` (transformers'
    ``DataCollatorForLanguageModeling`` distribution), drawn from the row seed.

    Built from a fairseq ``Dictionary`` (its first ``nspecial`` ids and ``mask_idx`` are
    special), or with ``for_vocabulary`` from explicit special ids (any tokenizer).
    """

    def __init__(
        self,
        dictionary: Vocabulary,
        mask_idx: int,
        *,
        mask_prob: float,
        mode: str,
        seed: int,
        threshold: Optional[float] = 0.0,
        temperature: float = 1.0,
        leave_unmasked_prob: float = 0.0,
        random_token_prob: float = 0.0,
        freq_weighted_replacement: bool = False,
        mask_whole_words: Optional[torch.Tensor] = None,
        threshold_fallback: bool = False,
        random_share: float = 0.0,
    ) -> None:
        vocab = len(dictionary)
        special = torch.zeros(vocab, dtype=torch.bool)
        special[: dictionary.nspecial] = True
        counts = np.array(dictionary.count, dtype=np.float64) if freq_weighted_replacement else None
        self._setup(
            dictionary.pad(),
            mask_idx,
            special,
            counts,
            mask_prob=mask_prob,
            mode=mode,
            seed=seed,
            threshold=threshold,
            temperature=temperature,
            leave_unmasked_prob=leave_unmasked_prob,
            random_token_prob=random_token_prob,
            mask_whole_words=mask_whole_words,
            threshold_fallback=threshold_fallback,
            random_share=random_share,
        )

    @classmethod
    def for_vocabulary(
        cls,
        vocab_size: int,
        mask_idx: int,
        special_ids: Iterable[int],
        *,
        pad: int,
        mask_prob: float,
        mode: str,
        seed: int,
        threshold: Optional[float] = 0.0,
        temperature: float = 1.0,
        leave_unmasked_prob: float = 0.0,
        random_token_prob: float = 0.0,
        threshold_fallback: bool = False,
        random_share: float = 0.0,
    ) -> "SelfEvolutionMasker":
        """A masker without a fairseq Dictionary: ``special_ids`` (and ``mask_idx``) are
        never selected nor drawn as random replacements; ``pad`` fills the target at the
        positions not selected (any int64, e.g. -100). Whole-word units come per batch
        (``mask(word_begins=...)``)."""
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[torch.tensor(sorted(set(special_ids)), dtype=torch.long)] = True
        self = cls.__new__(cls)
        self._setup(
            pad,
            mask_idx,
            special,
            None,
            mask_prob=mask_prob,
            mode=mode,
            seed=seed,
            threshold=threshold,
            temperature=temperature,
            leave_unmasked_prob=leave_unmasked_prob,
            random_token_prob=random_token_prob,
            mask_whole_words=None,
            threshold_fallback=threshold_fallback,
            random_share=random_share,
        )
        return self

    def _setup(
        self,
        pad,
        mask_idx,
        special,
        counts,
        *,
        mask_prob,
        mode,
        seed,
        threshold,
        temperature,
        leave_unmasked_prob,
        random_token_prob,
        mask_whole_words,
        threshold_fallback,
        random_share,
    ):
        check_masking(
            MASKER_SPELLING,
            mask_prob=mask_prob,
            select=mode,
            random_share=random_share,
            temperature=temperature,
            replacement=(leave_unmasked_prob, random_token_prob),
        )
        self.pad = pad
        self.mask_idx = mask_idx
        self.mask_prob = mask_prob
        self.mode = mode
        self.seed = seed
        self.threshold = threshold
        self.temperature = temperature
        self.threshold_fallback = threshold_fallback and mode == "threshold"
        self.random_share = random_share
        self.leave_unmasked_prob = leave_unmasked_prob
        self.random_token_prob = random_token_prob
        special = special.clone()
        special[mask_idx] = True
        self.special = special
        self.word_begins = None if mask_whole_words is None else mask_whole_words.bool()
        weights = np.ones(len(special)) if counts is None else counts.copy()
        weights[special.numpy()] = 0
        if weights.sum() == 0:  # every id special: nothing to draw a replacement from
            if random_token_prob > 0:
                raise OptionError(
                    f"random_token_prob is {random_token_prob} but every one of the "
                    f"{len(special)} ids of the vocabulary is special: there is no token to "
                    "replace a selected one with"
                )
            weights = np.ones(len(special))
        self.replacement_cdf = np.cumsum(weights / weights.sum())
        self._cdf_by_device: dict[torch.device, torch.Tensor] = {}

    def __call__(
        self, tokens: torch.Tensor, scores: torch.Tensor, indices: Sequence[int], epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L) int64 padded, scores (B, L) float, indices (B,) sample ids."""
        return self.mask(tokens, scores, torch.from_numpy(row_seeds(self.seed, epoch, indices)))

    def mask(self, tokens, scores, seeds, scored=None, word_begins=None, rates=None):
        """Masks a batch on its own device; ``seeds`` from ``row_seeds``.

        ``scored`` (bool, like ``tokens``; None = all): positions that hold a score;
        the others are not eligible (never selected, not counted in the budget).
        ``word_begins`` (bool, like ``tokens``; None = the vocabulary's table, if any):
        the positions that start a word, for whole-word selection.
        ``rates`` (``Rates``; None = the masker's own): the mask rate and random share of
        this batch, e.g. a schedule's at the current step.
        Returns (source, target): target holds the original token at every
        selected position and pad elsewhere.
        """
        rates = self.rates if rates is None else rates
        # isin over the few special ids: a lookup in the vocabulary-sized table is ~200x
        # slower on CPU (bool advanced indexing)
        eligible = ~torch.isin(tokens, self._special_ids_on(tokens.device))
        if scored is not None:
            eligible &= scored.to(tokens.device)
        seeds = seeds.to(tokens.device)
        if word_begins is None and self.word_begins is None:
            selected, fallback = self._select(scores, eligible, seeds, rates)
            unit_of = None
        else:
            selected, fallback, unit_of = self._select_words(
                tokens, scores, eligible, seeds, word_begins, rates
            )
        return self._replace(tokens, selected, seeds, unit_of, fallback)

    def _select(self, scores, eligible, seeds, rates=None):
        """(selected, rows that fell back to random masking or None)."""
        rates = self.rates if rates is None else rates
        if self.mode == "random":
            return self._bernoulli(eligible, seeds, rates.mask_prob), None
        if self.mode == "threshold":
            selected = select(scores, eligible, seeds, mode="threshold", threshold=self.threshold)
            if not self.threshold_fallback:
                return selected, None
            fallback = ~selected.any(dim=1)
            at_random = self._uniform(eligible, seeds, ratio=rates.mask_prob)
            return torch.where(fallback[:, None], at_random, selected), fallback
        if rates.random_share == 0.0:
            return select(
                scores,
                eligible,
                seeds,
                ratio=rates.mask_prob,
                mode=self.mode,
                temperature=self.temperature,
            ), None
        budget = select(
            scores,
            eligible,
            seeds,
            ratio=rates.mask_prob,
            mode=self.mode,
            temperature=self.temperature,
        ).sum(dim=1)
        num_random = torch.floor(budget * rates.random_share + 0.5).long()
        by_score = select(
            scores,
            eligible,
            seeds,
            num_select=budget - num_random,
            mode=self.mode,
            temperature=self.temperature,
        )
        return by_score | self._uniform(eligible & ~by_score, seeds, num_select=num_random), None

    @staticmethod
    def _uniform(eligible, seeds, ratio=0.0, num_select=None):
        """Eligible positions drawn uniformly without replacement (Gumbel top-k of equal
        scores), from a stream of the row seed of its own."""
        return select(
            torch.zeros(eligible.shape, device=eligible.device),
            eligible,
            seeds ^ _RANDOM_STREAM,
            ratio=ratio,
            num_select=num_select,
            mode="sample",
        )

    @staticmethod
    def _bernoulli(eligible, seeds, mask_prob):
        """Each eligible position selected with probability mask_prob, independently, from a
        stream of the row seed of its own (counter = position)."""
        stream = (seeds.long() ^ _signed64(_BERNOULLI_STREAM))[:, None]
        positions = torch.arange(eligible.size(1), dtype=torch.int64, device=eligible.device)
        return eligible & (_hash_uniform(stream, positions[None, :]) <= mask_prob)

    def _select_words(self, tokens, scores, eligible, seeds, word_begins=None, rates=None):
        """Whole-word selection: a word scores its highest token score. Words begin where
        ``word_begins`` (positions) says, else where the vocabulary's table does."""
        if word_begins is None:
            word_begins = self.word_begins.to(tokens.device)[tokens]
        begins = word_begins.to(tokens.device) | ~eligible
        # a special token is a word of its own, and so starts the next one
        begins[:, 1:] |= ~eligible[:, :-1]
        word_of = begins.long().cumsum(dim=1) - 1
        # one column per position (a row has at most that many words), not per word of the
        # batch: counting them is a host sync. The columns past a row's last word are -inf
        # and not eligible, never chosen, and the words keep their columns (their draws).
        num_words = tokens.size(1)
        word_scores = torch.full((tokens.size(0), num_words), float("-inf"), device=tokens.device)
        word_scores.scatter_reduce_(1, word_of, scores.float(), reduce="amax")
        word_eligible = torch.zeros(
            (tokens.size(0), num_words), dtype=torch.bool, device=tokens.device
        )
        word_eligible.scatter_(1, word_of, eligible)
        chosen, fallback = self._select(word_scores, word_eligible, seeds, rates)
        return chosen.gather(1, word_of), fallback, word_of

    def _replace(self, tokens, selected, seeds, unit_of, fallback=None):
        """fairseq's policy: of the selected, keep some, randomize some, <mask> the rest.
        Rows in ``fallback`` use masked_lm's 80/10/10 whatever the masker's policy.

        Elementwise torch ops on the batch's device only: no host copy and no
        host sync (it runs every step under --se-online). The draws are the
        counter-based hash of ops/reference.py computed in int64 (``_hash_uniform``),
        bit-identical to it on every device."""
        pad = torch.full((), self.pad, dtype=tokens.dtype, device=tokens.device)
        target = torch.where(selected, tokens, pad)
        mask_idx = torch.full((), self.mask_idx, dtype=tokens.dtype, device=tokens.device)
        if fallback is None and self.leave_unmasked_prob + self.random_token_prob == 0.0:
            return torch.where(selected, mask_idx, tokens), target
        rows, length = tokens.shape
        device = tokens.device
        leave = torch.full((rows, 1), self.leave_unmasked_prob, dtype=torch.float64, device=device)
        keep_or_random = leave + self.random_token_prob
        if fallback is not None:
            fallback = fallback[:, None]
            leave = torch.where(fallback, MASKED_LM_LEAVE_UNMASKED_PROB, leave)
            keep_or_random = torch.where(
                fallback,
                MASKED_LM_LEAVE_UNMASKED_PROB + MASKED_LM_RANDOM_TOKEN_PROB,
                keep_or_random,
            )
        stream = (seeds.long() ^ _signed64(_REPLACE_STREAM))[:, None]
        positions = torch.arange(length, dtype=torch.int64, device=device)
        units = positions[None, :] if unit_of is None else unit_of.long()
        decision = _hash_uniform(stream, 2 * units)
        keep = selected & (decision < leave)
        randomize = selected & ~keep & (decision < keep_or_random)
        draws = _hash_uniform(stream, 2 * positions[None, :] + 1)
        cdf = self._replacement_cdf_on(device)
        replacement = torch.searchsorted(cdf, draws.contiguous(), right=True)
        replacement = replacement.clamp_(max=len(cdf) - 1).to(tokens.dtype)
        source = torch.where(selected & ~keep & ~randomize, mask_idx, tokens)
        return torch.where(randomize, replacement, source), target

    @property
    def rates(self) -> Rates:
        """The masker's own rates (those it was built with)."""
        return Rates(self.mask_prob, self.random_share)

    def _special_ids_on(self, device):
        """The special ids (int64) on ``device``, copied there once."""
        cache = self.__dict__.setdefault("_special_ids_by_device", {})
        if device not in cache:
            cache[device] = self.special.nonzero().flatten().to(device)
        return cache[device]

    def _replacement_cdf_on(self, device):
        """The replacement distribution's CDF (float64) on ``device``, copied there once."""
        cached = self._cdf_by_device.get(device)
        if cached is None:
            cached = torch.from_numpy(self.replacement_cdf).to(device)
            self._cdf_by_device[device] = cached
        return cached


def _signed64(value):
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed64(0x9E3779B97F4A7C15)
_M1 = _signed64(0xBF58476D1CE4E5B9)
_M2 = _signed64(0x94D049BB133111EB)


def _shift_right(x, bits):
    """Logical (unsigned) right shift of int64 bits: torch's >> on int64 is arithmetic."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x):
    """ops.reference.splitmix64 on int64 tensors: wrapping + and * are the same bits as
    uint64 arithmetic mod 2^64; the shifts are made logical."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _M1
    x = (x ^ _shift_right(x, 27)) * _M2
    return x ^ _shift_right(x, 31)


def _hash_uniform(seed, counter):
    """ops.reference.hash_uniform on int64 tensors (any device), bit for bit: uniform
    float64 in (0, 1] per broadcast (seed, counter) pair."""
    h = _splitmix64(_splitmix64(seed) ^ counter)
    # h >>> 11 < 2^53 converts exactly; + 0.5 and * 2^-53 are exact in float64
    return (_shift_right(h, 11).double() + 0.5) * (1.0 / 9007199254740992.0)
