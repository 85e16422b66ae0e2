"""Every se_mlm option and refusal through fairseq-train's own argument parsing.

Each test fails if the option it names is ignored: it compares batches the task
builds with an independent computation from the option's documented meaning
(README "Task se_mlm"), or checks the refusal's message. The refusals and their
accepted neighbours are the one table tests/support/option_rules.OPTION_RULES.
"""

import pytest

pytest.importorskip("fairseq", reason="the fairseq side: pip install 'se-fairseq[fairseq]'")

import math
import os

import numpy as np
import torch
from support.fairseq_data import (
    TINY_ROBERTA,
    epoch_batches,
    flat_scores_of_batch,
    make_task,
    setup_task,
    split_tokens,
    write_scores,
)
from support.option_rules import option_acceptances, option_argv, option_refusals

from se_fairseq.tasks.se_mlm_config import (
    SelfEvolutionConfigError,
    SelfEvolutionMLMConfig,
    _check_config,
    resolved_replacement,
)

# ------------------------------------------------------------------ refusals


def check_parsed(options):
    """_check_config on the options fairseq-train parses (fairseq's own parser; the
    namespace holds every task option before fairseq turns it into the task config, a
    step of about 0.2 s that test_refusal_at_task_set_up takes)."""
    from fairseq import options as fairseq_options

    argv = option_argv(options)
    parser = fairseq_options.get_training_parser()
    args = fairseq_options.parse_args_and_arch(
        parser, ["data-bin", *TINY_ROBERTA, "--task", "se_mlm", "--criterion", "masked_lm", *argv]
    )
    _check_config(args)


def check_direct(options):
    """_check_config on SelfEvolutionMLMConfig's defaults with ``options`` set (milliseconds)."""
    cfg = SelfEvolutionMLMConfig()
    for key, value in options.items():
        setattr(cfg, key, value)
    _check_config(cfg)


@pytest.mark.parametrize("path", [check_direct, check_parsed], ids=["direct", "parsed"])
@pytest.mark.parametrize("options, message", option_refusals())
def test_refusals(path, options, message):
    with pytest.raises(SelfEvolutionConfigError) as refused:
        path(options)
    assert str(refused.value) == message


@pytest.mark.parametrize("path", [check_direct, check_parsed], ids=["direct", "parsed"])
@pytest.mark.parametrize("options", option_acceptances())
def test_accepted_neighbours_of_the_refusals(path, options):
    """The limits sit where the README says: values at or inside them are accepted."""
    path(options)


@pytest.mark.parametrize("options, message", option_refusals(first_of_each_rule=True))
def test_refusal_at_task_set_up(corpus, options, message):
    """The same checks where fairseq-train meets them: setting up the task from its config."""
    with pytest.raises(SelfEvolutionConfigError) as refused:
        make_task(corpus, "--task", "se_mlm", *option_argv(options))
    assert str(refused.value) == message


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
    from se_fairseq.core.scores import token_scores_from_lprobs

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
    cfg = SelfEvolutionMLMConfig()
    cfg.se_select = select_mode
    cfg.leave_unmasked_prob, cfg.random_token_prob = given
    got = resolved_replacement(cfg)
    assert got == expected and all(type(v) is float for v in got)
