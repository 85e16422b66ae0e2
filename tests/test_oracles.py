"""Independent oracles: sampling frequencies, se-bench's clock, rarity = -ln p, the
extension-missing fallback and the C++ device check."""

import argparse
import collections
import importlib
import io
import math
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from support.devices import device_params
from support.fairseq_data import write_mmap_split

import se_fairseq
from se_fairseq.ops import select
from se_fairseq.ops.reference import TOPK, select_reference

select_module = importlib.import_module("se_fairseq.ops.select")
HAS_CUDA = torch.cuda.is_available()
DEVICES = device_params()


# ------------------------------------------------------ sample mode: softmax(s / T)

CHI2_5_CRITICAL_1E4 = 25.745  # scipy.stats.chi2.ppf(1 - 1e-4, df=5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_k1_frequencies_follow_softmax_of_score_over_t(device, temperature):
    """k = 1 Gumbel top-k is one draw from softmax(s / T). 40,000 rows (each its own seed)
    of 6 positions: Pearson's chi-square against softmax(s / T), 5 degrees of freedom.
    False-alarm rate of a correct sampler: 1e-4 per temperature (the seeds are fixed, so
    the outcome is the same on every run). A sampler at the wrong temperature fails by
    far: at 40,000 rows the statistic of T = 1 draws against the T = 0.5 law is about 6,000."""
    scores = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, -1.0])
    rows = 40_000
    got = select(
        scores.repeat(rows, 1).to(device),
        torch.ones(rows, 6, dtype=torch.bool, device=device),
        torch.arange(rows, device=device) * 7919 + 11,
        num_select=torch.ones(rows, dtype=torch.long, device=device),
        mode="sample",
        temperature=temperature,
    ).cpu()
    assert (got.sum(1) == 1).all()
    observed = got.sum(0).double().numpy()
    expected = rows * torch.softmax(scores.double() / temperature, 0).numpy()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < CHI2_5_CRITICAL_1E4, (statistic, observed, expected)
    other = rows * torch.softmax(scores.double() / (1.5 - temperature), 0).numpy()
    assert float(((observed - other) ** 2 / other).sum()) > 100 * CHI2_5_CRITICAL_1E4


# ------------------------------------------------------- se-bench against a clock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def stub_factory(clock, name, seconds_per_batch, batches, tokens, calls, slow_epochs=()):
    """An epoch iterator whose batches take known (fake) time."""

    class EpochBatches:
        """Like fairseq's epoch iterators: iterable, and take(n) truncates it."""

        def __init__(self, epoch):
            self.epoch, self.limit = epoch, batches

        def take(self, n):
            self.limit = min(self.limit, n)

        def __iter__(self):
            for _ in range(self.limit):
                clock.now += seconds_per_batch * (10 if self.epoch in slow_epochs else 1)
                yield {"ntokens": tokens}

    def epoch_iterator(epoch):
        calls.append((name, epoch))
        return EpochBatches(epoch)

    return epoch_iterator


