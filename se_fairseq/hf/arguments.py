"""The SE options of the transformers path, named as on the fairseq side (``--se-select``,
``--tls-alpha``...), as a dataclass that ``HfArgumentParser`` reads beside
``TrainingArguments``."""

from dataclasses import dataclass, field
from typing import Any, Optional

from se_fairseq.core import options
from se_fairseq.core.constants import SCORES_COLUMN
from se_fairseq.core.schedule import RateSchedules

# the core's options as the script's command line spells them
SPELLING = options.Spelling(
    {
        "select": "--se_select",
        "metric": "--se_metric",
        "online": "--se_online",
        "threshold": "--se_threshold",
        "random_share": "--se_random_share",
        "temperature": "--se_temperature",
        "tls_alpha": "--tls_alpha",
        "tls_ref": "--tls_ref",
        "mask_prob_schedule": "--se_mask_prob_schedule",
        "reference": "--se_reference_model",
        "random_share_schedule": "--se_random_share_schedule",
    },
    replacement="mask_random",
)


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
            "choices": options.SELECT_CHOICES,
        },
    )
    se_metric: str = field(
        default="correctness",
        metadata={
            "help": "the self-questioning score: correctness = -log p(true token), confidence = "
            "entropy of the prediction, excess = correctness minus a frozen reference model's "
            "(Rho-1; online: --se_reference_model) (offline: what the scores column holds)",
            "choices": options.LIVE_METRICS,
        },
    )
    se_reference_model: Optional[str] = field(
        default=None,
        metadata={
            "help": "with --se_online --se_metric excess: the frozen reference model (a "
            "save_pretrained folder or a hub name of the same vocabulary), e.g. the starting "
            "checkpoint"
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
    se_mask_prob_schedule: Optional[str] = field(
        default=None,
        metadata={
            "help": "the training mask rate over training progress (step / max steps): a rate, "
            "linear:START,END[@P], or steps:R0,R1@P1,R2@P2... (e.g. steps:0.3,0.15@0.5,0.05@0.8); "
            "training batches are then masked in the train step at the step's rate (SE's "
            "per-example budget and --se_select random alike); evaluation masks at "
            "--mlm_probability"
        },
    )
    se_random_share_schedule: Optional[str] = field(
        default=None,
        metadata={
            "help": "--se_random_share over training progress, written as "
            "--se_mask_prob_schedule (e.g. linear:1,0 starts fully random and moves to SE); "
            "instead of --se_random_share"
        },
    )
    se_scores_column: str = field(
        default=SCORES_COLUMN,
        metadata={"help": "the dataset column holding the per-token scores (offline SE)"},
    )
    se_sparse_head: bool = field(
        default=True,
        metadata={
            "help": "compute the LM head's vocabulary projection only where it is needed: at "
            "the masked positions of the training forward, chunk by chunk at the scored ones "
            "of the reference forward (the head is split at get_output_embeddings(); a model "
            "whose head cannot be split runs densely, with a warning). False: full logits"
        },
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
            "choices": options.TLS_REF_CHOICES,
        },
    )

    def __post_init__(self) -> None:
        options.check_masking(
            SPELLING,
            mask_prob=None,  # --mlm_probability, checked by the collator
            select=self.se_select,
            metric=self.se_metric,
            metric_choices=options.LIVE_METRICS,
            online=self.se_online,
            threshold=self.se_threshold,
            random_share=self.se_random_share,
            temperature=self.se_temperature,
            mask_prob_schedule=self.se_mask_prob_schedule,
            random_share_schedule=self.se_random_share_schedule,
            reference=self.se_reference_model is not None,
        )
        if self.se_random_share_schedule is not None and self.se_random_share != 0.0:
            raise options.OptionError(
                "--se_random_share_schedule replaces --se_random_share: give one of them"
            )
        options.check_tls(SPELLING, alpha=self.tls_alpha, ref=self.tls_ref)

    @property
    def has_schedule(self) -> bool:
        return self.se_mask_prob_schedule is not None or self.se_random_share_schedule is not None

    def rate_schedules(self, mlm_probability: float) -> Optional[RateSchedules]:
        """The training rates' schedules (None without a schedule); unscheduled rates are
        constant at ``mlm_probability`` and --se_random_share."""
        if not self.has_schedule:
            return None
        return RateSchedules.parse(
            self.se_mask_prob_schedule or mlm_probability,
            self.se_random_share_schedule or self.se_random_share,
        )

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
