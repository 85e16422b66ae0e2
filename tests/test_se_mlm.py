"""Task se_mlm: the batches it builds, checked against fairseq and plain definitions."""
import logging
import os

import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from conftest import TINY_ROBERTA, split_tokens
from se_fairseq.data import score_file
from se_fairseq.data.score_file import ScoreFileError


def make_task(data, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [data, *TINY_ROBERTA, "--cpu", "--seed", "5", "--criterion", "masked_lm", *extra]
    )
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task), cfg


def epoch_batches(task, split="train", epoch=1, batch_size=8):
    task.load_dataset(split)
    itr = task.get_batch_iterator(
        task.dataset(split), max_sentences=batch_size, seed=5, epoch=epoch, num_workers=0
    ).next_epoch_itr(shuffle=True)
    return list(itr)


def test_random_mode_equals_fairseq_masked_lm(scored_corpus):
    for extra in ([], ["--leave-unmasked-prob", "0.2", "--random-token-prob", "0.3"]):
        fairseq_task, _ = make_task(scored_corpus, "--task", "masked_lm", *extra)
        se_task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-select", "random", *extra)
        expected = epoch_batches(fairseq_task)
        got = epoch_batches(se_task)
        assert len(expected) == len(got) > 5
        for a, b in zip(expected, got):
            assert torch.equal(a["id"], b["id"])
            assert torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])
            assert torch.equal(a["target"], b["target"])


def test_topk_masks_the_highest_scored_tokens(scored_corpus):
    """One sentence per block (break mode eos): recompute each block's top-k by hand."""
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--sample-break-mode", "eos")
    d = task.source_dictionary
    split = os.path.join(scored_corpus, "train")
    sentences = split_tokens(split)
    flat_scores = np.load(split + ".se_scores.npy").astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sentences])])
    checked = 0
    for batch in epoch_batches(task):
        for row, index in enumerate(batch["id"].tolist()):
            tokens = np.concatenate([[d.bos()], sentences[index]])
            scores = np.concatenate([[0.0], flat_scores[offsets[index]:offsets[index + 1]]])
            eligible = tokens >= d.nspecial
            target = batch["target"][row, : len(tokens)].numpy()
            source = batch["net_input"]["src_tokens"][row, : len(tokens)].numpy()
            selected = target != d.pad()
            n, k = int(eligible.sum()), int(selected.sum())
            assert k in (int(np.floor(0.15 * n)), int(np.floor(0.15 * n)) + 1) or k == n
            order = sorted(np.flatnonzero(eligible), key=lambda p: (-scores[p], p))
            assert set(np.flatnonzero(selected)) == set(order[:k])
            assert (target[selected] == tokens[selected]).all()
            assert (source[selected] == task.mask_idx).all()  # reference-code default
            assert (source[~selected] == tokens[~selected]).all()
            checked += 1
    assert checked == len(sentences)


def test_special_tokens_never_selected(scored_corpus):
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--mask-prob", "0.9")
    d = task.source_dictionary
    for batch in epoch_batches(task):
        src, tgt = batch["net_input"]["src_tokens"], batch["target"]
        original = torch.where(tgt.ne(d.pad()), tgt, src)
        selected = tgt.ne(d.pad())
        assert not (selected & (original < d.nspecial)).any()
        assert (original[:, 0] == d.bos()).all()


def test_masks_are_a_function_of_seed_epoch_index(scored_corpus):
    def masks(epoch, batch_size, mode):
        task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-select", mode)
        out = {}
        for b in epoch_batches(task, epoch=epoch, batch_size=batch_size):
            for row, i in enumerate(b["id"].tolist()):
                out[i] = b["net_input"]["src_tokens"][row][b["net_input"]["src_tokens"][row].ne(1)]
        return out

    a, b = masks(1, 8, "sample"), masks(1, 3, "sample")  # other batch composition
    assert a.keys() == b.keys() and all(torch.equal(a[i], b[i]) for i in a)
    c = masks(2, 8, "sample")
    assert any(not torch.equal(a[i], c[i]) for i in a), "sample masks should vary by epoch"


def test_replacement_policy_applies_when_given(scored_corpus):
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--leave-unmasked-prob", "0.2",
                        "--random-token-prob", "0.3")
    kept = randomized = masked = 0
    for batch in epoch_batches(task):
        sel = batch["target"].ne(1)
        src, tgt = batch["net_input"]["src_tokens"][sel], batch["target"][sel]
        masked += int((src == task.mask_idx).sum())
        kept += int((src == tgt).sum())
        randomized += int(((src != tgt) & (src != task.mask_idx)).sum())
        assert (src[src != task.mask_idx] >= task.source_dictionary.nspecial).all()
    total = kept + randomized + masked
    # a random replacement can hit the true token; allow for it
    assert abs(kept / total - 0.2) < 0.05 and abs(randomized / total - 0.3) < 0.05


