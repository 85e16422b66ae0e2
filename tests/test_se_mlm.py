"""Task se_mlm: the batches it builds, checked against fairseq and plain definitions."""

import logging
import os

import numpy as np
import pytest
import torch
from support.fairseq_data import (
    epoch_batches,
    flat_scores_of_batch,
    make_task,
    sentence_scores,
    split_tokens,
    write_scores,
)

from se_fairseq.data import score_file
from se_fairseq.data.score_file import ScoreFileError


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
    sentences, sentence_score = sentence_scores(split)
    checked = 0
    for batch in epoch_batches(task):
        for row, index in enumerate(batch["id"].tolist()):
            tokens = np.concatenate([[d.bos()], sentences[index]])
            scores = np.concatenate([[0.0], sentence_score[index]])
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
    task, _ = make_task(
        scored_corpus,
        "--task",
        "se_mlm",
        "--leave-unmasked-prob",
        "0.2",
        "--random-token-prob",
        "0.3",
    )
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
    task, cfg = make_task(
        scored_corpus, "--task", "se_mlm", "--mask-whole-words", "--sample-break-mode", "eos"
    )
    d = task.source_dictionary
    # every 3rd vocabulary entry continues the previous word
    word_begins = torch.tensor(
        [i < d.nspecial or i % 3 != 0 for i in range(len(d))], dtype=torch.uint8
    )
    from se_fairseq.core.masking import SelfEvolutionMasker

    masker = SelfEvolutionMasker(
        d, task.mask_idx, mask_prob=0.3, mode="topk", seed=1, mask_whole_words=word_begins
    )
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


def test_explicit_score_path_loads_valid_with_its_fallback(scored_corpus, tmp_path):
    """--se-scores names the train split's file; valid (loaded first by fairseq-train) keeps
    its random-masking fallback instead of looking for a score file of its own."""
    split = os.path.join(scored_corpus, "train")
    moved = str(tmp_path / "elsewhere")
    for ext in (".npy", ".json"):
        os.rename(split + ".se_scores" + ext, moved + ext)
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-scores", moved + ".npy")
    valid = epoch_batches(task, split="valid")
    assert sum(int(b["target"].ne(1).sum()) for b in valid) > 0
    assert type(task.dataset("valid").dataset.dataset).__name__ == "NestedDictionaryDataset"
    train = epoch_batches(task)
    assert type(task.dataset("train").dataset.dataset).__name__ == "SelfEvolutionMaskDataset"
    assert all(b["target"].ne(1).any() for b in train)
    assert score_file.ScoreFile(moved, split).metric == "correctness"


@pytest.mark.parametrize("threshold", [None, "6.0"])
def test_threshold_mode_selects_scores_above_the_threshold(scored_corpus, threshold):
    """Every eligible token scored above t, on real batches; default t = 0.1 (the reference
    code's rule), tried on scores of which about 60 % lie below it."""
    extra = [] if threshold is None else ["--se-threshold", threshold]
    if threshold is None:
        split = os.path.join(scored_corpus, "train")
        num_tokens = sum(len(s) for s in split_tokens(split))
        write_scores(split, np.random.default_rng(2).exponential(0.1, size=num_tokens))
    task, _ = make_task(
        scored_corpus,
        "--task",
        "se_mlm",
        "--se-select",
        "threshold",
        "--sample-break-mode",
        "eos",
        *extra,
    )
    t = 0.1 if threshold is None else float(threshold)
    d = task.source_dictionary
    split = os.path.join(scored_corpus, "train")
    rows = 0
    for batch in epoch_batches(task):
        for row, scores in enumerate(flat_scores_of_batch(batch, split)):
            n = len(scores)
            source = batch["net_input"]["src_tokens"][row, :n].numpy()
            target = batch["target"][row, :n].numpy()
            tokens = np.where(target != d.pad(), target, source)
            eligible = tokens >= d.nspecial
            above = eligible & (scores > t)
            if above.any():  # else: the random fallback (tested below)
                np.testing.assert_array_equal(target != d.pad(), above)
                assert (source[above] == task.mask_idx).all()
                rows += 1
    assert rows > 50


