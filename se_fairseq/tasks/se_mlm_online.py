"""The online step of task ``se_mlm`` (``--se-online``): score, select, mask, in one step.

The core's online step (``se_fairseq.core.online``) on a fairseq batch: one reference
forward of the live model (eval mode, no gradient) on the unmasked batch gives the
encoder's features; fairseq's LM head scores them; the masker selects on the device; the
batch goes on masked.

The contract with the criterion (``ReferenceConsumer``, implemented by token_ls): the step
asks ``criterion.needs_reference_probs()``, and only then leaves p_ref in the batch under
``REF_PROBS``: fp32 probabilities of that same forward at the selected positions (rows in
row-major order of the mask), which the criterion takes instead of running its own
reference forward. The step reads no attribute of the criterion, and reaches the model's
LM head only through ``se_fairseq.scoring``.
"""

from typing import Optional, Protocol

import torch

from se_fairseq.core.constants import ONLINE_SEEDS, REF_PROBS
from se_fairseq.core.masking import SelfEvolutionMasker
from se_fairseq.core.online import reference_forward, select_online
from se_fairseq.core.schedule import Rates
from se_fairseq.scoring import fairseq_head, vocab_size


class ReferenceConsumer(Protocol):
    """What the online step asks of the criterion."""

    def needs_reference_probs(self) -> bool:
        """Whether the criterion's forward reads p_ref: if so, the online step leaves it
        under REF_PROBS (from its own reference forward), else it computes none."""


def mask_online(
    sample: dict,
    model: torch.nn.Module,
    criterion: ReferenceConsumer,
    masker: SelfEvolutionMasker,
    pad: int,
    metric: str,
    rates: Optional[Rates] = None,
) -> dict:
    """The masked batch of an online ``sample`` (which carries ``ONLINE_SEEDS``).

    One reference forward of the transformer; the LM head runs at every non-padding
    position for the scores. The reference distribution at the selected positions comes
    from the same forward (the logits kept while scoring when they fit the budget, else
    the LM head again at the selected positions only). ``rates``: the step's scheduled
    rates, else the masker's own.
    """
    tokens = sample["net_input"]["src_tokens"]
    with reference_forward(model) as inner:
        features, _ = inner(tokens, features_only=True)
        step = select_online(
            features,
            tokens,
            tokens.ne(pad),
            sample[ONLINE_SEEDS],
            masker,
            metric,
            fairseq_head(inner),
            vocab_size(inner),
            want_ref=criterion.needs_reference_probs(),
            rates=rates,
        )
    masked = {k: v for k, v in sample.items() if k != ONLINE_SEEDS}
    masked["net_input"] = dict(sample["net_input"], src_tokens=step.source)
    masked["target"] = step.target
    if step.ref_probs is not None:
        masked[REF_PROBS] = step.ref_probs
    return masked
