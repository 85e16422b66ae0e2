"""se-score and se-bench flags through the commands' own argument parsing (in-process
``main``), each against an independent computation of what the flag means."""

import math
import os
import re
import shutil

import numpy as np
import pytest
import torch

from se_fairseq.checkpoint_safety import safe_load
from se_fairseq.cli import score
from se_fairseq.data.score_file import ScoreFile


@pytest.fixture
def data(corpus, tmp_path):
    return str(shutil.copytree(corpus, tmp_path / "data-bin"))


def dense_scores(ckpt, data, split, metric, tokens_per_sample, break_mode="none"):
    """fairseq's own loader and blocking, full logits at every position, float64 softmax."""
    from fairseq import checkpoint_utils
    from fairseq.data import PrependTokenDataset, TokenBlockDataset, data_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [ckpt], arg_overrides={"data": data}
    )
    model = models[0].eval()
    d = task.source_dictionary
    tokens = data_utils.load_indexed_dataset(os.path.join(data, split), d)
    blocks = TokenBlockDataset(
        tokens, tokens.sizes, tokens_per_sample - 1, pad=d.pad(), eos=d.eos(), break_mode=break_mode
    )
    items = PrependTokenDataset(blocks, d.bos())
    out = np.zeros(int(tokens.sizes.sum()))
    with torch.no_grad():
        for first in range(0, len(items), 64):
            index = range(first, min(first + 64, len(items)))
            src = data_utils.collate_tokens([items[b] for b in index], d.pad())
            lprobs = torch.log_softmax(model(src)[0].double(), dim=-1)
            if metric == "correctness":
                s = -lprobs.gather(-1, src.unsqueeze(-1)).squeeze(-1)
            else:
                s = -(lprobs.exp() * lprobs).sum(-1)
            for row, b in enumerate(index):
                start, end = blocks.slice_indices[b]
                out[start:end] = s[row, 1 : 1 + end - start].numpy()
    return out, len(items)


def se_score(*argv):
    assert score.main([str(a) for a in argv] + ["--no-progress-bar"]) == 0


def test_tokens_per_sample_sets_the_blocking(untrained_checkpoint, data):
    """--tokens-per-sample 17 (the checkpoint trained on 64): 17-token blocks, recorded."""
    se_score(data, "--path", untrained_checkpoint, "--tokens-per-sample", 17)
    split = os.path.join(data, "train")
    loaded = ScoreFile(split + ".se_scores", split)
    assert loaded.meta["blocking"]["tokens_per_sample"] == 17
    expected, _ = dense_scores(untrained_checkpoint, data, "train", "correctness", 17)
    other, _ = dense_scores(untrained_checkpoint, data, "train", "correctness", 64)
    np.testing.assert_allclose(loaded.scores.astype(np.float64), expected, rtol=2e-3, atol=2e-3)
    assert np.abs(expected - other).max() > 0.05  # the blocking changes the scores


def test_model_metric_on_another_split(untrained_checkpoint, data):
    """--split valid --metric confidence: valid.se_scores holds the entropies of valid."""
    se_score(data, "--path", untrained_checkpoint, "--split", "valid", "--metric", "confidence")
    split = os.path.join(data, "valid")
    loaded = ScoreFile(split + ".se_scores", split)
    assert loaded.metric == "confidence"
    assert not os.path.exists(os.path.join(data, "train.se_scores.npy"))
    expected, _ = dense_scores(untrained_checkpoint, data, "valid", "confidence", 64)
    np.testing.assert_allclose(loaded.scores.astype(np.float64), expected, rtol=2e-3, atol=2e-3)


def test_bf16_on_cpu_scores_in_bfloat16(untrained_checkpoint, data, tmp_path):
    """--bf16 runs the model in bfloat16: the scores move by bf16 rounding (about 1 %, far
    above the float16 storage step) and no more. The random model's embeddings (tied to the
    LM head) are scaled up so that its logits spread and the scores differ by token."""
    state = safe_load(untrained_checkpoint)
    for key, value in state["model"].items():
        if key.endswith("embed_tokens.weight"):
            value.mul_(40)
    ckpt = str(tmp_path / "sharp.pt")
    torch.save(state, ckpt)
    se_score(data, "--path", ckpt, "--out", tmp_path / "fp32", "--cpu")
    se_score(data, "--path", ckpt, "--out", tmp_path / "bf16", "--cpu", "--bf16")
    split = os.path.join(data, "train")
    fp32 = ScoreFile(str(tmp_path / "fp32"), split).scores.astype(np.float64)
    bf16 = ScoreFile(str(tmp_path / "bf16"), split).scores.astype(np.float64)
    relative = np.abs(bf16 - fp32) / np.maximum(fp32, 1e-3)
    assert 1e-3 < np.median(relative) and relative.max() < 0.1
    assert np.mean(relative > 0) > 0.9  # identical forwards would store identical float16


def test_fp16_on_cpu_is_refused(untrained_checkpoint, data):
    with pytest.raises(SystemExit, match="fp16 needs a CUDA device"):
        score.main([data, "--path", untrained_checkpoint, "--cpu", "--fp16", "--no-progress-bar"])
    assert not os.path.exists(os.path.join(data, "train.se_scores.npy"))


