"""The core's one table of masking and TLS options, as the transformers path spells them.

fairseq-train's spelling is held to tests/support/option_rules.OPTION_RULES by
tests/test_options.py. Here: every refusal of ``DataCollatorForSelfEvolution`` (Python
keywords, values as repr) and of run_se_mlm.py's ``SelfEvolutionArguments`` (through
transformers' own HfArgumentParser, as the script parses them), with the message written
out; the masker's own arguments; and the defaults, against transformers' documented
80 % / 10 % / 10 % and the reference code's threshold rule.
"""

import math

import pytest
import torch
from support.hf_tokenizers import tiny_bert_tokenizer

from se_fairseq.core import options
from se_fairseq.core.masking import SelfEvolutionMasker

COLLATOR_REFUSALS = [
    ({"select": "best"}, "select must be one of topk, threshold, sample, random, not 'best'"),
    ({"mlm_probability": 0.0}, "mlm_probability must lie in (0, 1), got 0.0"),
    ({"mlm_probability": 1.0}, "mlm_probability must lie in (0, 1), got 1.0"),
    ({"mask_replace_prob": 1.5}, "mask_replace_prob must lie in [0, 1], got 1.5"),
    ({"random_replace_prob": -0.1}, "random_replace_prob must lie in [0, 1], got -0.1"),
    (
        {"mask_replace_prob": 0.95},  # + the SE modes' random_replace_prob 0 is fine, but:
        None,
    ),
    (
        {"select": "random", "mask_replace_prob": 0.95},  # + random's default 0.1 > 1
        "mask_replace_prob plus random_replace_prob must not exceed 1 (unset, 0.8 and 0.1 "
        "with select='random', else 1 and 0)",
    ),
    (
        {"mask_replace_prob": 0.5, "random_replace_prob": 0.5 + 1e-9},
        "mask_replace_prob plus random_replace_prob must not exceed 1 (unset, 0.8 and 0.1 "
        "with select='random', else 1 and 0)",
    ),
    ({"temperature": 0.0}, "temperature must be positive, got 0.0"),
    ({"threshold": 0.2}, "threshold applies to select='threshold', not 'topk'"),
    (
        {"select": "threshold", "metric": "rarity"},
        "select='threshold' with metric='rarity' needs threshold (there is no default for "
        "that metric)",
    ),
    ({"random_share": 1.5}, "random_share must lie in [0, 1], got 1.5"),
    (
        {"select": "threshold", "random_share": 0.5},
        "random_share splits the budget of select='topk' or 'sample', not 'threshold'",
    ),
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_bert_tokenizer()


@pytest.mark.parametrize(
    "kwargs, message", COLLATOR_REFUSALS, ids=[str(k) for k, _ in COLLATOR_REFUSALS]
)
def test_collator_refusals_name_its_keywords(tokenizer, kwargs, message):
    from se_fairseq.hf import DataCollatorForSelfEvolution

    if message is None:
        DataCollatorForSelfEvolution(tokenizer, **kwargs)
        return
    with pytest.raises(options.OptionError) as refused:
        DataCollatorForSelfEvolution(tokenizer, **kwargs)
    assert str(refused.value) == message


ARGUMENT_REFUSALS = [
    (
        ["--se_online", "--se_select", "random"],
        "--se_online selects by score: use --se_select topk, sample or threshold",
    ),
    (["--se_temperature", "-1"], "--se_temperature must be positive, got -1.0"),
    (
        ["--se_threshold", "0.3"],
        "--se_threshold applies to --se_select threshold, not topk",
    ),
    (["--se_random_share", "2"], "--se_random_share must lie in [0, 1], got 2.0"),
    (
        ["--se_select", "sample", "--se_random_share", "0.5", "--se_select", "threshold"],
        "--se_random_share splits the budget of --se_select topk or sample, not threshold",
    ),
    (["--tls_alpha", "1.5"], "--tls_alpha must lie in [0, 1], got 1.5"),
    (
        ["--se_mask_prob_schedule", "linear:0.3,0"],
        "--se_mask_prob_schedule: schedule linear:0.3,0: rate 0 must lie in (0, 1)",
    ),
    (
        ["--se_mask_prob_schedule", "steps:0.3,0.1"],
        "--se_mask_prob_schedule: schedule 'steps:0.3,0.1': each rate after the first needs "
        "@P, the progress where it starts (got '0.1')",
    ),
    (
        ["--se_select", "threshold", "--se_random_share_schedule", "linear:1,0"],
        "--se_random_share_schedule splits the budget of --se_select topk or sample, not threshold",
    ),
    (
        ["--se_random_share", "0.5", "--se_random_share_schedule", "linear:1,0"],
        "--se_random_share_schedule replaces --se_random_share: give one of them",
    ),
]


@pytest.mark.parametrize(
    "argv, message", ARGUMENT_REFUSALS, ids=[" ".join(a) for a, _ in ARGUMENT_REFUSALS]
)
def test_run_se_mlm_arguments_refusals_name_its_options(argv, message):
    from transformers import HfArgumentParser

    from se_fairseq.hf import SelfEvolutionArguments

    with pytest.raises(options.OptionError) as refused:
        HfArgumentParser(SelfEvolutionArguments).parse_args_into_dataclasses(args=argv)
    assert str(refused.value) == message


def test_run_se_mlm_arguments_accept_the_edges():
    from transformers import HfArgumentParser

    from se_fairseq.hf import SelfEvolutionArguments

    parser = HfArgumentParser(SelfEvolutionArguments)
    for argv in (
        ["--se_online", "--se_select", "threshold", "--se_metric", "confidence"],
        ["--se_select", "sample", "--se_random_share", "1", "--se_temperature", "1e-9"],
        ["--tls_alpha", "0", "--tls_ref", "uniform"],
        ["--tls_alpha", "1"],
    ):
        (args,) = parser.parse_args_into_dataclasses(args=argv)
        assert args.se_select in ("threshold", "sample", "topk")


def test_the_masker_refuses_its_own_arguments():
    build = lambda **kw: SelfEvolutionMasker.for_vocabulary(  # noqa: E731
        10, 9, [0, 1], pad=-100, seed=0, **{"mask_prob": 0.2, "mode": "topk", **kw}
    )
    cases = [
        ({"mode": "best"}, "mode must be one of topk, threshold, sample, random, not 'best'"),
        ({"mask_prob": 1.0}, "mask_prob must lie in (0, 1), got 1.0"),
        ({"temperature": -1.0}, "temperature must be positive, got -1.0"),
        (
            {"leave_unmasked_prob": 0.7, "random_token_prob": 0.4},
            "leave_unmasked_prob plus random_token_prob must not exceed 1 (unset, each is 0.1 "
            "with mode='random', else 0)",
        ),
        (
            {"mode": "threshold", "random_share": 0.2},
            "random_share splits the budget of mode='topk' or 'sample', not 'threshold'",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(options.OptionError) as refused:
            build(**kwargs)
        assert str(refused.value) == message
    assert build(leave_unmasked_prob=0.4, random_token_prob=0.6).random_token_prob == 0.6


def test_transformers_replacement_defaults_are_80_10_10_random_and_all_mask_in_se_modes(
    tokenizer,
):
    """DataCollatorForLanguageModeling's documented defaults: of the selected tokens 80 %
    [MASK], 10 % a random token, 10 % unchanged; SE modes: every selected token [MASK]."""
    from se_fairseq.hf import DataCollatorForSelfEvolution

    random = DataCollatorForSelfEvolution(tokenizer, select="random")
    assert (random.mask_replace_prob, random.random_replace_prob) == pytest.approx((0.8, 0.1))
    assert random.masker.leave_unmasked_prob == pytest.approx(0.1)
    assert random.masker.random_token_prob == pytest.approx(0.1)
    se = DataCollatorForSelfEvolution(tokenizer)
    assert (se.mask_replace_prob, se.random_replace_prob) == (1.0, 0.0)
    assert (se.masker.leave_unmasked_prob, se.masker.random_token_prob) == (0.0, 0.0)
    given = DataCollatorForSelfEvolution(tokenizer, mask_replace_prob=0.6, random_replace_prob=0.3)
    assert given.masker.leave_unmasked_prob == pytest.approx(0.1)
    assert given.masker.random_token_prob == pytest.approx(0.3)


def test_threshold_defaults_are_the_reference_codes_rule():
    """correctness: -log p > 0.1, the reference code's; confidence: the entropy of a
    prediction e^-0.1 sure of one token and sure of the rest as one other."""
    assert options.resolve_threshold("threshold", None, "correctness") == 0.1
    p = math.exp(-0.1)
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert options.resolve_threshold("threshold", None, "confidence") == pytest.approx(entropy)
    assert options.resolve_threshold("threshold", 2.5, "rarity") == 2.5
    assert options.resolve_threshold("topk", None, "correctness") is None


def test_the_collator_uses_the_threshold_default(tokenizer):
    """A row whose scores sit just around the default 0.1: exactly those above it selected."""
    from se_fairseq.hf import DataCollatorForSelfEvolution

    collator = DataCollatorForSelfEvolution(tokenizer, select="threshold", seed=2)
    ids = tokenizer("the city of the world was new")["input_ids"]
    scores = [0.0] + [0.05, 0.15, 0.099, 0.101, 0.3, 0.02, 2.0][: len(ids) - 2] + [0.0]
    batch = collator([{"input_ids": ids, "se_scores": scores, "se_index": 0}])
    expected = torch.tensor([s > 0.1 for s in scores])
    expected[0] = expected[-1] = False  # [CLS], [SEP]
    assert torch.equal(batch["labels"][0].ne(-100), expected)
