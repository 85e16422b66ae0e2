"""Token-specific Label Smoothing (TLS), the loss of SE's training stage.

For a masked position i the target is (1 - alpha) * onehot(x_i) + alpha * p_ref_i, where
p_ref_i is the model's own prediction at i on the unmasked input (eval mode, no gradient).
The cross-entropy against that target decomposes into
(1 - alpha) * NLL(x_i) + alpha * CE(p_ref_i, p_i), so no dense soft target is built.
``alpha = 0`` is plain masked-LM cross-entropy; p_ref = the uniform distribution is
ordinary label smoothing.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from se_fairseq.core.constants import IGNORE_INDEX


def token_label_smoothed_loss(
    lprobs: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    ref_probs: Optional[torch.Tensor] = None,
    ignore_index: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the soft targets (1 - alpha) * onehot(target) + alpha * ref
    against ``lprobs`` (positions x vocab, log-probabilities), without building them.

    ``ref_probs`` (positions x vocab) is p_ref; None means the uniform distribution
    (ordinary label smoothing). Positions whose target is ``ignore_index`` weigh
    nothing. Returns (loss, nll_loss), nll_loss being the one-hot part alone.
    """
    nll_loss = F.nll_loss(
        lprobs,
        target,
        reduction="sum",
        ignore_index=IGNORE_INDEX if ignore_index is None else ignore_index,
    )
    if alpha == 0.0:
        return nll_loss, nll_loss
    smooth = -lprobs.mean(dim=-1) if ref_probs is None else -(ref_probs * lprobs).sum(dim=-1)
    if ignore_index is not None:
        smooth = torch.where(target.ne(ignore_index), smooth, smooth.new_zeros(()))
    return (1.0 - alpha) * nll_loss + alpha * smooth.sum(), nll_loss
