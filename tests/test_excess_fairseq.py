"""Excess-loss selection (Rho-1) on the fairseq side, against a dense float64 formula.

Two tiny RoBERTa checkpoints with different random weights: the live model and a frozen
reference. Online (``--se-online --se-metric excess --se-reference``) the task's step masks
the per-row top-k of CE_live - CE_ref, each from the model's own eval-mode forward; offline
(``se-score --metric excess --reference``) every token's score is that difference, and the
score file records both checkpoints. The refusals name the option or the files.
"""

import pytest

pytest.importorskip("fairseq", reason="the fairseq side: pip install 'se-fairseq[fairseq]'")

import hashlib
import json
import os
import shutil

import numpy as np
import torch
from support.fairseq_data import (
    NO_DROPOUT,
    TINY_ROBERTA,
    fairseq_train,
    make_task,
    save_untrained_checkpoint,
    setup_task,
)

from se_fairseq.checkpoint_safety import safe_load
from se_fairseq.cli import score
from se_fairseq.core.constants import ONLINE_SEEDS, REF_PROBS
from se_fairseq.data.score_file import ScoreFile
from se_fairseq.ops.reference import rounded_count
from se_fairseq.scoring_job import ScoringError, score_corpus
from se_fairseq.tasks.se_mlm_config import SelfEvolutionConfigError

pytestmark = pytest.mark.fairseq


@pytest.fixture(scope="module")
def checkpoints(corpus, tmp_path_factory):
    """(live, reference): tiny RoBERTas over the corpus's dictionary, different random
    weights (and LM-head biases), dropout 0.1 in their configuration (eval mode matters)."""
    root = tmp_path_factory.mktemp("excess")
    return tuple(
        save_untrained_checkpoint(
            corpus, str(root / f"{name}.pt"), TINY_ROBERTA, seed=seed, head_bias_std=0.5
        )
        for name, seed in (("live", 11), ("reference", 12))
    )


@pytest.fixture(scope="module")
def other_dictionary_checkpoint(tmp_path_factory):
    """A tiny RoBERTa over a 50-word dictionary (the corpus has 200 words)."""
    root = tmp_path_factory.mktemp("other-dict")
    with open(root / "dict.txt", "w") as f:
        f.writelines(f"x{i} {50 - i}\n" for i in range(50))
    return save_untrained_checkpoint(str(root), str(root / "other.pt"), TINY_ROBERTA, seed=1)


@pytest.fixture
def data(corpus, tmp_path):
    return str(shutil.copytree(corpus, tmp_path / "data-bin"))


def load(ckpt, data):
    """fairseq's own loader, in eval mode."""
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [ckpt], arg_overrides={"data": data}
    )
    return models[0].eval(), task


def dense_correctness(model, tokens):
    """-log p(x_i | x) of every position, float64 log-softmax of the full logits of the
    model's eval-mode forward."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        lprobs = torch.log_softmax(model(tokens)[0].double(), dim=-1)
    model.train(was_training)
    return -lprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def online(data, *extra, live=None):
    """(task, live model, criterion) of --se-online --se-metric excess ``extra``; the live
    model holds checkpoint ``live``'s weights when given."""
    task, cfg = setup_task(
        data,
        *TINY_ROBERTA,
        "--cpu",
        "--seed",
        "5",
        "--task",
        "se_mlm",
        "--se-online",
        "--se-metric",
        "excess",
        "--criterion",
        "token_ls",
        "--optimizer",
        "adam",
        "--lr",
        "1e-2",
        *extra,
    )
    model = task.build_model(cfg.model)
    if live is not None:
        model.load_state_dict(safe_load(live)["model"])
    return task, model, task.build_criterion(cfg.criterion), cfg


def first_batch(task, batch_size=8):
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        task.dataset("train"), max_sentences=batch_size, seed=5, num_workers=0
    ).next_epoch_itr(shuffle=True)
    return next(iter(itr))


def topk_reference(scores, eligible, seeds, mask_prob):
    """The masker's top-k written out: each row's k = floor(p n + u) highest eligible."""
    count = rounded_count(mask_prob, eligible.sum(1).numpy(), seeds.numpy().view("uint64"))
    chosen = torch.zeros_like(eligible)
    for r in range(len(scores)):
        ranked = scores[r].masked_fill(~eligible[r], float("-inf")).argsort(descending=True)
        chosen[r, ranked[: int(count[r])]] = True
    return chosen, count


