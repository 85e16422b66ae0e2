"""Excess-loss selection (Rho-1) and user score functions on the transformers path, against
a dense float64 formula: the live model's correctness minus a frozen reference model's,
each from its own eval-mode forward over the unmasked examples."""

import numpy as np
import pytest
import torch
from support import hf_models
from support.hf_tokenizers import hf_examples, tiny_bert_tokenizer
from transformers import TrainingArguments

from se_fairseq.hf import (
    DataCollatorForSelfEvolution,
    SelfEvolutionArguments,
    SelfEvolutionTrainer,
    score_dataset,
)
from se_fairseq.ops.reference import rounded_count


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_bert_tokenizer()


def tiny_bert(tokenizer, seed, vocab=None):
    return hf_models.tiny_bert(tokenizer, seed=seed, vocab_size=vocab).eval()


def correctness64(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return -torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]


def test_scored_dataset_excess_is_live_minus_reference_correctness(tokenizer):
    import datasets

    live, ref = tiny_bert(tokenizer, 0), tiny_bert(tokenizer, 1)
    examples = hf_examples(tokenizer, 6, seed=2)
    dataset = datasets.Dataset.from_list([{"input_ids": e["input_ids"]} for e in examples])
    scored = score_dataset(live, tokenizer, dataset, metric="excess", reference_model=ref)
    special = set(tokenizer.all_special_ids)
    for example in scored:
        ids = example["input_ids"]
        want = (correctness64(live, ids) - correctness64(ref, ids)).numpy()
        got = np.asarray(example["se_scores"], dtype=np.float64)
        plain = [i for i, t in enumerate(ids) if t not in special]
        assert np.isnan(got[[i for i in range(len(ids)) if i not in plain]]).all()
        np.testing.assert_allclose(got[plain], want[plain], atol=2e-5)


def test_excess_refusals(tokenizer):
    import datasets

    from se_fairseq.core.job import ScoringError

    live = tiny_bert(tokenizer, 0)
    dataset = datasets.Dataset.from_list([{"input_ids": [2, 5, 6, 3]}])
    with pytest.raises(ScoringError, match="reference model"):
        score_dataset(live, tokenizer, dataset, metric="excess")
    with pytest.raises(ScoringError, match="reference model"):
        score_dataset(live, tokenizer, dataset, reference_model=tiny_bert(tokenizer, 1))
    other = tiny_bert(tokenizer, 1, vocab=len(tokenizer) + 5)
    with pytest.raises(ScoringError, match="share one vocabulary"):
        score_dataset(live, tokenizer, dataset, metric="excess", reference_model=other)


def trainer(tokenizer, tmp_path, se_args, **kwargs):
    collator = DataCollatorForSelfEvolution(
        tokenizer, mlm_probability=0.3, seed=3, **se_args.collator_kwargs()
    )
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    return SelfEvolutionTrainer(
        model=tiny_bert(tokenizer, 0).train(),
        args=args,
        data_collator=collator,
        se_args=se_args,
        **kwargs,
    )


def _online_batch(trainer, tokenizer, examples):
    padded = trainer.data_collator([dict(e, se_index=i) for i, e in enumerate(examples)])
    eligible = padded["se_online_eligible"] & ~torch.isin(
        padded["input_ids"], torch.tensor(sorted(set(tokenizer.all_special_ids)))
    )
    seeds = padded["se_online_seeds"].numpy().view(np.uint64)
    return padded, eligible, seeds


