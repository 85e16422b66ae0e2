"""se-score's scores are bit for bit those of the algorithm it had before issue 24 (CPU, fp32).

The reference is the frozen copy of the batched algorithm in tests/support/frozen.py (same
batches, same padding), for fixed-size blocks (``--sample-break-mode none``) and blocks of
different lengths (``complete``). Both tests also compare with an independent plain loop,
one forward per block alone, to rounding: whether batching changes the last bit of an fp32
value depends on the CPU's matrix kernels and on padding. In both tests the score file's
fp16 array and the fp32 values must equal the frozen reference exactly (torch.equal).
"""

import os
import shutil

import numpy as np
import pytest
import torch
from support.frozen import frozen_batched_scores

from se_fairseq.scoring_job import ScoringJob, score_corpus

pytestmark = pytest.mark.slow  # 5 to 20 s each on the 2-core machine


@pytest.fixture
def data(corpus, tmp_path):
    return str(shutil.copytree(corpus, tmp_path / "data-bin"))


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    """Random weights and a non-zero LM-head bias, as a trained head has (fairseq starts it
    at zero, which would hide a bias added wrongly or not at all)."""
    from support.fairseq_data import TINY_ROBERTA, save_untrained_checkpoint

    path = str(tmp_path_factory.mktemp("biased") / "checkpoint.pt")
    return save_untrained_checkpoint(corpus, path, TINY_ROBERTA, head_bias_std=1.0)


def fairseq_blocks(ckpt, data, break_mode, tokens_per_sample=64):
    from fairseq import checkpoint_utils
    from fairseq.data import PrependTokenDataset, TokenBlockDataset, data_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [ckpt], arg_overrides={"data": data}
    )
    d = task.source_dictionary
    tokens = data_utils.load_indexed_dataset(os.path.join(data, "train"), d)
    blocks = TokenBlockDataset(
        tokens,
        tokens.sizes,
        tokens_per_sample - 1,
        pad=d.pad(),
        eos=d.eos(),
        break_mode=break_mode,
    )
    return models[0].eval(), PrependTokenDataset(blocks, d.bos()), blocks, d.pad()


def per_block_scores(model, items, blocks, metric, max_positions=64):
    """A plain loop: each block alone through the model, log-softmax, gather (fp32)."""
    out = np.zeros(int(np.asarray(blocks.slice_indices)[:, 1].max()), dtype=np.float32)
    with torch.no_grad():
        for b in range(len(items)):
            src = items[b].unsqueeze(0)
            if src.size(1) > max_positions:
                continue
            features, _ = model(src, features_only=True)
            logits = model.encoder.output_layer(features[0]).float()
            if metric == "correctness":
                s = torch.logsumexp(logits, -1) - logits.gather(-1, src[0].unsqueeze(-1))[:, 0]
            else:
                lprobs = torch.log_softmax(logits, -1)
                s = -(lprobs.exp() * lprobs).sum(-1)
            start, end = blocks.slice_indices[b]
            out[start:end] = s[1:].numpy()
    return out


def scored(data, ckpt, tmp_path, **options):
    result = score_corpus(data, ckpt, out=str(tmp_path / "s"), **options)
    assert result.complete
    return torch.from_numpy(np.load(result.array_path, allow_pickle=False))


@pytest.mark.parametrize("metric", ["correctness", "confidence"])
def test_fixed_blocks_equal_the_frozen_algorithm_and_one_forward_per_block(
    checkpoint, data, tmp_path, metric, monkeypatch
):
    from se_fairseq.core import scores

    monkeypatch.setattr(scores, "SCORE_ELEMENTS", 3 * 209)  # softmax pieces of 3 rows
    model, items, blocks, pad = fairseq_blocks(checkpoint, data, "none")
    job = ScoringJob(data, checkpoint, metric=metric, chunk_tokens=1000)
    expected = frozen_batched_scores(
        model, items, job.slices, job.too_long, job.chunks, pad, metric
    )
    got = scored(data, checkpoint, tmp_path, metric=metric, chunk_tokens=1000)
    assert got.dtype == torch.float16 and len(got) == len(expected)
    assert torch.equal(got, torch.from_numpy(expected.astype(np.float16)))
    fp32 = np.concatenate([job.chunk_scores(i) for i in range(len(job.chunks))])
    assert torch.equal(torch.from_numpy(fp32), torch.from_numpy(expected))
    # The independent reference: each block alone. Whether a batch of blocks gives the same
    # fp32 bits as single blocks depends on the CPU's matrix kernels (on one development
    # machine all of them; on an AVX2 one, 1 value in 6,405 differs by 1 ulp), so: close.
    single = per_block_scores(model, items, blocks, metric)
    np.testing.assert_allclose(fp32, single, rtol=1e-6, atol=0)


@pytest.mark.parametrize("metric", ["correctness", "confidence"])
@pytest.mark.parametrize("max_tokens", [512, 16384])
def test_padded_blocks_equal_the_frozen_batched_algorithm(
    checkpoint, data, tmp_path, metric, max_tokens
):
    model, items, blocks, pad = fairseq_blocks(checkpoint, data, "complete")
    options = dict(metric=metric, sample_break_mode="complete", max_tokens=max_tokens)
    job = ScoringJob(data, checkpoint, chunk_tokens=1000, **options)
    expected = frozen_batched_scores(
        model, items, job.slices, job.too_long, job.chunks, pad, metric, max_tokens
    )
    padded = (job.slices[:, 1] - job.slices[:, 0]).min() < 63  # the case is the padded one
    assert padded
    got = scored(data, checkpoint, tmp_path, chunk_tokens=1000, **options)
    assert torch.equal(got, torch.from_numpy(expected.astype(np.float16)))
    fp32 = np.concatenate([job.chunk_scores(i) for i in range(len(job.chunks))])
    assert torch.equal(torch.from_numpy(fp32), torch.from_numpy(expected))
    single = per_block_scores(model, items, blocks, metric)  # and close to unpadded forwards
    np.testing.assert_allclose(fp32, single, rtol=0, atol=1e-5)