# ------------------------------------------------------------------------ online


@pytest.mark.parametrize("mask_prob", ["0.15", "0.4"])
def test_online_step_masks_the_top_k_of_live_minus_reference_loss(corpus, checkpoints, mask_prob):
    live, ref = checkpoints
    task, model, criterion, _ = online(
        corpus, "--se-reference", ref, "--mask-prob", mask_prob, live=live
    )
    model.train()  # as in training: the step scores in eval mode, then restores it
    batch = first_batch(task)
    tokens = batch["net_input"]["src_tokens"]
    masked = task.mask_online(batch, model, criterion)
    assert model.training

    reference, _ = load(ref, corpus)
    excess = dense_correctness(model, tokens) - dense_correctness(reference, tokens)
    d = task.source_dictionary
    eligible = tokens.ge(d.nspecial) & tokens.ne(task.mask_idx)
    want, count = topk_reference(excess.float(), eligible, batch[ONLINE_SEEDS], float(mask_prob))
    selected = masked["target"].ne(d.pad())
    assert count.sum() > 20 and torch.equal(selected, want)
    assert torch.equal(masked["target"][selected], tokens[selected])
    assert (masked["net_input"]["src_tokens"][selected] == task.mask_idx).all()
    # not the live model's own top-k: the reference changes what is selected
    alone, _ = topk_reference(
        dense_correctness(model, tokens).float(), eligible, batch[ONLINE_SEEDS], float(mask_prob)
    )
    assert not torch.equal(alone, want)
    # p_ref is the live model's softmax (eval mode) at the selected positions
    model.eval()
    with torch.no_grad():
        p_live = torch.softmax(model(tokens)[0].double(), -1)[selected]
    torch.testing.assert_close(masked[REF_PROBS].double(), p_live, rtol=1e-4, atol=1e-6)


