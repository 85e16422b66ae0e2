"""Mask-rate and random-share schedules on both paths: fairseq's --mask-prob-schedule and
--se-random-share-schedule, and SelfEvolutionTrainer's --se_mask_prob_schedule and
--se_random_share_schedule.

With a schedule, training batches come unmasked from the data pipeline (whatever the
workers) and the train step masks them at its own rate: SE's per-row budget is the op's
count for the step's rate, floor(rate x eligible + u) with u drawn from the row seed
(se_fairseq.ops.reference.rounded_count); random masking selects each eligible token with
the step's probability. Masks are a pure function of (seed, epoch, example, scores, step).
"""

import numpy as np
import pytest
import torch
from support.fairseq_data import TINY_ROBERTA, epoch_batches, setup_task
from support.hf_tokenizers import hf_examples, tiny_bert_tokenizer

from se_fairseq.core.constants import ONLINE_SEEDS, SCORES_COLUMN
from se_fairseq.core.masking import SelfEvolutionMasker
from se_fairseq.core.schedule import Rates
from se_fairseq.ops.reference import rounded_count


def _batch(vocab=40, rows=6, length=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, vocab, (rows, length), generator=g)
    tokens[:, 0] = 0
    tokens[2, 20:] = 1
    scores = torch.rand((rows, length), generator=g) * 5
    seeds = torch.arange(11, 11 + rows, dtype=torch.int64)
    return tokens, scores, seeds


@pytest.mark.parametrize(
    "mode, share", [("topk", 0.0), ("topk", 0.3), ("sample", 0.5), ("random", 0.0)]
)
def test_a_batchs_rates_mask_as_a_masker_built_with_them(mode, share):
    """mask(..., rates=Rates(r, s)) is exactly the masking of a masker built with
    mask_prob r and random_share s."""
    tokens, scores, seeds = _batch()
    special = [0, 1, 2, 3]
    built = SelfEvolutionMasker.for_vocabulary(
        40, 4, special, pad=1, mask_prob=0.35, mode=mode, seed=0, random_share=share
    )
    other = SelfEvolutionMasker.for_vocabulary(
        40, 4, special, pad=1, mask_prob=0.1, mode=mode, seed=0, random_share=0.0
    )
    want = built.mask(tokens, scores, seeds)
    got = other.mask(tokens, scores, seeds, rates=Rates(0.35, share))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(other.mask(tokens, scores, seeds)[1], want[1])


# -- fairseq -----------------------------------------------------------------------------


def scheduled_task(data, *extra):
    return setup_task(
        data,
        *TINY_ROBERTA,
        "--cpu",
        "--seed",
        "5",
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        "--max-update",
        "10",
        *extra,
    )


def _eligible(tokens, task):
    special = torch.zeros(len(task.source_dictionary), dtype=torch.bool)
    special[: task.source_dictionary.nspecial] = True
    special[task.mask_idx] = True
    return ~special[tokens]


def test_fairseq_topk_follows_the_schedule_step_by_step(scored_corpus):
    task, _ = scheduled_task(scored_corpus, "--mask-prob-schedule", "steps:0.3,0.1@0.5")
    (sample, *_) = epoch_batches(task)
    assert ONLINE_SEEDS in sample and SCORES_COLUMN in sample
    assert sample["target"].eq(task.source_dictionary.pad()).all()  # unmasked
    tokens = sample["net_input"]["src_tokens"]
    eligible = _eligible(tokens, task).sum(dim=1).numpy()
    seeds = sample[ONLINE_SEEDS].numpy()
    for update, rate in ((0, 0.3), (4, 0.3), (5, 0.1), (9, 0.1)):
        rates = task.rates_at(update)
        assert rates.mask_prob == pytest.approx(rate)
        masked = task.mask_in_step(sample, rates)
        count = masked["target"].ne(task.source_dictionary.pad()).sum(dim=1).numpy()
        assert (count == rounded_count(rate, eligible, seeds.view(np.uint64))).all(), update
        assert ONLINE_SEEDS not in masked and SCORES_COLUMN not in masked


