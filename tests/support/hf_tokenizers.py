"""Tiny Hugging Face tokenizers built in memory (tests and benchmarks of se_fairseq.hf): no
hub, no files. HF_WORDS are the words of their vocabularies."""

import numpy as np

HF_WORDS = tuple(
    "the of and to in is was for on that with as by at from his an were are which this be "
    "has had it not or have first one their its new after who they two her she been other "
    "when there all during into school time may years more most only over city some world "
    "would where later up such used many can state about national out known university "
    "united then made".split()
)


def tiny_bert_tokenizer(words=HF_WORDS):
    """A BertTokenizerFast (WordPiece): [PAD] 0, words and their '##' pieces, with [UNK],
    [CLS], [SEP] and [MASK] among them (not in one block at the start)."""
    from transformers import BertTokenizerFast

    vocab = {"[PAD]": 0}
    for i, word in enumerate(words):
        vocab[word] = len(vocab)
        vocab["##" + word[-2:]] = vocab.get("##" + word[-2:], len(vocab))
        if i == 3:
            vocab.update({"[UNK]": len(vocab), "[CLS]": len(vocab) + 1})
        if i == 20:
            vocab.update({"[SEP]": len(vocab), "[MASK]": len(vocab) + 1})
    return BertTokenizerFast(vocab=vocab)


def tiny_roberta_tokenizer(words=HF_WORDS):
    """A RobertaTokenizerFast (byte-level BPE): <s> 0, <pad> 1, </s> 2, <unk> 3, the byte
    alphabet, the merges that build each 'Ġ'+word, and <mask> last, as RoBERTa's."""
    from tokenizers import pre_tokenizers
    from transformers import RobertaTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    merges = []
    for word in words:
        for form in ("Ġ" + word, word):
            piece = form[0]
            for char in form[1:]:
                if piece + char not in vocab:
                    merges.append((piece, char))
                    vocab[piece + char] = len(vocab)
                piece += char
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizerFast(vocab=vocab, merges=merges)


def tiny_wordlevel_tokenizer(symbols=None, words=HF_WORDS, specials_last=True):
    """A PreTrainedTokenizerFast over a WordLevel model ('[CLS] text [SEP]').

    ``symbols``: the whole vocabulary in id order (e.g. a fairseq Dictionary's symbols,
    whose <s> <pad> </s> <unk> <mask> become the special tokens). Else the words, then
    (``specials_last``, as some DeBERTa/ModernBERT-style vocabularies place them) [CLS],
    [SEP], [PAD], [UNK], [MASK] and an extra special token '<extra_0>'."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if symbols is not None:
        vocab = {s: i for i, s in enumerate(symbols)}
        names = dict(
            bos_token="<s>",
            cls_token="<s>",
            eos_token="</s>",
            sep_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            mask_token="<mask>",
        )
        cls, sep = "<s>", "</s>"
    else:
        specials = ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<extra_0>"]
        order = list(words) + specials if specials_last else specials + list(words)
        vocab = {s: i for i, s in enumerate(order)}
        names = dict(
            cls_token="[CLS]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            unk_token="[UNK]",
            mask_token="[MASK]",
            additional_special_tokens=["<extra_0>"],
        )
        cls, sep = "[CLS]", "[SEP]"
    model = Tokenizer(models.WordLevel(vocab=vocab, unk_token=names["unk_token"]))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=model, **names)


def hf_examples(tokenizer, count, seed=0, min_words=3, max_words=24, words=HF_WORDS, **encode):
    """``count`` tokenized random sentences as dicts, each with random ``se_scores``
    (gamma(2, 2), one per input id) and its ``se_index``."""
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(count):
        n = int(rng.integers(min_words, max_words + 1))
        text = " ".join(rng.choice(words, size=n))
        example = dict(tokenizer(text, **encode))
        example["se_scores"] = rng.gamma(2.0, 2.0, size=len(example["input_ids"])).tolist()
        example["se_index"] = index
        examples.append(example)
    return examples
