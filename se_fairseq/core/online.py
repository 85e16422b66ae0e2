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

from se_fairseq.core import scores as core_scores
from se_fairseq.core.masking import SelfEvolutionMasker
from se_fairseq.core.packing import Packing
from se_fairseq.core.schedule import Rates
from se_fairseq.core.scores import EXCESS, Head, Metric, head_logits, score_rows


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
class Reference:
    """A frozen reference model's view of the same batch, for excess-loss selection
    (Rho-1): its ``features`` (batch x length x dim, from its own eval-mode forward) and its
    LM ``head``. The score of a position is then the live model's correctness minus the
    reference's."""

    features: torch.Tensor
    head: Head
    vocab: int


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
    metric: Metric,
    head: Head,
    vocab: int,
    *,
    reference: Optional[Reference] = None,
    word_begins: Optional[torch.Tensor] = None,
    want_ref: bool = False,
    keep_logits: bool = True,
    rates: Optional[Rates] = None,
    packing: Optional[Packing] = None,
) -> OnlineSelection:
    """Scores, selection and p_ref of one unmasked batch, from the reference forward's
    ``features`` (batch x length x dim) and the model's ``head`` over them.

    ``eligible`` (bool, like ``tokens``): the positions that get a score and may be
    selected (the masker also skips its special ids). ``seeds``: the row seeds
    (``masking.row_seeds``). ``rates``: this step's mask rate and random share (a
    schedule's), else the masker's own. ``packing``: the batch is one packed row
    (``core.packing``), masked example by example (``seeds``: one per example).
    ``metric``: correctness, confidence, a ``ScoreFn`` of the user's, or ``excess`` with a
    ``reference`` (the live model's correctness minus the reference model's).

    With ``want_ref``, p_ref at the selected positions. With ``keep_logits`` the rows are
    scored and selected a group at a time, each group as many rows as keep their logits
    under the logits budget, so p_ref comes from the logits already computed; a row too
    long for the budget alone, or ``keep_logits`` False, has its selected positions run
    through the head again. Masks do not depend on the grouping: the masker works row by
    row."""
    if packing is not None:
        if reference is not None:
            reference = Reference(
                packing.rows(reference.features, 0.0), reference.head, reference.vocab
            )
        step = select_online(
            packing.rows(features, 0.0),
            packing.rows(tokens, 0),
            reference=reference,
            seeds=seeds,
            eligible=packing.rows(eligible, False),
            masker=masker,
            metric=metric,
            head=head,
            vocab=vocab,
            word_begins=None if word_begins is None else packing.rows(word_begins, True),
            want_ref=want_ref,
            keep_logits=keep_logits,
            rates=rates,
        )
        return OnlineSelection(packing.flat(step.source), packing.flat(step.target), step.ref_probs)
    if (metric == EXCESS) != (reference is not None):
        raise ValueError("metric 'excess' scores against a reference model, and only it does")
    live_metric = "correctness" if metric == EXCESS else metric
    keep = want_ref and keep_logits
    rows = tokens.size(0)
    group = max(1, core_scores.LOGITS_BUDGET // max(1, tokens.size(1) * vocab)) if keep else rows

    def select_rows(part: slice) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        where = eligible[part]
        targets = tokens[part][where]
        scored, kept = score_rows(
            head, features[part][where], targets, live_metric, vocab, keep_logits=keep
        )
        if reference is not None:
            ref_rows = reference.features[part][where]
            scored = (
                scored
                - score_rows(reference.head, ref_rows, targets, "correctness", reference.vocab)[0]
            )
        scores = torch.zeros(where.shape, dtype=torch.float32, device=tokens.device)
        scores[where] = scored
        begins = None if word_begins is None else word_begins[part]
        source, target = masker.mask(
            tokens[part], scores, seeds[part], scored=where, word_begins=begins, rates=rates
        )
        if not want_ref:
            return source, target, None
        selected = target.ne(masker.pad)
        if kept is not None:  # rows of the eligible positions -> the selected ones
            logits = kept[selected[where]]
        else:
            logits = head_logits(head, features[part][selected])
        return source, target, F.softmax(logits, dim=-1, dtype=torch.float32)

    parts = [select_rows(slice(first, first + group)) for first in range(0, rows, group)]
    sources, targets, refs = zip(*parts)
    # row-major: the groups are in row order
    ref = torch.cat(refs) if want_ref else None
    return OnlineSelection(torch.cat(sources), torch.cat(targets), ref)
