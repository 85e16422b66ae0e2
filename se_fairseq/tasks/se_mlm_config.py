"""Task ``se_mlm``'s configuration and the checks that refuse a configuration.

``SelfEvolutionMLMConfig`` extends fairseq's masked_lm options with the SE options;
``_check_config`` refuses, at task set-up, what se_mlm cannot train on;
``resolved_replacement`` and ``build_masker`` turn the options into the masker.
``check_valid_sizes`` and ``check_score_file`` refuse data that does not fit the run,
when a split is loaded. A refusal is a ``SelfEvolutionConfigError`` (or a score file's
``ScoreFileError``); plugin registration installs ``install_one_line_refusals``, so that
fairseq-train ends with one line naming it instead of a traceback.
"""

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from fairseq.data import Dictionary
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks.masked_lm import MaskedLMConfig
from omegaconf import II

from se_fairseq.core import options
from se_fairseq.core.masking import SelfEvolutionMasker
from se_fairseq.core.schedule import RateSchedules
from se_fairseq.data import score_file

SE_SELECT_CHOICES = ChoiceEnum(list(options.SELECT_CHOICES))
SE_METRIC_CHOICES = ChoiceEnum(list(options.FILE_METRICS))  # rarity: se-score --metric rarity
SE_THRESHOLD_FALLBACK_CHOICES = ChoiceEnum(list(options.THRESHOLD_FALLBACK_CHOICES))

# the core's options as fairseq-train spells them
SPELLING = options.Spelling(
    {
        "mask_prob": "--mask-prob",
        "select": "--se-select",
        "metric": "--se-metric",
        "online": "--se-online",
        "threshold": "--se-threshold",
        "random_share": "--se-random-share",
        "temperature": "--se-temperature",
        "replace_first": "--leave-unmasked-prob",
        "replace_second": "--random-token-prob",
        "tls_alpha": "--tls-alpha",
        "tls_ref": "--tls-ref",
        "mask_prob_schedule": "--mask-prob-schedule",
        "random_share_schedule": "--se-random-share-schedule",
        "reference": "--se-reference",
    },
    replacement="leave_random",
)


class SelfEvolutionConfigError(options.OptionError):
    """A configuration se_mlm refuses at start-up; fairseq-train prints it as one line."""


def _one_line_refusals(previous):
    """sys.excepthook: a refusal of se_mlm (or a score file that does not fit the run)
    that nothing caught ends the program with its message on one line, as argparse
    errors do, instead of a traceback through fairseq-train's set-up; every other
    exception goes to the previous hook."""

    def hook(kind, err, tb):
        if isinstance(err, (SelfEvolutionConfigError, score_file.ScoreFileError)):
            print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {err}", file=sys.stderr)
            return
        previous(kind, err, tb)

    hook.se_fairseq_one_line = True
    return hook


def install_one_line_refusals() -> None:
    """Put ``_one_line_refusals`` in front of ``sys.excepthook`` (once per process)."""
    if not getattr(sys.excepthook, "se_fairseq_one_line", False):
        sys.excepthook = _one_line_refusals(sys.excepthook)


