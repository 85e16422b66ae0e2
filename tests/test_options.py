"""Every se_mlm option and refusal through fairseq-train's own argument parsing.

Each test fails if the option it names is ignored: it compares batches the task
builds with an independent computation from the option's documented meaning
(README "Task se_mlm"), or checks the refusal's message.
"""

import math
import os

import numpy as np
import pytest
import torch
from test_se_mlm import epoch_batches, flat_scores_of_batch, make_task

from se_fairseq.tasks.se_mlm import _check_config
from se_fairseq.testing import (
    TINY_ROBERTA,
    parse_training_args,
    setup_task,
    split_tokens,
    write_scores,
)


def check(*extra):
    """_check_config on the options fairseq-train parses (fairseq's own parser; the
    namespace holds every task option before fairseq turns it into the task config, a
    step of about 1 s that the refusal tests below skip; test_refusal_at_task_set_up
    goes through it)."""
    from fairseq import options

    args = options.parse_args_and_arch(
        options.get_training_parser(),
        ["data-bin", *TINY_ROBERTA, "--task", "se_mlm", "--criterion", "masked_lm", *extra],
    )
    _check_config(args)
    return args


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--se-temperature", "0"], "--se-temperature must be positive, got 0"),
        (["--se-temperature", "-1", "--se-select", "sample"], "--se-temperature must be positive"),
        (["--leave-unmasked-prob", "1.5"], r"--leave-unmasked-prob must lie in \[0, 1\], got 1.5"),
        (["--leave-unmasked-prob", "-0.1"], "--leave-unmasked-prob must lie"),
        (["--random-token-prob", "2"], r"--random-token-prob must lie in \[0, 1\], got 2"),
        (["--random-token-prob", "-0.5"], "--random-token-prob must lie"),
        (
            ["--leave-unmasked-prob", "0.6", "--random-token-prob", "0.5"],
            "--leave-unmasked-prob plus --random-token-prob must not exceed 1",
        ),
        # with --se-select random an unset option is masked_lm's 0.1: 0.95 + 0.1 > 1
        (["--se-select", "random", "--leave-unmasked-prob", "0.95"], "must not exceed 1"),
        (["--se-select", "random", "--random-token-prob", "0.91"], "must not exceed 1"),
        (["--mask-multiple-length", "3"], "--mask-multiple-length/--mask-stdev are fairseq random"),
        (["--mask-stdev", "1.0"], "apply only with --se-select random"),
        (["--se-select", "sample", "--mask-multiple-length", "2"], "--mask-multiple-length"),
        (
            ["--se-select", "threshold", "--se-metric", "rarity"],
            "--se-select threshold with --se-metric rarity needs --se-threshold",
        ),
        (["--se-random-share", "-0.1"], "--se-random-share must lie in"),
        (["--se-select", "random", "--se-random-share", "0.5"], "not random"),
        (["--se-online", "--se-select", "random"], "--se-online selects by score"),
        (["--mask-prob", "1"], "--mask-prob must lie in"),
    ],
)
def test_refusals(extra, message):
    with pytest.raises(ValueError, match=message):
        check(*extra)


@pytest.mark.parametrize(
    "extra",
    [
        ["--se-temperature", "1e-6", "--se-select", "sample"],
        ["--leave-unmasked-prob", "0.95"],  # SE modes: unset random-token-prob is 0
        ["--leave-unmasked-prob", "0.5", "--random-token-prob", "0.5"],  # exactly 1
        ["--leave-unmasked-prob", "0", "--random-token-prob", "1"],
        ["--se-select", "random", "--leave-unmasked-prob", "0.9"],  # 0.9 + 0.1 = 1
        ["--se-select", "random", "--mask-multiple-length", "3", "--mask-stdev", "1.0"],
        ["--se-select", "threshold", "--se-metric", "rarity", "--se-threshold", "7"],
        ["--se-select", "threshold", "--se-metric", "confidence"],
        ["--se-random-share", "1", "--se-select", "sample"],
        ["--se-online", "--se-select", "threshold"],
    ],
)
def test_accepted_neighbours_of_the_refusals(extra):
    """The limits sit where the README says: values at or inside them are accepted."""
    check(*extra)


def test_refusal_at_task_set_up(scored_corpus):
    """The same check where fairseq-train meets it: setting up the task from its config."""
    with pytest.raises(ValueError, match="--se-temperature must be positive"):
        make_task(
            scored_corpus, "--task", "se_mlm", "--se-select", "sample", "--se-temperature", "-0.5"
        )


