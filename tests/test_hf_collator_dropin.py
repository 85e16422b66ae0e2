"""DataCollatorForSelfEvolution as a drop-in for DataCollatorForLanguageModeling, checked
against transformers' own tests of that collator.

Source: transformers' tests/trainer/test_data_collator.py, the newest stored version
(evalstate/transformers @ 333839c694fb5b13b012d69dcea312e7a8ef36af, the file organised by
collator class; its MLM tests are the same at 928ab5f7880865e0ca44a6789f8cab7c442d7c5c).
There ``DataCollatorForWholeWordMask`` is ``DataCollatorForLanguageModeling`` with
``whole_word_mask=True`` forced (a deprecated subclass), so its tests count. Every test of
that file that runs the collator with ``mlm=True`` on PyTorch tensors has a mirror here,
named in a comment: the same property, checked on our collator fed as a plain
``transformers.Trainer`` feeds it (tokenized examples without ``se_index`` or ``se_scores``,
``select="random"``). Tokenizers are built in memory; nothing downloads.

The tests after those check what transformers' collator documents or older versions of the
file tested (the replacement options of its docstring, its argument checks, raw lists of
ids, whole words, ``special_tokens_mask``), and a plain Trainer end to end. Where our
collator behaves otherwise, the test is ``xfail(strict=True)`` with the difference as its
reason.
"""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from support.hf_tokenizers import HF_WORDS, tiny_bert_tokenizer
from transformers import BertTokenizerFast

from se_fairseq.hf import DataCollatorForSelfEvolution

IGNORE = -100
ADDED_TOKENS = [f"token_{i}" for i in range(8)]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_bert_tokenizer()


@pytest.fixture(scope="module")
def added_tokens_tokenizer():
    """The whole-word tests' tokenizer: whitespace-separated added tokens, one word each."""
    tok = tiny_bert_tokenizer()
    tok.add_tokens(ADDED_TOKENS)
    return tok


def random_collator(tokenizer, **kwargs):
    """Our collator where DataCollatorForLanguageModeling(tokenizer, **kwargs) would be."""
    return DataCollatorForSelfEvolution(tokenizer, select="random", **kwargs)


def ordinary_ids(tokenizer):
    return sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids))


def framed(tokenizer, lengths, seed=0):
    """One example per length: [CLS], that many random ordinary ids, [SEP]; input_ids only,
    as transformers' tests give them."""
    rng = np.random.default_rng(seed)
    ids = ordinary_ids(tokenizer)
    return [
        {
            "input_ids": [tokenizer.cls_token_id]
            + rng.choice(ids, size=n).tolist()
            + [tokenizer.sep_token_id]
        }
        for n in lengths
    ]


def sentences(count, seed=0, min_words=3, max_words=24, joined=0.0):
    """``count`` distinct random sentences of HF_WORDS; with ``joined`` > 0 that share of
    the words is glued to the next one's last two letters (``the`` + ``of`` -> ``theof``,
    WordPiece ``the ##of``): words of two tokens."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        words = list(rng.choice(HF_WORDS, size=int(rng.integers(min_words, max_words + 1))))
        for i, word in enumerate(words):
            if rng.random() < joined:
                words[i] = word + str(rng.choice(HF_WORDS))[-2:]
        text = " ".join(words)
        if text not in out:
            out.append(text)
    return out


def plain_examples(tokenizer, count, seed=0, **encode):
    """Tokenized sentences as a plain tokenized dataset holds them (no se_* columns)."""
    return [dict(tokenizer(text, **encode)) for text in sentences(count, seed)]


def padded_originals(tokenizer, examples, shape):
    """The examples' ids, right-padded with the pad id to ``shape``."""
    out = torch.full(shape, tokenizer.pad_token_id, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids = torch.as_tensor(list(ex["input_ids"]), dtype=torch.long)
        out[row, : ids.numel()] = ids
    return out


def assert_masked_lm_batch(batch, examples, tokenizer, extra_keys=()):
    """What a masked-LM batch of DataCollatorForLanguageModeling is: the keys it returns,
    int64 tensors of one shape, labels holding the original id at the selected positions
    and -100 elsewhere, the input unchanged where not selected, every mask token in the
    input a selected position, special tokens and padding never selected."""
    keys = {"input_ids", "attention_mask", "labels"} | set(extra_keys)
    if "token_type_ids" in examples[0]:
        keys.add("token_type_ids")
    assert set(batch) == keys
    ids, labels = batch["input_ids"], batch["labels"]
    for key in keys & {"input_ids", "attention_mask", "labels", "token_type_ids"}:
        assert batch[key].dtype == torch.long, key
        assert batch[key].shape == ids.shape, key
    original = padded_originals(tokenizer, examples, ids.shape)
    selected = labels != IGNORE
    assert torch.equal(ids[~selected], original[~selected])
    assert torch.equal(labels[selected], original[selected])
    assert not (ids.eq(tokenizer.mask_token_id) & ~selected).any()
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (selected & special).any()
    assert not (selected & ~batch["attention_mask"].bool()).any()
    return selected


def assert_unchanged(collator, features):
    """The collator leaves its input as it was (transformers' _check_immutability)."""
    before = copy.deepcopy(features)
    collator(features)
    for old, new in zip(before, features):
        assert set(old) == set(new)
        for key, value in old.items():
            if isinstance(value, torch.Tensor | np.ndarray):
                assert value.tolist() == new[key].tolist(), key
            else:
                assert value == new[key], key


def loader_batches(dataset, collator, workers, generator=None):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=workers, generator=generator, collate_fn=collator
    )
    return [batch for batch in loader]