def test_whole_word_masking_selects_words_by_their_best_token(scored_corpus, tmp_path):
    """With a BPE whose continuation pieces lack the leading marker, a word is masked whole."""
    task, cfg = make_task(scored_corpus, "--task", "se_mlm", "--mask-whole-words",
                          "--sample-break-mode", "eos")
    d = task.source_dictionary
    # every 3rd vocabulary entry continues the previous word
    word_begins = torch.tensor([i < d.nspecial or i % 3 != 0 for i in range(len(d))],
                               dtype=torch.uint8)
    from se_fairseq.data.se_masking import SelfEvolutionMasker

    masker = SelfEvolutionMasker(d, task.mask_idx, mask_prob=0.3, mode="topk", seed=1,
                                 mask_whole_words=word_begins)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(d.nspecial, len(d) - 1, (16, 40), generator=g)
    tokens[:, 0] = d.bos()
    tokens[:, -1] = d.eos()
    scores = torch.rand(16, 40, generator=g)
    _, target = masker(tokens, scores, np.arange(16), epoch=1)
    selected = target.ne(d.pad())
    for r in range(16):
        begins = word_begins[tokens[r]].bool() | (tokens[r] < d.nspecial)
        begins[1:] |= tokens[r][:-1] < d.nspecial
        word = (begins.long().cumsum(0) - 1).numpy()
        eligible_words = sorted({w for p, w in enumerate(word) if tokens[r, p] >= d.nspecial})
        best = {w: scores[r][word == w].max().item() for w in eligible_words}
        chosen = sorted({word[p] for p in np.flatnonzero(selected[r].numpy())})
        for w in chosen:  # whole words only
            assert selected[r][torch.from_numpy(word == w)].all()
        k = len(chosen)
        assert k in (int(0.3 * len(eligible_words)), int(0.3 * len(eligible_words)) + 1)
        ranked = sorted(eligible_words, key=lambda w: (-best[w], w))
        assert chosen == sorted(ranked[:k])


@pytest.mark.parametrize("mask_prob", ["0", "1", "1.5", "-0.1"])
def test_mask_prob_outside_unit_interval_is_refused(scored_corpus, mask_prob):
    with pytest.raises(ValueError, match="--mask-prob"):
        make_task(scored_corpus, "--task", "se_mlm", "--mask-prob", mask_prob)


def test_missing_train_scores_is_an_error(corpus):
    task, _ = make_task(corpus, "--task", "se_mlm")
    with pytest.raises(ScoreFileError, match="train.se_scores.npy not found"):
        task.load_dataset("train")


def test_valid_without_scores_falls_back_to_random_masking(scored_corpus, caplog):
    task, _ = make_task(scored_corpus, "--task", "se_mlm")
    with caplog.at_level(logging.INFO):
        batches = epoch_batches(task, split="valid")
    assert "no score file" in caplog.text and "random" in caplog.text
    assert sum(int(b["target"].ne(1).sum()) for b in batches) > 0


def test_metric_mismatch_is_refused(scored_corpus):
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-metric", "confidence")
    with pytest.raises(ValueError, match="correctness.*confidence"):
        task.load_dataset("train")


def test_explicit_score_path_and_threshold_mode(scored_corpus, tmp_path):
    split = os.path.join(scored_corpus, "train")
    moved = str(tmp_path / "elsewhere")
    for ext in (".npy", ".json"):
        os.rename(split + ".se_scores" + ext, moved + ext)
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-scores", moved + ".npy",
                        "--se-select", "threshold", "--se-threshold", "6.0")
    flat = np.load(moved + ".npy")
    for batch in epoch_batches(task):
        assert batch["target"].ne(1).any()
    assert score_file.ScoreFile(moved, split).metric == "correctness"
    assert (flat > 6.0).any()


def test_empty_and_short_sequences(scored_corpus):
    """Blocks with fewer eligible tokens than k: k is clamped, nothing crashes."""
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--mask-prob", "0.5")
    from se_fairseq.data.se_masking import SelfEvolutionMasker

    d = task.source_dictionary
    masker = SelfEvolutionMasker(d, task.mask_idx, mask_prob=0.99, mode="topk", seed=1)
    tokens = torch.tensor([[d.bos(), d.eos(), d.pad(), d.pad()], [d.bos(), 10, d.eos(), d.pad()]])
    source, target = masker(tokens, torch.ones(2, 4), np.arange(2), epoch=1)
    assert target[0].eq(d.pad()).all()  # nothing eligible: nothing masked
    assert target[1].tolist() == [d.pad(), 10, d.pad(), d.pad()]
