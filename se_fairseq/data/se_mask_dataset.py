"""Blocks of tokens with their scores, masked by SE in the collater."""
import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils


class SelfEvolutionMaskDataset(FairseqDataset):
    """Yields unmasked blocks; ``collater`` masks a whole batch with one op call.

    The batch it returns has the layout of fairseq's ``masked_lm`` task:
    ``net_input.src_tokens`` (masked), ``net_input.src_lengths``, ``target``
    (original token at selected positions, pad elsewhere), ``ntokens``,
    ``nsentences`` and ``id``.
    """

    def __init__(self, tokens, scores, masker, pad_idx):
        super().__init__()
        self.tokens = tokens
        self.scores = scores
        self.masker = masker
        self.pad_idx = pad_idx
        self.epoch = 1

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True  # only the masks change with the epoch, not the sizes

    def set_epoch(self, epoch):
        self.tokens.set_epoch(epoch)
        self.scores.set_epoch(epoch)
        self.epoch = epoch

    def __len__(self):
        return len(self.tokens)

    @property
    def sizes(self):
        return self.tokens.sizes

    def __getitem__(self, index):
        tokens = self.tokens[index]
        scores = self.scores[index]
        if len(tokens) != len(scores):
            raise ValueError(
                f"sample {index}: {len(tokens)} tokens but {len(scores)} scores; the score "
                "file is not aligned with the data"
            )
        return {"id": index, "tokens": tokens, "scores": scores}

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        tokens = data_utils.collate_tokens([s["tokens"] for s in samples], self.pad_idx)
        scores = data_utils.collate_tokens([s["scores"].float() for s in samples], 0.0)
        ids = torch.tensor([s["id"] for s in samples], dtype=torch.long)
        source, target = self.masker(tokens, scores, ids.numpy(), self.epoch)
        lengths = torch.tensor([len(s["tokens"]) for s in samples], dtype=torch.long)
        return {
            "id": ids,
            "net_input": {"src_tokens": source, "src_lengths": lengths},
            "target": target,
            "nsentences": len(samples),
            "ntokens": int(lengths.sum()),
        }

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def num_tokens_vec(self, indices):
        return np.asarray(self.sizes)[indices]
