"""The online step of SE: score the unmasked batch with the live model, select, mask.

Both adapters run it the same way: one reference forward of the model on the unmasked input
(``reference_forward``: eval mode, no dropout, no gradient) gives feature rows; the LM head
runs over the eligible positions in chunks for the self-questioning scores
(``core.scores.score_rows``); the masker selects on the device; p_ref (the reference
distribution TLS needs) is the softmax of that same forward at the selected positions.
Each adapter supplies the model call and its head.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from se_fairseq.core.masking import SelfEvolutionMasker
from se_fairseq.core.schedule import Rates
from se_fairseq.core.scores import Head, head_logits, score_rows


def unwrap_model(model: Any) -> Any:
    """The module under data-parallel wrappers, so the reference forward runs no
    DDP hooks. Fully-sharded wrappers are kept: their forward gathers the weights."""
    while hasattr(model, "module") and "FullySharded" not in type(model).__name__:
        model = model.module
    return model


@contextmanager
def reference_forward(model: Any) -> Iterator[Any]:
    """Yields the unwrapped module in eval mode under no_grad; restores its mode after."""
    inner = unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            yield inner
    finally:
        inner.train(was_training)


@dataclass
class OnlineSelection:
    """What the online step hands on: the masked input, the target (the original token at
    the selected positions, the masker's ``pad`` elsewhere) and p_ref at the selected
    positions (rows in row-major order of the selection; None when not asked for)."""

    source: torch.Tensor
    target: torch.Tensor
    ref_probs: Optional[torch.Tensor]


def select_online(
    features: torch.Tensor,
    tokens: torch.Tensor,
    eligible: torch.Tensor,
    seeds: torch.Tensor,
    masker: SelfEvolutionMasker,
    metric: str,
    head: Head,
    vocab: int,
    *,
    word_begins: Optional[torch.Tensor] = None,
    want_ref: bool = False,
    keep_logits: bool = True,
    rates: Optional[Rates] = None,
) -> OnlineSelection:
    """Scores, selection and p_ref of one unmasked batch, from the reference forward's
    ``features`` (batch x length x dim) and the model's ``head`` over them.

    ``eligible`` (bool, like ``tokens``): the positions that get a score and may be
    selected (the masker also skips its special ids). ``seeds``: the row seeds
    (``masking.row_seeds``). With ``want_ref``, p_ref comes from the logits kept while
    scoring when ``keep_logits`` and they fit the logits budget, else from the head run
    again at the selected positions only. ``rates``: this step's mask rate and random
    share (a schedule's), else the masker's own."""
    rows, kept = score_rows(
        head,
        features[eligible],
        tokens[eligible],
        metric,
        vocab,
        keep_logits=want_ref and keep_logits,
    )
    scores = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    scores[eligible] = rows
    source, target = masker.mask(
        tokens, scores, seeds, scored=eligible, word_begins=word_begins, rates=rates
    )
    ref_probs = None
    if want_ref:
        selected = target.ne(masker.pad)
        if kept is not None:  # rows of the eligible positions -> the selected ones
            logits = kept[selected[eligible]]
        else:
            logits = head_logits(head, features[selected])
        ref_probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    return OnlineSelection(source, target, ref_probs)