@dataclass
class SelfEvolutionMLMConfig(MaskedLMConfig):
    se_select: SE_SELECT_CHOICES = field(
        default="topk",
        metadata={
            "help": "how to choose the tokens to mask: topk = the mask_prob fraction of "
            "eligible tokens with the highest scores; threshold = every token scored above "
            "--se-threshold (the reference code's rule); sample = mask_prob of the tokens drawn "
            "without replacement with probability rising with the score (Gumbel top-k at "
            "--se-temperature); random = fairseq masked_lm masking (no scores needed)"
        },
    )
    se_threshold: Optional[float] = field(
        default=None,
        metadata={
            "help": "with --se-select threshold: mask every token scored above it (default: "
            "0.1 for correctness, as the reference code; 0.314 nats for confidence, the "
            "entropy of a prediction 0.905 sure)"
        },
    )
    se_threshold_fallback: SE_THRESHOLD_FALLBACK_CHOICES = field(
        default="random",
        metadata={
            "help": "with --se-select threshold, rows with no token above the threshold: random "
            "= fairseq masked_lm masking at --mask-prob with 80/10/10 replacement (the "
            "reference code); none = leave them unmasked"
        },
    )
    se_random_share: float = field(
        default=0.0,
        metadata={
            "help": "with --se-select topk or sample: the share of each block's mask budget "
            "given to uniformly drawn tokens instead of the highest scores (0 = pure SE, "
            "1 = random positions with SE's budget)"
        },
    )
    mask_prob_schedule: Optional[str] = field(
        default=None,
        metadata={
            "help": "the training mask rate over training progress (update / --max-update): "
            "a rate, linear:START,END[@P], or steps:R0,R1@P1,R2@P2... (e.g. "
            "steps:0.3,0.15@0.5,0.05@0.8); train batches are then masked in the train step at "
            "the step's rate (SE's per-block budget and --se-select random alike); validation "
            "masks at --mask-prob. Needs --max-update"
        },
    )
    se_random_share_schedule: Optional[str] = field(
        default=None,
        metadata={
            "help": "--se-random-share over training progress, written as --mask-prob-schedule "
            "(e.g. linear:1,0 starts fully random and moves to SE); instead of --se-random-share"
        },
    )
    se_temperature: float = field(
        default=1.0,
        metadata={"help": "with --se-select sample: score temperature (lower = closer to topk)"},
    )
    se_online: bool = field(
        default=False,
        metadata={
            "help": "one-stage SE: no score file; every train step scores the unmasked batch "
            "with the current model (the reference forward that token_ls needs anyway), selects "
            "on the device with --se-select topk, sample or threshold, then trains on the masked "
            "batch. Needs --criterion token_ls. Valid/test splits use random (masked_lm) masking"
        },
    )
    se_metric: SE_METRIC_CHOICES = field(
        default="correctness",
        metadata={
            "help": "the self-questioning score (offline: what the score file must hold): "
            "correctness = -log p(true token); confidence = entropy of the prediction; excess = "
            "the live model's correctness minus a frozen reference model's (Rho-1's excess loss; "
            "online with --se-reference, offline from se-score --metric excess --reference); "
            "rarity = unigram surprisal (offline only, se-score --metric rarity)"
        },
    )
    se_reference: Optional[str] = field(
        default=None,
        metadata={
            "help": "with --se-online --se-metric excess: the frozen reference model (a fairseq "
            "checkpoint over the task's dictionary, e.g. the starting checkpoint); each step "
            "scores the unmasked batch with it too (eval mode, no gradient) and masks the "
            "tokens where the live model's loss most exceeds its loss. It is never trained "
            "nor saved in the checkpoints"
        },
    )
    se_scores: Optional[str] = field(
        default=None,
        metadata={
            "help": "score file of the train split (prefix, or its .npy/.json); default: "
            "<data>/<split>.se_scores.{npy,json} beside the split, as se-score writes it"
        },
    )
    train_subset: str = II("dataset.train_subset")
    max_update: int = II("optimization.max_update")
    skip_invalid_size_inputs_valid_test: bool = II("dataset.skip_invalid_size_inputs_valid_test")
    # fairseq-train's top-level --bpe options: --mask-whole-words needs them to find where
    # words begin (masked_lm reads a self.args that dataclass tasks do not have).
    se_bpe: Any = II("bpe")
    leave_unmasked_prob: Optional[float] = field(
        default=None,
        metadata={
            "help": "probability that a selected token is left unchanged (default: 0.1 with "
            "--se-select random as in masked_lm, else 0: every selected token is <mask>)"
        },
    )
    random_token_prob: Optional[float] = field(
        default=None,
        metadata={
            "help": "probability that a selected token is replaced by a random token "
            "(default: 0.1 with --se-select random as in masked_lm, else 0)"
        },
    )


def _check_config(cfg):
    """The core's checks (``se_fairseq.core.options``), then fairseq's own options."""
    try:
        options.check_masking(
            SPELLING,
            mask_prob=cfg.mask_prob,
            select=str(cfg.se_select),
            metric=str(cfg.se_metric),
            metric_choices=options.FILE_METRICS,
            online=cfg.se_online,
            threshold=cfg.se_threshold,
            random_share=cfg.se_random_share,
            temperature=cfg.se_temperature,
            replacement=(cfg.leave_unmasked_prob, cfg.random_token_prob),
            mask_prob_schedule=cfg.mask_prob_schedule,
            random_share_schedule=cfg.se_random_share_schedule,
            reference=cfg.se_reference is not None,
        )
    except options.OptionError as err:
        raise SelfEvolutionConfigError(str(err)) from None
    if cfg.se_reference is not None and not cfg.se_online:
        raise SelfEvolutionConfigError(
            "--se-reference scores each step's batch, with --se-online; offline, --se-metric "
            "excess trains on a score file of excess scores (se-score --metric excess "
            "--reference CKPT)"
        )
    if cfg.se_random_share_schedule is not None and cfg.se_random_share != 0.0:
        raise SelfEvolutionConfigError(
            "--se-random-share-schedule replaces --se-random-share: give one of them"
        )
    if has_schedule(cfg):
        if max_update(cfg) <= 0:
            raise SelfEvolutionConfigError(
                "--mask-prob-schedule/--se-random-share-schedule follow training progress "
                "(update / --max-update): give --max-update"
            )
        if cfg.mask_multiple_length != 1 or cfg.mask_stdev != 0:
            raise SelfEvolutionConfigError(
                "--mask-multiple-length/--mask-stdev are fairseq's masked_lm spans; with a "
                "schedule, batches are masked in the train step, without spans"
            )
    if cfg.se_select != "random" and (cfg.mask_multiple_length != 1 or cfg.mask_stdev != 0):
        raise SelfEvolutionConfigError(
            "--mask-multiple-length/--mask-stdev are fairseq random-masking options; they "
            "apply only with --se-select random"
        )
    if getattr(cfg, "d2v2_multi", False):
        raise SelfEvolutionConfigError("--d2v2-multi (data2vec batches) is not supported by se_mlm")