def test_se_bench_measures_rates_and_medians_of_known_delays(monkeypatch):
    from se_fairseq import pipeline_bench

    clock, calls = FakeClock(), []
    monkeypatch.setattr(pipeline_bench, "time", clock)
    factories = {
        "masked_lm": stub_factory(clock, "masked_lm", 0.1, 10, 50, calls),
        # round 2 of the task under test is 10x slower: the median ignores it
        "se_mlm": stub_factory(clock, "se_mlm", 0.05, 10, 64, calls, slow_epochs={2}),
    }
    monkeypatch.setattr(
        pipeline_bench, "build_iterator_factory", lambda args: (None, factories[args.task])
    )
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        args = argparse.Namespace(task="se_mlm", se_select="topk", num_workers=0)
        base = argparse.Namespace(task="masked_lm", num_workers=0)
        ratio = pipeline_bench.compare_pipelines(args, base, rounds=3, out=out)
        capped = pipeline_bench.compare_pipelines(
            args, base, rounds=1, max_batches=4, out=io.StringIO()
        )
    finally:
        torch.set_num_threads(threads)
    text = out.getvalue()
    assert ratio == pytest.approx(2.0)  # 20 batches/s against 10
    assert capped == pytest.approx(2.0)
    medians = {
        line.split()[0]: [float(x) for x in line.split()[-2:]]
        for line in text.splitlines()
        if line.startswith(("masked_lm (", "se_mlm --"))
    }
    assert medians["masked_lm"] == pytest.approx([10.0, 500.0])
    assert medians["se_mlm"] == pytest.approx([20.0, 1280.0])
    # alternating order, one epoch per task per round; max_batches stops each epoch
    assert calls[:6] == [
        ("masked_lm", 1),
        ("se_mlm", 1),
        ("se_mlm", 2),
        ("masked_lm", 2),
        ("masked_lm", 3),
        ("se_mlm", 3),
    ]
    assert text.count(" 10 batches ") == 6 and "ratio se_mlm / masked_lm (batches/s): 2.00" in text
    assert clock.now == pytest.approx(3 * 1.0 + 0.5 + 5.0 + 0.5 + 0.4 + 0.2)


# ------------------------------------------------------- rarity = -ln p, by hand

WORDS = ["the", "of", "cat", "sat", "mat", "zebra", "quokka"]


def binarize_in_process(text_path, dictionary, prefix):
    """What fairseq-preprocess --only-source --srcdict does, with fairseq's own writer."""
    write_mmap_split(
        prefix,
        [
            dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long().numpy()
            for line in open(text_path)
        ],
    )


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """Train text over 6 of the 7 dictionary words ('quokka' only in valid), binarized
    with that dictionary; valid also holds a word outside it (<unk>)."""
    from fairseq.data import Dictionary

    root = tmp_path_factory.mktemp("rarity")
    rng = np.random.default_rng(5)
    p = np.array([20, 10, 5, 3, 2, 1], dtype=float)
    train = [
        " ".join(rng.choice(WORDS[:6], size=rng.integers(1, 12), p=p / p.sum())) for _ in range(60)
    ]
    valid = ["quokka the cat", "unseen the of", "zebra"]
    data = root / "data-bin"
    data.mkdir()
    (data / "dict.txt").write_text("".join(f"{w} 1\n" for w in WORDS))
    dictionary = Dictionary.load(str(data / "dict.txt"))
    for split, lines in (("train", train), ("valid", valid)):
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        binarize_in_process(str(root / f"{split}.txt"), dictionary, str(data / split))
    return str(data), train, valid


@pytest.mark.fairseq
@pytest.mark.parametrize("split", ["train", "valid"])
def test_rarity_scores_are_minus_ln_p_for_every_token(small_corpus, split):
    """se-score --metric rarity against a count of the raw train text: a word's score is
    -ln((c + 1) / (N + V)), N the train words, V the 7 dictionary words (add-1 smoothing
    over the dictionary, se_fairseq/rarity.py); </s> and <unk> score 0."""
    from se_fairseq.cli import score
    from se_fairseq.data.score_file import ScoreFile

    data, train, valid = small_corpus
    counts = collections.Counter(w for line in train for w in line.split())
    total = sum(counts.values())
    expected = []
    for line in train if split == "train" else valid:
        for w in line.split():
            expected.append(
                -math.log((counts[w] + 1) / (total + len(WORDS))) if w in WORDS else 0.0
            )
        expected.append(0.0)  # </s>
    assert score.main([data, "--metric", "rarity", "--split", split]) == 0
    split_path = os.path.join(data, split)
    stored = np.asarray(ScoreFile(split_path + ".se_scores", split_path).scores, dtype=np.float64)
    assert len(stored) == len(expected)
    np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=0)
    if split == "valid":
        assert stored[0] == pytest.approx(math.log(total + len(WORDS)), rel=1e-3)  # quokka: c = 0


# ------------------------------------------- extension missing: warn once, reference


