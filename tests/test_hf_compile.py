"""The online SE + TLS step under bf16 (CPU autocast) and torch.compile.

- The masker, the selection operator included, compiles as one graph (``fullgraph=True``:
  any graph break is an error) and gives the eager masks bit for bit: the operator has a
  fake (meta) kernel.
- SelfEvolutionTrainer's online step runs under the Trainer's ``bf16=True`` (CPU autocast:
  the forwards in bf16, the scores and the softmax in fp32) and under
  ``torch_compile=True``.
"""

import math
import warnings

import pytest
import torch
from support.hf_models import tiny_bert
from support.hf_tokenizers import hf_examples, tiny_bert_tokenizer

from se_fairseq.core.masking import SelfEvolutionMasker, row_seeds


def _batch(rows=4, length=40, vocab=60):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(5, vocab, (rows, length), generator=g)
    tokens[:, 0] = 0
    tokens[1, 30:] = 1
    return tokens, torch.rand((rows, length), generator=g) * 4


@pytest.mark.slow
@pytest.mark.subprocess  # inductor runs the C++ compiler
@pytest.mark.parametrize(
    "options",
    [
        dict(mode="topk", random_share=0.3),
        dict(mode="threshold", threshold=2.0, threshold_fallback=True),
    ],
    ids=["topk-share", "threshold-fallback"],
)
def test_the_masker_compiles_as_one_graph_with_the_eager_masks(options):
    torch._dynamo.reset()
    masker = SelfEvolutionMasker.for_vocabulary(
        60,
        4,
        [0, 1, 2, 3],
        pad=-100,
        mask_prob=0.3,
        seed=1,
        leave_unmasked_prob=0.1,
        random_token_prob=0.1,
        **options,
    )
    tokens, scores = _batch()
    seeds = torch.from_numpy(row_seeds(1, 2, list(range(len(tokens)))))
    scored = tokens.ne(1)
    eager = masker.mask(tokens, scores, seeds, scored=scored)
    compiled = torch.compile(masker.mask, fullgraph=True)(tokens, scores, seeds, scored=scored)
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])


def _train(tmp_path, **training):
    from transformers import TrainingArguments

    from se_fairseq.hf import (
        DataCollatorForSelfEvolution,
        SelfEvolutionArguments,
        SelfEvolutionTrainer,
    )

    tokenizer = tiny_bert_tokenizer()
    model = tiny_bert(tokenizer)
    se_args = SelfEvolutionArguments(se_online=True)
    collator = DataCollatorForSelfEvolution(
        tokenizer, mlm_probability=0.3, seed=1, **se_args.collator_kwargs()
    )
    args = TrainingArguments(
        str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        **training,
    )
    trainer = SelfEvolutionTrainer(
        model=model,
        args=args,
        data_collator=collator,
        se_args=se_args,
        train_dataset=hf_examples(tokenizer, 24, seed=2),
    )
    seen = []
    step = trainer._mask_online

    def recording(batch, rates=None):
        masked = step(batch, rates)
        seen.append(masked)
        return masked

    trainer._mask_online = recording
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return trainer, losses, seen


@pytest.mark.slow
def test_the_online_step_runs_under_bf16_with_fp32_scores_and_softmax(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the head splits under bf16 too
        trainer, losses, seen = _train(tmp_path, bf16=True)
    assert trainer._head.sparse
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    for batch in seen:
        ref = batch["tls_ref_probs"]
        assert ref.dtype == torch.float32  # the softmax of bf16 logits, taken in fp32
        assert torch.allclose(ref.sum(-1), torch.ones(len(ref)), atol=1e-5)
        assert batch["labels"].ne(-100).any()


@pytest.mark.slow
@pytest.mark.subprocess  # inductor runs the C++ compiler
def test_the_online_step_runs_under_torch_compile(tmp_path):
    torch._dynamo.reset()
    trainer, losses, seen = _train(tmp_path, torch_compile=True)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert len(seen) == 3 and all(b["labels"].ne(-100).any() for b in seen)
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule" or hasattr(
        trainer.model, "_orig_mod"
    )