def test_data2vec_batches_are_refused():
    cfg = parse_training_args(
        "data-bin", *TINY_ROBERTA, "--task", "se_mlm", "--criterion", "masked_lm"
    )
    if "d2v2_multi" not in cfg.task:
        pytest.skip("this fairseq's masked_lm has no --d2v2-multi option")
    cfg.task.d2v2_multi = True
    with pytest.raises(ValueError, match="--d2v2-multi"):
        _check_config(cfg.task)


# ------------------------------------------------------------- --se-temperature


def rows_of(batch, split, d):
    """(tokens, scores, selected) of each row of an eos-mode batch."""
    sentences = split_tokens(split)
    for row, scores in enumerate(flat_scores_of_batch(batch, split)):
        n = len(scores)
        tokens = np.concatenate([[d.bos()], sentences[int(batch["id"][row])]])
        yield tokens, scores, batch["target"][row, :n].numpy() != d.pad()


def is_topk(tokens, scores, selected, nspecial):
    """Every selected eligible score >= every unselected one."""
    eligible = tokens >= nspecial
    if not selected.any() or selected.sum() == eligible.sum():
        return True
    return scores[selected].min() >= scores[eligible & ~selected].max()


def test_se_temperature_reaches_the_sampler(scored_corpus):
    """sample at T = 1e-4 is the top-k (score gaps / T dwarf the Gumbel noise, float16
    scores differ by >= 2^-10 below 1 and the noise spans < 45); at the default T = 1 many
    blocks are not their top-k. A sampler that ignores --se-temperature fails one side."""
    split = os.path.join(scored_corpus, "train")
    results = {}
    for temperature in ("1e-4", None):
        extra = [] if temperature is None else ["--se-temperature", temperature]
        task, _ = make_task(
            scored_corpus,
            "--task",
            "se_mlm",
            "--se-select",
            "sample",
            "--sample-break-mode",
            "eos",
            "--mask-prob",
            "0.3",
            *extra,
        )
        d = task.source_dictionary
        flags = [
            is_topk(t, s, sel, d.nspecial)
            for b in epoch_batches(task)
            for t, s, sel in rows_of(b, split, d)
        ]
        results[temperature] = np.mean(flags)
    assert results["1e-4"] == 1.0
    assert results[None] < 0.5, results


# ------------------------------------------------------------- threshold defaults


def binary_entropy(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@pytest.mark.parametrize(
    "metric, default",
    [
        ("confidence", binary_entropy(math.exp(-0.1))),  # 0.3144 nats
        ("correctness", 0.1),
    ],
)
def test_threshold_default_per_metric(scored_corpus, metric, default):
    """--se-select threshold without --se-threshold: every eligible token scored above the
    metric's documented default, on scores spread evenly over [0, 0.6]."""
    split = os.path.join(scored_corpus, "train")
    n = sum(len(s) for s in split_tokens(split))
    write_scores(split, np.random.default_rng(4).uniform(0.0, 0.6, size=n), metric=metric)
    task, _ = make_task(
        scored_corpus,
        "--task",
        "se_mlm",
        "--se-select",
        "threshold",
        "--se-metric",
        metric,
        "--sample-break-mode",
        "eos",
    )
    d = task.source_dictionary
    rows = 0
    for b in epoch_batches(task):
        for tokens, scores, selected in rows_of(b, split, d):
            above = (tokens >= d.nspecial) & (scores.astype(np.float64) > default)
            if above.any():
                np.testing.assert_array_equal(selected, above)
                rows += 1
    assert rows > 100


# ------------------------------------------------ masked_lm span options (random)


def test_mask_multiple_length_and_stdev_in_random_mode(scored_corpus):
    """se_mlm --se-select random passes them on: the batches equal fairseq masked_lm's with
    the same options, and spans of 3 differ from the default single-token masking."""
    span = ["--mask-multiple-length", "3", "--mask-stdev", "1.0"]
    fairseq_task, _ = make_task(scored_corpus, "--task", "masked_lm", *span)
    se_task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-select", "random", *span)
    plain, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-select", "random")
    expected, got, default = (epoch_batches(t) for t in (fairseq_task, se_task, plain))
    assert len(expected) == len(got) > 5
    differ = 0
    for a, b, c in zip(expected, got, default):
        assert torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])
        assert torch.equal(a["target"], b["target"])
        differ += not torch.equal(b["target"], c["target"])
    assert differ >= len(got) - 1  # spans of 3 tokens change (nearly) every batch


# ------------------------------------------------------------- --se-online threshold