def test_the_reference_is_frozen_outside_the_model_and_its_optimizer(corpus, checkpoints):
    """Train steps change the live model, never the reference: it stays in eval mode with
    no gradient, holds the checkpoint's weights, and is no parameter of the live model."""
    from fairseq.optim import build_optimizer

    live, ref = checkpoints
    task, model, criterion, cfg = online(corpus, "--se-reference", ref, live=live)
    optimizer = build_optimizer(cfg.optimizer, list(model.parameters()))
    batch = first_batch(task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for update in range(3):
        task.train_step(batch, model, criterion, optimizer, update_num=update)
        optimizer.step()
        optimizer.zero_grad()
    reference = task.reference_model()
    assert reference is not None and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    saved = safe_load(ref)["model"]
    state = reference.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    ours = {id(p) for p in model.parameters()}
    assert not any(id(p) in ours for p in reference.parameters())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the live model trained


def test_the_reference_follows_the_live_models_dtype(corpus, checkpoints):
    live, ref = checkpoints
    task, model, criterion, _ = online(corpus, "--se-reference", ref, live=live)
    batch = first_batch(task)
    model = model.to(torch.bfloat16)
    masked = task.mask_online(batch, model, criterion)
    assert next(task.reference_model().parameters()).dtype == torch.bfloat16
    assert masked["target"].ne(task.source_dictionary.pad()).any()


# ----------------------------------------------------------------------- offline


def dense_excess(live, ref, data):
    """Every token's CE_live - CE_ref in float64, one block at a time (the checkpoint's
    blocking: 64 tokens with <s>, break mode none)."""
    from fairseq.data import PrependTokenDataset, TokenBlockDataset, data_utils

    live_model, task = load(live, data)
    ref_model, _ = load(ref, data)
    d = task.source_dictionary
    tokens = data_utils.load_indexed_dataset(os.path.join(data, "train"), d)
    blocks = TokenBlockDataset(
        tokens, tokens.sizes, 63, pad=d.pad(), eos=d.eos(), break_mode="none"
    )
    items = PrependTokenDataset(blocks, d.bos())
    out = np.zeros(int(tokens.sizes.sum()))
    for b in range(len(items)):
        src = items[b].unsqueeze(0)
        excess = dense_correctness(live_model, src) - dense_correctness(ref_model, src)
        start, end = blocks.slice_indices[b]
        out[start:end] = excess[0, 1:].numpy()
    return out


def record(path):
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": digest}


def test_se_score_excess_writes_live_minus_reference_loss_and_both_checkpoints(data, checkpoints):
    live, ref = checkpoints
    argv = [data, "--path", live, "--metric", "excess", "--reference", ref, "--max-tokens", "512"]
    assert score.main([*argv, "--no-progress-bar"]) == 0
    split = os.path.join(data, "train")
    scores = ScoreFile(split + ".se_scores", split)
    assert scores.metric == "excess"
    assert scores.meta["checkpoint"] == record(live)
    assert scores.meta["reference_checkpoint"] == record(ref)
    want = dense_excess(live, ref, data)
    got = np.asarray(scores.scores, dtype=np.float64)
    # the file holds fp16: half an ulp of the value, plus the fp32 computation's own error
    assert np.all(np.abs(got - want) <= 2.0**-11 * np.abs(want) + 1e-5), np.abs(got - want).max()
    assert (want < 0).any() and (want > 0).any()  # a difference, not one model's loss


def test_a_resume_with_another_reference_is_refused(data, checkpoints):
    live, ref = checkpoints
    options = dict(metric="excess", chunk_tokens=700, batch_size=4)
    first = score_corpus(data, live, reference=ref, stop_after_chunks=1, **options)
    assert not first.complete
    with pytest.raises(ScoringError, match="different reference_checkpoint"):
        score_corpus(data, live, reference=live, **options)
    done = score_corpus(data, live, reference=ref, **options)  # the same reference resumes
    assert done.complete
    with open(done.meta_path) as f:
        assert json.load(f)["reference_checkpoint"] == record(ref)


def test_se_mlm_trains_offline_on_an_excess_score_file(data, checkpoints):
    """--se-metric excess without --se-online takes the file se-score wrote (no reference
    at training), and refuses a file of another metric."""
    live, ref = checkpoints
    score_corpus(data, live, metric="excess", reference=ref, batch_size=8)
    task, _ = make_task(data, "--task", "se_mlm", "--se-metric", "excess")
    task.load_dataset("train")
    assert task.reference_model() is None
    task, _ = make_task(data, "--task", "se_mlm", "--se-metric", "correctness")
    with pytest.raises(SelfEvolutionConfigError, match="holds 'excess' scores"):
        task.load_dataset("train")


# ---------------------------------------------------------------------- refusals


def test_a_reference_of_another_dictionary_is_refused_online(corpus, other_dictionary_checkpoint):
    task, *_ = online(corpus, "--se-reference", other_dictionary_checkpoint)
    with pytest.raises(SelfEvolutionConfigError) as refused:
        task.load_dataset("train")
    message = str(refused.value)
    assert "\n" not in message
    assert other_dictionary_checkpoint in message and os.path.join(corpus, "dict.txt") in message
    assert "has 55 entries" in message and "gives 209" in message


def test_a_missing_reference_is_refused_online(corpus, tmp_path):
    missing = str(tmp_path / "nowhere.pt")
    task, *_ = online(corpus, "--se-reference", missing)
    with pytest.raises(SelfEvolutionConfigError, match=f"--se-reference checkpoint {missing} not"):
        task.load_dataset("train")


def test_a_reference_with_fewer_positions_than_the_blocks_is_refused(corpus, tmp_path):
    short = [*TINY_ROBERTA[:-4], "--max-positions", "32", "--tokens-per-sample", "32"]
    ref = save_untrained_checkpoint(corpus, str(tmp_path / "short.pt"), short, seed=2)
    task, *_ = online(corpus, "--se-reference", ref)
    with pytest.raises(SelfEvolutionConfigError) as refused:
        task.load_dataset("train")
    assert str(refused.value) == (
        f"--se-reference checkpoint {ref} reads at most 32 positions, fewer than the blocks of "
        "--tokens-per-sample 64"
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--se-online", "--se-metric", "excess"],
            "--se-metric excess scores the live model against a frozen reference model: "
            "give --se-reference",
        ),
        (
            ["--se-online", "--se-reference", "ref.pt"],
            "--se-reference is the reference model of --se-metric excess, not of correctness",
        ),
        (
            ["--se-metric", "excess", "--se-reference", "ref.pt"],
            "--se-reference scores each step's batch, with --se-online; offline, --se-metric "
            "excess trains on a score file of excess scores (se-score --metric excess "
            "--reference CKPT)",
        ),
    ],
)
def test_task_refuses_excess_without_reference_and_reference_without_excess(corpus, extra, message):
    with pytest.raises(SelfEvolutionConfigError) as refused:
        make_task(corpus, "--task", "se_mlm", *extra)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--reference", "REF"],
            "se-score: --reference is the reference model of --metric excess, not of "
            "--metric correctness",
        ),
        (
            ["--metric", "confidence", "--reference", "REF"],
            "se-score: --reference is the reference model of --metric excess, not of "
            "--metric confidence",
        ),
        (
            ["--metric", "rarity", "--reference", "REF"],
            "se-score: --reference is the reference model of --metric excess, not of "
            "--metric rarity",
        ),
        (
            ["--metric", "excess"],
            "se-score: --metric excess scores --path against a frozen reference model: give "
            "--reference CKPT (e.g. the starting checkpoint)",
        ),
    ],
)
def test_se_score_refuses_reference_without_excess_and_excess_without_reference(
    data, checkpoints, extra, message
):
    with pytest.raises(SystemExit) as refused:
        score.main([data, "--path", checkpoints[0], "--no-progress-bar", *extra])
    assert str(refused.value.code) == message
    assert not os.path.exists(os.path.join(data, "train.se_scores.partial"))


