"""SE with the transformers Trainer across model families: tiny random configs, each with
a tokenizer of the family's special-token layout built here (no hub):

- BERT (BertForMaskedLM): WordPiece, support.hf_tokenizers.tiny_bert_tokenizer;
- RoBERTa (RobertaForMaskedLM): byte-level BPE, tiny_roberta_tokenizer;
- XLM-R (XLMRobertaForMaskedLM): a tokenizers Unigram model with Metaspace (the shape
  of a SentencePiece model), <s> <pad> </s> <unk> first and <mask> last, as XLM-R's;
- DeBERTa-v2 (DebertaV2ForMaskedLM): the same Unigram kind with [PAD] [CLS] [SEP] [UNK]
  first and [MASK] last, as DeBERTa-v3's;
- ModernBERT (ModernBertForMaskedLM): WordLevel with the specials after the words,
  tiny_wordlevel_tokenizer;
- ELECTRA (ElectraForMaskedLM, the generator) and DistilBERT (DistilBertForMaskedLM):
  WordPiece, tiny_bert_tokenizer.

For each: the collator never selects special tokens or padding (they get the highest
scores); a few offline and online SE steps train (finite loss, weights change); the
trained model saved with save_pretrained reloads with the same logits. The Trainer runs
with remove_unused_columns=True (its default): it drops what the model does not take
(token_type_ids for ModernBERT and DistilBERT) and keeps the collator's columns.
"""

import inspect
import math

import pytest
import torch
import transformers
from support.hf_tokenizers import (
    HF_WORDS,
    hf_examples,
    tiny_bert_tokenizer,
    tiny_roberta_tokenizer,
    tiny_wordlevel_tokenizer,
)
from transformers import AutoModelForMaskedLM, AutoTokenizer, TrainingArguments

