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

With ``--se-metric excess`` (Rho-1's excess loss) a frozen reference model
(``--se-reference``, ``load_reference``) reads the same unmasked batch beside the live
model (eval mode, no gradient) and the score of a position is the live model's correctness
minus the reference's; p_ref stays the live model's.
"""

from typing import Optional, Protocol

import torch

from se_fairseq.core.constants import ONLINE_SEEDS, REF_PROBS
from se_fairseq.core.masking import SelfEvolutionMasker
from se_fairseq.core.online import Reference, reference_forward, select_online, unwrap_model
from se_fairseq.core.schedule import Rates
from se_fairseq.scoring import fairseq_head, vocab_size
from se_fairseq.tasks.se_mlm_config import SelfEvolutionConfigError


class ReferenceConsumer(Protocol):
    """What the online step asks of the criterion."""

    def needs_reference_probs(self) -> bool:
        """Whether the criterion's forward reads p_ref: if so, the online step leaves it
        under REF_PROBS (from its own reference forward), else it computes none."""


def load_reference(path: str, data: str) -> torch.nn.Module:
    """The frozen reference model of ``--se-reference``: checkpoint ``path`` loaded with
    fairseq's own loader (which the plugin keeps weights_only) after checking that its
    dictionary is the one of ``data`` (the task's, + <mask>); on the CPU, in eval mode, no
    parameter requiring a gradient. It belongs to no model and no optimizer, so training
    never changes it and checkpoints never hold it. A missing checkpoint, or one of another
    dictionary, is a ``SelfEvolutionConfigError`` naming the files."""
    from se_fairseq.core.job import ScoringError
    from se_fairseq.scoring_job import load_scoring_model

    try:
        model, _, _ = load_scoring_model(
            path,
            data,
            what="--se-reference checkpoint",
            hint=f"the reference model must share the dictionary of the data in {data}",
        )
    except ScoringError as err:
        raise SelfEvolutionConfigError(str(err)) from None
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def beside(reference: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """``reference`` on the device, and in the floating dtype, of ``model``'s parameters
    (moved once: a model already there is returned as it is)."""
    live = next(unwrap_model(model).parameters())
    ours = next(reference.parameters())
    dtype = live.dtype if live.is_floating_point() else ours.dtype
    if ours.device != live.device or ours.dtype != dtype:
        reference.to(device=live.device, dtype=dtype)
    return reference


def mask_online(
    sample: dict,
    model: torch.nn.Module,
    criterion: ReferenceConsumer,
    masker: SelfEvolutionMasker,
    pad: int,
    metric: str,
    rates: Optional[Rates] = None,
    reference: Optional[torch.nn.Module] = None,
) -> dict:
    """The masked batch of an online ``sample`` (which carries ``ONLINE_SEEDS``).

    One reference forward of the transformer; the LM head runs at every non-padding
    position for the scores. The reference distribution at the selected positions comes
    from the same forward (the logits kept while scoring when they fit the budget, else
    the LM head again at the selected positions only). ``rates``: the step's scheduled
    rates, else the masker's own. ``reference``: the frozen reference model of metric
    ``excess`` (on the live model's device, ``beside``), which reads the same batch.
    """
    tokens = sample["net_input"]["src_tokens"]
    with reference_forward(model) as inner:
        features, _ = inner(tokens, features_only=True)
        frozen = None
        if reference is not None:
            with reference_forward(reference) as ref:
                ref_features, _ = ref(tokens, features_only=True)
                frozen = Reference(ref_features, fairseq_head(ref), vocab_size(ref))
        step = select_online(
            features,
            tokens,
            tokens.ne(pad),
            sample[ONLINE_SEEDS],
            masker,
            metric,
            fairseq_head(inner),
            vocab_size(inner),
            reference=frozen,
            want_ref=criterion.needs_reference_probs(),
            rates=rates,
        )
    masked = {k: v for k, v in sample.items() if k != ONLINE_SEEDS}
    masked["net_input"] = dict(sample["net_input"], src_tokens=step.source)
    masked["target"] = step.target
    if step.ref_probs is not None:
        masked[REF_PROBS] = step.ref_probs
    return masked