def test_fairseq_a_scheduled_step_masks_as_the_collater_at_that_constant_rate(scored_corpus):
    """At a step whose rate is 0.3, the train step's masks are the collater's masks of a
    run at --mask-prob 0.3: the same masker, the same row seeds."""
    scheduled, _ = scheduled_task(scored_corpus, "--mask-prob-schedule", "linear:0.3,0.05")
    constant, _ = scheduled_task(scored_corpus, "--mask-prob", "0.3")
    for got_sample, want in zip(
        epoch_batches(scheduled, epoch=2), epoch_batches(constant, epoch=2)
    ):
        got = scheduled.mask_in_step(got_sample, scheduled.rates_at(0))
        assert torch.equal(got["net_input"]["src_tokens"], want["net_input"]["src_tokens"])
        assert torch.equal(got["target"], want["target"])


def test_fairseq_random_masking_follows_the_same_schedule(corpus):
    task, _ = scheduled_task(
        corpus, "--se-select", "random", "--criterion", "masked_lm", "--mask-prob-schedule",
        "linear:0.4,0.1",
    )  # fmt: skip
    samples = epoch_batches(task)
    assert all(ONLINE_SEEDS in s and SCORES_COLUMN not in s for s in samples)
    for update, rate in ((0, 0.4), (5, 0.25), (10, 0.1)):
        chosen = eligible = 0
        for sample in samples:
            masked = task.mask_in_step(sample, task.rates_at(update))
            tokens = sample["net_input"]["src_tokens"]
            chosen += int(masked["target"].ne(task.source_dictionary.pad()).sum())
            eligible += int(_eligible(tokens, task).sum())
        assert abs(chosen / eligible - rate) < 0.02, (update, chosen / eligible)


def test_fairseq_online_se_follows_the_schedule(corpus):
    task, cfg = scheduled_task(
        corpus, "--se-online", "--mask-prob-schedule", "steps:0.3,0.1@0.5", "--dropout", "0"
    )
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    (sample, *_) = epoch_batches(task)
    tokens = sample["net_input"]["src_tokens"]
    eligible = _eligible(tokens, task).sum(dim=1).numpy()
    for update, rate in ((0, 0.3), (7, 0.1)):
        masked = task.mask_online(sample, model, criterion, task.rates_at(update))
        count = masked["target"].ne(task.source_dictionary.pad()).sum(dim=1).numpy()
        want = rounded_count(rate, eligible, sample[ONLINE_SEEDS].numpy().view(np.uint64))
        assert (count == want).all()


def test_fairseq_random_share_schedule_moves_from_random_to_se(scored_corpus):
    """linear:1,0: the budget starts uniformly drawn and ends all by score (top-k)."""
    task, _ = scheduled_task(scored_corpus, "--se-random-share-schedule", "linear:1,0")
    (sample, *_) = epoch_batches(task)
    scores = sample[SCORES_COLUMN].nan_to_num(0.0)
    pad = task.source_dictionary.pad()
    ends = task.mask_in_step(sample, task.rates_at(10))["target"].ne(pad)
    # all by score: each row's masked tokens are its highest-scored eligible ones
    eligible = _eligible(sample["net_input"]["src_tokens"], task)
    for row in range(len(ends)):
        k = int(ends[row].sum())
        top = torch.topk(scores[row].masked_fill(~eligible[row], -1.0), k).indices
        assert set(top.tolist()) == set(ends[row].nonzero().flatten().tolist())
    starts = task.mask_in_step(sample, task.rates_at(0))["target"].ne(pad)
    assert starts.sum() == ends.sum() and not torch.equal(starts, ends)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask-prob-schedule", "fast"], "--mask-prob-schedule: schedule 'fast'"),
        (["--mask-prob-schedule", "linear:0.3,1"], "rate 1 must lie in (0, 1)"),
        (
            ["--se-select", "threshold", "--se-random-share-schedule", "linear:0.5,0"],
            "--se-random-share-schedule splits the budget of --se-select topk or sample",
        ),
        (
            ["--se-random-share", "0.2", "--se-random-share-schedule", "linear:0.5,0"],
            "--se-random-share-schedule replaces --se-random-share",
        ),
        (
            ["--max-update", "0", "--mask-prob-schedule", "linear:0.3,0.1"],
            "follow training progress (update / --max-update): give --max-update",
        ),
    ],
)
def test_fairseq_schedule_refusals(corpus, extra, message):
    from se_fairseq.tasks.se_mlm_config import SelfEvolutionConfigError

    with pytest.raises(SelfEvolutionConfigError) as refused:
        scheduled_task(corpus, *extra)
    assert message in str(refused.value)


# -- transformers -------------------------------------------------------------------------


