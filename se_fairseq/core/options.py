"""The options of SE masking and of TLS: their choices, defaults and the one validator of
their rules.

Both adapters check their users' options here. Each spells the options as its users type
them (``Spelling``): fairseq-train's ``--mask-prob`` and ``--se-select``, the transformers
script's ``--se_select``, the collator's keyword ``mlm_probability``... so a refusal names
the option the user wrote. The masker checks its own arguments the same way.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Optional

from se_fairseq.core.schedule import Schedule, ScheduleError, check_rates, parse_schedule
from se_fairseq.core.scores import EXCESS, METRICS
from se_fairseq.ops.select import SELECT_MODES

# how positions are chosen: the operator's modes, and random (no scores: masked_lm's and
# DataCollatorForLanguageModeling's masking)
SELECT_CHOICES = (*SELECT_MODES, "random")
# what online SE scores with: the live model's formulas, and its excess over a reference
# model (Rho-1)
LIVE_METRICS = (*METRICS, EXCESS)
# what a score file may hold: those and the model-free rarity
FILE_METRICS = (*LIVE_METRICS, "rarity")
TLS_REF_CHOICES = ("model", "uniform")
THRESHOLD_FALLBACK_CHOICES = ("random", "none")
# the select modes whose budget a random share splits
BUDGET_MODES = ("topk", "sample")
# The threshold of --se-select threshold when none is given, by metric. The reference code
# masks the tokens whose loss (correctness) exceeds 0.1, i.e. whose probability is below
# e^-0.1 = 0.905. For confidence (entropy) the default is the entropy of the surest
# prediction with that top probability: the binary entropy h(e^-0.1) = 0.314 nats. A token
# scores below it only if the model puts more than 0.905 on one candidate, so the two rules
# agree wherever that candidate is the truth.
_P_SURE = math.exp(-0.1)
DEFAULT_THRESHOLDS = {
    "correctness": 0.1,
    "confidence": -(_P_SURE * math.log(_P_SURE) + (1 - _P_SURE) * math.log(1 - _P_SURE)),
}

# fairseq masked_lm's replacement policy of the selected tokens (80/10/10): the defaults of
# select random, and what the reference code applies to the rows threshold selection leaves
# empty
MASKED_LM_LEAVE_UNMASKED_PROB = 0.1
MASKED_LM_RANDOM_TOKEN_PROB = 0.1

# The two replacement probabilities an adapter exposes, unset -> by select mode:
# (first, second) with select random, and in the SE modes (every selected token becomes the
# mask token, as in the paper's reference code).
REPLACEMENTS = {
    # fairseq: --leave-unmasked-prob, --random-token-prob
    "leave_random": {
        "random": (MASKED_LM_LEAVE_UNMASKED_PROB, MASKED_LM_RANDOM_TOKEN_PROB),
        "se": (0.0, 0.0),
    },
    # transformers: mask_replace_prob, random_replace_prob
    "mask_random": {
        "random": (
            1.0 - MASKED_LM_LEAVE_UNMASKED_PROB - MASKED_LM_RANDOM_TOKEN_PROB,
            MASKED_LM_RANDOM_TOKEN_PROB,
        ),
        "se": (1.0, 0.0),
    },
}


class OptionError(ValueError):
    """Options that cannot train (the message names the option as the user wrote it)."""


@dataclass(frozen=True)
class Spelling:
    """How an adapter's users write the options.

    ``names`` maps the core's option names (mask_prob, select, metric, online, threshold,
    random_share, temperature, replace_first, replace_second, tls_alpha, tls_ref) to the
    adapter's. ``flags`` True: command-line options (``--se-select topk``); False: Python
    keywords (``select='topk'``). ``replacement``: which pair of replacement probabilities
    the adapter exposes (a key of ``REPLACEMENTS``)."""

    names: Mapping[str, str]
    flags: bool = True
    replacement: str = "leave_random"

    def name(self, option: str) -> str:
        return self.names[option]

    def value(self, value: Any) -> str:
        return str(value) if self.flags else repr(value)

    def setting(self, option: str, *values: Any) -> str:
        """``--se-select topk or sample`` / ``select='topk' or 'sample'``."""
        shown = [self.value(v) for v in values]
        listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
        return f"{self.name(option)} {listed}" if self.flags else f"{self.name(option)}={listed}"


def _refuse(message: str) -> NoReturn:
    raise OptionError(message)


def _in_unit_interval(spelling: Spelling, option: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        _refuse(f"{spelling.name(option)} must lie in [0, 1], got {value}")


def replacement_defaults(spelling: Spelling, select: str) -> tuple[float, float]:
    return REPLACEMENTS[spelling.replacement]["random" if select == "random" else "se"]


def resolve_replacement(
    spelling: Spelling, select: str, given: Sequence[Optional[float]]
) -> tuple[float, float]:
    """The adapter's pair of replacement probabilities, each as given, else its default."""
    first, second = (
        d if g is None else float(g) for g, d in zip(given, replacement_defaults(spelling, select))
    )
    return first, second


def leave_and_random_token(spelling: Spelling, pair: tuple[float, float]) -> tuple[float, float]:
    """(leave_unmasked_prob, random_token_prob), the masker's terms, of a resolved pair."""
    if spelling.replacement == "leave_random":
        return pair
    mask_replace, random_replace = pair
    return max(0.0, 1.0 - mask_replace - random_replace), random_replace


def resolve_threshold(select: str, threshold: Optional[float], metric: str) -> Optional[float]:
    """The threshold of select threshold: as given, else the metric's default
    (``DEFAULT_THRESHOLDS``); None in the other modes."""
    if select != "threshold":
        return None
    return DEFAULT_THRESHOLDS[metric] if threshold is None else threshold


