"""se_fairseq.hf.DataCollatorForSelfEvolution: the transformers path's data collator.

Tokenizers are built in memory (tests/support/hf_tokenizers.py): BERT (WordPiece, [CLS]/[SEP] in
the middle of the vocabulary), RoBERTa (byte-level BPE, <s>/</s>/<pad>/<unk> first,
<mask> last) and a WordLevel one with its special tokens after the words and an extra
special token (a DeBERTa/ModernBERT-style layout).
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from support.fairseq_data import make_task
from support.hf_tokenizers import (
    hf_examples,
    tiny_bert_tokenizer,
    tiny_roberta_tokenizer,
    tiny_wordlevel_tokenizer,
)
from transformers import DataCollatorForLanguageModeling

from se_fairseq.core.masking import row_seeds
from se_fairseq.hf import DataCollatorForSelfEvolution, with_example_index

TOKENIZERS = {
    "bert": tiny_bert_tokenizer,
    "roberta": tiny_roberta_tokenizer,
    "specials-last": tiny_wordlevel_tokenizer,
}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


@pytest.fixture(scope="module")
def bert():
    return tiny_bert_tokenizer()


def selected(batch):
    return batch["labels"] != -100


@pytest.mark.subprocess
def test_importing_se_fairseq_hf_imports_nothing_heavy():
    code = (
        "import sys, se_fairseq, se_fairseq.hf; "
        "print(any(m in sys.modules for m in ('torch', 'transformers', 'fairseq')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mode", ["topk", "sample", "threshold", "random"])
def test_special_tokens_and_padding_are_never_selected(tokenizer, mode):
    examples = hf_examples(tokenizer, 64, seed=3)
    special = set(tokenizer.all_special_ids)
    for ex in examples:  # the highest scores on the special tokens: still never chosen
        ex["se_scores"] = [
            1e6 if t in special else s for t, s in zip(ex["input_ids"], ex["se_scores"])
        ]
    collator = DataCollatorForSelfEvolution(
        tokenizer, select=mode, mlm_probability=0.5, threshold=3.0 if mode == "threshold" else None
    )
    batch = collator(examples)
    chosen = selected(batch)
    ids = batch["labels"].where(chosen, batch["input_ids"])  # the original ids
    is_special = torch.isin(ids, torch.tensor(sorted(special)))
    assert is_special.any() and (batch["attention_mask"] == 0).any()
    assert not (chosen & is_special).any()
    assert not (chosen & (batch["attention_mask"] == 0)).any()
    assert chosen.sum() > 0.3 * (~is_special).sum()  # and it did select


def test_the_batch_has_the_keys_and_shapes_of_transformers_collator(tokenizer):
    examples = hf_examples(tokenizer, 8, seed=1)
    ours = DataCollatorForSelfEvolution(tokenizer, pad_to_multiple_of=8)(examples)
    plain = [{k: v for k, v in ex.items() if not k.startswith("se_")} for ex in examples]
    theirs = DataCollatorForLanguageModeling(tokenizer, pad_to_multiple_of=8, seed=0)(plain)
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].shape == theirs[key].shape and ours[key].dtype == theirs[key].dtype
    assert ours["input_ids"].shape[1] % 8 == 0
    unchanged = ~selected(ours)
    padded = tokenizer.pad(plain, return_tensors="pt", pad_to_multiple_of=8)["input_ids"]
    assert torch.equal(ours["input_ids"][unchanged], padded[unchanged])
    # SE modes default to [MASK] at every selected position, as se_mlm
    assert (ours["input_ids"][~unchanged] == tokenizer.mask_token_id).all()
    assert torch.equal(ours["labels"][~unchanged], padded[~unchanged])


def test_topk_selects_the_highest_scores_of_each_example(bert):
    examples = hf_examples(bert, 16, seed=2)
    batch = DataCollatorForSelfEvolution(bert, mlm_probability=0.25)(examples)
    for row, ex in enumerate(examples):
        ids = ex["input_ids"]
        eligible = [i for i, t in enumerate(ids) if t not in bert.all_special_ids]
        chosen = set(np.flatnonzero(selected(batch)[row, : len(ids)].numpy()).tolist())
        k = len(chosen)
        assert abs(k - 0.25 * len(eligible)) < 1
        best = sorted(eligible, key=lambda i: -ex["se_scores"][i])[:k]
        assert chosen == set(best)


def test_left_padding_keeps_the_scores_on_their_tokens():
    left = tiny_bert_tokenizer()
    left.padding_side = "left"
    examples = hf_examples(left, 12, seed=4)
    for ex in examples:
        ex["se_scores"] = [float(i) for i in range(len(ex["input_ids"]))]  # the last words
    batch = DataCollatorForSelfEvolution(left, mlm_probability=0.2)(examples)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        chosen = np.flatnonzero(selected(batch)[row].numpy())
        length = batch["input_ids"].shape[1]
        k = len(chosen)
        # the k highest-scored eligible positions are the last ones before [SEP]
        assert chosen.tolist() == list(range(length - 1 - k, length - 1))
        assert (batch["attention_mask"][row, : length - n] == 0).all()


def test_nan_scores_are_never_selected(bert):
    examples = hf_examples(bert, 8, seed=5)
    for ex in examples:
        ex["se_scores"][1] = float("nan")
    batch = DataCollatorForSelfEvolution(bert, mlm_probability=0.5, select="sample")(examples)
    assert not selected(batch)[:, 1].any()


def _masks(collator, examples, epoch=1):
    collator.set_epoch(epoch)
    return collator(examples)


def test_masks_are_a_pure_function_of_seed_epoch_index_and_scores(bert):
    examples = hf_examples(bert, 24, seed=6)
    collator = DataCollatorForSelfEvolution(bert, select="sample", seed=7)
    whole = _masks(collator, examples)
    # the same example in another batch, at another place: the same mask
    alone = _masks(collator, examples[5:6])
    n = len(examples[5]["input_ids"])
    assert torch.equal(alone["labels"][0, :n], whole["labels"][5, :n])
    shuffled = _masks(collator, examples[::-1])
    assert torch.equal(shuffled["labels"][-1], whole["labels"][0])
    assert not torch.equal(_masks(collator, examples, epoch=2)["labels"], whole["labels"])
    other_seed = DataCollatorForSelfEvolution(bert, select="sample", seed=8)
    assert not torch.equal(_masks(other_seed, examples)["labels"], whole["labels"])


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_give_the_masks_of_one_process(bert, workers):
    raw = [{k: v for k, v in ex.items() if k != "se_index"} for ex in hf_examples(bert, 40, 7)]
    dataset = with_example_index(raw)
    collator = DataCollatorForSelfEvolution(bert, select="sample", seed=3)
    expected = {}
    for epoch in (1, 2):
        collator.set_epoch(epoch)
        for i in range(len(dataset)):
            expected[epoch, i] = collator([dataset[i]])["labels"][0]
    order = np.random.default_rng(0).permutation(len(dataset)).tolist()  # a fixed shuffle
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=6,
        sampler=order,
        num_workers=workers,
        collate_fn=collator,
        persistent_workers=workers > 0,
    )
    for epoch in (1, 2):
        collator.set_epoch(epoch)  # persistent workers read it from shared memory
        seen = 0
        for b, batch in enumerate(loader):
            for row, i in enumerate(order[6 * b : 6 * b + 6]):
                n = len(raw[i]["input_ids"])
                assert torch.equal(batch["labels"][row, :n], expected[epoch, i][:n])
                seen += 1
        assert seen == len(dataset)


def _fairseq_batch(examples, pad):
    length = max(len(ex["input_ids"]) for ex in examples)
    tokens = torch.full((len(examples), length), pad, dtype=torch.long)
    scores = torch.zeros((len(examples), length))
    for r, ex in enumerate(examples):
        tokens[r, : len(ex["input_ids"])] = torch.tensor(ex["input_ids"])
        scores[r, : len(ex["input_ids"])] = torch.tensor(ex["se_scores"])
    return tokens, scores


SE_MLM_CASES = {
    "topk": (["--se-select", "topk"], dict(select="topk")),
    "sample": (
        ["--se-select", "sample", "--se-temperature", "0.5"],
        dict(select="sample", temperature=0.5),
    ),
    "threshold": (
        ["--se-select", "threshold", "--se-threshold", "5.0"],
        dict(select="threshold", threshold=5.0),
    ),
    "threshold-default": (["--se-select", "threshold"], dict(select="threshold")),
    "topk-random-share": (
        ["--se-select", "topk", "--se-random-share", "0.4"],
        dict(select="topk", random_share=0.4),
    ),
    "sample-random-share-80-10-10": (
        [
            "--se-select",
            "sample",
            "--se-random-share",
            "0.25",
            "--leave-unmasked-prob",
            "0.1",
            "--random-token-prob",
            "0.1",
        ],
        dict(select="sample", random_share=0.25, mask_replace_prob=0.8, random_replace_prob=0.1),
    ),
}


@pytest.mark.parametrize("case", sorted(SE_MLM_CASES))
def test_the_collator_selects_what_se_mlm_selects(scored_corpus, case, record_property):
    """se_mlm's masker, built by the task from its parsed options, and the collator over a
    tokenizer with the task dictionary's ids: the same ids, scores, indices and epoch give
    the same selected positions and the same masked input."""
    argv, options = SE_MLM_CASES[case]
    task, _ = make_task(
        scored_corpus, "--task", "se_mlm", "--mask-prob", "0.2", "--seed", "13", *argv
    )
    masker = task.build_masker()
    dictionary = task.source_dictionary
    symbols = list(dictionary.symbols)
    assert symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and symbols[-1] == "<mask>"
    tokenizer = tiny_wordlevel_tokenizer(symbols=symbols)
    assert len(tokenizer) == len(dictionary)
    collator = DataCollatorForSelfEvolution(tokenizer, mlm_probability=0.2, seed=13, **options)
    rng = np.random.default_rng(0)
    words = np.arange(dictionary.nspecial, len(dictionary) - 1)
    examples = []
    for index in rng.choice(100_000, size=96, replace=False):
        n = int(rng.integers(4, 40))
        ids = [dictionary.bos()] + rng.choice(words, size=n).tolist() + [dictionary.eos()]
        examples.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "se_scores": rng.gamma(2.0, 2.0, size=len(ids)).tolist(),
                "se_index": int(index),
            }
        )
    examples[0]["se_scores"] = [0.0] * len(examples[0]["input_ids"])  # a threshold fallback
    compared = chosen = 0
    for epoch in (1, 4):
        collator.set_epoch(epoch)
        for start in range(0, len(examples), 16):
            part = examples[start : start + 16]
            tokens, scores = _fairseq_batch(part, dictionary.pad())
            seeds = torch.from_numpy(row_seeds(13, epoch, [ex["se_index"] for ex in part]))
            source, target = masker.mask(tokens, scores, seeds)
            batch = collator(part)
            assert torch.equal(selected(batch), target != dictionary.pad())
            assert torch.equal(batch["input_ids"], source)
            compared += int((tokens != dictionary.pad()).sum())
            chosen += int(selected(batch).sum())
    record_property("positions_compared", compared)
    record_property("positions_selected", chosen)
    assert chosen > 0.1 * compared


def test_random_reproduces_transformers_masking_distribution(bert):
    """select='random' against DataCollatorForLanguageModeling on the same examples:
    per-position selection rates, the share selected, none on special/pad, and the
    80/10/10 replacement shares."""
    examples = hf_examples(bert, 4000, seed=8, min_words=10, max_words=10)
    plain = [{k: v for k, v in ex.items() if not k.startswith("se_")} for ex in examples]
    ours = DataCollatorForSelfEvolution(bert, select="random", seed=1)
    theirs = DataCollatorForLanguageModeling(bert, seed=1)
    stats = {}
    for name, collate, data in (("se", ours, examples), ("hf", theirs, plain)):
        batches = [collate(data[i : i + 200]) for i in range(0, len(data), 200)]
        labels = torch.cat([b["labels"] for b in batches])
        inputs = torch.cat([b["input_ids"] for b in batches])
        chosen = labels != -100
        stats[name] = {
            "rate": chosen[:, 1:11].float().mean(dim=0),  # the 10 words of each example
            "special": int(chosen[:, [0, 11]].sum()),
            "masked": float((inputs[chosen] == bert.mask_token_id).float().mean()),
            "kept": float((inputs[chosen] == labels[chosen]).float().mean()),
            "row_std": float(chosen.sum(dim=1).float().std()),
        }
    for s in stats.values():
        assert s["special"] == 0
        assert torch.allclose(s["rate"], torch.full((10,), 0.15), atol=0.02)  # 4000 draws each
        assert abs(s["masked"] - 0.8) < 0.02 and abs(s["kept"] - 0.1) < 0.02
    assert torch.allclose(stats["se"]["rate"], stats["hf"]["rate"], atol=0.025)
    # independent draws per token: the count per example varies as transformers' does
    assert abs(stats["se"]["row_std"] - stats["hf"]["row_std"]) < 0.1


def test_whole_word_mask_selects_whole_words(bert):
    examples = hf_examples(
        bert, 32, seed=9, return_offsets_mapping=True, words=("university", "school", "the")
    )
    collator = DataCollatorForSelfEvolution(bert, whole_word_mask=True, mlm_probability=0.3)
    batch = collator(examples)
    assert "offset_mapping" not in batch
    for row, ex in enumerate(examples):
        words = ex["offset_mapping"]
        chosen = selected(batch)[row]
        for i in range(2, len(words) - 1):
            if words[i][0] == words[i - 1][1] and words[i][0] != 0:  # a '##' piece
                assert chosen[i] == chosen[i - 1]
    assert selected(batch).any()


def test_bad_input_is_refused_naming_the_column_or_option(bert):
    no_mask = tiny_wordlevel_tokenizer()
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="no mask token"):
        DataCollatorForSelfEvolution(no_mask)
    with pytest.raises(ValueError, match="select must be one of topk, threshold, sample, random"):
        DataCollatorForSelfEvolution(bert, select="top-k")
    examples = hf_examples(bert, 4, seed=10)
    collator = DataCollatorForSelfEvolution(bert)
    no_scores = [dict(ex) for ex in examples]
    del no_scores[2]["se_scores"]
    with pytest.raises(KeyError, match="example 2 has no 'se_scores' column"):
        collator(no_scores)
    short = [dict(ex) for ex in examples]
    short[3]["se_scores"] = short[3]["se_scores"][:-1]
    with pytest.raises(ValueError, match="example 3: .* input_ids but .* 'se_scores'"):
        collator(short)
    no_index = [dict(ex) for ex in examples]
    del no_index[0]["se_index"]
    with pytest.raises(KeyError, match="no 'se_index' column"):
        collator(no_index)
    with pytest.raises(ValueError, match="threshold applies to select='threshold'"):
        DataCollatorForSelfEvolution(bert, threshold=1.0)
    with pytest.raises(ValueError, match="return_tensors"):
        DataCollatorForSelfEvolution(bert, return_tensors="np")
    # random needs no scores
    random_only = [{k: v for k, v in ex.items() if k != "se_scores"} for ex in examples]
    assert selected(DataCollatorForSelfEvolution(bert, select="random")(random_only)).any()


def _tiny_bert_mlm(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return BertForMaskedLM(config)


def test_a_tiny_masked_lm_trains_on_the_batches_unchanged():
    """The batch goes to an AutoModelForMaskedLM as it is (model(**batch)), as
    DataCollatorForLanguageModeling's does: a few optimizer steps lower the loss."""
    tokenizer = tiny_bert_tokenizer()
    model = _tiny_bert_mlm(tokenizer)
    collator = DataCollatorForSelfEvolution(tokenizer, select="topk")
    batch = collator(hf_examples(tokenizer, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_the_epoch_callback_sets_the_collator_epoch_before_each_trainer_epoch(bert):
    from transformers import TrainerControl, TrainerState

    from se_fairseq.hf import SelfEvolutionEpochCallback

    collator = DataCollatorForSelfEvolution(bert)
    callback = SelfEvolutionEpochCallback(collator)
    for state_epoch, expected in ((0.0, 1), (1.0, 2), (1.5, 2), (2.9999999999, 4)):
        callback.on_epoch_begin(None, TrainerState(epoch=state_epoch), TrainerControl())
        assert collator.epoch == expected
    assert collator.epoch_callback().collator is collator


def test_one_trainer_run_with_a_tiny_masked_lm(tmp_path):
    """Two Trainer epochs on CPU (the Trainer needs accelerate: skipped without it)."""
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from se_fairseq.hf import SelfEvolutionEpochCallback

    tokenizer = tiny_bert_tokenizer()
    model = _tiny_bert_mlm(tokenizer)
    raw = [{k: v for k, v in ex.items() if k != "se_index"} for ex in hf_examples(tokenizer, 16)]
    collator = DataCollatorForSelfEvolution(tokenizer, select="topk")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=2,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=with_example_index(raw),
        data_collator=collator,
        callbacks=[SelfEvolutionEpochCallback(collator)],
    )
    result = trainer.train()
    assert trainer.state.global_step == 4 and np.isfinite(result.training_loss)
    assert collator.epoch == 2  # the second Trainer epoch masked as epoch 2


# -- a drop-in: plain tokenized datasets, a plain Trainer -------------------------------


def _content_key(ids):
    """The key of an example without an index, written out: the first 8 bytes of a
    BLAKE2b-64 digest of its ids as little-endian int64, read as an int64."""
    import hashlib

    digest = hashlib.blake2b(np.asarray(ids, dtype="<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def test_without_an_index_masks_are_keyed_on_the_examples_ids(bert):
    """A plain tokenized dataset (no se_index): each example's mask is the masker's on the
    row seed of (seed, epoch, a hash of its ids), wherever it sits in whichever batch."""
    from se_fairseq.core.masking import row_seeds

    raw = [{k: v for k, v in ex.items() if k != "se_index"} for ex in hf_examples(bert, 12, 4)]
    collator = DataCollatorForSelfEvolution(bert, select="sample", seed=5)
    collator.set_epoch(3)
    whole = collator(raw)
    backwards = collator(raw[::-1])
    for i, ex in enumerate(raw):
        n = len(ex["input_ids"])
        assert torch.equal(backwards["labels"][len(raw) - 1 - i, :n], whole["labels"][i, :n])
        seeds = torch.from_numpy(row_seeds(5, 3, [_content_key(ex["input_ids"])]))
        tokens = torch.tensor([ex["input_ids"]])
        scores = torch.tensor([ex["se_scores"]], dtype=torch.float32)
        _, labels = collator.masker.mask(
            tokens, scores, seeds, scored=torch.ones_like(tokens).bool()
        )
        assert torch.equal(labels[0], whole["labels"][i, :n]), i
    collator.set_epoch(4)
    assert not torch.equal(collator(raw)["labels"], whole["labels"])


def test_an_index_on_some_examples_only_is_refused(bert):
    examples = hf_examples(bert, 3)
    del examples[1]["se_index"]
    with pytest.raises(KeyError, match="example 1 of the batch has no 'se_index' column"):
        DataCollatorForSelfEvolution(bert)(examples)


def test_examples_coming_back_without_set_epoch_warn_once(bert):
    """Until set_epoch is called, the collator warns when examples come back (a new epoch
    that would repeat the first one's masks); once called, never."""
    raw = [{k: v for k, v in ex.items() if k != "se_index"} for ex in hf_examples(bert, 40, 2)]
    collator = DataCollatorForSelfEvolution(bert, select="random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for start in range(0, 40, 8):  # the first epoch: every example once
            collator(raw[start : start + 8])
    with pytest.warns(RuntimeWarning, match="set_epoch was never called"):
        for start in range(0, 40, 8):  # the second, without set_epoch
            collator(raw[start : start + 8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collator(raw[:8])  # once only
        indexed = DataCollatorForSelfEvolution(bert, select="random")
        indexed.set_epoch(1)
        for _ in range(3):
            indexed(hf_examples(bert, 8))


def test_an_indexed_example_back_warns_at_once(bert):
    collator = DataCollatorForSelfEvolution(bert, select="random")
    examples = hf_examples(bert, 4)
    collator(examples)
    with pytest.warns(RuntimeWarning, match="set_epoch was never called"):
        collator(examples[:1])


def test_whole_word_mask_defaults_to_the_mask_token_only_as_transformers(bert):
    """transformers 5.24: whole_word_mask=True sets every selected token to [MASK]."""
    from transformers import DataCollatorForLanguageModeling

    with pytest.warns(UserWarning, match="Setting mask_replace_prob to 1"):
        theirs = DataCollatorForLanguageModeling(bert, whole_word_mask=True)
    for select in ("random", "topk"):
        ours = DataCollatorForSelfEvolution(bert, whole_word_mask=True, select=select)
        assert (ours.mask_replace_prob, ours.random_replace_prob) == (
            theirs.mask_replace_prob,
            theirs.random_replace_prob,
        )
    examples = hf_examples(bert, 32, seed=3, return_offsets_mapping=True)
    batch = DataCollatorForSelfEvolution(bert, whole_word_mask=True, select="random")(examples)
    chosen = selected(batch)
    assert chosen.any() and (batch["input_ids"][chosen] == bert.mask_token_id).all()
    # an explicit choice is kept
    kept = DataCollatorForSelfEvolution(bert, whole_word_mask=True, mask_replace_prob=0.8)
    assert kept.mask_replace_prob == 0.8