def hf_trainer(tmp_path, se_args, max_steps=10):
    from transformers import BertConfig, BertForMaskedLM, TrainingArguments

    from se_fairseq.hf import DataCollatorForSelfEvolution, SelfEvolutionTrainer

    tokenizer = tiny_bert_tokenizer()
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    collator = DataCollatorForSelfEvolution(
        tokenizer, mlm_probability=0.15, seed=2, **se_args.collator_kwargs()
    )
    args = TrainingArguments(
        str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    examples = hf_examples(tokenizer, 32, seed=5)
    trainer = SelfEvolutionTrainer(
        model=model, args=args, data_collator=collator, se_args=se_args, train_dataset=examples
    )
    return trainer, tokenizer, examples


def _hf_eligible(batch, tokenizer):
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    return batch["se_online_eligible"] & ~torch.isin(batch["input_ids"], special)


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_transformers_topk_follows_the_schedule_step_by_step(tmp_path, online):
    from se_fairseq.hf import SelfEvolutionArguments

    se_args = SelfEvolutionArguments(se_online=online, se_mask_prob_schedule="steps:0.3,0.1@0.5")
    trainer, tokenizer, examples = hf_trainer(tmp_path, se_args)
    trainer.state.max_steps = 10
    padded = trainer.data_collator(examples[:8])
    assert "labels" not in padded and (SCORES_COLUMN in padded) is not online
    eligible = _hf_eligible(padded, tokenizer).sum(dim=1).numpy()
    seeds = padded[ONLINE_SEEDS].numpy().view(np.uint64)
    for step, rate in ((0, 0.3), (4, 0.3), (5, 0.1), (9, 0.1)):
        trainer.state.global_step = step
        batches, count = trainer.get_batch_samples(iter([dict(padded)]), 1, torch.device("cpu"))
        chosen = batches[0]["labels"].ne(-100).sum(dim=1).numpy()
        assert (chosen == rounded_count(rate, eligible, seeds)).all(), step
        assert int(count) == int(chosen.sum())


def test_transformers_random_masking_follows_the_schedule(tmp_path):
    from se_fairseq.hf import SelfEvolutionArguments

    se_args = SelfEvolutionArguments(se_select="random", se_mask_prob_schedule="linear:0.4,0.1")
    trainer, tokenizer, examples = hf_trainer(tmp_path, se_args)
    trainer.state.max_steps = 10
    padded = [trainer.data_collator(examples[i : i + 8]) for i in range(0, 32, 8)]
    for step, rate in ((0, 0.4), (10, 0.1)):
        trainer.state.global_step = step
        batches, _ = trainer.get_batch_samples(iter([dict(b) for b in padded]), 4, "cpu")
        chosen = sum(int(b["labels"].ne(-100).sum()) for b in batches)
        eligible = sum(int(_hf_eligible(b, tokenizer).sum()) for b in padded)
        assert abs(chosen / eligible - rate) < 0.05, (step, chosen / eligible)


@pytest.mark.slow
def test_transformers_training_logs_the_scheduled_rate(tmp_path):
    from se_fairseq.hf import SelfEvolutionArguments

    se_args = SelfEvolutionArguments(se_mask_prob_schedule="linear:0.3,0.1")
    trainer, _, _ = hf_trainer(tmp_path, se_args, max_steps=5)
    trainer.train()
    logged = [log["mask_prob"] for log in trainer.state.log_history if "mask_prob" in log]
    assert logged == pytest.approx([0.3 - 0.2 * s / 5 for s in range(1, 6)], abs=1e-4)


@pytest.mark.slow
@pytest.mark.subprocess
def test_fairseq_train_with_a_schedule_and_persistent_workers_logs_the_rate(
    scored_corpus, tmp_path
):
    """fairseq-train with two (persistent) DataLoader workers: the train step masks at the
    scheduled rate, which the log shows falling over the updates."""
    import re

    from support.fairseq_data import fairseq_train

    result = fairseq_train(
        scored_corpus,
        str(tmp_path / "ckpt"),
        "--task", "se_mlm", "--criterion", "token_ls", "--num-workers", "2",
        "--mask-prob-schedule", "linear:0.3,0.1", "--log-interval", "1",
        max_update=6,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    inner = [line for line in result.stdout.splitlines() if "| train_inner |" in line]
    rates = [float(re.search(r"mask_prob=([0-9.]+)", line).group(1)) for line in inner]
    # update u (1..6) masks at 0.3 - 0.2 (u - 1) / 6
    assert rates == pytest.approx([0.3 - 0.2 * u / 6 for u in range(6)], abs=1e-3)
