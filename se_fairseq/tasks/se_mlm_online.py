"""The online step of task ``se_mlm`` (``--se-online``): score, select, mask, in one step.

One reference forward of the live model (eval mode, no gradient, see
``se_fairseq.reference_forward``) on the unmasked batch yields the self-questioning
scores; the masker selects on the device; the batch goes on masked.

The contract with the criterion (``se_fairseq.reference_forward.ReferenceConsumer``,
implemented by token_ls): the step asks ``criterion.needs_reference_probs()``, and only
then leaves p_ref in the batch under ``REF_PROBS``: fp32 probabilities of that same
forward at the selected positions (rows in row-major order of the mask), which the
criterion takes instead of running its own reference forward. The step reads no
attribute of the criterion, and reaches the model's LM head only through
``se_fairseq.scoring`` (``score_features``, ``lm_head``).
"""

import torch
import torch.nn.functional as F

from se_fairseq.data.se_masking import SelfEvolutionMasker
from se_fairseq.reference_forward import (
    ONLINE_SEEDS,
    REF_PROBS,
    ReferenceConsumer,
    reference_forward,
)
from se_fairseq.scoring import lm_head, score_features


def mask_online(
    sample: dict,
    model: torch.nn.Module,
    criterion: ReferenceConsumer,
    masker: SelfEvolutionMasker,
    pad: int,
    metric: str,
) -> dict:
    """The masked batch of an online ``sample`` (which carries ``ONLINE_SEEDS``).

    One reference forward of the transformer; the LM head runs at every position for
    the scores. The reference distribution at the selected positions comes from the
    same forward (the logits kept by ``score_features`` when they fit its budget, else
    the LM head again at the selected positions only).
    """
    tokens = sample["net_input"]["src_tokens"]
    want_ref = criterion.needs_reference_probs()
    with reference_forward(model) as inner:
        features, _ = inner(tokens, features_only=True)
        scores, logits = score_features(inner, features, tokens, pad, metric, keep_logits=want_ref)
        source, target = masker.mask(tokens, scores, sample[ONLINE_SEEDS])
        selected = target.ne(pad)
        ref_probs = None
        if want_ref:
            if logits is not None:  # rows of non-pad positions -> the selected ones
                logits = logits[selected[tokens.ne(pad)]]
            else:
                logits = lm_head(inner, features[selected])
            ref_probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    masked = {k: v for k, v in sample.items() if k != ONLINE_SEEDS}
    masked["net_input"] = dict(sample["net_input"], src_tokens=source)
    masked["target"] = target
    if ref_probs is not None:
        masked[REF_PROBS] = ref_probs
    return masked