def test_missing_extension_warns_once_and_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setattr(select_module, "_loaded", None)
    monkeypatch.delattr(se_fairseq, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "se_fairseq._C", None)  # import -> ImportError
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(16, 30, generator=g)
    eligible = torch.rand(16, 30, generator=g) > 0.2
    seeds = torch.arange(16) * 31
    with pytest.warns(RuntimeWarning, match="C\\+\\+ extension is not built.*numpy reference"):
        first = select(scores, eligible, seeds, ratio=0.3, mode="sample")
    assert select_module._loaded is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        again = select(scores, eligible, seeds, ratio=0.3, mode="topk")
    np.testing.assert_array_equal(
        first.numpy(),
        select_reference(scores.numpy(), eligible.numpy(), seeds.numpy(), ratio=0.3, mode=2),
    )
    np.testing.assert_array_equal(
        again.numpy(),
        select_reference(scores.numpy(), eligible.numpy(), seeds.numpy(), ratio=0.3, mode=TOPK),
    )


# ------------------------------------ uniform picks: threshold fallback, random share

CHI2_15_CRITICAL_1E4 = 44.263  # scipy.stats.chi2.ppf(1 - 1e-4, df=15)


@pytest.mark.parametrize("device", DEVICES)
def test_uniform_picks_are_uniform_and_a_bijection_of_the_row_seed(device):
    """The masker's uniform draw (k of the eligible positions, without replacement) over
    4,000 rows of 16 positions, k = 4, with consecutive seeds as nearby rows get:

    - every position is picked k / 16 of the time: Pearson's chi-square with 15 degrees of
      freedom, false-alarm rate 1e-4 (fixed seeds: the same outcome on every run; draws
      without replacement make the statistic smaller than chi-square, so this is safe);
    - distinct seeds draw independently: 4,000 uniform draws among C(16, 4) = 1,820 subsets
      give about 1,820 * (1 - e^(-4000/1820)) = 1,620 distinct subsets (sd about 10); a
      stream that maps several seeds to one (not a bijection) gives far fewer."""
    from se_fairseq.core.masking import SelfEvolutionMasker

    rows, length, k = 4000, 16, 4
    eligible = torch.ones(rows, length, dtype=torch.bool, device=device)
    seeds = torch.arange(rows, dtype=torch.int64, device=device)
    picked = SelfEvolutionMasker._uniform(
        eligible, seeds, num_select=torch.full((rows,), k, device=device)
    ).cpu()
    assert (picked.sum(dim=1) == k).all()
    counts = picked.sum(dim=0).double().numpy()
    expected = rows * k / length
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_15_CRITICAL_1E4
    assert len({tuple(row) for row in picked.numpy().tolist()}) > 1500
    # the ratio form: every row rounds 0.25 * 16 = 4 exactly
    assert (SelfEvolutionMasker._uniform(eligible, seeds, ratio=0.25).sum(dim=1) == k).all()


# ------------------------------------------------ whole words: a word is one unit


def _masker_dictionary(words=30):
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(words):
        d.add_symbol(f"p{i}")
    return d, d.add_symbol("<mask>")


