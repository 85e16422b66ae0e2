"""Token-specific Label Smoothing (TLS) on a transformers masked-LM output.

The core's loss (``se_fairseq.core.tls``, also criterion ``token_ls``'s) on the batch shapes
of transformers: logits (batch x length x vocab), labels -100 where nothing is predicted,
divided by the Trainer's count of labels.
"""

from typing import Optional, Union

import torch
import torch.nn.functional as F

from se_fairseq.core.constants import IGNORE_INDEX
from se_fairseq.core.tls import token_label_smoothed_loss


def token_ls_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    ref_probs: Optional[torch.Tensor] = None,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
) -> torch.Tensor:
    """TLS over the labelled positions, summed and divided by ``num_items_in_batch``
    (the Trainer's count of labels over the accumulated batch) or, when it is None, by
    this batch's count: with ``alpha`` 0 exactly the models' own masked-LM loss.

    ``ref_probs`` (labelled positions x vocab, rows in row-major order of
    ``labels != -100``) is p_ref; None means the uniform distribution (ordinary label
    smoothing). The softmax is taken in fp32 whatever the logits' dtype.
    """
    selected = labels.ne(IGNORE_INDEX)
    return token_ls_loss_at(
        logits[selected], labels[selected], alpha, ref_probs, num_items_in_batch
    )


def token_ls_loss_at(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    ref_probs: Optional[torch.Tensor] = None,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
) -> torch.Tensor:
    """``token_ls_loss`` on the labelled positions only: ``logits`` (positions x vocab)
    and their ``targets``, as a sparse LM head computes them."""
    lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    if alpha > 0.0 and ref_probs is not None and ref_probs.shape != lprobs.shape:
        raise ValueError(
            f"ref_probs has shape {tuple(ref_probs.shape)}, but the batch has "
            f"{lprobs.size(0)} labelled positions over a vocabulary of {lprobs.size(1)}: "
            "p_ref must hold one row per label that is not -100, in row-major order"
        )
    total, _ = token_label_smoothed_loss(lprobs, targets, alpha, ref_probs)
    count = targets.numel() if num_items_in_batch is None else num_items_in_batch
    if isinstance(count, torch.Tensor):
        count = count.to(total.device).clamp(min=1)
    else:
        count = max(int(count), 1)
    # an empty selection gives 0 (with a graph through the logits), not NaN
    return total / count
