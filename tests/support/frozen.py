"""se-score as it was before issue 24: a frozen copy, the bit-identity reference of
tests/test_se_score_identity.py. It deliberately shares no code with se_fairseq's scoring
(batching included): an oracle that called the code under test would agree with its bugs."""

import numpy as np


def frozen_batched_scores(model, items, slices, too_long, chunks, pad, metric, max_tokens=16384):
    """fp32 scores of every token, computed as se-score computed them before issue 24:
    per chunk, the blocks that fit sorted longest first (stable), packed into batches of
    at most ``max_tokens`` tokens with padding, fairseq's ``collate_tokens``, the encoder
    features, and the LM head over the non-padding positions (logsumexp - logit of the true
    token, or the entropy of the log-softmax). Blocks the model cannot take score 0."""
    import torch
    import torch.nn.functional as F
    from fairseq.data import data_utils

    slices = np.asarray(slices, dtype=np.int64)
    out = np.zeros(int(slices[:, 1].max()) if len(slices) else 0, dtype=np.float32)
    for first, last in chunks:
        sizes = slices[first:last, 1] - slices[first:last, 0] + 1
        order = first + np.argsort(-sizes, kind="stable")
        order = [int(b) for b in order if not too_long[b]]
        batches, batch, longest = [], [], 0
        for b in order:
            n = int(slices[b, 1] - slices[b, 0] + 1)
            if batch and max(longest, n) * (len(batch) + 1) > max_tokens:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(b)
            longest = max(longest, n)
        if batch:
            batches.append(batch)
        for batch in batches:
            src = data_utils.collate_tokens([items[b] for b in batch], pad)
            with torch.no_grad():
                features, _ = model(src, features_only=True)
                keep = src.ne(pad)
                logits = model.encoder.output_layer(features[keep]).float()
                targets = src[keep]
                if metric == "correctness":
                    flat = torch.logsumexp(logits, -1) - logits.gather(
                        -1, targets.unsqueeze(-1)
                    ).squeeze(-1)
                else:
                    lprobs = F.log_softmax(logits, dim=-1)
                    flat = -(lprobs.exp() * lprobs).sum(-1)
            scores = torch.zeros(src.shape)
            scores[keep] = flat
            for row, b in enumerate(batch):
                start, end = int(slices[b, 0]), int(slices[b, 1])
                out[start:end] = scores[row, 1 : 1 + end - start].numpy()
    return out
