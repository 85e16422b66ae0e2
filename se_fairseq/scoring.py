"""Self-questioning scores of unmasked blocks: one forward, no gradient.

``correctness`` = -log p(x_i | x) of the true token, ``confidence`` = entropy of
the predicted distribution at i. The LM head runs over the non-padding
positions in chunks, so no (batch x length x vocab) fp32 tensor is ever built;
the softmax is computed in fp32 whatever the model's dtype.
"""
import torch
import torch.nn.functional as F

METRICS = ("correctness", "confidence")
_LOGITS_BUDGET = 1 << 25  # fp32 logits elements per LM-head chunk (128 MiB)


def token_scores_from_logits(logits, targets, metric):
    """Scores of a (positions x vocab) logits chunk, in fp32."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    if metric == "correctness":
        return -lprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if metric == "confidence":
        return -(lprobs.exp() * lprobs).sum(-1)
    raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")


@torch.no_grad()
def score_batch(model, src_tokens, pad, metric):
    """(batch x length) fp32 scores of every position of unmasked ``src_tokens``.

    ``model`` is a fairseq RoBERTa-style model in eval mode: ``model(src,
    features_only=True)`` gives features and ``model.encoder.output_layer``
    projects them through the LM head.
    """
    features, _ = model(src_tokens, features_only=True)
    keep = src_tokens.ne(pad)
    flat_features = features[keep]
    flat_targets = src_tokens[keep]
    vocab = model.encoder.sentence_encoder.embed_tokens.num_embeddings
    chunk = max(1, _LOGITS_BUDGET // vocab)
    out = torch.zeros(src_tokens.shape, dtype=torch.float32, device=src_tokens.device)
    pieces = [
        token_scores_from_logits(model.encoder.output_layer(flat_features[s:s + chunk]),
                                 flat_targets[s:s + chunk], metric)
        for s in range(0, flat_features.size(0), chunk)
    ]
    if pieces:
        out[keep] = torch.cat(pieces)
    return out