# --- TestDataCollatorForLanguageModeling ----------------------------------------------


# mirrors TestDataCollatorForLanguageModeling.test_mlm_mode
def test_mlm_mode(tokenizer):
    features = framed(tokenizer, [60, 60])
    batch = random_collator(tokenizer)(copy.deepcopy(features))
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 62)
    assert batch["input_ids"].eq(tokenizer.mask_token_id).any()
    assert_masked_lm_batch(batch, features, tokenizer)


# mirrors TestDataCollatorForLanguageModeling.test_mlm_with_padding
def test_mlm_with_padding(tokenizer):
    features = framed(tokenizer, [30, 60], seed=1)
    batch = random_collator(tokenizer)(copy.deepcopy(features))
    assert batch["input_ids"].shape == (2, 62)
    assert batch["input_ids"].eq(tokenizer.mask_token_id).any()
    assert_masked_lm_batch(batch, features, tokenizer)
    assert batch["attention_mask"][0].tolist() == [1] * 32 + [0] * 30
    assert batch["input_ids"][0, 32:].eq(tokenizer.pad_token_id).all()
    assert batch["labels"][0, 32:].eq(IGNORE).all()


# mirrors TestDataCollatorForLanguageModeling.test_mlm_pad_to_multiple_of
def test_mlm_pad_to_multiple_of(tokenizer):
    for lengths in ([60, 60], [30, 60]):
        features = framed(tokenizer, lengths, seed=2)
        batch = random_collator(tokenizer, pad_to_multiple_of=8)(copy.deepcopy(features))
        assert batch["input_ids"].shape == batch["labels"].shape == (2, 64)
        assert batch["input_ids"].eq(tokenizer.mask_token_id).any()
        assert_masked_lm_batch(batch, features, tokenizer)


# mirrors TestDataCollatorForLanguageModeling.test_mlm_seed_reproducibility
def test_mlm_seed_reproducibility(tokenizer):
    features = framed(tokenizer, [998, 998], seed=3)
    first = random_collator(tokenizer, seed=42)(copy.deepcopy(features))
    again = random_collator(tokenizer, seed=42)(copy.deepcopy(features))
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert torch.equal(first["labels"], again["labels"])
    other = random_collator(tokenizer, seed=43)(copy.deepcopy(features))
    assert not torch.equal(first["input_ids"], other["input_ids"])
    assert not torch.equal(first["labels"], other["labels"])


# mirrors TestDataCollatorForLanguageModeling.test_mlm_multiworker_dataloader
def test_mlm_multiworker_dataloader(tokenizer):
    features = framed(tokenizer, [998] * 10, seed=4)
    generator = torch.Generator().manual_seed(42)
    batches = loader_batches(features, random_collator(tokenizer, seed=42), 2, generator)
    stacked = torch.stack([b["input_ids"] for b in batches])
    assert stacked.shape == (5, 2, 1000)
    assert torch.stack([b["labels"] for b in batches]).shape == (5, 2, 1000)
    # and the workers mask as one process does
    alone = loader_batches(features, random_collator(tokenizer, seed=42), 0)
    assert torch.equal(stacked, torch.stack([b["input_ids"] for b in alone]))


