"""se_fairseq.hf.SelfEvolutionTrainer and token_ls_loss: TLS and online SE in the
transformers Trainer.

References: the loss against fairseq's token_label_smoothed_loss and a dense float64
formula written here (soft targets built explicitly); the online selection against
scores computed here from an eval-mode forward and a top-k per row over the eligible
tokens (the count by the operator's numpy rounding rule, se_fairseq.ops.reference); the
alpha-0 run against transformers' own Trainer and model loss on the same batches.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import hf_models
from support.hf_tokenizers import HF_WORDS, hf_examples, tiny_bert_tokenizer
from transformers import Trainer, TrainingArguments

from se_fairseq.core.constants import REF_PROBS
from se_fairseq.core.masking import row_seeds
from se_fairseq.hf import (
    DataCollatorForSelfEvolution,
    SelfEvolutionArguments,
    SelfEvolutionTrainer,
    token_ls_loss,
)
from se_fairseq.ops.reference import rounded_count


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_bert_tokenizer()


def tiny_bert(tokenizer, dropout=0.0):
    return hf_models.tiny_bert(tokenizer, dropout=dropout)


def training_args(path, **overrides):
    options = dict(
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return TrainingArguments(str(path), **options)


def se_trainer(
    tokenizer, model, path, examples, se_args, mlm_probability=0.15, words=False, **overrides
):
    collator = DataCollatorForSelfEvolution(
        tokenizer,
        mlm_probability=mlm_probability,
        seed=1,
        whole_word_mask=words,
        **se_args.collator_kwargs(),
    )
    return SelfEvolutionTrainer(
        model=model,
        args=training_args(path, **overrides),
        data_collator=collator,
        se_args=se_args,
        train_dataset=examples,
        processing_class=tokenizer,
    )


# -- the loss ---------------------------------------------------------------------------


def dense_tls(logits, labels, alpha, ref_probs=None):
    """Mean over the labelled positions of -sum_v target_v log p_v, in float64, with the
    soft target (1 - alpha) * onehot + alpha * ref built explicitly (ref None: uniform)."""
    selected = labels != -100
    lprobs = torch.log_softmax(logits[selected].double(), dim=-1)
    vocab = lprobs.size(-1)
    onehot = F.one_hot(labels[selected], vocab).double()
    ref = torch.full_like(onehot, 1.0 / vocab) if ref_probs is None else ref_probs.double()
    target = (1.0 - alpha) * onehot + alpha * ref
    return -(target * lprobs).sum(dim=-1).sum() / selected.sum()


LOSS_CASES = {"alpha 0.1, model": (0.1, True), "alpha 0.1, uniform": (0.1, False)}
LOSS_CASES["alpha 0"] = (0.0, False)


@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_loss_equals_fairseq_token_ls_and_the_dense_formula(case):
    from se_fairseq.core.tls import token_label_smoothed_loss

    alpha, with_ref = LOSS_CASES[case]
    gen = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(6, 20, 50, generator=gen)
    labels = torch.randint(0, 50, (6, 20), generator=gen)
    labels[torch.rand(6, 20, generator=gen) > 0.3] = -100
    selected = labels != -100
    ref = None
    if with_ref:
        ref = torch.softmax(torch.randn(int(selected.sum()), 50, generator=gen), dim=-1)
    ours = token_ls_loss(logits, labels, alpha, ref)
    lprobs = F.log_softmax(logits[selected], dim=-1)
    fairseq_sum, _ = token_label_smoothed_loss(lprobs, labels[selected], alpha, ref)
    fairseq_mean = fairseq_sum / selected.sum()
    dense = dense_tls(logits, labels, alpha, ref)
    diffs = (abs(ours.item() - fairseq_mean.item()), abs(ours.item() - dense.item()))
    print(
        f"{case}: loss {ours.item():.6f}; |hf - fairseq| {diffs[0]:.2e}, "
        f"|hf - dense| {diffs[1]:.2e}"
    )
    assert max(diffs) < 1e-5
    if alpha == 0.0:  # the models' own masked-LM loss
        plain = F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1))
        assert abs(ours.item() - plain.item()) < 1e-6


def test_loss_divides_by_num_items_in_batch_and_counts_only_the_labels():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 2
    total = token_ls_loss(logits, labels, 0.1, num_items_in_batch=10) * 10
    assert torch.allclose(total, 2 * dense_tls(logits, labels, 0.1).float())
    # positions without a label weigh nothing, whatever their logits
    louder = logits.clone()
    louder[labels == -100] *= 50
    assert torch.equal(token_ls_loss(louder, labels, 0.1), token_ls_loss(logits, labels, 0.1))
    empty = token_ls_loss(logits.requires_grad_(), torch.full((2, 5), -100), 0.1)
    assert empty.item() == 0.0 and empty.requires_grad


def test_ref_probs_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="one row per label"):
        token_ls_loss(
            torch.randn(1, 4, 6), torch.tensor([[1, -100, 2, -100]]), 0.1, torch.ones(3, 6)
        )


# -- offline: p_ref from the unmasked input ------------------------------------------------


def test_offline_loss_takes_p_ref_from_an_eval_forward_of_the_unmasked_input(tokenizer, tmp_path):
    model = tiny_bert(tokenizer, dropout=0.3)
    examples = hf_examples(tokenizer, 8, seed=2)
    trainer = se_trainer(tokenizer, model, tmp_path, examples, SelfEvolutionArguments())
    batch = trainer.data_collator(examples)
    original = [torch.tensor(ex["input_ids"]) for ex in examples]
    selected = batch["labels"] != -100
    assert selected.any() and (batch["input_ids"][selected] == tokenizer.mask_token_id).all()
    model.eval()
    with torch.no_grad():
        unmasked = tokenizer.pad(
            [{"input_ids": ids.tolist()} for ids in original], return_tensors="pt"
        )
        ref = torch.softmax(model(**unmasked, token_type_ids=batch["token_type_ids"]).logits, -1)
        masked_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    expected = dense_tls(masked_logits, batch["labels"], 0.1, ref[selected])
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)  # model in eval here: no dropout in the step
    assert abs(loss.item() - expected.item()) < 1e-5
    model.train()
    p_ref = SelfEvolutionTrainer.reference_probs(model, batch, batch["labels"])
    assert model.training and not p_ref.requires_grad
    assert torch.allclose(p_ref, ref[selected], atol=1e-6)


# -- online: one step ------------------------------------------------------------------------


def test_online_step_selects_the_top_scores_of_an_eval_forward(tokenizer, tmp_path):
    model = tiny_bert(tokenizer, dropout=0.3)
    model.train()
    examples = hf_examples(tokenizer, 8, seed=3)
    se_args = SelfEvolutionArguments(se_online=True)
    trainer = se_trainer(tokenizer, model, tmp_path, examples, se_args, mlm_probability=0.25)
    unmasked = trainer.data_collator(examples)
    assert "labels" not in unmasked
    tokens = unmasked["input_ids"].clone()
    [batch], count = trainer.get_batch_samples(iter([dict(unmasked)]), 1, torch.device("cpu"))

    # the reference, written here: eval-mode forward, float64 scores, top-k per row
    model.eval()
    with torch.no_grad():
        logits = model(
            input_ids=tokens,
            attention_mask=unmasked["attention_mask"],
            token_type_ids=unmasked["token_type_ids"],
        ).logits
    lprobs = torch.log_softmax(logits.double(), dim=-1)
    scores = -lprobs.gather(-1, tokens[..., None]).squeeze(-1)
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    eligible = unmasked["attention_mask"].bool() & ~torch.isin(tokens, special)
    seeds = row_seeds(1, 1, [ex["se_index"] for ex in examples])
    k = rounded_count(0.25, eligible.sum(1).numpy(), seeds)
    expected = torch.zeros_like(eligible)
    for r in range(len(examples)):
        order = sorted(torch.nonzero(eligible[r]).flatten().tolist(), key=lambda i: -scores[r, i])
        expected[r, order[: k[r]]] = True
    chosen = batch["labels"] != -100
    assert torch.equal(chosen, expected)
    assert int(count) == int(expected.sum()) > 0
    assert torch.equal(batch["labels"][chosen], tokens[chosen])
    assert (batch["input_ids"][chosen] == tokenizer.mask_token_id).all()
    assert torch.equal(batch["input_ids"][~chosen], tokens[~chosen])
    # p_ref: the eval forward's softmax at the selected positions, without gradient
    ref = batch[REF_PROBS]
    assert not ref.requires_grad
    assert torch.allclose(ref, torch.softmax(logits[chosen], dim=-1), atol=1e-6)
    model.train()  # a training-mode (dropout) forward would give other probabilities
    with torch.no_grad():
        noisy = model(**{k: v for k, v in unmasked.items() if not k.startswith("se_")}).logits
    assert not torch.allclose(ref, torch.softmax(noisy[chosen], dim=-1), atol=1e-3)


@pytest.mark.parametrize("select", ["sample", "threshold", "topk whole words"])
def test_online_masks_are_the_collators_masks_of_the_same_scores(tokenizer, tmp_path, select):
    """Same seed, epoch and example index: the online step masks as the offline collator
    masks examples that carry the scores of an eval forward (here computed in float64)."""
    model = tiny_bert(tokenizer, dropout=0.3)
    words = select.endswith("whole words")
    select = select.split()[0]
    vocabulary = HF_WORDS + tuple(w + "of" for w in HF_WORDS[:30])  # two pieces each
    examples = hf_examples(tokenizer, 12, 9, words=vocabulary, return_offsets_mapping=words)
    threshold = 4.9 if select == "threshold" else None
    se_args = SelfEvolutionArguments(se_online=True, se_select=select, se_threshold=threshold)
    trainer = se_trainer(
        tokenizer, model, tmp_path, examples, se_args, mlm_probability=0.3, words=words
    )
    trainer.se_collator.set_epoch(2)
    unmasked = trainer.data_collator(examples)
    [online], _ = trainer.get_batch_samples(iter([dict(unmasked)]), 1, torch.device("cpu"))
    model.eval()
    for ex in examples:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
        lprobs = torch.log_softmax(logits.double(), dim=-1)
        ids = torch.tensor(ex["input_ids"])
        ex["se_scores"] = (-lprobs.gather(-1, ids[:, None]).squeeze(-1)).tolist()
    offline = DataCollatorForSelfEvolution(
        tokenizer, mlm_probability=0.3, seed=1, whole_word_mask=words, **se_args.collator_kwargs()
    )
    offline.set_epoch(2)
    expected = offline(examples)
    assert torch.equal(online["labels"], expected["labels"])
    assert torch.equal(online["input_ids"], expected["input_ids"])
    if words:  # a word's pieces go together
        chosen = expected["labels"] != -100
        pieces = torch.tensor(
            [tokenizer.convert_ids_to_tokens(i).startswith("##") for i in range(len(tokenizer))]
        )
        original = expected["labels"].where(chosen, expected["input_ids"])
        continues = pieces[original] & expected["attention_mask"].bool()
        assert continues.any() and torch.equal(
            chosen[:, 1:][continues[:, 1:]], chosen[:, :-1][continues[:, 1:]]
        )
    chosen = int((expected["labels"] != -100).sum())
    assert 0 < chosen < int(expected["attention_mask"].sum()) - 2 * len(examples)
    if select == "sample":  # the draws depend on the epoch (threshold has none)
        offline.set_epoch(1)
        assert not torch.equal(online["labels"], offline(examples)["labels"])


def test_online_evaluation_masks_at_random(tokenizer, tmp_path):
    examples = hf_examples(tokenizer, 16, seed=10)
    se_args = SelfEvolutionArguments(se_online=True)
    trainer = se_trainer(tokenizer, tiny_bert(tokenizer), tmp_path, examples, se_args)
    batch = next(iter(trainer.get_eval_dataloader(examples)))
    # transformers' distribution (80/10/10) at the collator's seed, epoch 1
    random = DataCollatorForSelfEvolution(tokenizer, seed=1, select="random")(examples[:8])
    assert torch.equal(batch["labels"], random["labels"])
    assert torch.equal(batch["input_ids"], random["input_ids"])
    assert "labels" not in trainer.data_collator(examples)  # training batches: padded only


def test_online_refuses_a_batch_the_collator_already_masked(tokenizer, tmp_path):
    examples = hf_examples(tokenizer, 8, seed=4)
    se_args = SelfEvolutionArguments(se_online=True)
    trainer = se_trainer(tokenizer, tiny_bert(tokenizer), tmp_path, examples, se_args)
    masked = DataCollatorForSelfEvolution(tokenizer, select="random")(examples)
    with pytest.raises(ValueError, match="already masked"):
        trainer.get_batch_samples(iter([masked]), 1, torch.device("cpu"))


def test_offline_refuses_a_dataset_without_scores(tokenizer, tmp_path):
    examples = [
        {k: v for k, v in ex.items() if k != "se_scores"} for ex in hf_examples(tokenizer, 8)
    ]
    with pytest.raises(ValueError, match="train_dataset has no 'se_scores' column"):
        se_trainer(tokenizer, tiny_bert(tokenizer), tmp_path, examples, SelfEvolutionArguments())
    # online SE and random masking need none
    se_trainer(
        tokenizer, tiny_bert(tokenizer), tmp_path, examples, SelfEvolutionArguments(se_online=True)
    )
    random = SelfEvolutionArguments(se_select="random")
    se_trainer(tokenizer, tiny_bert(tokenizer), tmp_path, examples, random)


def test_refuses_a_collator_of_other_options(tokenizer, tmp_path):
    collator = DataCollatorForSelfEvolution(tokenizer, select="sample")
    with pytest.raises(ValueError, match="select='sample' \\(se_args: 'topk'\\)"):
        SelfEvolutionTrainer(
            model=tiny_bert(tokenizer),
            args=training_args(tmp_path),
            data_collator=collator,
            se_args=SelfEvolutionArguments(),
            train_dataset=hf_examples(tokenizer, 8),
        )


# -- a few Trainer steps ---------------------------------------------------------------


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def losses(trainer):
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


@pytest.mark.slow
@pytest.mark.parametrize(
    "se_args",
    [
        SelfEvolutionArguments(),
        SelfEvolutionArguments(se_online=True),
        SelfEvolutionArguments(se_online=True, se_select="threshold", se_metric="confidence"),
        SelfEvolutionArguments(se_select="random", tls_ref="model"),
        SelfEvolutionArguments(tls_ref="uniform"),
    ],
    ids=["offline topk", "online topk", "online threshold", "offline random", "uniform"],
)
def test_a_few_trainer_steps_change_the_weights_with_a_finite_loss(tokenizer, tmp_path, se_args):
    model = tiny_bert(tokenizer, dropout=0.1)
    before = params(model)
    examples = hf_examples(tokenizer, 24, seed=5)
    trainer = se_trainer(tokenizer, model, tmp_path, examples, se_args, max_steps=4)
    trainer.eval_dataset = examples[:8]
    trainer.train()
    assert len(losses(trainer)) == 4 and all(math.isfinite(x) for x in losses(trainer))
    assert all(not torch.equal(a, b) for a, b in zip(before, params(model)))
    assert model.training  # the reference forwards gave the training mode back
    assert math.isfinite(trainer.evaluate()["eval_loss"])


@pytest.mark.slow
def test_alpha_0_gives_the_loss_of_transformers_trainer_on_the_same_batches(tokenizer, tmp_path):
    examples = hf_examples(tokenizer, 32, seed=6)
    model = tiny_bert(tokenizer, dropout=0.1)
    theirs_model = copy.deepcopy(model)
    se_args = SelfEvolutionArguments(tls_alpha=0.0)
    ours = se_trainer(tokenizer, model, tmp_path / "ours", examples, se_args, max_steps=4)
    ours.train()
    collator = DataCollatorForSelfEvolution(tokenizer, seed=1, **se_args.collator_kwargs())
    theirs = Trainer(
        model=theirs_model,
        args=training_args(tmp_path / "theirs", max_steps=4, remove_unused_columns=False),
        data_collator=collator,
        train_dataset=examples,
    )
    theirs.train()
    print("ours", losses(ours), "transformers", losses(theirs))
    assert np.allclose(losses(ours), losses(theirs), rtol=1e-5)
    for a, b in zip(params(model), params(theirs_model)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_normalises_over_the_accumulated_batch(tokenizer, tmp_path):
    examples = hf_examples(tokenizer, 32, seed=7)
    model = tiny_bert(tokenizer)
    other = copy.deepcopy(model)
    se_args = SelfEvolutionArguments()
    # plain SGD: the updates are the gradients (Adam's first steps are their signs)
    whole = se_trainer(
        tokenizer, model, tmp_path / "a", examples, se_args, max_steps=2, optim="sgd"
    )
    whole.train()
    halves = se_trainer(
        tokenizer,
        other,
        tmp_path / "b",
        examples,
        se_args,
        max_steps=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        optim="sgd",
    )
    halves.train()
    assert np.allclose(losses(whole), losses(halves), rtol=1e-4)
    for a, b in zip(params(model), params(other)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_remove_unused_columns_keeps_what_the_collator_reads(tokenizer, tmp_path):
    import datasets

    rows = hf_examples(tokenizer, 16, seed=8)
    for ex in rows:
        ex["text"] = "dropped"
    dataset = datasets.Dataset.from_list(rows)
    se_args = SelfEvolutionArguments()
    trainer = se_trainer(
        tokenizer, tiny_bert(tokenizer), tmp_path, dataset, se_args, remove_unused_columns=True
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "text" not in batch and (batch["labels"] != -100).any()
    trainer.train()
