"""Blocks of tokens (with their scores), masked by SE a whole batch at a time."""

import logging

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils

from se_fairseq.core.constants import ONLINE_SEEDS, SCORES_COLUMN
from se_fairseq.core.masking import row_seeds

logger = logging.getLogger(__name__)


class SelfEvolutionMaskDataset(FairseqDataset):
    """Yields unmasked blocks; ``collater`` masks a whole batch with one op call.

    The batch has the layout of fairseq's ``masked_lm`` task:
    ``net_input.src_tokens`` (masked), ``net_input.src_lengths``, ``target``
    (original token at selected positions, pad elsewhere), ``ntokens``,
    ``nsentences`` and ``id``.

    Masked in the train step (``masker`` None): the batch stays unmasked and carries
    ``ONLINE_SEEDS`` (one int64 per row) and, with ``scores``, the padded scores under
    ``SCORES_COLUMN`` (NaN where unscored); the task masks it in ``train_step``: online SE
    (no scores: it scores the batch with the live model) and rate schedules (the mask
    rate of the step).
    """

    def __init__(self, tokens, scores, masker, pad_idx, seed):
        super().__init__()
        self.tokens = tokens
        self.scores = scores
        self.masker = masker
        self.pad_idx = pad_idx
        self.seed = seed
        self.epoch = 1
        self._warned_empty = False

    @property
    def masked_in_step(self):
        return self.masker is None

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True  # only the masks change with the epoch, not the sizes

    def set_epoch(self, epoch):
        self.tokens.set_epoch(epoch)
        if self.scores is not None:
            self.scores.set_epoch(epoch)
        self.epoch = epoch

    def __len__(self):
        return len(self.tokens)

    @property
    def sizes(self):
        return self.tokens.sizes

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def num_tokens_vec(self, indices):
        return np.asarray(self.sizes)[indices]

    def __getitem__(self, index):
        item = {"id": index, "tokens": self.tokens[index]}
        if self.scores is not None:
            item["scores"] = self.scores[index]
            if len(item["tokens"]) != len(item["scores"]):
                raise ValueError(
                    f"sample {index}: {len(item['tokens'])} tokens but {len(item['scores'])} "
                    "scores; the score file is not aligned with the data"
                )
        return item

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        tokens = data_utils.collate_tokens([s["tokens"] for s in samples], self.pad_idx)
        ids = torch.tensor([s["id"] for s in samples], dtype=torch.long)
        seeds = torch.from_numpy(row_seeds(self.seed, self.epoch, ids.numpy()))
        lengths = torch.tensor([len(s["tokens"]) for s in samples], dtype=torch.long)
        batch = {"id": ids, "nsentences": len(samples), "ntokens": int(lengths.sum())}
        scores = None
        if self.scores is not None:
            scores = data_utils.collate_tokens([s["scores"].float() for s in samples], 0.0)
        if self.masked_in_step:
            batch["net_input"] = {"src_tokens": tokens, "src_lengths": lengths}
            batch["target"] = torch.full_like(tokens, self.pad_idx)
            batch[ONLINE_SEEDS] = seeds
            if scores is not None:
                batch[SCORES_COLUMN] = scores
            return batch
        assert scores is not None
        unscored = torch.isnan(scores)  # tokens the score file records as unscored
        if unscored.any():
            source, target = self.masker.mask(
                tokens, scores.masked_fill(unscored, 0.0), seeds, scored=~unscored
            )
        else:
            source, target = self.masker.mask(tokens, scores, seeds)
        if self.masker.mode == "threshold" and not self.masker.threshold_fallback:
            self._warn_if_nothing_selected(target, scores.masked_fill(unscored, float("-inf")))
        batch["net_input"] = {"src_tokens": source, "src_lengths": lengths}
        batch["target"] = target
        return batch

    def _warn_if_nothing_selected(self, target, scores):
        """--se-threshold-fallback none: a batch with no token above the threshold trains
        on nothing (fairseq logs loss -1 and gnorm 0); say so, with figures, once per
        process (DataLoader workers each warn once)."""
        if self._warned_empty or target.ne(self.pad_idx).any():
            return
        self._warned_empty = True
        logger.warning(
            f"--se-select threshold --se-threshold-fallback none: no token of a batch of "
            f"{target.size(0)} blocks scores above the threshold {self.masker.threshold:g} "
            f"(its highest score is {float(scores.max()):.4g}), so nothing is masked and the "
            "step trains on nothing (fairseq then logs loss -1, gnorm 0); lower --se-threshold "
            "or use --se-threshold-fallback random (masked_lm masking for such rows). Warned "
            "once per process"
        )