# --- TestDataCollatorForWholeWordMask (DataCollatorForLanguageModeling with
# whole_word_mask=True) ----------------------------------------------------------------


def added_token_features(tok, count=2, tensors=None):
    text = " ".join(ADDED_TOKENS)
    out = []
    for _ in range(count):
        encoding = tok(text, return_offsets_mapping=True)
        out.append(encoding if tensors is None else encoding.convert_to_tensors(tensors))
    return out


# mirrors TestDataCollatorForWholeWordMask.test_basic
def test_whole_word_mask_basic(added_tokens_tokenizer):
    tok = added_tokens_tokenizer
    features = added_token_features(tok)
    batch = random_collator(tok, whole_word_mask=True)(features)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 10)
    assert_masked_lm_batch(batch, features, tok)


# mirrors TestDataCollatorForWholeWordMask.test_with_numpy_inputs
def test_whole_word_mask_with_numpy_inputs(added_tokens_tokenizer):
    tok = added_tokens_tokenizer
    features = added_token_features(tok, tensors="np")
    assert isinstance(features[0]["input_ids"], np.ndarray)
    batch = random_collator(tok, whole_word_mask=True)(features)
    assert batch["input_ids"].shape == batch["labels"].shape == torch.Size((2, 10))


# mirrors TestDataCollatorForWholeWordMask.test_with_tensor_inputs
def test_whole_word_mask_with_tensor_inputs(added_tokens_tokenizer):
    tok = added_tokens_tokenizer
    features = added_token_features(tok, tensors="pt")
    assert isinstance(features[0]["input_ids"], torch.Tensor)
    batch = random_collator(tok, whole_word_mask=True)(features)
    assert batch["input_ids"].shape == batch["labels"].shape == torch.Size((2, 10))


# mirrors TestDataCollatorForWholeWordMask.test_seed_multiworker_dataloader
def test_whole_word_mask_seed_multiworker_dataloader(tokenizer):
    texts = sentences(10, seed=5, min_words=150, max_words=150, joined=0.3)
    features = [dict(tokenizer(t, return_offsets_mapping=True)) for t in texts]

    def inputs(seed, generator=None):
        batches = loader_batches(
            features, random_collator(tokenizer, whole_word_mask=True, seed=seed), 2, generator
        )
        assert [len(b["input_ids"]) for b in batches] == [2] * 5
        return [b["input_ids"] for b in batches]

    first = inputs(42, torch.Generator().manual_seed(42))
    assert all(torch.equal(a, b) for a, b in zip(first, inputs(42)))
    assert not all(torch.equal(a, b) for a, b in zip(first, inputs(43)))


# mirrors TestDataCollatorForWholeWordMask.test_immutability (its "pt" half)
def test_whole_word_mask_immutability(added_tokens_tokenizer):
    tok = added_tokens_tokenizer
    features = [dict(f) for f in added_token_features(tok)]
    assert_unchanged(random_collator(tok, whole_word_mask=True), features)
    tensors = [dict(f) for f in added_token_features(tok, tensors="pt")]
    assert_unchanged(random_collator(tok, whole_word_mask=True), tensors)


# --- TestNextSentencePrediction ---------------------------------------------------------


def pair_features(tokenizer, label, tensors=False):
    """Two sentence pairs of 5 tokens ([CLS] a b [SEP] c [SEP] is 6: one word less),
    token_type_ids 0/1, and a per-example label column."""
    out = []
    for i in range(2):
        example = dict(tokenizer("the of", "and"))
        if tensors:
            example = {k: torch.tensor(v) for k, v in example.items()}
        example[label] = i
        out.append(example)
    return out


def assert_pair_batch(batch, features, tokenizer, label, length):
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == (2, length)
    assert batch["labels"].shape == (2, length)
    assert batch[label].shape == (2,)
    assert batch[label].tolist() == [0, 1]
    assert_masked_lm_batch(batch, features, tokenizer, extra_keys={label})