def _defaults_note(spelling: Spelling) -> str:
    (ra, rb), (sa, sb) = (REPLACEMENTS[spelling.replacement][k] for k in ("random", "se"))
    when = spelling.setting("select", "random")
    if ra == rb and sa == sb:
        return f"unset, each is {ra:g} with {when}, else {sa:g}"
    return f"unset, {ra:g} and {rb:g} with {when}, else {sa:g} and {sb:g}"


def check_masking(
    spelling: Spelling,
    *,
    mask_prob: Optional[float],
    select: str,
    metric: Optional[str] = None,
    metric_choices: Optional[Sequence[str]] = None,
    online: bool = False,
    threshold: Optional[float] = None,
    random_share: float = 0.0,
    temperature: float = 1.0,
    replacement: Optional[Sequence[Optional[float]]] = None,
    mask_prob_schedule: Optional[str] = None,
    random_share_schedule: Optional[str] = None,
    reference: Optional[bool] = None,
) -> None:
    """Refuse (``OptionError``) masking options that cannot train, naming them with
    ``spelling``. ``metric`` None: the metric is not checked (nor a threshold's default);
    ``metric_choices`` None: any metric name; ``replacement``: the adapter's pair of
    replacement probabilities as given (None = unset), or None not to check them;
    ``mask_prob`` None: not checked (an adapter that takes it elsewhere). The schedules
    (``core.schedule`` text, None = constant) are read and held to the same bounds as the
    rates they schedule. ``reference``: whether a reference model is given (online excess
    selection needs one, and only it takes one); None: not checked."""
    name = spelling.name
    if select not in SELECT_CHOICES:
        _refuse(f"{name('select')} must be one of {', '.join(SELECT_CHOICES)}, not {select!r}")
    if metric is not None and metric_choices is not None and metric not in metric_choices:
        _refuse(f"{name('metric')} must be one of {', '.join(metric_choices)}, not {metric!r}")
    if online and select == "random":
        _refuse(
            f"{name('online')} selects by score: use "
            f"{spelling.setting('select', 'topk', 'sample', 'threshold')}"
        )
    if online and metric is not None and metric not in LIVE_METRICS:
        _refuse(
            f"{name('online')} scores with the live model: {name('metric')} must be one of "
            f"{', '.join(LIVE_METRICS)}, not {metric} (a score file's metric)"
        )
    if reference is not None and metric is not None:
        if online and metric == EXCESS and not reference:
            _refuse(
                f"{spelling.setting('metric', EXCESS)} scores the live model against a frozen "
                f"reference model: give {name('reference')}"
            )
        if reference and metric != EXCESS:
            _refuse(
                f"{name('reference')} is the reference model of "
                f"{spelling.setting('metric', EXCESS)}, not of {spelling.value(metric)}"
            )
    if mask_prob is not None and not 0.0 < mask_prob < 1.0:
        _refuse(f"{name('mask_prob')} must lie in (0, 1), got {mask_prob}")
    if replacement is not None:
        for option, value in zip(("replace_first", "replace_second"), replacement):
            if value is not None:
                _in_unit_interval(spelling, option, value)
        if sum(resolve_replacement(spelling, select, replacement)) > 1.0 + 1e-12:
            _refuse(
                f"{name('replace_first')} plus {name('replace_second')} must not exceed 1 "
                f"({_defaults_note(spelling)})"
            )
    if temperature <= 0:
        _refuse(f"{name('temperature')} must be positive, got {temperature}")
    if threshold is not None and select != "threshold":
        _refuse(
            f"{name('threshold')} applies to {spelling.setting('select', 'threshold')}, "
            f"not {spelling.value(select)}"
        )
    if select == "threshold" and threshold is None and metric is not None:
        if metric not in DEFAULT_THRESHOLDS:
            _refuse(
                f"{spelling.setting('select', 'threshold')} with "
                f"{spelling.setting('metric', metric)} needs {name('threshold')} (there is no "
                "default for that metric)"
            )
    _in_unit_interval(spelling, "random_share", random_share)
    if random_share > 0 and select not in BUDGET_MODES:
        _refuse(
            f"{name('random_share')} splits the budget of "
            f"{spelling.setting('select', *BUDGET_MODES)}, not {spelling.value(select)}"
        )
    if mask_prob_schedule is not None:
        _check_schedule(spelling, "mask_prob_schedule", mask_prob_schedule, (False, False))
    if random_share_schedule is not None:
        shares = _check_schedule(
            spelling, "random_share_schedule", random_share_schedule, (True, True)
        )
        if max(shares.values) > 0 and select not in BUDGET_MODES:
            _refuse(
                f"{name('random_share_schedule')} splits the budget of "
                f"{spelling.setting('select', *BUDGET_MODES)}, not {spelling.value(select)}"
            )


def _check_schedule(spelling: Spelling, option: str, text: str, closed: tuple) -> Schedule:
    try:
        schedule = parse_schedule(text)
        check_rates(schedule, 0.0, 1.0, closed)
    except ScheduleError as err:
        _refuse(f"{spelling.name(option)}: {err}")
    return schedule


def check_tls(spelling: Spelling, *, alpha: float, ref: str) -> None:
    """Refuse TLS options that cannot train (``OptionError``)."""
    if ref not in TLS_REF_CHOICES:
        _refuse(
            f"{spelling.name('tls_ref')} must be one of {', '.join(TLS_REF_CHOICES)}, not {ref!r}"
        )
    if not 0.0 <= alpha <= 1.0:
        _refuse(f"{spelling.name('tls_alpha')} must lie in [0, 1], got {alpha}")
