"""``DataCollatorForSelfEvolution``: SE masking as a transformers data collator.

The collator pads a list of examples as ``DataCollatorForLanguageModeling`` does and
chooses the positions to mask with ``SelfEvolutionMasker`` (the masker se_mlm uses, on
the same operator), from the scores each example carries. A mask is a pure function
of (seed, epoch, example, scores), whatever the batch an example lands in or the worker
that collates it:

- the example is its index, in the column ``se_index`` where the dataset has one
  (``with_example_index`` adds it to any map-style dataset); else its token ids (a hash of
  them): a plain tokenized dataset needs no extra column, and identical examples then get
  identical masks within an epoch;
- the epoch is the collator's, set with ``set_epoch`` before each epoch's iteration
  (``SelfEvolutionEpochCallback`` does it in the Trainer; ``SelfEvolutionTrainer`` adds
  it itself). It lives in shared memory, so DataLoader workers, persistent ones
  included, read the epoch last set. Without it every epoch would repeat the first one's
  masks: until ``set_epoch`` is called, the collator watches for examples coming back and
  warns once when they do.
"""

import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch
from transformers import TrainerCallback

from se_fairseq.core import options
from se_fairseq.core.constants import IGNORE_INDEX, INDEX_COLUMN, ONLINE_SEEDS, SCORES_COLUMN
from se_fairseq.core.masking import SelfEvolutionMasker, row_seeds
from se_fairseq.core.packing import Packing

# the core's options as the collator's keywords spell them
SPELLING = options.Spelling(
    {
        "mask_prob": "mlm_probability",
        "select": "select",
        "metric": "metric",
        "threshold": "threshold",
        "random_share": "random_share",
        "temperature": "temperature",
        "replace_first": "mask_replace_prob",
        "replace_second": "random_replace_prob",
    },
    flags=False,
    replacement="mask_random",
)
# what pad_unmasked adds to an online batch, beside the row seeds (ONLINE_SEEDS)
ONLINE_ELIGIBLE = "se_online_eligible"
ONLINE_WORD_BEGINS = "se_online_word_begins"
# and, packed, where each example lies (the trainer masks example by example)
PACKED_CU_SEQLENS = "se_cu_seqlens"
# how packed examples are kept apart: a block-diagonal 4D attention mask (SDPA, eager), or
# flash attention varlen's cu_seq_lens_q/k and max_length_q/k
PACKED_ATTENTION = ("mask", "flash")