# mirrors TestNextSentencePrediction.test_nsp
def test_nsp(tokenizer):
    features = pair_features(tokenizer, "next_sentence_label")
    batch = random_collator(tokenizer)(copy.deepcopy(features))
    assert_pair_batch(batch, features, tokenizer, "next_sentence_label", 6)
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1]


# mirrors TestNextSentencePrediction.test_nsp_with_padding
def test_nsp_with_padding(tokenizer):
    features = pair_features(tokenizer, "next_sentence_label")
    batch = random_collator(tokenizer, pad_to_multiple_of=8)(copy.deepcopy(features))
    assert_pair_batch(batch, features, tokenizer, "next_sentence_label", 8)


# mirrors TestNextSentencePrediction.test_immutability (its "pt" half)
def test_nsp_immutability(tokenizer):
    for multiple in (None, 8):
        collator = random_collator(tokenizer, pad_to_multiple_of=multiple)
        assert_unchanged(collator, pair_features(tokenizer, "next_sentence_label"))


# --- TestSentenceOrderPrediction --------------------------------------------------------


# mirrors TestSentenceOrderPrediction.test_sop
def test_sop(tokenizer):
    features = pair_features(tokenizer, "sentence_order_label")
    batch = random_collator(tokenizer)(copy.deepcopy(features))
    assert_pair_batch(batch, features, tokenizer, "sentence_order_label", 6)


# mirrors TestSentenceOrderPrediction.test_sop_with_tensor_inputs
def test_sop_with_tensor_inputs(tokenizer):
    features = pair_features(tokenizer, "sentence_order_label", tensors=True)
    batch = random_collator(tokenizer)(copy.deepcopy(features))
    assert_pair_batch(batch, features, tokenizer, "sentence_order_label", 6)


# mirrors TestSentenceOrderPrediction.test_sop_with_padding
def test_sop_with_padding(tokenizer):
    features = pair_features(tokenizer, "sentence_order_label", tensors=True)
    batch = random_collator(tokenizer, pad_to_multiple_of=8)(copy.deepcopy(features))
    assert_pair_batch(batch, features, tokenizer, "sentence_order_label", 8)


# mirrors TestSentenceOrderPrediction.test_immutability (its "pt" half)
def test_sop_immutability(tokenizer):
    for tensors in (False, True):
        features = pair_features(tokenizer, "sentence_order_label", tensors=tensors)
        assert_unchanged(random_collator(tokenizer), features)
        assert_unchanged(random_collator(tokenizer, pad_to_multiple_of=8), features)


# --- What transformers' collator documents, or older versions of the file tested -------


# transformers' DataCollatorForLanguageModeling docstring, "Example Options and
# Expectations" 1-4, and a sum below 1 (the rest left unchanged)
@pytest.mark.parametrize(
    "mask_replace, random_replace",
    [(None, None), (1.0, 0.0), (0.0, 1.0), (0.5, 0.4), (0.3, 0.2)],
)
def test_replacement_split(tokenizer, mask_replace, random_replace):
    kwargs = {}
    if mask_replace is not None:
        kwargs = dict(mask_replace_prob=mask_replace, random_replace_prob=random_replace)
    else:
        mask_replace, random_replace = 0.8, 0.1
    features = framed(tokenizer, [40] * 300, seed=6)
    batch = random_collator(tokenizer, **kwargs)(copy.deepcopy(features))
    selected = assert_masked_lm_batch(batch, features, tokenizer)
    original = padded_originals(tokenizer, features, batch["input_ids"].shape)
    rate = selected.sum().item() / (300 * 40)
    assert abs(rate - 0.15) < 0.015
    now, was = batch["input_ids"][selected], original[selected]
    masked = now.eq(tokenizer.mask_token_id)
    unchanged = now.eq(was)
    randomized = ~masked & ~unchanged
    shares = [x.float().mean().item() for x in (masked, randomized, unchanged)]
    expected = [mask_replace, random_replace, 1 - mask_replace - random_replace]
    # a random draw can give the original id back (1 / 122 here)
    assert shares == pytest.approx(expected, abs=0.035)
    if mask_replace == 1.0:
        assert masked.all()
    if random_replace == 0.0:
        assert not randomized.any()
    if mask_replace == 0.0:
        assert not masked.any()
    assert torch.isin(now[randomized], torch.tensor(ordinary_ids(tokenizer))).all()


