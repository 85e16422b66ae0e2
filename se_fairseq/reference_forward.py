"""The contract between task se_mlm and criterion token_ls around the reference forward.

Both run the model on the *unmasked* input in eval mode without gradient: the
task to score an online batch (--se-online), the criterion to get p_ref for
Token-specific Label Smoothing. The batch keys they pass, the one way to run
that forward, and what the task asks of the criterion (``ReferenceConsumer``)
live here.
"""

from contextlib import contextmanager
from typing import Protocol

import torch

# An online batch arrives unmasked with one int64 row seed per row under this key;
# the task scores and masks it, and drops the key.
ONLINE_SEEDS = "se_online_seeds"
# p_ref at the selected positions (rows in row-major order of the mask), fp32, left
# in the batch by online masking so that token_ls does not run the same forward twice.
REF_PROBS = "tls_ref_probs"


class ReferenceConsumer(Protocol):
    """What the online step (se_fairseq.tasks.se_mlm_online) asks of the criterion."""

    def needs_reference_probs(self) -> bool:
        """Whether the criterion's forward reads p_ref: if so, the online step leaves it
        under REF_PROBS (from its own reference forward), else it computes none."""


def unwrap_model(model):
    """The module under data-parallel wrappers, so the reference forward runs no
    DDP hooks. Fully-sharded wrappers are kept: their forward gathers the weights."""
    while hasattr(model, "module") and "FullySharded" not in type(model).__name__:
        model = model.module
    return model


@contextmanager
def reference_forward(model):
    """Yields the unwrapped module in eval mode under no_grad; restores its mode after."""
    inner = unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            yield inner
    finally:
        inner.train(was_training)
