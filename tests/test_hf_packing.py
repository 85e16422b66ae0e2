"""Packed, padding-free batches: the collator's layout, masks equal to the padded path's,
and the trainer's online and scheduled steps on packed rows.

References: the layout written out by hand for three examples; the padded collator's own
masks (right padding) for the same examples and seeds; per-family isolation of packed
examples is in tests/test_hf_families.py.
"""

import pytest
import torch
from support.hf_models import tiny_bert
from support.hf_tokenizers import hf_examples, tiny_bert_tokenizer

from se_fairseq.core.packing import Packing
from se_fairseq.hf import DataCollatorForSelfEvolution, SelfEvolutionArguments


def test_the_layout_of_three_examples_written_out():
    packing = Packing.of_lengths([3, 1, 2])
    assert packing.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert packing.position_ids().tolist() == [[0, 1, 2, 0, 0, 1]]
    assert packing.position_ids(2).tolist() == [[2, 3, 4, 2, 2, 3]]
    packed = torch.tensor([[10, 11, 12, 20, 30, 31]])
    rows = packing.rows(packed, -1)
    assert rows.tolist() == [[10, 11, 12], [20, -1, -1], [30, 31, -1]]
    assert torch.equal(packing.flat(rows), packed)
    block = packing.block_mask()[0, 0].int().tolist()
    assert block == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ]


@pytest.fixture(scope="module")
def bert():
    return tiny_bert_tokenizer()


def _spans(padded, examples):
    """The padded batch's rows cut to their examples and put end to end."""
    return torch.cat([padded[r, : len(ex["input_ids"])] for r, ex in enumerate(examples)])


@pytest.mark.parametrize(
    "options",
    [
        dict(select="topk"),
        dict(select="sample", temperature=0.5, random_share=0.25),
        dict(select="random"),
        dict(select="threshold", threshold=4.0),
    ],
    ids=["topk", "sample-share", "random", "threshold"],
)
def test_packed_masks_equal_the_padded_ones(bert, options):
    """Same examples, seed and epoch: the packed row holds exactly the padded batch's masked
    ids and labels, example after example, and the same budget per example."""
    examples = hf_examples(bert, 12, seed=4)
    padded = DataCollatorForSelfEvolution(bert, mlm_probability=0.3, seed=9, **options)
    packed = DataCollatorForSelfEvolution(
        bert, mlm_probability=0.3, seed=9, packing=True, **options
    )
    for epoch in (1, 3):
        padded.set_epoch(epoch)
        packed.set_epoch(epoch)
        want = padded(examples)
        got = packed(examples)
        assert got["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
        assert torch.equal(got["input_ids"][0], _spans(want["input_ids"], examples))
        assert torch.equal(got["labels"][0], _spans(want["labels"], examples))
        assert got["attention_mask"].shape[:2] == (1, 1) and "_cu_seqlens" not in got
        starts = got["position_ids"][0].eq(0).nonzero().flatten().tolist()
        assert (
            starts
            == Packing.of_lengths([len(e["input_ids"]) for e in examples]).cu_seqlens[:-1].tolist()
        )


def test_flash_layout_gives_cu_seq_lens_and_no_mask(bert):
    examples = hf_examples(bert, 3, seed=1)
    lengths = [len(e["input_ids"]) for e in examples]
    batch = DataCollatorForSelfEvolution(
        bert, select="random", packing=True, packed_attention="flash"
    )(examples)
    assert "attention_mask" not in batch
    cu = [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == cu
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
    with pytest.raises(ValueError, match="packed_attention must be one of mask, flash"):
        DataCollatorForSelfEvolution(bert, packing=True, packed_attention="varlen")


def _trainer(tmp_path, tokenizer, se_args, packing):
    from transformers import TrainingArguments

    from se_fairseq.hf import SelfEvolutionTrainer

    model = tiny_bert(tokenizer, dropout=0.0)
    collator = DataCollatorForSelfEvolution(
        tokenizer, mlm_probability=0.3, seed=4, packing=packing, **se_args.collator_kwargs()
    )
    args = TrainingArguments(
        str(tmp_path / str(packing)), report_to=[], use_cpu=True, save_strategy="no", max_steps=4
    )
    trainer = SelfEvolutionTrainer(model=model, args=args, data_collator=collator, se_args=se_args)
    trainer.state.max_steps = 4
    return trainer, model


@pytest.mark.parametrize(
    "se_args",
    [
        SelfEvolutionArguments(se_online=True),
        SelfEvolutionArguments(se_mask_prob_schedule="linear:0.3,0.1"),
        SelfEvolutionArguments(se_online=True, se_mask_prob_schedule="steps:0.3,0.15@0.5"),
    ],
    ids=["online", "scheduled", "online-scheduled"],
)
def test_the_trainer_masks_a_packed_batch_as_the_padded_one(bert, tmp_path, se_args):
    """The online step and the scheduled step on a packed row: the same selections as on
    the padded batch (the encoder sees each example alone either way), p_ref and the loss
    to float rounding."""
    examples = [dict(e, se_index=i) for i, e in enumerate(hf_examples(bert, 8, seed=6))]
    results = {}
    for packing in (False, True):
        trainer, model = _trainer(tmp_path, bert, se_args, packing)
        trainer.state.global_step = 2
        batch = trainer.data_collator(examples)
        batches, count = trainer.get_batch_samples(iter([batch]), 1, "cpu")
        masked = batches[0]
        loss = trainer.compute_loss(model, dict(masked), num_items_in_batch=count)
        results[packing] = (masked, loss.detach(), int(count))
    padded, packed = results[False][0], results[True][0]
    assert torch.equal(packed["input_ids"][0], _spans(padded["input_ids"], examples))
    assert torch.equal(packed["labels"][0], _spans(padded["labels"], examples))
    assert results[False][2] == results[True][2]
    if "tls_ref_probs" in padded:
        torch.testing.assert_close(
            packed["tls_ref_probs"], padded["tls_ref_probs"], rtol=1e-4, atol=1e-6
        )
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-4, atol=1e-6)