@pytest.mark.parametrize(
    "flags", [["--fp16", "--bf16"], ["--max-tokens", "64", "--batch-size", "2"]]
)
def test_exclusive_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as err:
        score.build_parser().parse_args(["data", *flags])
    assert err.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_lm_head_chunks_past_the_logits_budget_give_the_one_chunk_scores(
    untrained_checkpoint, monkeypatch
):
    """A budget of 7 positions' logits forces many LM-head chunks (and drops kept logits):
    the scores equal the single-chunk ones; the logits the caller keeps are exact."""
    from fairseq import checkpoint_utils

    from se_fairseq import scoring
    from se_fairseq.core import scores as core_scores

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([untrained_checkpoint])
    model = models[0].eval()
    vocab = scoring.vocab_size(model)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, vocab - 1, (5, 30), generator=g)
    tokens[:, 0] = 0
    tokens[2, 20:] = 1  # padding
    with torch.no_grad():
        features, _ = model(tokens, features_only=True)
    calls = []
    original = model.encoder.output_layer

    def counting(x, *args, **kwargs):
        calls.append(x.size(0))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(model.encoder, "output_layer", counting)
    for metric in ("correctness", "confidence"):
        calls.clear()
        one, logits = scoring.score_features(model, features, tokens, 1, metric, keep_logits=True)
        assert calls == [int(tokens.ne(1).sum())] and logits is not None
        monkeypatch.setattr(core_scores, "LOGITS_BUDGET", 7 * vocab)
        calls.clear()
        many, dropped = scoring.score_features(model, features, tokens, 1, metric, keep_logits=True)
        monkeypatch.setattr(core_scores, "LOGITS_BUDGET", 1 << 25)
        assert len(calls) == math.ceil(int(tokens.ne(1).sum()) / 7) and max(calls) == 7
        assert dropped is None  # over budget: the caller recomputes what it needs
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-5)
        assert (many[tokens.eq(1)] == 0).all() and (many[tokens.ne(1)] > 0).all()
        lprobs = torch.log_softmax(logits.double(), -1)
        flat = tokens[tokens.ne(1)]
        want = core_scores.token_scores_from_lprobs(lprobs, flat, metric)
        torch.testing.assert_close(one[tokens.ne(1)].double(), want, rtol=1e-5, atol=1e-5)


def test_online_masking_past_the_logits_budget(corpus, monkeypatch):
    """--se-online when the batch's logits exceed the budget: the reference distribution is
    recomputed at the selected positions and equals the one kept under the budget."""
    from support.fairseq_data import TINY_ROBERTA, setup_task

    from se_fairseq import scoring
    from se_fairseq.core import scores as core_scores

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
        "--dropout",
        "0",
    )
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    batch = next(
        iter(
            task.get_batch_iterator(
                task.dataset("train"), max_sentences=8, seed=5, num_workers=0
            ).next_epoch_itr(shuffle=False)
        )
    )
    kept = task.mask_online(batch, model, criterion)
    monkeypatch.setattr(core_scores, "LOGITS_BUDGET", 5 * scoring.vocab_size(model))
    recomputed = task.mask_online(batch, model, criterion)
    assert torch.equal(kept["target"], recomputed["target"])
    torch.testing.assert_close(
        recomputed["tls_ref_probs"], kept["tls_ref_probs"], rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------- se-bench


def se_bench(capsys, *argv):
    from se_fairseq.cli import bench

    threads = torch.get_num_threads()
    try:
        bench.cli_main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)  # se-bench pins one thread for itself
    return capsys.readouterr().out


def round_lines(out):
    return re.findall(r"^round \d+/\d+ (\S+).*?(\d+) batches", out, flags=re.M)


def test_se_bench_baseline_task_max_batches_and_split(scored_corpus, capsys):
    common = [
        scored_corpus,
        "--task",
        "se_mlm",
        "--se-select",
        "topk",
        "--tokens-per-sample",
        64,
        "--batch-size",
        8,
        "--num-workers",
        0,
        "--rounds",
        1,
    ]
    out = se_bench(capsys, *common, "--baseline-task", "se_mlm", "--max-batches", 3)
    assert "se_mlm (baseline)" in out and "masked_lm" not in out
    assert [b for _, b in round_lines(out)] == ["3", "3"]
    valid = se_bench(capsys, *common, "--split", "valid")
    assert "masked_lm (baseline)" in valid
    batches = {split: fairseq_batches(scored_corpus, split) for split in ("train", "valid")}
    assert batches["train"] != batches["valid"]
    assert [int(b) for _, b in round_lines(valid)] == [batches["valid"]] * 2


def fairseq_batches(data, split):
    """Batches of one epoch of ``split`` by fairseq's own masked_lm task and batching."""
    from support.fairseq_data import TINY_ROBERTA, setup_task

    task, _ = setup_task(data, *TINY_ROBERTA, "--task", "masked_lm", "--criterion", "masked_lm")
    task.load_dataset(split)
    return len(
        task.get_batch_iterator(
            task.dataset(split),
            max_sentences=8,
            max_positions=task.max_positions(),
            ignore_invalid_inputs=True,
            required_batch_size_multiple=8,
        )
    )  # fairseq-train default
