"""The self-questioning scores of positions, from their logits: one forward, no gradient.

``correctness`` = -log p(x_i | x) of the true token, ``confidence`` = entropy of the
predicted distribution at i. ``score_rows`` runs an LM head over feature rows in chunks, so
no (positions x vocab) tensor larger than ``LOGITS_BUDGET`` values ever exists; the softmax
is computed in fp32 whatever the model's dtype.
"""

from collections.abc import Callable
from typing import Optional, Union

import torch
import torch.nn.functional as F

# the formulas of one model's prediction; "excess" (Rho-1's excess loss) is correctness
# minus a reference model's correctness, at the same positions
METRICS = ("correctness", "confidence")
EXCESS = "excess"
LOGITS_BUDGET = 1 << 25  # fp32 elements per LM-head chunk (128 MiB)
SCORE_ELEMENTS = 1 << 19  # fp32 logits per softmax piece on the CPU (2 MiB: in cache)

# An LM head split for scoring: feature rows -> (logits, the output bias not yet added to
# them, or None). Adding the bias piece by piece while the piece is in cache saves one pass
# over the whole chunk in memory (see ``token_scores_from_logits``).
Head = Callable[[torch.Tensor], tuple[torch.Tensor, Optional[torch.Tensor]]]
# A user's score of positions: (logits (positions x vocab), their token ids (positions,)) ->
# (positions,) scores, higher = more worth masking. It sees chunks of the positions that may
# be selected, never padding or special tokens, and never a (tokens x vocab) tensor larger
# than the logits budget; the built-in correctness and confidence are two such functions.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Union[str, ScoreFn]


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


def head_logits(head: Head, rows: torch.Tensor) -> torch.Tensor:
    """The head's whole output (bias added) at feature ``rows``."""
    logits, bias = head(rows)
    return logits if bias is None else logits + bias


def score_rows(
    head: Head,
    rows: torch.Tensor,
    targets: torch.Tensor,
    metric: Metric,
    vocab: int,
    keep_logits: bool = False,
    timer: Optional[StageTimer] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """fp32 scores of feature ``rows`` (positions x dim) against ``targets`` (positions),
    the head run over chunks of at most ``LOGITS_BUDGET // vocab`` rows. ``metric``: one of
    METRICS, or a ``ScoreFn`` called on each chunk's logits (the head's whole output).

    With ``keep_logits``, also returns the head's logits of every row when they fit
    ``LOGITS_BUDGET``, else None (the caller recomputes the few it needs). ``timer`` gets
    the head's and the scoring's seconds."""
    keep_logits = keep_logits and rows.size(0) * vocab <= LOGITS_BUDGET
    chunk = max(1, LOGITS_BUDGET // vocab)
    pieces, kept = [], []
    for s in range(0, rows.size(0), chunk):
        logits, bias = head(rows[s : s + chunk])
        if timer is not None:
            timer.lap("lm_head")
        if callable(metric):
            if bias is not None:
                logits.add_(bias)
            pieces.append(metric(logits, targets[s : s + chunk]).float())
        else:
            pieces.append(
                token_scores_from_logits(logits, targets[s : s + chunk], metric, bias=bias)
            )
        if timer is not None:
            timer.lap("score")
        if keep_logits:
            kept.append(logits)
    scores = torch.cat(pieces) if pieces else rows.new_zeros(0, dtype=torch.float32)
    if not keep_logits:
        return scores, None
    return scores, torch.cat(kept) if kept else rows.new_zeros((0, vocab))
