"""Synthetic corpora and fairseq-train argument parsing, shared by tests and benchmarks.

Nothing here is needed to train. It makes the small data the test suite and the
benchmarks run on (offline, no download) and parses options exactly as
fairseq-train does, so tests see the configuration users get.
"""

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

# A RoBERTa small enough to train in seconds on a CPU.
TINY_ROBERTA = [
    "--arch",
    "roberta_base",
    "--encoder-layers",
    "2",
    "--encoder-embed-dim",
    "32",
    "--encoder-ffn-embed-dim",
    "64",
    "--encoder-attention-heads",
    "2",
    "--max-positions",
    "64",
    "--tokens-per-sample",
    "64",
]
NO_DROPOUT = ["--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0"]


def write_zipf_corpus(
    directory,
    *,
    vocab=200,
    splits=(("train", 300), ("valid", 30)),
    min_words=4,
    max_words=40,
    seed=0,
    write_dict=False,
):
    """Lines of words ``w0 .. w{vocab-1}`` drawn from a Zipf law (p ~ 1/rank), each
    min_words to max_words - 1 words long: enough structure for a tiny MLM to learn.

    Writes ``<split>.txt`` for each (split, number of lines), and with ``write_dict``
    a fairseq ``dict.txt`` holding every word (so binarizing needs no counting and
    the dictionary size is ``vocab`` whatever the sample). Returns {name: path}.
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)])
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    paths = {}
    for split, lines in splits:
        paths[split] = os.path.join(directory, f"{split}.txt")
        with open(paths[split], "w") as f:
            for _ in range(lines):
                f.write(
                    " ".join(rng.choice(words, size=rng.integers(min_words, max_words), p=p)) + "\n"
                )
    if write_dict:
        paths["dict"] = os.path.join(directory, "dict.txt")
        with open(paths["dict"], "w") as f:
            f.writelines(f"{w} {vocab - i}\n" for i, w in enumerate(words))
    return paths


def binarize(text_dir, dest, srcdict=None, splits=("train", "valid"), workers=1):
    """fairseq-preprocess ``text_dir/<split>.txt`` into ``dest`` (mmap format)."""
    prefixes = {"train": "--trainpref", "valid": "--validpref", "test": "--testpref"}
    cmd = [
        sys.executable,
        "-m",
        "fairseq_cli.preprocess",
        "--only-source",
        "--destdir",
        dest,
        "--workers",
        str(workers),
    ]
    for split in splits:
        cmd += [prefixes[split], os.path.join(text_dir, f"{split}.txt")]
    if srcdict:
        cmd += ["--srcdict", srcdict]
    subprocess.run(cmd, check=True, capture_output=True)
    return dest


def write_mmap_split(prefix, sequences, dtype=np.uint16):
    """Write token sequences as a binarized split (``prefix.bin``/``.idx``) with fairseq's
    own mmap builder, as fairseq-preprocess does; returns the prefix."""
    import torch
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    builder = MMapIndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for seq in sequences:
        builder.add_item(torch.as_tensor(np.asarray(seq, dtype=np.int64)))
    builder.finalize(prefix + ".idx")
    return prefix


def split_tokens(split_path):
    """Token arrays of a binarized split, read with fairseq's own reader."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    ds = MMapIndexedDataset(split_path)
    return [ds[i].numpy().copy() for i in range(len(ds))]


def write_scores(
    split_path, scores=None, *, metric="correctness", prefix=None, seed=1, blocking=None
):
    """A score file for a split: ``scores``, or gamma(2, 2) draws (the pipeline's
    behaviour and speed do not depend on their values). Returns its two paths."""
    from se_fairseq.data import score_file

    fingerprint = score_file.corpus_fingerprint(split_path)
    if scores is None:
        scores = np.random.default_rng(seed).gamma(2.0, 2.0, size=fingerprint["num_tokens"])
    return score_file.write(
        prefix or score_file.default_prefix(split_path),
        scores,
        metric=metric,
        checkpoint={"path": "synthetic scores"},
        blocking=blocking if blocking is not None else {"independent_of_blocking": True},
        fingerprint=fingerprint,
    )


def save_untrained_checkpoint(data, path, model_args, seed=0, head_bias_std=0.0):
    """A masked_lm model of ``model_args`` over ``data``'s dictionary, random weights from
    torch seed ``seed``, saved at ``path`` as fairseq 0.12 saves checkpoints (no training
    run); returns ``path``. fairseq starts the LM head's output bias at zero; a trained
    head has one, and ``head_bias_std`` > 0 draws it from N(0, head_bias_std^2)."""
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [data, "--task", "masked_lm", "--criterion", "masked_lm", *model_args],
    )
    torch.manual_seed(seed)
    model = tasks.setup_task(args).build_model(args)
    if head_bias_std:
        with torch.no_grad():
            model.encoder.lm_head.bias.normal_(0.0, head_bias_std)
    cfg = OmegaConf.to_container(
        convert_namespace_to_omegaconf(args), resolve=True, enum_to_str=True
    )
    torch.save(
        {
            "cfg": cfg,
            "model": model.state_dict(),
            "extra_state": {"epoch": 1},
            "optimizer_history": [
                {
                    "criterion_name": "MaskedLmLoss",
                    "optimizer_name": "FairseqAdam",
                    "lr_scheduler_state": {"best": None},
                    "num_updates": 0,
                }
            ],
        },
        path,
    )
    return path