def max_update(cfg: SelfEvolutionMLMConfig) -> int:
    """fairseq-train's --max-update (0: none, or a config built outside fairseq-train)."""
    try:
        return int(cfg.max_update or 0)
    except (TypeError, ValueError):  # an unresolved ${optimization.max_update}
        return 0


def has_schedule(cfg: SelfEvolutionMLMConfig) -> bool:
    return cfg.mask_prob_schedule is not None or cfg.se_random_share_schedule is not None


def rate_schedules(cfg: SelfEvolutionMLMConfig) -> Optional[RateSchedules]:
    """The training rates' schedules (None without a schedule: the masker's own rates)."""
    if not has_schedule(cfg):
        return None
    return RateSchedules.parse(
        cfg.mask_prob_schedule or cfg.mask_prob,
        cfg.se_random_share_schedule or cfg.se_random_share,
    )


def resolved_replacement(cfg: SelfEvolutionMLMConfig) -> tuple[float, ...]:
    """(leave_unmasked_prob, random_token_prob): as given, else masked_lm's 0.1 each with
    --se-select random and 0 in the SE modes (every selected token becomes <mask>, as in
    the paper's reference code)."""
    given = (cfg.leave_unmasked_prob, cfg.random_token_prob)
    return options.resolve_replacement(SPELLING, str(cfg.se_select), given)


def build_masker(
    cfg: SelfEvolutionMLMConfig,
    dictionary: Dictionary,
    mask_idx: int,
    word_begins: Optional[torch.Tensor],
) -> SelfEvolutionMasker:
    """The masker of the SE modes, from the options: ``word_begins`` is the whole-word
    table of --mask-whole-words (None without it); --se-select threshold without
    --se-threshold takes the metric's default (DEFAULT_THRESHOLDS)."""
    leave_unmasked_prob, random_token_prob = resolved_replacement(cfg)
    return SelfEvolutionMasker(
        dictionary,
        mask_idx,
        mask_prob=cfg.mask_prob,
        mode=str(cfg.se_select),
        seed=cfg.seed,
        # None outside threshold mode
        threshold=options.resolve_threshold(
            str(cfg.se_select), cfg.se_threshold, str(cfg.se_metric)
        ),
        temperature=cfg.se_temperature,
        leave_unmasked_prob=leave_unmasked_prob,
        random_token_prob=random_token_prob,
        freq_weighted_replacement=cfg.freq_weighted_replacement,
        mask_whole_words=word_begins,
        threshold_fallback=cfg.se_threshold_fallback == "random",
        random_share=cfg.se_random_share,
    )


def check_valid_sizes(cfg: SelfEvolutionMLMConfig, split: str, dataset) -> None:
    """fairseq-train skips training blocks longer than the positions, but stops at the
    first validation on such a block unless told to skip them: refuse now, not after
    an epoch of training."""
    try:
        skip = bool(cfg.skip_invalid_size_inputs_valid_test)
    except Exception:  # a config without fairseq-train's dataset options
        return
    sizes = dataset.sizes[0] if isinstance(dataset.sizes, list) else dataset.sizes
    sizes = np.asarray(sizes)
    too_long = int((sizes > cfg.tokens_per_sample).sum())
    if too_long and not skip:
        raise SelfEvolutionConfigError(
            f"{too_long} of the {len(sizes)} blocks of split {split} are longer than "
            f"--tokens-per-sample {cfg.tokens_per_sample} (the longest has "
            f"{int(sizes.max())} tokens: --sample-break-mode {cfg.sample_break_mode} "
            "keeps long sentences whole); fairseq-train would stop at the first validation. "
            "Add --skip-invalid-size-inputs-valid-test (skips them, as training skips its "
            "own), or use --sample-break-mode none"
        )


def check_score_file(cfg: SelfEvolutionMLMConfig, scores: score_file.ScoreFile) -> None:
    """A score file of another metric, or computed on other blocks, is refused: the run
    would train on scores of other contexts, and on tokens se-score skipped."""
    if scores.metric != cfg.se_metric:
        raise SelfEvolutionConfigError(
            f"score file {scores.meta_path} holds '{scores.metric}' scores but "
            f"--se-metric is '{cfg.se_metric}'"
        )
    differ = scores.blocking_mismatch(cfg.tokens_per_sample, cfg.sample_break_mode)
    if differ:
        theirs = " ".join(f"--{k.replace('_', '-')} {a}" for k, (a, _) in differ.items())
        ours = " ".join(f"--{k.replace('_', '-')} {b}" for k, (_, b) in differ.items())
        raise score_file.ScoreFileError(
            f"score file {scores.meta_path} was computed on blocks of {theirs}, but this run "
            f"cuts {ours}: train with the score file's blocking, or rescore with "
            f"se-score ... {ours}"
        )
