"""The SE options of the transformers path, named as on the fairseq side (``--se-select``,
``--tls-alpha``...), as a dataclass that ``HfArgumentParser`` reads beside
``TrainingArguments``."""

from dataclasses import dataclass, field
from typing import Any, Optional

SELECT_CHOICES = ("topk", "sample", "threshold", "random")
METRIC_CHOICES = ("correctness", "confidence")
TLS_REF_CHOICES = ("model", "uniform")


@dataclass
class SelfEvolutionArguments:
    se_select: str = field(
        default="topk",
        metadata={
            "help": "how to choose the tokens to mask: topk = the mlm_probability fraction of "
            "eligible tokens with the highest scores; threshold = every token scored above "
            "--se_threshold (the reference code's rule); sample = drawn without replacement "
            "with probability rising with the score (Gumbel top-k at --se_temperature); random "
            "= transformers' DataCollatorForLanguageModeling masking (no scores needed)",
            "choices": SELECT_CHOICES,
        },
    )
    se_metric: str = field(
        default="correctness",
        metadata={
            "help": "the self-questioning score: correctness = -log p(true token), confidence = "
            "entropy of the prediction (offline: what the scores column must hold)",
            "choices": METRIC_CHOICES,
        },
    )
    se_threshold: Optional[float] = field(
        default=None,
        metadata={
            "help": "with --se_select threshold: mask every token scored above it (default: "
            "0.1 for correctness, as the reference code)"
        },
    )
    se_threshold_fallback: bool = field(
        default=True,
        metadata={
            "help": "with --se_select threshold: a row with no token above the threshold gets "
            "random masking (the reference code); False leaves it unmasked"
        },
    )
    se_random_share: float = field(
        default=0.0,
        metadata={
            "help": "with --se_select topk or sample: the share of each example's mask budget "
            "drawn uniformly instead of by score"
        },
    )
    se_temperature: float = field(
        default=1.0,
        metadata={"help": "with --se_select sample: score temperature (lower = closer to topk)"},
    )
    se_online: bool = field(
        default=False,
        metadata={
            "help": "one-stage SE: no scores column; every train step scores the unmasked "
            "batch with the current model (the reference forward TLS needs anyway), selects on "
            "the device, then trains on the masked batch"
        },
    )
    se_scores_column: str = field(
        default="se_scores",
        metadata={"help": "the dataset column holding the per-token scores (offline SE)"},
    )
    tls_alpha: float = field(
        default=0.1,
        metadata={"help": "weight of the reference distribution in the target (0 = plain MLM)"},
    )
    tls_ref: str = field(
        default="model",
        metadata={
            "help": "reference distribution: model = the model's own prediction on the "
            "unmasked input (TLS); uniform = ordinary label smoothing",
            "choices": TLS_REF_CHOICES,
        },
    )

    def __post_init__(self) -> None:
        for name, choices in (
            ("se_select", SELECT_CHOICES),
            ("se_metric", METRIC_CHOICES),
            ("tls_ref", TLS_REF_CHOICES),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"--{name} must be one of {', '.join(choices)}, not {value!r}")
        if not 0.0 <= self.tls_alpha <= 1.0:
            raise ValueError(f"--tls_alpha must lie in [0, 1], got {self.tls_alpha}")

    def collator_kwargs(self) -> dict[str, Any]:
        """The DataCollatorForSelfEvolution keyword arguments these options set."""
        return {
            "select": self.se_select,
            "metric": self.se_metric,
            "threshold": self.se_threshold,
            "threshold_fallback": self.se_threshold_fallback,
            "random_share": self.se_random_share,
            "temperature": self.se_temperature,
            "scores_column": self.se_scores_column,
        }