def fairseq_train(data, save_dir, *extra, max_update=10, env=None):
    """Run the installed fairseq-train on TINY_ROBERTA (CPU, fairseq's data loading with
    --num-workers 0 unless ``extra`` says otherwise); the log is in ``.stdout``."""
    cmd = [
        "fairseq-train",
        data,
        *TINY_ROBERTA,
        "--cpu",
        "--seed",
        "3",
        "--batch-size",
        "8",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--max-update",
        str(max_update),
        "--log-format",
        "simple",
        "--log-interval",
        "5",
        "--no-epoch-checkpoints",
        "--save-dir",
        save_dir,
        "--num-workers",
        "0",
        *extra,
    ]
    return subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, **(env or {})),
    )


def parse_training_args(data, *args):
    """The config fairseq-train builds from ``fairseq-train DATA ARGS``."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parsed = options.parse_args_and_arch(options.get_training_parser(), [data, *args])
    return convert_namespace_to_omegaconf(parsed)


def setup_task(data, *args):
    """(task, cfg) as fairseq-train sets them up."""
    from fairseq import tasks

    cfg = parse_training_args(data, *args)
    return tasks.setup_task(cfg.task), cfg


def make_task(data, *extra):
    """(task, cfg) on TINY_ROBERTA (CPU, seed 5, criterion masked_lm) for ``extra``'s
    --task and its options."""
    return setup_task(
        data, *TINY_ROBERTA, "--cpu", "--seed", "5", "--criterion", "masked_lm", *extra
    )


def epoch_batches(task, split="train", epoch=1, batch_size=8):
    """Every batch of one epoch of ``split``, as fairseq-train's iterator gives them."""
    task.load_dataset(split)
    itr = task.get_batch_iterator(
        task.dataset(split), max_sentences=batch_size, seed=5, epoch=epoch, num_workers=0
    ).next_epoch_itr(shuffle=True)
    return list(itr)


def sentence_scores(split_path):
    """(sentences, their scores) read straight from the split and its score file."""
    sentences = split_tokens(split_path)
    flat = np.load(split_path + ".se_scores.npy").astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sentences])])
    return sentences, [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def flat_scores_of_batch(batch, split_path):
    """Scores of each row of an eos-mode batch (0 for <s>), read straight from the score file."""
    _, sentence_score = sentence_scores(split_path)
    return [np.concatenate([[0.0], sentence_score[i]]) for i in batch["id"].tolist()]


def device_params():
    """pytest parameters for the devices a test runs on: the CPU, and CUDA marked
    ``cuda`` and skipped (saying why) where torch sees no GPU."""
    import pytest
    import torch

    return [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda",
            id="cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(
                    not torch.cuda.is_available(), reason="needs a CUDA device (torch sees no GPU)"
                ),
            ],
        ),
    ]


# -- the option checks of task se_mlm (se_fairseq.tasks.se_mlm_config._check_config) ----------


@dataclass(frozen=True)
class OptionRule:
    """One rule of se_mlm's option checks: the options it refuses, each with the message the
    user reads, and accepted neighbours at the edges of what it allows. Options are fields of
    SelfEvolutionMLMConfig (``option_argv`` spells them as fairseq-train arguments)."""

    name: str
    refused: tuple[tuple[dict, str], ...]
    accepted: tuple[dict, ...] = ()


_SUM_ABOVE_1 = (
    "--leave-unmasked-prob plus --random-token-prob must not exceed 1 "
    "(unset, each is 0.1 with --se-select random, else 0)"
)
_SPAN_OPTIONS = (
    "--mask-multiple-length/--mask-stdev are fairseq random-masking options; they apply only "
    "with --se-select random"
)

