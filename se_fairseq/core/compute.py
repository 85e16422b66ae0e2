"""Training compute, counted so that comparisons can give each side the same.

The unit is a token forward pass: a forward over a token counts 1, its backward 2 (so a
training step is 3 per token), and every extra forward without gradient 1: the reference
forward of TLS (p_ref) and of online SE (scores and p_ref in one), a frozen reference
model's forward (excess loss), and the self-questioning pass over the corpus (se-score).
FLOPs are these counts times about twice the model's parameters.
"""

TRAIN_STEP = 3  # forward 1 + backward 2


def step_passes(*, reference_forward: bool, reference_model: bool = False) -> int:
    """Token passes of one training step: 3, plus the live model's reference forward (TLS
    against the model, or online SE), plus a frozen reference model's forward."""
    return TRAIN_STEP + int(reference_forward) + int(reference_model)


def scoring_passes(*, reference_model: bool = False) -> int:
    """Token passes of scoring a corpus: one forward, two with a reference model."""
    return 1 + int(reference_model)