from se_fairseq.hf import DataCollatorForSelfEvolution, SelfEvolutionArguments, SelfEvolutionTrainer

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def unigram_tokenizer(specials, cls, sep, pad, unk, mask):
    """A SentencePiece-style tokenizer (tokenizers' Unigram model, Metaspace '▁' word
    starts) with ``specials`` first, the pieces, and ``mask`` last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = {"▁" + w for w in HF_WORDS} | {c for w in HF_WORDS for c in w} | {"▁"}
    vocab = [(s, 0.0) for s in specials]
    vocab += [(p, -float(len(p) < 3)) for p in sorted(pieces)] + [(mask, 0.0)]
    model = Tokenizer(models.Unigram(vocab, unk_id=specials.index(unk)))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    ids = {s: i for i, (s, _) in enumerate(vocab)}
    model.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
    )
    names = dict(cls_token=cls, sep_token=sep, pad_token=pad, unk_token=unk, mask_token=mask)
    if cls == "<s>":
        names.update(bos_token="<s>", eos_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=model, **names)


def xlmr_tokenizer():
    return unigram_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"], "<s>", "</s>", "<pad>", "<unk>", "<mask>"
    )


def deberta_tokenizer():
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    return unigram_tokenizer(specials, "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")


def ids_of(tok):
    return dict(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )


def bert_config(tok):
    return transformers.BertConfig(**SMALL, max_position_embeddings=64, **ids_of(tok))


def roberta_config(tok, cls=transformers.RobertaConfig):
    return cls(**SMALL, max_position_embeddings=66, **ids_of(tok))


def deberta_config(tok):
    return transformers.DebertaV2Config(**SMALL, max_position_embeddings=64, **ids_of(tok))


def modernbert_config(tok):
    return transformers.ModernBertConfig(
        **SMALL,
        max_position_embeddings=64,
        cls_token_id=tok.cls_token_id,
        sep_token_id=tok.sep_token_id,
        **ids_of(tok),
    )


def electra_config(tok):
    return transformers.ElectraConfig(
        **SMALL, embedding_size=16, max_position_embeddings=64, **ids_of(tok)
    )


def distilbert_config(tok):
    return transformers.DistilBertConfig(
        vocab_size=len(tok),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )


FAMILIES = {
    "bert": (tiny_bert_tokenizer, bert_config, transformers.BertForMaskedLM),
    "roberta": (tiny_roberta_tokenizer, roberta_config, transformers.RobertaForMaskedLM),
    "xlm-roberta": (
        xlmr_tokenizer,
        lambda tok: roberta_config(tok, transformers.XLMRobertaConfig),
        transformers.XLMRobertaForMaskedLM,
    ),
    "deberta-v2": (deberta_tokenizer, deberta_config, transformers.DebertaV2ForMaskedLM),
    "modernbert": (tiny_wordlevel_tokenizer, modernbert_config, transformers.ModernBertForMaskedLM),
    "electra": (tiny_bert_tokenizer, electra_config, transformers.ElectraForMaskedLM),
    "distilbert": (tiny_bert_tokenizer, distilbert_config, transformers.DistilBertForMaskedLM),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    make_tokenizer, make_config, model_class = FAMILIES[request.param]
    tokenizer = make_tokenizer()
    return request.param, tokenizer, make_config(tokenizer), model_class


def new_model(config, model_class):
    torch.manual_seed(0)
    return model_class(config)


def test_the_collator_never_selects_special_tokens_or_padding(family):
    _, tokenizer, config, model_class = family
    examples = hf_examples(tokenizer, 16, seed=1)
    special = set(tokenizer.all_special_ids)
    for ex in examples:
        ex["se_scores"] = [
            1e6 if t in special else s for t, s in zip(ex["input_ids"], ex["se_scores"])
        ]
    batch = DataCollatorForSelfEvolution(tokenizer, mlm_probability=0.3)(examples)
    chosen = batch["labels"] != -100
    original = batch["labels"].where(chosen, batch["input_ids"])
    is_special = torch.isin(original, torch.tensor(sorted(special)))
    assert is_special.any() and (batch["attention_mask"] == 0).any()
    assert chosen.any() and not (chosen & (is_special | (batch["attention_mask"] == 0))).any()
    # and the family's model takes the batch (the inputs its forward accepts)
    model = new_model(config, model_class).eval()
    accepted = set(inspect.signature(model.forward).parameters)
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k in accepted})
    assert math.isfinite(out.loss.item()) and out.logits.shape[-1] >= len(tokenizer)


def train(tokenizer, model, path, se_args, examples):
    collator = DataCollatorForSelfEvolution(
        tokenizer, mlm_probability=0.2, seed=1, **se_args.collator_kwargs()
    )
    args = TrainingArguments(
        str(path),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )
    trainer = SelfEvolutionTrainer(
        model=model,
        args=args,
        data_collator=collator,
        se_args=se_args,
        train_dataset=examples,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


@pytest.mark.slow
def test_offline_and_online_se_train_and_the_model_reloads(family, tmp_path):
    name, tokenizer, config, model_class = family
    examples = hf_examples(tokenizer, 24, seed=2)
    model = new_model(config, model_class)
    for se_args in (SelfEvolutionArguments(), SelfEvolutionArguments(se_online=True)):
        before = [p.detach().clone() for p in model.parameters()]
        trainer = train(tokenizer, model, tmp_path / "out", se_args, examples)
        logged = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        final = trainer.state.log_history[-1]["train_loss"]
        assert math.isfinite(final) and all(math.isfinite(x) for x in logged), (name, se_args)
        changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert len(logged) == 3 and changed == len(before), (name, se_args, changed)
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "saved"))
    assert type(reloaded) is model_class
    again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    text = " ".join(HF_WORDS[:12])
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    inputs = {"input_ids": torch.tensor([tokenizer(text)["input_ids"]])}
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, reloaded(**inputs).logits, atol=1e-6)


# -- the sparse LM head against the dense one -------------------------------------------


def se_trainer(tokenizer, model, path, se_args):
    collator = DataCollatorForSelfEvolution(
        tokenizer, mlm_probability=0.3, seed=1, **se_args.collator_kwargs()
    )
    args = TrainingArguments(str(path), report_to=[], use_cpu=True, save_strategy="no")
    return SelfEvolutionTrainer(model=model, args=args, data_collator=collator, se_args=se_args)


def model_inputs(model, batch):
    accepted = set(inspect.signature(model.forward).parameters)
    return {k: v for k, v in batch.items() if k in accepted or k.startswith("se_online")}


def test_the_head_splits_at_its_projection_and_gives_the_models_logits(family):
    """Every family's head is split (not run densely), and the projection of the split
    features is the model's own logits at every position."""
    from se_fairseq.core.scores import head_logits
    from se_fairseq.hf.heads import SplitHead, head_of

    name, tokenizer, config, model_class = family
    model = new_model(config, model_class).eval()
    batch = DataCollatorForSelfEvolution(tokenizer, select="random")(hf_examples(tokenizer, 6))
    inputs = model_inputs(model, batch)
    inputs.pop("labels")
    head = head_of(model, inputs)
    assert isinstance(head, SplitHead), name
    with torch.no_grad():
        dense = model(**inputs).logits
        split = head_logits(head.head, head.features(model, inputs))
    assert split.shape == dense.shape
    torch.testing.assert_close(split, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_sparse_and_dense_heads_give_the_same_step(family, tmp_path, online):
    """The same batch through the trainer with the split head and with full logits: the
    same online selection, p_ref, loss and gradients, to float rounding."""
    name, tokenizer, config, model_class = family
    examples = hf_examples(tokenizer, 8, seed=3)
    results = {}
    for sparse in (True, False):
        model = new_model(config, model_class).train()
        se_args = SelfEvolutionArguments(se_online=online, se_sparse_head=sparse)
        trainer = se_trainer(tokenizer, model, tmp_path / str(sparse), se_args)
        if online:
            batch = trainer.se_collator.pad_unmasked(
                [dict(ex, se_index=i) for i, ex in enumerate(examples)]
            )
            batch = trainer._mask_online(model_inputs(model, batch))
        else:
            batch = model_inputs(model, trainer.se_collator(examples))
        ref = batch.get("tls_ref_probs")
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[sparse] = (batch["input_ids"], batch["labels"], ref, loss.detach(), grads)
    (ids, labels, ref, loss, grads), (dids, dlabels, dref, dloss, dgrads) = (
        results[True],
        results[False],
    )
    assert torch.equal(ids, dids) and torch.equal(labels, dlabels), name
    if online:
        torch.testing.assert_close(ref, dref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, dloss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == dgrads.keys()
    for key in grads:
        torch.testing.assert_close(grads[key], dgrads[key], rtol=1e-4, atol=1e-6, msg=key)


def test_a_head_that_cannot_be_split_runs_densely_with_one_warning(tmp_path):
    """DeBERTa-v2's non-legacy head multiplies by the word embeddings itself (its
    get_output_embeddings() is a hidden x hidden dense layer): it is run densely."""
    from se_fairseq.hf import heads

    tokenizer = deberta_tokenizer()
    config = deberta_config(tokenizer)
    config.legacy = False
    model = new_model(config, transformers.DebertaV2ForMaskedLM).eval()
    batch = DataCollatorForSelfEvolution(tokenizer, select="random")(hf_examples(tokenizer, 4))
    inputs = model_inputs(model, batch)
    inputs.pop("labels")
    heads._warned.discard("DebertaV2ForMaskedLM")
    with pytest.warns(RuntimeWarning, match="DebertaV2ForMaskedLM cannot be split"):
        head = heads.head_of(model, inputs)
    assert isinstance(head, heads.DenseHead)
    with torch.no_grad():
        assert torch.equal(head.features(model, inputs), model(**inputs).logits)


# -- packed batches ---------------------------------------------------------------------

# families whose attention honours a block-diagonal 4D mask and given position ids
PACKS = ("bert", "roberta", "xlm-roberta", "modernbert", "electra", "distilbert")


def test_packed_examples_equal_their_standalone_runs_or_packing_is_refused(family):
    """Each example of a packed row (the collator's layout: position ids restarting, from
    padding_idx + 1 for RoBERTa-like models, and a block-diagonal mask) gets the logits it
    gets alone; a family that cannot keep them apart is refused by check_packing."""
    from se_fairseq.hf.packed import PackingError, check_packing, position_offset_of

    name, tokenizer, config, model_class = family
    model = new_model(config, model_class).eval()
    offset = position_offset_of(model)
    assert offset == (config.pad_token_id + 1 if name in ("roberta", "xlm-roberta") else 0)
    examples = hf_examples(tokenizer, 4, seed=8)
    collator = DataCollatorForSelfEvolution(
        tokenizer, select="random", packing=True, position_offset=offset
    )
    batch = model_inputs(model, collator(examples))
    batch.pop("labels")
    if name not in PACKS:
        with pytest.raises(PackingError, match=type(model).__name__):
            check_packing(model, batch, offset)
        return
    check_packing(model, batch, offset)
    with torch.no_grad():
        together = model(**batch).logits[0]
        start = 0
        for ex in examples:
            n = len(ex["input_ids"])
            alone = model_inputs(model, {"input_ids": batch["input_ids"][:, start : start + n]})
            got, want = together[start : start + n], model(**alone).logits[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
            start += n