# The one table of the refusals (tests/test_options.py takes every row through _check_config
# directly and through fairseq-train's parser, and the first refusal of each rule through the
# task's set-up; tests/test_plugin.py the first --mask-prob one through fairseq-train).
OPTION_RULES = (
    OptionRule(
        "--se-online selects by score",
        refused=(
            (
                {"se_online": True, "se_select": "random"},
                "--se-online selects by score: use --se-select topk, sample or threshold",
            ),
        ),
        accepted=(
            {"se_online": True, "se_select": "sample"},
            {"se_online": True, "se_select": "threshold"},
        ),
    ),
    OptionRule(
        "--se-online scores with a live metric",
        refused=(
            (
                {"se_online": True, "se_metric": "rarity"},
                "--se-online scores with the live model: --se-metric must be one of "
                "correctness, confidence, not rarity (a score file's metric)",
            ),
        ),
        accepted=({"se_online": True, "se_select": "topk", "se_metric": "confidence"},),
    ),
    OptionRule(
        "--mask-prob in (0, 1)",
        refused=tuple(
            ({"mask_prob": p}, f"--mask-prob must lie in (0, 1), got {p}")
            for p in (1.5, 0.0, 1.0, -0.1)
        ),
        accepted=({"mask_prob": 1e-9}, {"mask_prob": 1 - 1e-9}),
    ),
    OptionRule(
        "--leave-unmasked-prob in [0, 1]",
        refused=tuple(
            ({"leave_unmasked_prob": p}, f"--leave-unmasked-prob must lie in [0, 1], got {p}")
            for p in (1.5, -0.1, -1e-9, 1 + 1e-9)
        ),
        accepted=({"leave_unmasked_prob": 0.0}, {"leave_unmasked_prob": 1.0}),
    ),
    OptionRule(
        "--random-token-prob in [0, 1]",
        refused=tuple(
            ({"random_token_prob": p}, f"--random-token-prob must lie in [0, 1], got {p}")
            for p in (2.0, -0.5, -1e-9, 1 + 1e-9)
        ),
        accepted=({"random_token_prob": 0.0}, {"random_token_prob": 1.0}),
    ),
    OptionRule(
        "replacement probabilities sum to at most 1",
        refused=(
            ({"leave_unmasked_prob": 0.6, "random_token_prob": 0.5}, _SUM_ABOVE_1),
            ({"leave_unmasked_prob": 0.5, "random_token_prob": 0.5 + 1e-9}, _SUM_ABOVE_1),
            # with --se-select random an unset option is masked_lm's 0.1: 0.95 + 0.1 > 1
            ({"se_select": "random", "leave_unmasked_prob": 0.95}, _SUM_ABOVE_1),
            ({"se_select": "random", "random_token_prob": 0.91}, _SUM_ABOVE_1),
            ({"se_select": "random", "random_token_prob": 0.95}, _SUM_ABOVE_1),
        ),
        accepted=(
            {"leave_unmasked_prob": 0.95},  # SE modes: an unset random-token-prob is 0
            {"leave_unmasked_prob": 0.5, "random_token_prob": 0.5},  # exactly 1
            {"leave_unmasked_prob": 0.4, "random_token_prob": 0.6},
            {"leave_unmasked_prob": 0.0, "random_token_prob": 1.0},
            {"se_select": "random", "leave_unmasked_prob": 0.9},  # + random's default 0.1 = 1
        ),
    ),
    OptionRule(
        "--se-temperature positive",
        refused=(
            (
                {"se_select": "sample", "se_temperature": -0.5},
                "--se-temperature must be positive, got -0.5",
            ),
            ({"se_temperature": 0.0}, "--se-temperature must be positive, got 0.0"),
            ({"se_temperature": -1.0}, "--se-temperature must be positive, got -1.0"),
            (
                {"se_select": "sample", "se_temperature": -1.0},
                "--se-temperature must be positive, got -1.0",
            ),
        ),
        accepted=({"se_select": "sample", "se_temperature": 1e-6}, {"se_temperature": 1e-9}),
    ),
    OptionRule(
        "span options only with --se-select random",
        refused=(
            ({"mask_multiple_length": 3}, _SPAN_OPTIONS),
            ({"mask_multiple_length": 2}, _SPAN_OPTIONS),
            ({"se_select": "sample", "mask_multiple_length": 2}, _SPAN_OPTIONS),
            ({"mask_stdev": 1.0}, _SPAN_OPTIONS),
            ({"mask_stdev": 0.5}, _SPAN_OPTIONS),
        ),
        accepted=({"se_select": "random", "mask_multiple_length": 3, "mask_stdev": 1.0},),
    ),
    OptionRule(
        "--se-threshold only with --se-select threshold",
        refused=(
            (
                {"se_select": "topk", "se_threshold": 1.0},
                "--se-threshold applies to --se-select threshold, not topk",
            ),
            ({"se_threshold": 0.2}, "--se-threshold applies to --se-select threshold, not topk"),
            (
                {"se_select": "sample", "se_threshold": 0.2},
                "--se-threshold applies to --se-select threshold, not sample",
            ),
        ),
        accepted=({"se_select": "threshold", "se_threshold": 0.2},),
    ),
    OptionRule(
        "--se-select threshold without a default needs --se-threshold",
        refused=(
            (
                {"se_select": "threshold", "se_metric": "rarity"},
                "--se-select threshold with --se-metric rarity needs --se-threshold "
                "(there is no default for that metric)",
            ),
        ),
        accepted=(
            {"se_select": "threshold"},
            {"se_select": "threshold", "se_metric": "confidence"},
            {"se_select": "threshold", "se_metric": "rarity", "se_threshold": 7.0},
            {"se_select": "threshold", "se_metric": "rarity", "se_threshold": 5.0},
        ),
    ),
    OptionRule(
        "--se-random-share in [0, 1]",
        refused=tuple(
            ({"se_random_share": p}, f"--se-random-share must lie in [0, 1], got {p}")
            for p in (1.5, -0.1, -1e-9, 1 + 1e-9)
        ),
        accepted=(
            {"se_random_share": 0.0},
            {"se_random_share": 1.0},
            {"se_select": "sample", "se_random_share": 1.0},
        ),
    ),
    OptionRule(
        "--se-random-share only with topk or sample",
        refused=tuple(
            (
                {"se_select": mode, "se_random_share": 0.5},
                f"--se-random-share splits the budget of --se-select topk or sample, not {mode}",
            )
            for mode in ("threshold", "random")
        ),
        accepted=({"se_select": "sample", "se_random_share": 0.5},),
    ),
    OptionRule(
        "no data2vec batches",
        refused=(
            ({"d2v2_multi": True}, "--d2v2-multi (data2vec batches) is not supported by se_mlm"),
        ),
        accepted=({"d2v2_multi": False},),
    ),
)