def test_online_threshold_selects_live_scores_above_it(corpus):
    """--se-online --se-select threshold: the selection is every eligible token whose
    correctness under the live model (dense log-softmax, eval mode) exceeds --se-threshold,
    set here at the median of those scores so that about half are selected."""
    from se_fairseq.scoring import token_scores_from_lprobs

    def setup(*extra):
        task, cfg = setup_task(
            corpus,
            *TINY_ROBERTA,
            "--cpu",
            "--seed",
            "5",
            "--task",
            "se_mlm",
            "--se-online",
            "--criterion",
            "token_ls",
            *extra,
        )
        return task, cfg

    task, cfg = setup()
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        task.dataset("train"), max_sentences=8, seed=5, num_workers=0
    ).next_epoch_itr(shuffle=True)
    batch = next(iter(itr))
    tokens = batch["net_input"]["src_tokens"]
    model.eval()
    with torch.no_grad():
        dense = token_scores_from_lprobs(
            torch.log_softmax(model(tokens)[0].double(), -1), tokens, "correctness"
        )
    model.train()
    d = task.source_dictionary
    eligible = tokens >= d.nspecial
    eligible &= tokens != task.mask_idx
    threshold = float(dense[eligible].median())
    ttask, tcfg = setup("--se-select", "threshold", "--se-threshold", repr(threshold))
    criterion = ttask.build_criterion(tcfg.criterion)
    masked = ttask.mask_online(batch, model, criterion)
    selected = masked["target"].ne(d.pad())
    above = eligible & (dense > threshold)
    near = (dense - threshold).abs() < 1e-4  # fp32 vs float64 scores: leave the boundary
    assert above.any(dim=1).all()  # no row falls back to random masking
    assert torch.equal(selected & ~near, above & ~near)
    assert 0.3 < selected.sum() / eligible.sum() < 0.7


def test_build_masker_takes_every_option_from_the_command_line(scored_corpus):
    """The masker the task builds holds each parsed option (the behaviour of each is tested
    above and in test_se_mlm.py; this pins the wiring of all of them at once)."""
    task, _ = make_task(
        scored_corpus,
        "--task",
        "se_mlm",
        "--se-select",
        "sample",
        "--seed",
        "11",
        "--mask-prob",
        "0.25",
        "--se-temperature",
        "0.7",
        "--se-random-share",
        "0.3",
        "--leave-unmasked-prob",
        "0.2",
        "--random-token-prob",
        "0.05",
        "--freq-weighted-replacement",
    )
    m = task.build_masker()
    d = task.source_dictionary
    assert (m.mode, m.seed, m.mask_prob, m.temperature, m.random_share) == (
        "sample",
        11,
        0.25,
        0.7,
        0.3,
    )
    assert (m.leave_unmasked_prob, m.random_token_prob) == (0.2, 0.05)
    assert m.pad == d.pad() and m.mask_idx == task.mask_idx and m.word_begins is None
    counts = np.array(d.count, dtype=np.float64)
    counts[: d.nspecial] = 0
    counts[task.mask_idx] = 0
    np.testing.assert_allclose(m.replacement_cdf, np.cumsum(counts) / counts.sum())
    fallback, _ = make_task(
        scored_corpus,
        "--task",
        "se_mlm",
        "--se-select",
        "threshold",
        "--se-threshold-fallback",
        "none",
        "--se-threshold",
        "2.5",
    )
    m = fallback.build_masker()
    assert (m.mode, m.threshold, m.threshold_fallback, m.random_share) == (
        "threshold",
        2.5,
        False,
        0.0,
    )
    assert (
        make_task(scored_corpus, "--task", "se_mlm", "--se-select", "threshold")[0]
        .build_masker()
        .threshold_fallback
        is True
    )


# -- every option check at its boundaries, called directly (milliseconds: the argument-parsing
# tests above cover the same refusals through fairseq-train's parser) ---------------------


def _check(**changes):
    from se_fairseq.tasks.se_mlm import SelfEvolutionMLMConfig, _check_config

    cfg = SelfEvolutionMLMConfig()
    for key, value in changes.items():
        setattr(cfg, key, value)
    _check_config(cfg)