def _masker_batch(d, mask_idx, rows=16, length=24, seed=3):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(d.nspecial, mask_idx, (rows, length), generator=g)
    tokens[:, 0], tokens[:, -1] = d.bos(), d.eos()
    tokens[: rows // 2, length - 5 :] = d.pad()
    return tokens, torch.rand(rows, length, generator=g) * 3


def _word_begins(d):
    """Every third vocabulary entry continues the word before it."""
    return torch.tensor([i < d.nspecial or i % 3 != 0 for i in range(len(d))])


def _word_numbers(tokens, eligible, begins_of):
    """Per row, each position's word, numbered from 0 in plain Python: a word starts at a
    piece marked as a word begin, at an ineligible (special) token, which is a word of its
    own, and right after one."""
    out = []
    for row, ok in zip(tokens.tolist(), eligible.tolist()):
        numbering, w = [], -1
        for p, (token, eligible_here) in enumerate(zip(row, ok)):
            if p == 0 or not eligible_here or not ok[p - 1] or bool(begins_of[token]):
                w += 1
            numbering.append(w)
        out.append(numbering)
    return out


@pytest.mark.fairseq
@pytest.mark.parametrize("mode", ["sample", "topk"])
def test_whole_word_selection_is_word_level_selection(mode):
    """--mask-whole-words: each row's words (a word starts at a piece marked as a word
    begin, or after a special token; a special token is a word of its own) are numbered
    from 0 in order, a word scores its best piece, and the words are selected as the
    positions of a row would be (word k is column k: in sample mode its Gumbel key is the
    k-th of the row's stream), then every piece of a chosen word is selected. The words
    are numbered here in plain Python, the selection is select_reference's."""
    from se_fairseq.core.masking import SelfEvolutionMasker
    from se_fairseq.ops.reference import SAMPLE

    d, mask_idx = _masker_dictionary()
    begins_of = _word_begins(d)
    masker = SelfEvolutionMasker(
        d, mask_idx, mask_prob=0.3, mode=mode, seed=1, mask_whole_words=begins_of
    )
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(d.nspecial, mask_idx, (12, 24), generator=g)
    tokens[:, 0], tokens[:, -1], tokens[:4, 10] = d.bos(), d.eos(), d.eos()
    scores = torch.rand(12, 24, generator=g)
    seeds = torch.arange(100, 112)
    eligible = tokens.ge(d.nspecial) & tokens.ne(mask_idx)
    selected, fallback, _ = masker._select_words(tokens, scores, eligible, seeds)
    assert fallback is None
    words = _word_numbers(tokens, eligible, begins_of)
    width = max(max(n) for n in words) + 1
    word_scores = np.full((12, width), -np.inf, dtype=np.float32)
    word_eligible = np.zeros((12, width), dtype=bool)
    for r in range(12):
        for p, w in enumerate(words[r]):
            word_scores[r, w] = max(word_scores[r, w], scores[r, p].item())
            word_eligible[r, w] |= bool(eligible[r, p])
    chosen = select_reference(
        word_scores,
        word_eligible,
        seeds.numpy(),
        ratio=0.3,
        mode=SAMPLE if mode == "sample" else TOPK,
    )
    expected = np.array([[chosen[r, w] for w in words[r]] for r in range(12)])
    np.testing.assert_array_equal(selected.numpy(), expected)
    assert expected.any() and not expected.all()


@pytest.mark.fairseq
@pytest.mark.parametrize("mode", ["sample", "topk"])
@pytest.mark.parametrize("share", [0.5, 1.0])
def test_random_share_is_score_picks_plus_uniform_picks(mode, share):
    """--se-random-share R, from select_reference: the row's budget k (the count --mask-prob
    gives), round(R k) positions drawn uniformly (all-equal scores in sample mode, from the
    row seed's own stream) among those not picked by score, the other k - round(R k) picked
    by score in the masker's mode and temperature."""
    from se_fairseq.core.masking import _RANDOM_STREAM, SelfEvolutionMasker
    from se_fairseq.ops.reference import SAMPLE

    d, mask_idx = _masker_dictionary()
    masker = SelfEvolutionMasker(
        d, mask_idx, mask_prob=0.3, mode=mode, seed=1, temperature=0.5, random_share=share
    )
    tokens, scores = _masker_batch(d, mask_idx)
    seeds = torch.arange(7, 7 + len(tokens))
    eligible = tokens.ge(d.nspecial) & tokens.ne(mask_idx)
    got, fallback = masker._select(scores, eligible, seeds)
    assert fallback is None
    e, s, sd = eligible.numpy(), scores.numpy(), seeds.numpy()
    mode_id = SAMPLE if mode == "sample" else TOPK
    budget = select_reference(s, e, sd, ratio=0.3, mode=mode_id, temperature=0.5).sum(axis=1)
    num_random = np.floor(budget * share + 0.5).astype(np.int64)
    by_score = select_reference(
        s, e, sd, num_select=budget - num_random, mode=mode_id, temperature=0.5
    )
    at_random = select_reference(
        np.zeros_like(s),
        e & ~by_score,
        sd ^ np.int64(_RANDOM_STREAM),
        num_select=num_random,
        mode=SAMPLE,
    )
    np.testing.assert_array_equal(got.numpy(), by_score | at_random)
    assert (got.numpy().sum(axis=1) == budget).all() and num_random.sum() > 0


@pytest.mark.fairseq
def test_unscored_positions_are_never_selected_nor_counted():
    """mask(..., scored=S): positions without a score are not eligible; special tokens stay
    ineligible even where S is True. The selection is select_reference's over the rest."""
    from se_fairseq.core.masking import SelfEvolutionMasker

    d, mask_idx = _masker_dictionary()
    masker = SelfEvolutionMasker(d, mask_idx, mask_prob=0.3, mode="topk", seed=1)
    tokens, scores = _masker_batch(d, mask_idx)
    seeds = torch.arange(len(tokens))
    scored = torch.ones_like(tokens, dtype=torch.bool)
    scored[:, 5:11] = False
    scores[:, 5:11] = 100.0  # would be picked first if they were eligible
    scores[:, 0] = scores[:, -1] = 100.0  # specials, scored
    _, target = masker.mask(tokens, scores, seeds, scored=scored)
    eligible = (tokens.ge(d.nspecial) & tokens.ne(mask_idx) & scored).numpy()
    want = select_reference(scores.numpy(), eligible, seeds.numpy(), ratio=0.3, mode=TOPK)
    np.testing.assert_array_equal(target.ne(d.pad()).numpy(), want)


@pytest.mark.fairseq
def test_whole_word_replacement_decides_once_per_word():
    """With --mask-whole-words a word's pieces share one keep/random/<mask> decision, as
    fairseq's masked_lm decides per word and repeats it over the pieces."""
    from se_fairseq.core.masking import SelfEvolutionMasker

    d, mask_idx = _masker_dictionary()
    begins_of = _word_begins(d)
    masker = SelfEvolutionMasker(
        d,
        mask_idx,
        mask_prob=0.4,
        mode="topk",
        seed=1,
        leave_unmasked_prob=0.5,
        mask_whole_words=begins_of,
    )
    tokens, scores = _masker_batch(d, mask_idx, rows=64)
    source, target = masker.mask(tokens, scores, torch.arange(64))
    selected = target.ne(d.pad())
    kept = selected & source.eq(tokens)
    words = _word_numbers(tokens, tokens.ge(d.nspecial) & tokens.ne(mask_idx), begins_of)
    multi_piece = 0
    for r in range(64):
        word = torch.tensor(words[r])
        for w in word[selected[r]].unique():
            pieces = word.eq(w)
            assert selected[r][pieces].all()
            decisions = set(kept[r][pieces].tolist())
            assert len(decisions) == 1, (r, int(w))
            multi_piece += int(pieces.sum() > 1)
    assert multi_piece > 20 and kept.any() and (selected & ~kept).any()


# ------------------------------------------------- the C++ kernel's own device check


@pytest.mark.parametrize("name", ["eligible", "seeds", "num_select"])
def test_cpp_kernel_refuses_mixed_devices(name):
    """The CPU kernel called directly (redispatch to the CPU key, past the Python wrapper
    and the fake kernel, which have their own check): a meta tensor among the arguments is
    refused by the C++ TORCH_CHECK, naming the argument."""
    extension_ok = select_module.extension_available()
    assert extension_ok
    args = {
        "scores": torch.rand(2, 4),
        "eligible": torch.ones(2, 4, dtype=torch.bool),
        "seeds": torch.arange(2),
        "num_select": torch.tensor([1, 2]),
    }
    args[name] = args[name].to("meta")
    cpu_only = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    with pytest.raises(RuntimeError, match=f"one device, but scores is on cpu and {name} on meta"):
        torch.ops.se_fairseq.select.default.redispatch(
            cpu_only,
            args["scores"],
            args["eligible"],
            args["seeds"],
            args["num_select"],
            0.15,
            TOPK,
            0.0,
            1.0,
        )