def option_argv(options):
    """fairseq-train arguments for config ``options`` (True: the flag, False: nothing;
    ``--name=value``, which argparse reads whatever the value, -1e-09 included)."""
    argv = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv.append(f"{flag}={value}")
    return argv


def _option_id(rule, options):
    return f"{rule.name} | {' '.join(option_argv(options)) or 'defaults'}"


def option_refusals(first_of_each_rule=False):
    """pytest parameters (options, message) of OPTION_RULES' refusals."""
    import pytest

    return [
        pytest.param(options, message, id=_option_id(rule, options))
        for rule in OPTION_RULES
        for options, message in (rule.refused[:1] if first_of_each_rule else rule.refused)
    ]


def option_acceptances():
    """pytest parameters (options) of OPTION_RULES' accepted neighbours."""
    import pytest

    return [
        pytest.param(options, id=_option_id(rule, options))
        for rule in OPTION_RULES
        for options in rule.accepted
    ]


# Tiny Hugging Face tokenizers built in memory (tests and benchmarks of se_fairseq.hf):
# no hub, no files. WORDS are the words of their vocabularies.
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


# -- se-score as it was before issue 24 (a frozen copy: the bit-identity reference) ----------


def frozen_batched_scores(model, items, slices, too_long, chunks, pad, metric, max_tokens=16384):
    """fp32 scores of every token, computed as se-score computed them before issue 24:
    per chunk, the blocks that fit sorted longest first (stable), packed into batches of
    at most ``max_tokens`` tokens with padding, fairseq's ``collate_tokens``, the encoder
    features, and the LM head over the non-padding positions (logsumexp - logit of the true
    token, or the entropy of the log-softmax). Blocks the model cannot take score 0."""
    import torch
    import torch.nn.functional as F
    from fairseq.data import data_utils

    slices = np.asarray(slices, dtype=np.int64)
    out = np.zeros(int(slices[:, 1].max()) if len(slices) else 0, dtype=np.float32)
    for first, last in chunks:
        sizes = slices[first:last, 1] - slices[first:last, 0] + 1
        order = first + np.argsort(-sizes, kind="stable")
        order = [int(b) for b in order if not too_long[b]]
        batches, batch, longest = [], [], 0
        for b in order:
            n = int(slices[b, 1] - slices[b, 0] + 1)
            if batch and max(longest, n) * (len(batch) + 1) > max_tokens:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(b)
            longest = max(longest, n)
        if batch:
            batches.append(batch)
        for batch in batches:
            src = data_utils.collate_tokens([items[b] for b in batch], pad)
            with torch.no_grad():
                features, _ = model(src, features_only=True)
                keep = src.ne(pad)
                logits = model.encoder.output_layer(features[keep]).float()
                targets = src[keep]
                if metric == "correctness":
                    flat = torch.logsumexp(logits, -1) - logits.gather(
                        -1, targets.unsqueeze(-1)
                    ).squeeze(-1)
                else:
                    lprobs = F.log_softmax(logits, dim=-1)
                    flat = -(lprobs.exp() * lprobs).sum(-1)
            scores = torch.zeros(src.shape)
            scores[keep] = flat
            for row, b in enumerate(batch):
                start, end = int(slices[b, 0]), int(slices[b, 1])
                out[start:end] = scores[row, 1 : 1 + end - start].numpy()
    return out