def test_threshold_rows_with_nothing_above_fall_back_to_random_masking(scored_corpus):
    """Rows without a token above t get masked_lm masking (mask_prob, 80/10/10); with
    --se-threshold-fallback none they stay unmasked."""
    task, _ = make_task(
        scored_corpus, "--task", "se_mlm", "--se-select", "threshold", "--se-threshold", "1000"
    )  # nothing is above it
    masked = kept_or_random = selected_total = eligible_total = 0
    for batch in epoch_batches(task):
        selected = batch["target"].ne(1)
        src = batch["net_input"]["src_tokens"]
        original = torch.where(selected, batch["target"], src)
        eligible = original >= task.source_dictionary.nspecial
        assert not (selected & ~eligible).any()
        selected_total += int(selected.sum())
        eligible_total += int(eligible.sum())
        masked += int((src[selected] == task.mask_idx).sum())
        kept_or_random += int((src[selected] != task.mask_idx).sum())
    assert abs(selected_total / eligible_total - 0.15) < 0.02
    assert abs(kept_or_random / selected_total - 0.2) < 0.06  # 10 % kept + 10 % random
    none_task, _ = make_task(
        scored_corpus,
        "--task",
        "se_mlm",
        "--se-select",
        "threshold",
        "--se-threshold",
        "1000",
        "--se-threshold-fallback",
        "none",
    )
    assert all(not b["target"].ne(1).any() for b in epoch_batches(none_task))


def test_random_share_splits_the_budget(scored_corpus):
    """--se-random-share 0.5: half of each block's k are its top scores, the rest drawn
    uniformly from the others (so they are not all the next-highest scores)."""
    task, _ = make_task(
        scored_corpus,
        "--task",
        "se_mlm",
        "--se-random-share",
        "0.5",
        "--sample-break-mode",
        "eos",
        "--mask-prob",
        "0.3",
    )
    pure, _ = make_task(
        scored_corpus, "--task", "se_mlm", "--sample-break-mode", "eos", "--mask-prob", "0.3"
    )
    d = task.source_dictionary
    split = os.path.join(scored_corpus, "train")
    sentences = split_tokens(split)
    outside_top = 0
    for batch, pure_batch in zip(epoch_batches(task), epoch_batches(pure)):
        assert torch.equal(batch["id"], pure_batch["id"])
        for row, scores in enumerate(flat_scores_of_batch(batch, split)):
            n = len(scores)
            tokens = np.concatenate([[d.bos()], sentences[int(batch["id"][row])]])
            eligible = tokens >= d.nspecial
            selected = batch["target"][row, :n].numpy() != d.pad()
            k = int(selected.sum())
            assert k == int((pure_batch["target"][row, :n] != d.pad()).sum())  # same budget
            order = sorted(np.flatnonzero(eligible), key=lambda p: (-scores[p], p))
            by_score = k - int(np.floor(k * 0.5 + 0.5))
            assert set(order[:by_score]) <= set(np.flatnonzero(selected))
            outside_top += len(set(np.flatnonzero(selected)) - set(order[:k]))
    assert outside_top > 20


def test_empty_and_short_sequences(scored_corpus):
    """Blocks with fewer eligible tokens than k: k is clamped, nothing crashes."""
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--mask-prob", "0.5")
    from se_fairseq.core.masking import SelfEvolutionMasker

    d = task.source_dictionary
    masker = SelfEvolutionMasker(d, task.mask_idx, mask_prob=0.99, mode="topk", seed=1)
    tokens = torch.tensor([[d.bos(), d.eos(), d.pad(), d.pad()], [d.bos(), 10, d.eos(), d.pad()]])
    source, target = masker(tokens, torch.ones(2, 4), np.arange(2), epoch=1)
    assert target[0].eq(d.pad()).all()  # nothing eligible: nothing masked
    assert target[1].tolist() == [d.pad(), 10, d.pad(), d.pad()]


