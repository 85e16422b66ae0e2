"""Blocks of tokens (with their scores), masked by SE a whole batch at a time."""
import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils

from se_fairseq.data.se_masking import row_seeds
from se_fairseq.reference_forward import ONLINE_SEEDS


class SelfEvolutionMaskDataset(FairseqDataset):
    """Yields unmasked blocks; ``collater`` masks a whole batch with one op call.

    The batch has the layout of fairseq's ``masked_lm`` task:
    ``net_input.src_tokens`` (masked), ``net_input.src_lengths``, ``target``
    (original token at selected positions, pad elsewhere), ``ntokens``,
    ``nsentences`` and ``id``.

    Online mode (``scores`` and ``masker`` None): the batch stays unmasked and
    carries ``ONLINE_SEEDS`` (one int64 per row); the task scores it with the
    live model and masks it in ``train_step``.
    """

    def __init__(self, tokens, scores, masker, pad_idx, seed):
        super().__init__()
        self.tokens = tokens
        self.scores = scores
        self.masker = masker
        self.pad_idx = pad_idx
        self.seed = seed
        self.epoch = 1

    @property
    def online(self):
        return self.scores is None

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
        if self.online:
            batch["net_input"] = {"src_tokens": tokens, "src_lengths": lengths}
            batch["target"] = torch.full_like(tokens, self.pad_idx)
            batch[ONLINE_SEEDS] = seeds
            return batch
        scores = data_utils.collate_tokens([s["scores"].float() for s in samples], 0.0)
        source, target = self.masker.mask(tokens, scores, seeds)
        batch["net_input"] = {"src_tokens": source, "src_lengths": lengths}
        batch["target"] = target
        return batch
