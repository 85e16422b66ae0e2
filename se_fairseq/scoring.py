"""Self-questioning scores of unmasked blocks: one forward, no gradient.

``correctness`` = -log p(x_i | x) of the true token, ``confidence`` = entropy of
the predicted distribution at i. The LM head runs over the non-padding
positions in chunks, so no (batch x length x vocab) fp32 tensor is ever built
unless it fits a small budget; the softmax is computed in fp32 whatever the
model's dtype.
"""

import torch
import torch.nn.functional as F

METRICS = ("correctness", "confidence")
LOGITS_BUDGET = 1 << 25  # fp32 elements per LM-head chunk (128 MiB)
SCORE_ELEMENTS = 1 << 19  # fp32 logits per softmax piece on the CPU (2 MiB: in cache)


class StageTimer:
    """Seconds per named stage, summed over a run (``score_corpus(stage_times={})``): each
    ``lap(name)`` charges the time since the previous lap to ``name``. On a GPU it
    synchronizes first, so the figures are real; nobody pays for it unless asked."""

    def __init__(self, seconds, device=None):
        import time

        self.seconds, self._clock = seconds, time.perf_counter
        self._cuda = device is not None and torch.device(device).type == "cuda"
        self._last = self._clock()

    def lap(self, stage):
        if self._cuda:
            torch.cuda.synchronize()
        now = self._clock()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def token_scores_from_logits(logits, targets, metric, bias=None):
    """fp32 scores of a (positions x vocab) logits chunk; correctness without a full
    log-softmax: logsumexp - logit of the true token.

    On the CPU the softmax runs over pieces of ``SCORE_ELEMENTS`` logits (a few rows) that
    stay in cache, instead of passing five times over the whole chunk in memory: about 3x
    faster, and bit for bit the same (every step is per row, and torch's exp gives the same
    bits on its vector and scalar paths; tests/test_se_score_identity.py checks it).

    ``bias``: the LM head's output bias, not yet added to ``logits`` (see ``lm_head_parts``).
    It is added in place, in the logits' dtype, piece by piece while the piece is in cache;
    the same additions the head makes, so ``logits`` ends as the head's output."""
    rows = max(1, SCORE_ELEMENTS // max(1, logits.size(-1)))
    if logits.device.type != "cpu" or logits.size(0) <= rows:
        if bias is not None:
            logits.add_(bias)
        return _token_scores(logits.float(), targets, metric)
    out = torch.empty(logits.size(0), dtype=torch.float32)
    for s in range(0, logits.size(0), rows):
        piece = logits[s : s + rows]
        if bias is not None:
            piece.add_(bias)
        out[s : s + rows] = _token_scores(piece.float(), targets[s : s + rows], metric)
    return out


def _token_scores(logits, targets, metric):
    if metric == "correctness":
        return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(
            -1
        )
    return token_scores_from_lprobs(F.log_softmax(logits, dim=-1), targets, metric)


def token_scores_from_lprobs(lprobs, targets, metric):
    if metric == "correctness":
        return -lprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if metric == "confidence":
        return -(lprobs.exp() * lprobs).sum(-1)
    raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")


def vocab_size(model):
    return model.encoder.sentence_encoder.embed_tokens.num_embeddings


def lm_head(model, features):
    """LM-head logits (positions x vocab) of encoder ``features`` (positions x dim) of a
    fairseq RoBERTa-style model."""
    return model.encoder.output_layer(features)


def _plain_lm_head(model):
    """The model's ``RobertaLMHead`` when ``output_layer`` is fairseq's own call of it
    (RoBERTa, and hf_bert, whose head is one) with nothing patched or hooked in, else None."""
    from fairseq.models.roberta.model import RobertaEncoder, RobertaLMHead

    encoder = model.encoder
    head = getattr(encoder, "lm_head", None)
    if (
        getattr(encoder.output_layer, "__func__", None) is RobertaEncoder.output_layer
        and isinstance(head, RobertaLMHead)
        and getattr(head.forward, "__func__", None) is RobertaLMHead.forward
        and not (head._forward_hooks or head._forward_pre_hooks)
    ):
        return head
    return None


def lm_head_parts(model, features):
    """(logits before the output bias, the bias) of the LM head, computed with the very
    operations of fairseq's ``RobertaLMHead.forward`` save its last ``+ bias``. That
    addition is one more pass over the whole (positions x vocab) chunk in memory; the
    scoring makes it piece by piece in cache instead (``token_scores_from_logits``).
    For another head: (``lm_head(model, features)``, None)."""
    head = _plain_lm_head(model)
    if head is None:
        return lm_head(model, features), None
    x = head.layer_norm(head.activation_fn(head.dense(features)))
    return F.linear(x, head.weight), head.bias


@torch.no_grad()
def score_features(model, features, src_tokens, pad, metric, keep_logits=False, timer=None):
    """Scores (batch x length, fp32, 0 at padding) from encoder ``features``.

    With ``keep_logits``, also returns the LM-head logits of the non-padding
    positions (row-major order) when they fit ``LOGITS_BUDGET``, else None (the
    caller recomputes the few it needs). ``timer`` (a ``StageTimer``, optional) gets
    the LM head's and the scoring's seconds.
    """
    keep = src_tokens.ne(pad)
    flat_features = features[keep]
    flat_targets = src_tokens[keep]
    vocab = vocab_size(model)
    keep_logits = keep_logits and flat_features.size(0) * vocab <= LOGITS_BUDGET
    chunk = max(1, LOGITS_BUDGET // vocab)
    pieces, kept = [], []
    for s in range(0, flat_features.size(0), chunk):
        logits, bias = lm_head_parts(model, flat_features[s : s + chunk])
        if timer is not None:
            timer.lap("lm_head")
        pieces.append(
            token_scores_from_logits(logits, flat_targets[s : s + chunk], metric, bias=bias)
        )
        if timer is not None:
            timer.lap("score")
        if keep_logits:
            kept.append(logits)
    out = torch.zeros(src_tokens.shape, dtype=torch.float32, device=src_tokens.device)
    if pieces:
        out[keep] = torch.cat(pieces)
    if timer is not None:
        timer.lap("score")
    if not keep_logits:
        return out, None
    return out, torch.cat(kept) if kept else features.new_zeros((0, vocab))


@torch.no_grad()
def score_batch(model, src_tokens, pad, metric):
    """(batch x length) fp32 scores of every position of unmasked ``src_tokens``.

    ``model`` is a fairseq RoBERTa-style model in eval mode: ``model(src,
    features_only=True)`` gives features and ``model.encoder.output_layer``
    projects them through the LM head.
    """
    features, _ = model(src_tokens, features_only=True)
    return score_features(model, features, src_tokens, pad, metric)[0]