@pytest.mark.parametrize(
    "changes",
    [
        {"mask_prob": 1e-9},
        {"mask_prob": 1 - 1e-9},
        {"leave_unmasked_prob": 0.0},
        {"leave_unmasked_prob": 1.0},
        {"random_token_prob": 0.0},
        {"random_token_prob": 1.0},
        {"leave_unmasked_prob": 0.4, "random_token_prob": 0.6},  # the sum at exactly 1
        {"se_select": "random", "leave_unmasked_prob": 0.9},  # + random's default 0.1 = 1
        {"se_temperature": 1e-9},
        {"se_random_share": 0.0},
        {"se_random_share": 1.0},
        {"se_random_share": 0.5, "se_select": "sample"},
        {"se_select": "random", "mask_multiple_length": 3, "mask_stdev": 1.0},
        {"se_select": "threshold"},
        {"se_select": "threshold", "se_metric": "confidence"},
        {"se_select": "threshold", "se_metric": "rarity", "se_threshold": 5.0},
        {"se_threshold": 0.2, "se_select": "threshold"},
        {"se_online": True, "se_select": "topk", "se_metric": "confidence"},
        {"se_online": True, "se_select": "sample"},
        {"se_online": True, "se_select": "threshold"},
        {"d2v2_multi": False},
    ],
)
def test_option_checks_accept_the_ends_of_each_range(changes):
    _check(**changes)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"mask_prob": 0.0}, r"--mask-prob must lie in \(0, 1\), got 0.0"),
        ({"mask_prob": 1.0}, r"--mask-prob must lie in \(0, 1\), got 1.0"),
        ({"leave_unmasked_prob": -1e-9}, r"--leave-unmasked-prob must lie in \[0, 1\]"),
        ({"leave_unmasked_prob": 1 + 1e-9}, r"--leave-unmasked-prob must lie in \[0, 1\]"),
        ({"random_token_prob": -1e-9}, r"--random-token-prob must lie in \[0, 1\]"),
        ({"random_token_prob": 1 + 1e-9}, r"--random-token-prob must lie in \[0, 1\]"),
        ({"leave_unmasked_prob": 0.5, "random_token_prob": 0.5 + 1e-9}, "must not exceed 1"),
        ({"se_select": "random", "leave_unmasked_prob": 0.95}, "must not exceed 1"),
        ({"se_select": "random", "random_token_prob": 0.95}, "must not exceed 1"),
        ({"se_temperature": 0.0}, "--se-temperature must be positive, got 0.0"),
        ({"se_temperature": -1.0}, "--se-temperature must be positive"),
        ({"mask_multiple_length": 2}, "apply only with --se-select random"),
        ({"mask_stdev": 0.5}, "apply only with --se-select random"),
        ({"se_threshold": 0.2}, "--se-threshold applies to --se-select threshold, not topk"),
        ({"se_threshold": 0.2, "se_select": "sample"}, "not sample"),
        (
            {"se_select": "threshold", "se_metric": "rarity"},
            "--se-metric rarity needs --se-threshold",
        ),
        ({"se_random_share": -1e-9}, r"--se-random-share must lie in \[0, 1\]"),
        ({"se_random_share": 1 + 1e-9}, r"--se-random-share must lie in \[0, 1\]"),
        ({"se_random_share": 0.5, "se_select": "threshold"}, "topk or sample, not threshold"),
        ({"se_random_share": 0.5, "se_select": "random"}, "topk or sample, not random"),
        ({"se_online": True, "se_select": "random"}, "--se-online selects by score"),
        ({"se_online": True, "se_metric": "rarity"}, "--se-metric must be one of"),
        ({"d2v2_multi": True}, "--d2v2-multi"),
    ],
)
def test_option_checks_refuse_just_outside_each_range(changes, message):
    from se_fairseq.tasks.se_mlm import SelfEvolutionConfigError

    with pytest.raises(SelfEvolutionConfigError, match=message):
        _check(**changes)


@pytest.mark.parametrize(
    "select_mode,given,expected",
    [
        ("random", (None, None), (0.1, 0.1)),  # masked_lm's defaults
        ("topk", (None, None), (0.0, 0.0)),  # SE: every selected token becomes <mask>
        ("sample", (None, 0.2), (0.0, 0.2)),
        ("threshold", (0.3, None), (0.3, 0.0)),
        (
            "random",
            (0, None),
            (0.0, 0.1),
        ),  # an explicit 0 (an int from a YAML config) is kept, as a float
        ("random", (None, 0.0), (0.1, 0.0)),
    ],
)
def test_resolved_replacement_defaults_per_mode(select_mode, given, expected):
    from se_fairseq.tasks.se_mlm import SelfEvolutionMLMConfig, resolved_replacement

    cfg = SelfEvolutionMLMConfig()
    cfg.se_select = select_mode
    cfg.leave_unmasked_prob, cfg.random_token_prob = given
    got = resolved_replacement(cfg)
    assert got == expected and all(type(v) is float for v in got)