def test_online_excess_selects_the_top_k_of_live_minus_reference(tokenizer, tmp_path):
    ref = tiny_bert(tokenizer, 1)
    se = trainer(
        tokenizer,
        tmp_path,
        SelfEvolutionArguments(se_online=True, se_metric="excess", se_reference_model="ref"),
        reference_model=ref,
    )
    examples = hf_examples(tokenizer, 6, seed=4)
    padded, eligible, seeds = _online_batch(se, tokenizer, examples)
    masked = se._mask_online(dict(padded))
    live = se.model
    live.eval()
    count = rounded_count(0.3, eligible.sum(1).numpy(), seeds)
    for row, example in enumerate(examples):
        ids = example["input_ids"]
        excess = (correctness64(live, ids) - correctness64(ref, ids)).float()
        n = len(ids)
        order = excess.masked_fill(~eligible[row, :n], float("-inf")).argsort(descending=True)
        want = torch.zeros(n, dtype=torch.bool)
        want[order[: int(count[row])]] = True
        assert torch.equal(masked["labels"][row, :n].ne(-100), want), row
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training


def test_online_excess_refusals(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="reference_model="):
        trainer(tokenizer, tmp_path, SelfEvolutionArguments(se_online=True, se_metric="excess",
                                                            se_reference_model="ref"))  # fmt: skip
    with pytest.raises(ValueError, match="share one vocabulary"):
        trainer(
            tokenizer,
            tmp_path,
            SelfEvolutionArguments(se_online=True, se_metric="excess", se_reference_model="r"),
            reference_model=tiny_bert(tokenizer, 1, vocab=len(tokenizer) + 3),
        )
    from se_fairseq.core.options import OptionError

    with pytest.raises(OptionError, match="give --se_reference_model"):
        SelfEvolutionArguments(se_online=True, se_metric="excess")
    with pytest.raises(OptionError, match="--se_reference_model is the reference model"):
        SelfEvolutionArguments(se_online=True, se_reference_model="r")


def test_a_user_score_function_drives_online_selection(tokenizer, tmp_path):
    """A ten-line policy of the user's (docs/huggingface.md): mask the rarest tokens, by a
    unigram count the user holds; the selection is the masker's top-k of those scores."""
    counts = torch.ones(len(tokenizer))
    counts[: len(tokenizer) // 2] = 100.0  # the first half of the vocabulary is common

    def rarity(logits, input_ids):
        return -torch.log(counts[input_ids] / counts.sum())

    se = trainer(tokenizer, tmp_path, SelfEvolutionArguments(se_online=True), score_fn=rarity)
    examples = hf_examples(tokenizer, 6, seed=5)
    padded, eligible, _ = _online_batch(se, tokenizer, examples)
    masked = se._mask_online(dict(padded))
    scores = -torch.log(counts[padded["input_ids"]] / counts.sum())
    want = se.se_collator.masker.mask(
        padded["input_ids"], scores, padded["se_online_seeds"], scored=padded["se_online_eligible"]
    )[1]
    assert torch.equal(masked["labels"], want)
    with pytest.raises(ValueError, match="score_fn scores with the live model"):
        trainer(tokenizer, tmp_path, SelfEvolutionArguments(), score_fn=rarity)


@pytest.mark.parametrize(
    "se_args, passes",
    [
        (SelfEvolutionArguments(tls_alpha=0.0, se_select="random"), 3),  # plain MLM step
        (SelfEvolutionArguments(), 4),  # offline TLS: p_ref's forward
        (SelfEvolutionArguments(se_online=True), 4),  # online: one forward for both
        (
            SelfEvolutionArguments(se_online=True, se_metric="excess", se_reference_model="r"),
            5,
        ),
    ],
    ids=["random", "offline-tls", "online", "online-excess"],
)
def test_the_flops_count_holds_ses_extra_forwards(tokenizer, tmp_path, se_args, passes):
    """Against transformers' own count for a plain step (6 x tokens x parameters: forward
    and backward, 3 token passes): SE adds one pass per extra forward without gradient."""
    reference = tiny_bert(tokenizer, 1) if se_args.se_metric == "excess" else None
    se = trainer(tokenizer, tmp_path, se_args, reference_model=reference)
    inputs = {"input_ids": torch.ones((4, 10), dtype=torch.long)}
    plain = 6 * 40 * se.model.num_parameters(exclude_embeddings=True)
    assert se.floating_point_ops(inputs) == plain * passes // 3