def test_se_score_refuses_a_reference_of_another_dictionary(
    data, checkpoints, other_dictionary_checkpoint
):
    argv = [data, "--path", checkpoints[0], "--metric", "excess"]
    with pytest.raises(SystemExit) as refused:
        score.main([*argv, "--reference", other_dictionary_checkpoint, "--no-progress-bar"])
    message = str(refused.value.code)
    assert message.startswith("se-score: the dictionary of reference checkpoint ")
    assert other_dictionary_checkpoint in message and os.path.join(data, "dict.txt") in message
    assert "\n" not in message


def test_score_corpus_takes_a_reference_only_with_excess(data, checkpoints):
    live, ref = checkpoints
    with pytest.raises(ScoringError, match="needs|give its checkpoint"):
        score_corpus(data, live, metric="excess")
    with pytest.raises(ScoringError, match="not of 'correctness'"):
        score_corpus(data, live, reference=ref)


# -------------------------------------------------------------------- fairseq-train


def tensors(value):
    """Every tensor in a (nested) checkpoint."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors(v)


@pytest.mark.slow
@pytest.mark.subprocess
def test_fairseq_train_with_a_reference_trains_and_never_saves_or_changes_it(
    corpus, checkpoints, other_dictionary_checkpoint, tmp_path
):
    live, ref = checkpoints
    ref_record = record(ref)
    save = str(tmp_path / "save")
    excess = ["--task", "se_mlm", "--se-online", "--se-metric", "excess", "--se-reference"]
    rest = ["--criterion", "token_ls", "--finetune-from-model", live, *NO_DROPOUT]
    result = fairseq_train(corpus, save, *excess, ref, *rest, max_update=6)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "num_updates 6" in result.stdout, result.stdout[-2000:]
    assert record(ref) == ref_record  # the reference file is untouched
    trained = safe_load(os.path.join(save, "checkpoint_last.pt"))
    start, reference = safe_load(live)["model"], safe_load(ref)["model"]
    assert trained["model"].keys() == start.keys()  # the live model's keys, nothing added
    assert any(not torch.equal(trained["model"][k], start[k]) for k in start)  # it trained
    embed = reference["encoder.sentence_encoder.embed_tokens.weight"]
    assert not any(t.shape == embed.shape and torch.equal(t, embed) for t in tensors(trained))
    assert trained["cfg"]["task"]["se_reference"] == ref
    # the trained checkpoint loads without its reference (only training reads it)
    moved = str(tmp_path / "moved.pt")
    os.rename(ref, moved)
    try:
        model, _ = load(os.path.join(save, "checkpoint_last.pt"), corpus)
    finally:
        os.rename(moved, ref)
    assert all(torch.equal(v, trained["model"][k]) for k, v in model.state_dict().items())

    # a reference of another dictionary: one line naming both files, before training
    refused = fairseq_train(
        corpus, str(tmp_path / "other"), *excess, other_dictionary_checkpoint, *rest
    )
    assert refused.returncode != 0
    assert "Traceback" not in refused.stdout
    line = next(x for x in refused.stdout.splitlines() if "error:" in x)
    assert line.startswith("fairseq-train: error: the dictionary of --se-reference checkpoint ")
    assert other_dictionary_checkpoint in line and os.path.join(corpus, "dict.txt") in line
    assert "num_updates" not in refused.stdout