@pytest.fixture(scope="module")
def sentencepiece_corpus(tmp_path_factory):
    """Text cut into SentencePiece pieces (an offline BPE), binarized, with a score file."""
    import sentencepiece as spm
    from support.fairseq_data import binarize

    root = tmp_path_factory.mktemp("spm")
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 9))) for _ in range(300)]
    p = 1.0 / np.arange(1, len(words) + 1)
    lines = [
        " ".join(rng.choice(words, size=rng.integers(5, 30), p=p / p.sum())) for _ in range(400)
    ]
    (root / "raw.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(root / "raw.txt"),
        model_prefix=str(root / "spm"),
        vocab_size=120,
        model_type="unigram",
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(root / "spm.model"))
    (root / "txt").mkdir()
    for split, rows in (("train", lines[:350]), ("valid", lines[350:])):
        (root / "txt" / f"{split}.txt").write_text(
            "\n".join(" ".join(sp.encode(r, out_type=str)) for r in rows) + "\n"
        )
    data = binarize(str(root / "txt"), str(root / "data-bin"))
    split = os.path.join(data, "train")
    num_tokens = sum(len(s) for s in split_tokens(split))
    write_scores(split, np.random.default_rng(1).gamma(2.0, 2.0, size=num_tokens))
    return data, str(root / "spm.model")


@pytest.mark.fairseq
@pytest.mark.parametrize("mode", ["topk", "random"])
def test_whole_word_masking_through_fairseq_argument_parsing(sentencepiece_corpus, mode):
    """--mask-whole-words as fairseq-train builds it (--bpe sentencepiece): every selected
    piece belongs to a word selected whole; words start at pieces with SentencePiece's '▁'."""
    data, model = sentencepiece_corpus
    task, _ = make_task(
        data,
        "--task",
        "se_mlm",
        "--se-select",
        mode,
        "--mask-whole-words",
        "--bpe",
        "sentencepiece",
        "--sentencepiece-model",
        model,
        "--sample-break-mode",
        "eos",
    )
    d = task.source_dictionary
    selected_words = 0
    for batch in epoch_batches(task):
        target = batch["target"]
        original = torch.where(target.ne(d.pad()), target, batch["net_input"]["src_tokens"])
        for row in range(len(original)):
            pieces = [d[i] for i in original[row].tolist()]
            begins = [
                i < d.nspecial or p.startswith("\u2581")
                for i, p in zip(original[row].tolist(), pieces)
            ]
            word = np.cumsum(begins)
            chosen = target[row].ne(d.pad()).numpy()
            for w in set(word[chosen]):
                in_word = word == w
                assert chosen[in_word].all(), f"word {w} of row {row} partly masked"
                selected_words += 1
    assert selected_words > 50


def test_whole_word_masking_without_a_bpe_is_refused(scored_corpus):
    with pytest.raises(ValueError, match="--mask-whole-words needs --bpe"):
        task, _ = make_task(scored_corpus, "--task", "se_mlm", "--mask-whole-words")
        task.load_dataset("train")


@pytest.mark.parametrize("method", ["truncate", "random_crop"])
def test_shorten_method_cuts_tokens_and_scores_alike(scored_corpus, method):
    """--shorten-method in a scored mode (eos blocks: block i = sentence i): each row is a
    window of its sentence, masked by the top-k of that window's own scores."""
    width = 17
    task, _ = make_task(
        scored_corpus,
        "--task",
        "se_mlm",
        "--shorten-method",
        method,
        "--tokens-per-sample",
        str(width),
        "--sample-break-mode",
        "eos",
        "--mask-prob",
        "0.3",
    )
    d = task.source_dictionary
    split = os.path.join(scored_corpus, "train")
    sentences, sentence_score = sentence_scores(split)
    cropped = 0
    for batch in epoch_batches(task):
        target = batch["target"]
        original = torch.where(target.ne(d.pad()), target, batch["net_input"]["src_tokens"])
        for row, i in enumerate(batch["id"].tolist()):
            sentence, scores = sentences[i], sentence_score[i]
            tokens = original[row][1 : 1 + min(width, len(sentence))].numpy()
            selected = target[row, 1 : 1 + len(tokens)].ne(d.pad()).numpy()
            starts = [0] if method == "truncate" else range(len(sentence) - len(tokens) + 1)
            fits = []
            for a in starts:
                if not (sentence[a : a + len(tokens)] == tokens).all():
                    continue
                window = scores[a : a + len(tokens)]
                eligible = np.flatnonzero(tokens >= d.nspecial)
                top = sorted(eligible, key=lambda p: (-window[p], p))[: int(selected.sum())]
                fits.append(set(top) == set(np.flatnonzero(selected)))
            assert any(fits), f"sample {i}: the mask is not the top-k of its window's scores"
            cropped += len(sentence) > width
    assert cropped > 20
