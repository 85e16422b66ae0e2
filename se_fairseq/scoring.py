"""Self-questioning with a fairseq RoBERTa-style model: its LM head, split for scoring.

The formulas and the chunked loop are the core's (``se_fairseq.core.scores``); this module
knows where a fairseq model keeps its vocabulary and LM head, and how fairseq's
``RobertaLMHead`` computes, so that its output bias can be added piece by piece in cache.
"""

import torch
import torch.nn.functional as F

from se_fairseq.core.scores import score_rows


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


def fairseq_head(model):
    """The model's LM head as the core's scoring ``Head`` (``lm_head_parts``)."""
    return lambda rows: lm_head_parts(model, rows)


@torch.no_grad()
def score_features(model, features, src_tokens, pad, metric, keep_logits=False, timer=None):
    """Scores (batch x length, fp32, 0 at padding) from encoder ``features`` of a fairseq
    model, its LM head run over the non-padding positions in chunks (``score_rows``).

    With ``keep_logits``, also returns the LM-head logits of the non-padding
    positions (row-major order) when they fit ``LOGITS_BUDGET``, else None (the
    caller recomputes the few it needs). ``timer`` (a ``StageTimer``, optional) gets
    the LM head's and the scoring's seconds.
    """
    keep = src_tokens.ne(pad)
    rows, logits = score_rows(
        fairseq_head(model),
        features[keep],
        src_tokens[keep],
        metric,
        vocab_size(model),
        keep_logits=keep_logits,
        timer=timer,
    )
    out = torch.zeros(src_tokens.shape, dtype=torch.float32, device=src_tokens.device)
    out[keep] = rows
    if timer is not None:
        timer.lap("score")
    return out, logits


@torch.no_grad()
def score_batch(model, src_tokens, pad, metric):
    """(batch x length) fp32 scores of every position of unmasked ``src_tokens``.

    ``model`` is a fairseq RoBERTa-style model in eval mode: ``model(src,
    features_only=True)`` gives features and ``model.encoder.output_layer``
    projects them through the LM head.
    """
    features, _ = model(src_tokens, features_only=True)
    return score_features(model, features, src_tokens, pad, metric)[0]
