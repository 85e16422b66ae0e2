"""The option checks of task se_mlm as a table of expected refusals: the oracle that
tests/test_options.py and tests/test_plugin.py hold the core's option checks to."""

from dataclasses import dataclass


@dataclass(frozen=True)
class OptionRule:
    """One rule of se_mlm's option checks: the options it refuses, each with the message the
    user reads, and accepted neighbours at the edges of what it allows. Options are fields of
    SelfEvolutionMLMConfig (``option_argv`` spells them as fairseq-train arguments)."""

    name: str
    refused: tuple[tuple[dict, str], ...]
    accepted: tuple[dict, ...] = ()


_SUM_ABOVE_1 = (
    "--leave-unmasked-prob plus --random-token-prob must not exceed 1 "
    "(unset, each is 0.1 with --se-select random, else 0)"
)
_SPAN_OPTIONS = (
    "--mask-multiple-length/--mask-stdev are fairseq random-masking options; they apply only "
    "with --se-select random"
)

# The one table of the refusals (tests/test_options.py takes every row through _check_config
# directly and through fairseq-train's parser, and the first refusal of each rule through the
# task's set-up; tests/test_plugin.py the first --mask-prob one through fairseq-train).
OPTION_RULES = (
    OptionRule(
        "--se-online selects by score",
        refused=(
            (
                {"se_online": True, "se_select": "random"},
                "--se-online selects by score: use --se-select topk, sample or threshold",
            ),
        ),
        accepted=(
            {"se_online": True, "se_select": "sample"},
            {"se_online": True, "se_select": "threshold"},
        ),
    ),
    OptionRule(
        "--se-online scores with a live metric",
        refused=(
            (
                {"se_online": True, "se_metric": "rarity"},
                "--se-online scores with the live model: --se-metric must be one of "
                "correctness, confidence, excess, not rarity (a score file's metric)",
            ),
        ),
        accepted=({"se_online": True, "se_select": "topk", "se_metric": "confidence"},),
    ),
    OptionRule(
        "--se-online --se-metric excess needs --se-reference",
        refused=(
            (
                {"se_online": True, "se_metric": "excess"},
                "--se-metric excess scores the live model against a frozen reference model: "
                "give --se-reference",
            ),
            (
                {"se_online": True, "se_select": "sample", "se_metric": "excess"},
                "--se-metric excess scores the live model against a frozen reference model: "
                "give --se-reference",
            ),
        ),
        accepted=(
            # _check_config does not read the file: the task loads it with the train split
            {"se_online": True, "se_metric": "excess", "se_reference": "ref.pt"},
            {"se_online": True, "se_select": "sample", "se_metric": "excess", "se_reference": "r"},
            {"se_metric": "excess"},  # offline: the score file holds the excess scores
        ),
    ),
    OptionRule(
        "--se-reference only with --se-metric excess",
        refused=(
            (
                {"se_online": True, "se_reference": "ref.pt"},
                "--se-reference is the reference model of --se-metric excess, not of correctness",
            ),
            (
                {"se_online": True, "se_metric": "confidence", "se_reference": "ref.pt"},
                "--se-reference is the reference model of --se-metric excess, not of confidence",
            ),
            (
                {"se_reference": "ref.pt"},
                "--se-reference is the reference model of --se-metric excess, not of correctness",
            ),
            (
                {"se_metric": "rarity", "se_reference": "ref.pt"},
                "--se-reference is the reference model of --se-metric excess, not of rarity",
            ),
        ),
    ),
    OptionRule(
        "--se-reference only online",
        refused=(
            (
                {"se_metric": "excess", "se_reference": "ref.pt"},
                "--se-reference scores each step's batch, with --se-online; offline, "
                "--se-metric excess trains on a score file of excess scores (se-score --metric "
                "excess --reference CKPT)",
            ),
        ),
        accepted=({"se_online": True, "se_metric": "excess", "se_reference": "ref.pt"},),
    ),
    OptionRule(
        "--se-select threshold with --se-metric excess needs --se-threshold",
        refused=(
            (
                {
                    "se_online": True,
                    "se_select": "threshold",
                    "se_metric": "excess",
                    "se_reference": "ref.pt",
                },
                "--se-select threshold with --se-metric excess needs --se-threshold "
                "(there is no default for that metric)",
            ),
        ),
        accepted=(
            {
                "se_online": True,
                "se_select": "threshold",
                "se_metric": "excess",
                "se_reference": "ref.pt",
                "se_threshold": 0.0,
            },
        ),
    ),
    OptionRule(
        "--mask-prob in (0, 1)",
        refused=tuple(
            ({"mask_prob": p}, f"--mask-prob must lie in (0, 1), got {p}")
            for p in (1.5, 0.0, 1.0, -0.1)
        ),
        accepted=({"mask_prob": 1e-9}, {"mask_prob": 1 - 1e-9}),
    ),
    OptionRule(
        "--leave-unmasked-prob in [0, 1]",
        refused=tuple(
            ({"leave_unmasked_prob": p}, f"--leave-unmasked-prob must lie in [0, 1], got {p}")
            for p in (1.5, -0.1, -1e-9, 1 + 1e-9)
        ),
        accepted=({"leave_unmasked_prob": 0.0}, {"leave_unmasked_prob": 1.0}),
    ),
    OptionRule(
        "--random-token-prob in [0, 1]",
        refused=tuple(
            ({"random_token_prob": p}, f"--random-token-prob must lie in [0, 1], got {p}")
            for p in (2.0, -0.5, -1e-9, 1 + 1e-9)
        ),
        accepted=({"random_token_prob": 0.0}, {"random_token_prob": 1.0}),
    ),
    OptionRule(
        "replacement probabilities sum to at most 1",
        refused=(
            ({"leave_unmasked_prob": 0.6, "random_token_prob": 0.5}, _SUM_ABOVE_1),
            ({"leave_unmasked_prob": 0.5, "random_token_prob": 0.5 + 1e-9}, _SUM_ABOVE_1),
            # with --se-select random an unset option is masked_lm's 0.1: 0.95 + 0.1 > 1
            ({"se_select": "random", "leave_unmasked_prob": 0.95}, _SUM_ABOVE_1),
            ({"se_select": "random", "random_token_prob": 0.91}, _SUM_ABOVE_1),
            ({"se_select": "random", "random_token_prob": 0.95}, _SUM_ABOVE_1),
        ),
        accepted=(
            {"leave_unmasked_prob": 0.95},  # SE modes: an unset random-token-prob is 0
            {"leave_unmasked_prob": 0.5, "random_token_prob": 0.5},  # exactly 1
            {"leave_unmasked_prob": 0.4, "random_token_prob": 0.6},
            {"leave_unmasked_prob": 0.0, "random_token_prob": 1.0},
            {"se_select": "random", "leave_unmasked_prob": 0.9},  # + random's default 0.1 = 1
        ),
    ),
    OptionRule(
        "--se-temperature positive",
        refused=(
            (
                {"se_select": "sample", "se_temperature": -0.5},
                "--se-temperature must be positive, got -0.5",
            ),
            ({"se_temperature": 0.0}, "--se-temperature must be positive, got 0.0"),
            ({"se_temperature": -1.0}, "--se-temperature must be positive, got -1.0"),
            (
                {"se_select": "sample", "se_temperature": -1.0},
                "--se-temperature must be positive, got -1.0",
            ),
        ),
        accepted=({"se_select": "sample", "se_temperature": 1e-6}, {"se_temperature": 1e-9}),
    ),
    OptionRule(
        "span options only with --se-select random",
        refused=(
            ({"mask_multiple_length": 3}, _SPAN_OPTIONS),
            ({"mask_multiple_length": 2}, _SPAN_OPTIONS),
            ({"se_select": "sample", "mask_multiple_length": 2}, _SPAN_OPTIONS),
            ({"mask_stdev": 1.0}, _SPAN_OPTIONS),
            ({"mask_stdev": 0.5}, _SPAN_OPTIONS),
        ),
        accepted=({"se_select": "random", "mask_multiple_length": 3, "mask_stdev": 1.0},),
    ),
    OptionRule(
        "--se-threshold only with --se-select threshold",
        refused=(
            (
                {"se_select": "topk", "se_threshold": 1.0},
                "--se-threshold applies to --se-select threshold, not topk",
            ),
            ({"se_threshold": 0.2}, "--se-threshold applies to --se-select threshold, not topk"),
            (
                {"se_select": "sample", "se_threshold": 0.2},
                "--se-threshold applies to --se-select threshold, not sample",
            ),
        ),
        accepted=({"se_select": "threshold", "se_threshold": 0.2},),
    ),
    OptionRule(
        "--se-select threshold without a default needs --se-threshold",
        refused=(
            (
                {"se_select": "threshold", "se_metric": "rarity"},
                "--se-select threshold with --se-metric rarity needs --se-threshold "
                "(there is no default for that metric)",
            ),
        ),
        accepted=(
            {"se_select": "threshold"},
            {"se_select": "threshold", "se_metric": "confidence"},
            {"se_select": "threshold", "se_metric": "rarity", "se_threshold": 7.0},
            {"se_select": "threshold", "se_metric": "rarity", "se_threshold": 5.0},
        ),
    ),
    OptionRule(
        "--se-random-share in [0, 1]",
        refused=tuple(
            ({"se_random_share": p}, f"--se-random-share must lie in [0, 1], got {p}")
            for p in (1.5, -0.1, -1e-9, 1 + 1e-9)
        ),
        accepted=(
            {"se_random_share": 0.0},
            {"se_random_share": 1.0},
            {"se_select": "sample", "se_random_share": 1.0},
        ),
    ),
    OptionRule(
        "--se-random-share only with topk or sample",
        refused=tuple(
            (
                {"se_select": mode, "se_random_share": 0.5},
                f"--se-random-share splits the budget of --se-select topk or sample, not {mode}",
            )
            for mode in ("threshold", "random")
        ),
        accepted=({"se_select": "sample", "se_random_share": 0.5},),
    ),
    OptionRule(
        "no data2vec batches",
        refused=(
            ({"d2v2_multi": True}, "--d2v2-multi (data2vec batches) is not supported by se_mlm"),
        ),
        accepted=({"d2v2_multi": False},),
    ),
)


def option_argv(options):
    """fairseq-train arguments for config ``options`` (True: the flag, False: nothing;
    ``--name=value``, which argparse reads whatever the value, -1e-09 included)."""
    argv = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv.append(f"{flag}={value}")
    return argv


def _option_id(rule, options):
    return f"{rule.name} | {' '.join(option_argv(options)) or 'defaults'}"


def option_refusals(first_of_each_rule=False):
    """pytest parameters (options, message) of OPTION_RULES' refusals."""
    import pytest

    return [
        pytest.param(options, message, id=_option_id(rule, options))
        for rule in OPTION_RULES
        for options, message in (rule.refused[:1] if first_of_each_rule else rule.refused)
    ]


def option_acceptances():
    """pytest parameters (options) of OPTION_RULES' accepted neighbours."""
    import pytest

    return [
        pytest.param(options, id=_option_id(rule, options))
        for rule in OPTION_RULES
        for options in rule.accepted
    ]