# DataCollatorForLanguageModeling.__post_init__: the probabilities' checks
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mask_replace_prob=0.9, random_replace_prob=0.2),
        dict(random_replace_prob=0.5),  # with the default 0.8
        dict(mask_replace_prob=-0.1),
        dict(mask_replace_prob=1.1, random_replace_prob=0.0),
        dict(random_replace_prob=-0.1),
        dict(mlm_probability=-0.1),
        dict(mlm_probability=1.5),
    ],
)
def test_probabilities_out_of_range_are_a_value_error(tokenizer, kwargs):
    with pytest.raises(ValueError):
        random_collator(tokenizer, **kwargs)


# DataCollatorForLanguageModeling.__post_init__ accepts 0 <= mlm_probability <= 1
@pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="mlm_probability must lie in the open interval (0, 1) here (OptionError, a "
    "ValueError, at construction); transformers accepts 0.0 (nothing masked) and 1.0 "
    "(every non-special token masked)",
)
@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_mlm_probability_0_and_1_are_accepted(tokenizer, probability):
    features = framed(tokenizer, [30, 30], seed=7)
    batch = random_collator(tokenizer, mlm_probability=probability)(copy.deepcopy(features))
    selected = assert_masked_lm_batch(batch, features, tokenizer)
    assert selected.sum().item() == (60 if probability == 1.0 else 0)


# test_data_collator_for_language_modeling of earlier versions of the file (e.g.
# huggingface/transformers @ b45351d3f3159db0a941c5c5c98ef44e1abaea91): the masked-LM
# collator on examples given as lists of ids, not dicts
def test_examples_as_lists_of_ids(tokenizer):
    features = framed(tokenizer, [30, 60], seed=8)
    batch = random_collator(tokenizer)([list(f["input_ids"]) for f in features])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 62)
    selected = batch["labels"] != IGNORE
    original = padded_originals(tokenizer, features, batch["input_ids"].shape)
    assert torch.equal(batch["input_ids"][~selected], original[~selected])


# transformers' tip: examples carrying "special_tokens_mask" (tokenized with
# return_special_tokens_mask=True); the collator reads it and drops it from the batch
def test_special_tokens_mask_column(tokenizer):
    features = plain_examples(tokenizer, 200, seed=9, return_special_tokens_mask=True)
    assert all("special_tokens_mask" in f for f in features)
    # also flag the second word of every example as not to be masked
    for f in features:
        f["special_tokens_mask"] = list(f["special_tokens_mask"])
        f["special_tokens_mask"][2] = 1
    batch = random_collator(tokenizer, mlm_probability=0.5)(copy.deepcopy(features))
    assert "special_tokens_mask" not in batch
    kept = [{k: v for k, v in f.items() if k != "special_tokens_mask"} for f in features]
    selected = assert_masked_lm_batch(batch, kept, tokenizer)
    assert not selected[:, 2].any()
    assert selected[:, 1].any() and selected[:, 3].any()


def word_spans(offsets):
    """Token positions of each word, as transformers groups them: a token continues the
    word of the previous token when it starts where that one ended, unless either is a
    special token (offsets (0, 0))."""
    words, current, previous_end = [], None, None
    for position, (start, end) in enumerate(offsets):
        if start == end == 0:
            current, previous_end = None, None
            continue
        if current is None or start != previous_end:
            current = []
            words.append(current)
        current.append(position)
        previous_end = end
    return words


# DataCollatorForLanguageModeling(whole_word_mask=True): whole words are selected, and
# every selected token becomes the mask token; what test_calc_word_ids_and_prob_mask and
# test_whole_word_mask_internal check on transformers' private helpers, through the call
def test_whole_word_mask_selects_whole_words_and_masks_them_all(tokenizer):
    texts = sentences(150, seed=10, min_words=6, max_words=20, joined=0.4)
    features = [dict(tokenizer(t, return_offsets_mapping=True)) for t in texts]
    batch = random_collator(tokenizer, whole_word_mask=True, mlm_probability=0.3)(
        copy.deepcopy(features)
    )
    assert "offset_mapping" not in batch
    kept = [{k: v for k, v in f.items() if k != "offset_mapping"} for f in features]
    selected = assert_masked_lm_batch(batch, kept, tokenizer)
    assert batch["input_ids"][selected].eq(tokenizer.mask_token_id).all()
    chosen = total = long_words = 0
    for row, f in enumerate(features):
        for word in word_spans(f["offset_mapping"]):
            states = selected[row, word]
            assert states.all() or not states.any(), (texts[row], word)
            chosen += int(states.all())
            total += 1
            long_words += len(word) > 1
    assert long_words > 100
    assert abs(chosen / total - 0.3) < 0.05