class DataCollatorForSelfEvolution:
    """Pads examples and masks them by Self-Evolution selection.

    Arguments shared with ``DataCollatorForLanguageModeling`` mean the same:
    ``tokenizer``, ``mlm_probability`` (the share of eligible tokens to mask),
    ``mask_replace_prob`` / ``random_replace_prob`` (of the selected tokens, the shares
    replaced by the mask token / a random token; the rest is left unchanged),
    ``whole_word_mask`` (words from the ``offset_mapping`` of a fast tokenizer, as there),
    ``pad_to_multiple_of``, ``seed`` and ``return_tensors`` ("pt" only).

    The SE options are named as se_mlm's (``--se-select`` and so on):

    - ``select``: ``topk`` (the highest scores), ``sample`` (drawn with probability
      rising with the score, at ``temperature``), ``threshold`` (every score above
      ``threshold``; rows with none fall back to random masking unless
      ``threshold_fallback`` is False), ``random`` (no scores: transformers' own masking
      distribution, each eligible token with probability ``mlm_probability``).
    - ``threshold``: default by ``metric`` (0.1 for correctness, as the reference code).
    - ``random_share``: with topk or sample, the share of the budget drawn uniformly.
    - ``scores_column`` / ``index_column``: the example's keys for its per-token scores
      (floats, one per input id; NaN = unscored, never selected) and its index.

    Unset, ``mask_replace_prob`` / ``random_replace_prob`` are transformers' 0.8 / 0.1
    with ``select="random"`` and 1.0 / 0.0 in the SE modes (every selected token becomes
    the mask token, as se_mlm and the paper's code do).

    Special tokens (the tokenizer's ``all_special_ids``, any ``special_tokens_mask`` the
    examples carry) and padding are never selected, nor drawn as random replacements.
    Returns input_ids, attention_mask (and token_type_ids when the examples have them)
    and labels: the original id at the selected positions, -100 elsewhere.
    """

    def __init__(
        self,
        tokenizer: Any,
        mlm: bool = True,
        whole_word_mask: bool = False,
        mlm_probability: float = 0.15,
        mask_replace_prob: Optional[float] = None,
        random_replace_prob: Optional[float] = None,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: str = "pt",
        seed: Optional[int] = None,
        *,
        select: str = "topk",
        threshold: Optional[float] = None,
        threshold_fallback: bool = True,
        random_share: float = 0.0,
        temperature: float = 1.0,
        metric: str = "correctness",
        scores_column: str = SCORES_COLUMN,
        index_column: str = INDEX_COLUMN,
        packing: bool = False,
        packed_attention: str = "mask",
        position_offset: int = 0,
    ) -> None:
        if packed_attention not in PACKED_ATTENTION:
            raise ValueError(
                f"packed_attention must be one of {', '.join(PACKED_ATTENTION)}, not "
                f"{packed_attention!r}"
            )
        if not mlm:
            raise ValueError(
                "DataCollatorForSelfEvolution masks for masked-LM training: mlm=False "
                "(causal LM) has nothing to select; use DataCollatorForLanguageModeling"
            )
        if getattr(tokenizer, "mask_token", None) is None or tokenizer.mask_token_id is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no mask token (tokenizer.mask_token "
                "is None): masked-LM training needs one; add it with "
                "tokenizer.add_special_tokens({'mask_token': '[MASK]'}) and resize the model's "
                "embeddings"
            )
        if return_tensors != "pt":
            raise ValueError(
                f"return_tensors={return_tensors!r}: DataCollatorForSelfEvolution returns "
                "PyTorch tensors only (return_tensors='pt')"
            )
        options.check_masking(
            SPELLING,
            mask_prob=float(mlm_probability),
            select=select,
            metric=metric,
            threshold=threshold,
            random_share=random_share,
            temperature=temperature,
            replacement=(mask_replace_prob, random_replace_prob),
        )
        if whole_word_mask and mask_replace_prob is None and random_replace_prob is None:
            # transformers' whole-word masking sets every selected token to the mask token
            mask_replace_prob, random_replace_prob = 1.0, 0.0
        mask_replace, random_replace = options.resolve_replacement(
            SPELLING, select, (mask_replace_prob, random_replace_prob)
        )
        leave_unmasked, random_token = options.leave_and_random_token(
            SPELLING, (mask_replace, random_replace)
        )
        threshold = options.resolve_threshold(select, threshold, metric)
        if pad_to_multiple_of is not None and pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")

        self.tokenizer = tokenizer
        self.mlm = True
        self.whole_word_mask = whole_word_mask
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = mask_replace
        self.random_replace_prob = random_replace
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors
        # unset: torch's seed when the collator is made (transformers.set_seed, which
        # run_mlm.py and the Trainer call, sets it), so another run seed gives other masks
        self.seed = torch.initial_seed() if seed is None else int(seed)
        self.select = select
        self.threshold = threshold
        self.threshold_fallback = threshold_fallback
        self.random_share = random_share
        self.temperature = temperature
        self.metric = metric
        self.scores_column = scores_column
        self.index_column = index_column
        self.packing = packing
        self.packed_attention = packed_attention
        self.position_offset = position_offset
        self.special_ids = sorted(
            {int(i) for i in tokenizer.all_special_ids} | {int(tokenizer.mask_token_id)}
        )
        vocab_size = max(len(tokenizer), self.special_ids[-1] + 1)
        self.masker = SelfEvolutionMasker.for_vocabulary(
            vocab_size,
            int(tokenizer.mask_token_id),
            self.special_ids,
            pad=IGNORE_INDEX,
            mask_prob=self.mlm_probability,
            mode=select,
            seed=self.seed,
            threshold=threshold,
            temperature=temperature,
            leave_unmasked_prob=leave_unmasked,
            random_token_prob=random_token,
            threshold_fallback=threshold_fallback,
            random_share=random_share,
        )
        # the epoch, in shared memory: DataLoader workers (persistent or not) read it;
        # [1] is 1 once set_epoch has been called
        self._epoch = torch.tensor([1, 0], dtype=torch.int64).share_memory_()
        self._returns = ReturnWatch()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next batches belong to (1 = the first, as in fairseq)."""
        self._epoch[0] = int(epoch)
        self._epoch[1] = 1

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch, scored, indices, word_begins, scores = self._padded(
            examples, self.select != "random"
        )
        if scores is not None:
            scores, scored = _without_nan(scores, scored)
        else:
            scores = torch.zeros(scored.shape, dtype=torch.float32)
        seeds = torch.from_numpy(row_seeds(self.seed, self.epoch, indices))
        source, labels = self.masker.mask(
            batch["input_ids"].long(), scores, seeds, scored=scored, word_begins=word_begins
        )
        batch["input_ids"] = source
        batch["labels"] = labels
        if not self.packing:
            return batch
        packed = self._packed(batch)
        del packed["_cu_seqlens"]  # the model's inputs only: the position ids restart
        return packed

    def pad_unmasked(
        self, examples: Sequence[Mapping[str, Any]], with_scores: bool = False
    ) -> dict[str, torch.Tensor]:
        """The batch padded but not masked, for ``SelfEvolutionTrainer`` to mask on the
        device: online SE (after scoring it) and rate schedules (at the step's rate). No
        labels, and under ``ONLINE_SEEDS`` / ``ONLINE_ELIGIBLE`` / ``ONLINE_WORD_BEGINS``
        what ``masker.mask`` needs: the row seeds of (seed, epoch, example) as
        ``__call__`` uses them, the positions that may be selected (not padding, not in a
        given ``special_tokens_mask``, not a NaN score; the masker itself skips the special
        ids), and with ``whole_word_mask`` the positions that start a word. With
        ``with_scores`` (offline SE) the padded scores too, under the scores column."""
        batch, scored, indices, word_begins, scores = self._padded(examples, with_scores)
        if scores is not None:
            scores, scored = _without_nan(scores, scored)
            batch[self.scores_column] = scores
        batch[ONLINE_ELIGIBLE] = scored
        if word_begins is not None:
            batch[ONLINE_WORD_BEGINS] = word_begins
        if self.packing:
            batch = self._packed(batch)
            batch[PACKED_CU_SEQLENS] = batch.pop("_cu_seqlens")
        else:
            batch.pop("_cu_seqlens", None)
        batch[ONLINE_SEEDS] = torch.from_numpy(row_seeds(self.seed, self.epoch, indices))
        return batch

    def _packed(self, batch: dict) -> dict:
        """The padded batch as one packed row (``core.packing``): every per-position
        tensor flattened, position ids restarting per example (from ``position_offset``),
        and attention kept within each example: a block-diagonal 4D mask, or flash
        attention's ``cu_seq_lens_*`` (``packed_attention="flash"``)."""
        lengths = batch.pop("_lengths")
        packing = Packing.of_lengths(lengths)
        padded_shape = batch["input_ids"].shape
        out: dict[str, Any] = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.shape[:2] == padded_shape:
                out[key] = packing.flat(value)
        out["position_ids"] = packing.position_ids(self.position_offset)
        out["_cu_seqlens"] = packing.cu_seqlens
        if self.packed_attention == "mask":
            out["attention_mask"] = packing.block_mask()
        else:
            out.pop("attention_mask", None)
            cu = packing.cu_seqlens.to(torch.int32)
            longest = int(packing.lengths.max())
            out.update(
                cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest
            )
        return out

    def padding_only(self, with_scores: bool = False) -> "UnmaskedPadding":
        """A collator (picklable, for DataLoader workers) that calls ``pad_unmasked``."""
        return UnmaskedPadding(self, with_scores)

    def _padded(self, examples, with_scores):
        """(padded batch, eligible positions, example indices, word starts or None,
        padded scores or None)."""
        if len(examples) == 0:
            raise ValueError("DataCollatorForSelfEvolution got an empty list of examples")
        if not isinstance(examples[0], Mapping):
            if not isinstance(examples[0], list | tuple | torch.Tensor | np.ndarray):
                raise TypeError(
                    "DataCollatorForSelfEvolution takes examples as dicts with input_ids (and "
                    f"optionally {self.index_column!r} and {self.scores_column!r}) or as lists "
                    f"of token ids, not {type(examples[0]).__name__}"
                )
            examples = [{"input_ids": ex} for ex in examples]  # as transformers' collator
        ids = [_as_list(ex["input_ids"]) for ex in examples]
        indices = self._indices(examples, ids)
        # how messages name an example: its index, else its place in the batch
        names = indices if self.index_column in examples[0] else range(len(examples))
        scores = self._scores(examples, ids, names) if with_scores else None
        offsets = [ex.get("offset_mapping") for ex in examples] if self.whole_word_mask else None
        drop = {self.scores_column, self.index_column, "offset_mapping", "special_tokens_mask"}
        features = [{k: v for k, v in ex.items() if k not in drop} for ex in examples]
        batch = self._pad(features)
        tokens = batch["input_ids"].long()
        rows, length = tokens.shape
        left = not self.packing and getattr(self.tokenizer, "padding_side", "right") == "left"
        scored = torch.zeros((rows, length), dtype=torch.bool)
        padded_scores = None if scores is None else torch.zeros((rows, length))
        special_given = "special_tokens_mask" in examples[0]
        for r, row_ids in enumerate(ids):
            span = slice(length - len(row_ids), length) if left else slice(0, len(row_ids))
            scored[r, span] = True
            if padded_scores is not None:
                padded_scores[r, span] = torch.as_tensor(scores[r], dtype=torch.float32)
            if special_given:
                given = torch.as_tensor(_as_list(examples[r]["special_tokens_mask"]))
                scored[r, span] &= ~given.bool()
        if "attention_mask" in batch:
            scored &= batch["attention_mask"].bool()
        if self.packing:
            batch["_lengths"] = [len(row) for row in ids]
        word_begins = None
        if self.whole_word_mask:
            word_begins = self._word_begins(offsets, names, tokens, scored, left)
        return batch, scored, indices, word_begins, padded_scores

    def _pad(self, features):
        """tokenizer.pad, without the fast tokenizers' advice to pad while encoding
        (transformers' collators silence it the same way)."""
        warnings = getattr(self.tokenizer, "deprecation_warnings", None)
        key = "Asking-to-pad-a-fast-tokenizer"
        state = None if warnings is None else warnings.get(key, False)
        if warnings is not None:
            warnings[key] = True
        try:
            # packed examples are laid out from column 0, as right padding lays them out
            side = {"padding_side": "right"} if self.packing else {}
            padded = self.tokenizer.pad(
                features, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of, **side
            )
        finally:
            if warnings is not None:
                warnings[key] = state
        return dict(padded)

    def _indices(self, examples, ids):
        """Each example's key: its index (column ``index_column``) where the examples have
        one, else a hash of its token ids; watched for returns until set_epoch is called."""
        given = [self.index_column in ex for ex in examples]
        if all(given):
            keys = np.array([int(ex[self.index_column]) for ex in examples], dtype=np.int64)
        elif any(given):
            raise KeyError(
                f"example {given.index(False)} of the batch has no {self.index_column!r} column "
                "but others have it: give every example its index in the dataset "
                "(se_fairseq.hf.with_example_index), or none"
            )
        else:
            keys = np.array([content_key(row) for row in ids], dtype=np.int64)
        if not self._epoch[1]:
            self._returns.see(keys, indexed=all(given))
        return keys

    def _scores(self, examples, ids, indices):
        scores = []
        for ex, row_ids, index in zip(examples, ids, indices):
            if self.scores_column not in ex:
                raise KeyError(
                    f"example {index} has no {self.scores_column!r} column: select="
                    f"{self.select!r} chooses positions from per-token scores (one float per "
                    f"input id); add the column, use select='random', or, in the Trainer, set "
                    "TrainingArguments(remove_unused_columns=False) so that it is not dropped"
                )
            row = _as_list(ex[self.scores_column])
            if len(row) != len(row_ids):
                raise ValueError(
                    f"example {index}: {len(row_ids)} input_ids but {len(row)} "
                    f"{self.scores_column!r}; the scores are not aligned with the tokens"
                )
            scores.append(row)
        return scores

    def _word_begins(self, offsets, indices, tokens, eligible, left):
        """Positions that start a word, from the offset mapping as transformers does: a
        token starts a word unless it begins where the previous token ended."""
        begins = torch.ones(tokens.shape, dtype=torch.bool)
        length = tokens.size(1)
        for r, (row, index) in enumerate(zip(offsets, indices)):
            if row is None:
                raise KeyError(
                    f"example {index} has no 'offset_mapping': whole_word_mask=True finds "
                    "words from it; tokenize with return_offsets_mapping=True (a fast tokenizer)"
                )
            pairs = torch.as_tensor(_as_list(row), dtype=torch.long).reshape(-1, 2)
            n = pairs.size(0)
            start = length - n if left else 0
            continues = torch.zeros(n, dtype=torch.bool)
            continues[1:] = pairs[1:, 0] == pairs[:-1, 1]
            begins[r, start : start + n] = ~continues
        # the masker makes a special or padded position a word of its own, and starts a
        # word after one
        return begins

    def epoch_callback(self) -> "SelfEvolutionEpochCallback":
        """The Trainer callback that sets this collator's epoch."""
        return SelfEvolutionEpochCallback(self)


class UnmaskedPadding:
    """The collator of a DataLoader whose batches the trainer masks:
    ``collator.pad_unmasked``."""

    def __init__(self, collator: DataCollatorForSelfEvolution, with_scores: bool = False) -> None:
        self.collator = collator
        self.with_scores = with_scores

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return self.collator.pad_unmasked(examples, self.with_scores)


class SelfEvolutionEpochCallback(TrainerCallback):
    """Sets the collator's epoch at the start of each Trainer epoch (Trainer epoch e is
    the collator's e + 1), before the epoch's DataLoader iterator starts, so that
    workers read it. Pass it in ``Trainer(callbacks=[...])``."""

    def __init__(self, collator: DataCollatorForSelfEvolution) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the fractional epoch reached so far (e.g. 1.5 on a resume in the
        # middle of the second epoch)
        self.collator.set_epoch(int(np.floor((state.epoch or 0.0) + 1e-9)) + 1)
        return control


class ExampleIndexDataset(torch.utils.data.Dataset):
    """A map-style dataset whose items are those of ``dataset`` plus their index in it,
    under ``column`` (what ``DataCollatorForSelfEvolution`` reads)."""

    def __init__(self, dataset: Any, column: str = INDEX_COLUMN) -> None:
        self.dataset = dataset
        self.column = column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item[self.column] = int(index)
        return item

    def __getitems__(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]


def with_example_index(dataset: Any, column: str = INDEX_COLUMN) -> ExampleIndexDataset:
    """``dataset`` (a list of dicts, a torch Dataset, a ``datasets.Dataset``) with each
    item's index added under ``column``."""
    return ExampleIndexDataset(dataset, column)


def _without_nan(scores: torch.Tensor, scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN scores (unscored tokens) become 0 and leave the eligible positions."""
    unscored = torch.isnan(scores)
    if not unscored.any():
        return scores, scored
    return scores.masked_fill(unscored, 0.0), scored & ~unscored


def content_key(ids: Sequence[int]) -> int:
    """A 64-bit key of an example's token ids (the same in every process and run)."""
    digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8)
    return int(np.frombuffer(digest.digest(), dtype=np.int64)[0])


class ReturnWatch:
    """Warns once when examples come back before ``set_epoch`` was ever called: a new
    epoch masked like the first. Keys of up to ``LIMIT`` examples are kept per process;
    with content keys a few returns may be duplicate examples, so it waits for
    ``MIN_RETURNS`` of them and a ``SHARE`` of those kept."""

    LIMIT = 1 << 16
    MIN_RETURNS = 8
    SHARE = 0.05

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.returned = 0
        self.warned = False

    def see(self, keys: np.ndarray, indexed: bool) -> None:
        if self.warned:
            return
        for key in keys.tolist():
            if key in self.seen:
                self.returned += 1
            elif len(self.seen) < self.LIMIT:
                self.seen.add(key)
        enough = 1 if indexed else max(self.MIN_RETURNS, int(self.SHARE * len(self.seen)))
        if self.returned >= enough:
            self.warned = True
            warnings.warn(
                "DataCollatorForSelfEvolution: examples come back but set_epoch was never "
                "called, so this epoch repeats the first one's masks. Pass "
                "collator.epoch_callback() in Trainer(callbacks=[...]) (SelfEvolutionTrainer "
                "adds it), or call collator.set_epoch(epoch) before each epoch"
                + ("" if indexed else " (or the dataset holds many duplicate examples)"),
                RuntimeWarning,
                stacklevel=4,
            )


def _as_list(value):
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    return list(value)
