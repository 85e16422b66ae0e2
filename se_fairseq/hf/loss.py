"""Token-specific Label Smoothing (TLS) on a transformers masked-LM output.

The loss of criterion ``token_ls`` (se_fairseq.criterions.token_ls), on the batch shapes
of transformers: logits (batch x length x vocab), labels -100 where nothing is
predicted. For a labelled position i the target is
(1 - alpha) * onehot(label_i) + alpha * p_ref_i, written as
(1 - alpha) * NLL + alpha * CE(p_ref, p), so no dense soft target is built.
No fairseq import: the HF path runs without it.
"""

from typing import Optional, Union

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


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
    lprobs = F.log_softmax(logits[selected], dim=-1, dtype=torch.float32)
    targets = labels[selected]
    per_token = -lprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if alpha > 0.0:
        if ref_probs is None:
            smooth = -lprobs.mean(dim=-1)
        else:
            if ref_probs.shape != lprobs.shape:
                raise ValueError(
                    f"ref_probs has shape {tuple(ref_probs.shape)}, but the batch has "
                    f"{lprobs.size(0)} labelled positions over a vocabulary of {lprobs.size(1)}: "
                    "p_ref must hold one row per label that is not -100, in row-major order"
                )
            smooth = -(ref_probs.float() * lprobs).sum(dim=-1)
        per_token = (1.0 - alpha) * per_token + alpha * smooth
    count = selected.sum() if num_items_in_batch is None else num_items_in_batch
    if isinstance(count, torch.Tensor):
        count = count.to(per_token.device).clamp(min=1)
    else:
        count = max(int(count), 1)
    # an empty selection gives 0 (with a graph through the logits), not NaN
    return per_token.sum() / count