# transformers' own offsets of test_calc_word_ids_and_prob_mask (special tokens by
# special_tokens_mask): which tokens form one word
@pytest.mark.parametrize(
    "offsets, special, words",
    [
        (
            [(0, 0), (0, 3), (3, 4), (5, 6), (6, 7), (8, 9)],
            [1, 0, 0, 0, 0, 0],
            [[1, 2], [3, 4], [5]],
        ),
        ([(0, 0), (0, 3), (3, 4), (5, 6), (6, 7), (0, 0)], [1, 0, 0, 0, 0, 1], [[1, 2], [3, 4]]),
        ([(0, 0), (0, 3), (3, 4), (0, 0), (6, 7), (0, 0)], [1, 0, 0, 1, 0, 1], [[1, 2], [4]]),
        ([(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)], [0] * 6, [[0, 1, 2, 3, 4, 5]]),
        ([(1, 1), (2, 2), (3, 4), (5, 6), (7, 8), (9, 10)], [0] * 6, [[i] for i in range(6)]),
        ([(0, 0)] * 6, [1] * 6, []),
    ],
)
def test_whole_words_from_transformers_offsets(tokenizer, offsets, special, words):
    ids = ordinary_ids(tokenizer)[:6]
    example = {"input_ids": ids, "offset_mapping": offsets, "special_tokens_mask": special}
    together = {(a, b) for word in words for a in word for b in word}
    apart = set()
    for seed in range(40):
        batch = random_collator(tokenizer, whole_word_mask=True, mlm_probability=0.5, seed=seed)(
            [copy.deepcopy(example)]
        )
        chosen = (batch["labels"][0] != IGNORE).tolist()
        assert not any(chosen[i] for i in range(6) if special[i])
        for word in words:
            assert len({chosen[i] for i in word}) == 1, (seed, word)
        apart |= {(a, b) for a in range(6) for b in range(6) if chosen[a] != chosen[b]}
    # tokens of different words were told apart at least once
    eligible = [i for i in range(6) if not special[i]]
    assert {(a, b) for a in eligible for b in eligible if (a, b) not in together} <= apart


# DataCollatorForLanguageModeling.__post_init__: whole_word_mask with replacement
# probabilities below 1 warns and sets mask_replace_prob=1, random_replace_prob=0
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="whole_word_mask=True with mask_replace_prob=0.8, random_replace_prob=0.1 given "
    "keeps the 80/10/10 split (decided once per word); transformers warns and forces "
    "mask_replace_prob=1, random_replace_prob=0 (every selected token the mask token)",
)
def test_whole_word_mask_forces_the_mask_token(tokenizer):
    texts = sentences(150, seed=11, min_words=6, max_words=20, joined=0.4)
    features = [dict(tokenizer(t, return_offsets_mapping=True)) for t in texts]
    collator = random_collator(
        tokenizer, whole_word_mask=True, mask_replace_prob=0.8, random_replace_prob=0.1
    )
    batch = collator(features)
    selected = batch["labels"] != IGNORE
    assert selected.any()
    assert batch["input_ids"][selected].eq(tokenizer.mask_token_id).all()


# test_mlm_mode and the others call transformers.set_seed(42) "for reproducibility": with
# seed=None, transformers' collator draws from the global torch RNG, which the Trainer
# seeds from TrainingArguments.seed
def test_seed_none_follows_the_global_rng(tokenizer):
    from transformers import set_seed

    features = framed(tokenizer, [300, 300], seed=12)
    set_seed(42)
    first = random_collator(tokenizer)(copy.deepcopy(features))
    set_seed(43)
    other = random_collator(tokenizer)(copy.deepcopy(features))
    assert not torch.equal(first["labels"], other["labels"])


# transformers masks every row of the batch independently (one Bernoulli draw per
# position), also rows with the same ids, as in its tests (two rows of range(10))
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="without se_index, masks are keyed on a hash of the example's ids: identical "
    "examples get identical masks within an epoch (documented); transformers draws each "
    "row independently",
)
def test_identical_examples_are_masked_independently(tokenizer):
    features = framed(tokenizer, [300], seed=13) * 2
    batch = random_collator(tokenizer, seed=42)(copy.deepcopy(features))
    assert not torch.equal(batch["labels"][0], batch["labels"][1])


# transformers' tests build their tokenizer from the vocabulary [UNK] [CLS] [SEP] [PAD]
# [MASK] and feed ids 0..999 (beyond it); its random replacements draw from
# range(len(tokenizer))
@pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="with a vocabulary of special tokens only (transformers' test tokenizer) there is "
    "no ordinary token to draw a random replacement from: the collator refuses "
    "random_replace_prob > 0 (an OptionError); transformers draws from every id, specials "
    "included",
)
def test_transformers_test_vocabulary():
    tok = BertTokenizerFast(vocab={"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4})
    features = [{"input_ids": list(range(1000))}, {"input_ids": list(range(1000))}]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        collator = random_collator(tok, mask_replace_prob=0.0, random_replace_prob=1.0)
        batch = collator(features)
    selected = batch["labels"] != IGNORE
    assert selected.any()
    assert not batch["input_ids"][selected].eq(tok.mask_token_id).any()


# --- A plain transformers.Trainer, end to end -------------------------------------------

SET_EPOCH_WARNING = "set_epoch was never called"


def set_epoch_warnings(caught):
    return [
        w
        for w in caught
        if issubclass(w.category, RuntimeWarning) and SET_EPOCH_WARNING in str(w.message)
    ]


def plain_trainer(tokenizer, tmp_path, collator, callbacks=()):
    """transformers.Trainer on a tiny BertForMaskedLM and a plain tokenized
    datasets.Dataset (input_ids, token_type_ids, attention_mask), 2 epochs on the CPU."""
    datasets = pytest.importorskip("datasets")
    from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

    texts = datasets.Dataset.from_dict({"text": sentences(48, seed=14, min_words=5)})
    train = texts.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    assert sorted(train.column_names) == ["attention_mask", "input_ids", "token_type_ids"]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    assert args.remove_unused_columns
    return Trainer(
        model=BertForMaskedLM(config),
        args=args,
        data_collator=collator,
        train_dataset=train,
        callbacks=list(callbacks),
    )


def assert_trained(trainer, output):
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 12  # 48 examples, batches of 8, 2 epochs
    assert all(math.isfinite(loss) for loss in losses)
    assert math.isfinite(output.training_loss)


@pytest.mark.slow
def test_plain_trainer_warns_in_the_second_epoch_without_the_epoch_callback(tokenizer, tmp_path):
    from transformers import TrainerCallback

    collator = random_collator(tokenizer, mlm_probability=0.15)

    class WarningsAtEpochEnd(TrainerCallback):
        def __init__(self):
            self.counts = []
            self.caught = None

        def on_epoch_end(self, args, state, control, **kwargs):
            self.counts.append(len(set_epoch_warnings(self.caught)))

    watch = WarningsAtEpochEnd()
    trainer = plain_trainer(tokenizer, tmp_path, collator, callbacks=[watch])
    with pytest.warns(RuntimeWarning, match=SET_EPOCH_WARNING) as caught:
        watch.caught = caught
        output = trainer.train()
    assert_trained(trainer, output)
    assert watch.counts == [0, 1]  # none in the first epoch, once in the second
    assert collator.epoch == 1


@pytest.mark.slow
def test_plain_trainer_with_the_epoch_callback_does_not_warn(tokenizer, tmp_path):
    collator = random_collator(tokenizer, mlm_probability=0.15)
    trainer = plain_trainer(tokenizer, tmp_path, collator, callbacks=[collator.epoch_callback()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = trainer.train()
    assert_trained(trainer, output)
    assert set_epoch_warnings(caught) == []
    assert collator.epoch == 2
