"""BERT: fairseq ``--arch hf_bert*`` (``se_fairseq/models/bert.py``) <-> ``BertForMaskedLM``.

The fairseq model computes what ``BertForMaskedLM`` computes (positions from 0,
token type 0, LayerNorm epsilon 1e-12, exact gelu, BERT's head); the weights map
one to one by name, except the vocabulary order:

- fairseq fixes ``<s> <pad> </s> <unk>`` to ids 0-3 and its masked_lm/se_mlm tasks
  append ``<mask>`` as the last id; a WordPiece vocabulary puts its special tokens
  anywhere (bert-base-uncased: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103).
- So the fairseq order is **[CLS] [PAD] [SEP] [UNK], then every other HF row in
  ascending HF id, then [MASK]** (:func:`token_order`): [CLS] -> ``<s>``, [PAD] ->
  ``<pad>``, [SEP] -> ``</s>``, [UNK] -> ``<unk>``, [MASK] -> ``<mask>``, and ``dict.txt``
  lists the other tokens in HF order (``[unused0]`` ... included). The token
  embedding and the LM-head bias are permuted by it; the permutation is stored in
  the model (``encoder.hf_token_ids``), so the way back restores HF's order bit
  for bit, whatever training did in between.
- The token-type table is carried whole (for the round trip); fairseq reads row 0
  only (one segment, as BERT encodes a single sentence). Whether a checkpoint
  *relied* on type 1 for its MLM cannot be read from its weights: what converts
  exactly, and what ``--check`` verifies, is BERT on single-segment input.

Refused: other activations than the exact gelu, relative position embeddings,
LayerNorm epsilon other than 1e-12, decoder / cross-attention configurations, an
untied decoder, heads other than BertForMaskedLM's (missing ``cls.predictions``),
a tokenizer without the five special tokens or with ids beyond the model's rows.

The tokenizer is the checkpoint's own, read with transformers' ``BertTokenizerFast``
(lower-casing as its ``tokenizer_config.json`` says); from-hf saves it beside the
checkpoint as ``tokenizer/`` (with a ``vocab.txt`` for ``--bpe bert``), and
:func:`tokenize_files` (``se-convert tokenize``) writes raw text as the pieces
``fairseq-preprocess --srcdict dict.txt`` binarizes to the model's ids.
"""

import logging
import os
import re
from collections.abc import Iterable
from typing import Optional, Union

from .atomic import save_pretrained_files, tmp_path, write_text
from .dependencies import quiet_transformers, require_transformers
from .dictionaries import MASK, SPECIALS, dict_text, load_dictionary, placeholder, valid_word
from .errors import ConversionError, OutputExistsError, listed, refuse
from .fairseq_io import ENCODER_SHAPE, model_flags
from .family import FairseqModel, Family
from .layout import FS
from .state_dicts import hf_to_fairseq_state

logger = logging.getLogger("se_fairseq.convert")

LAYER_NORM_EPS = 1e-12
HF = "bert."
HF_HEAD = "cls.predictions."
TOKEN_IDS = "encoder.hf_token_ids"  # the model's buffer: HF row of each fairseq id

EMBEDDINGS = (  # fairseq (under FS) -> HF (under HF)
    ("embed_tokens.weight", "embeddings.word_embeddings.weight"),  # rows permuted
    ("embed_positions.weight", "embeddings.position_embeddings.weight"),
    ("layernorm_embedding.weight", "embeddings.LayerNorm.weight"),
    ("layernorm_embedding.bias", "embeddings.LayerNorm.bias"),
    ("embed_token_types.weight", "embeddings.token_type_embeddings.weight"),
)
LM_HEAD = (  # fairseq (under FS_HEAD) -> HF (under HF_HEAD); FS_HEAD + weight is tied
    ("bias", "bias"),  # rows permuted
    ("dense.weight", "transform.dense.weight"),
    ("dense.bias", "transform.dense.bias"),
    ("layer_norm.weight", "transform.LayerNorm.weight"),
    ("layer_norm.bias", "transform.LayerNorm.bias"),
)
HF_IGNORED = re.compile(r"^bert\.embeddings\.(position_ids|token_type_ids)$")  # buffers
HF_DROPPED = re.compile(r"^(bert\.pooler\.|cls\.seq_relationship\.)")  # pooler, NSP head

# the tokenizer's special tokens in the order of fairseq's first ids, then <mask>
ROLES = ("cls", "pad", "sep", "unk")
BERT_NAMES = {"cls": "[CLS]", "pad": "[PAD]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def token_order(special_ids, vocab_size):
    """The HF row of each fairseq id: [CLS] [PAD] [SEP] [UNK] (``special_ids`` in
    :data:`ROLES` order, then [MASK]), the other rows in ascending HF id, [MASK] last."""
    *first, mask = special_ids
    specials = set(special_ids)
    return list(first) + [i for i in range(vocab_size) if i not in specials] + [mask]


# -- the tokenizer ---------------------------------------------------------------------


def has_tokenizer(directory):
    return any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_FILES)


def load_tokenizer(directory, transformers):
    """The BERT tokenizer saved in ``directory`` (tokenizer.json or vocab.txt, with its
    tokenizer_config.json: lower-casing and special tokens as the checkpoint says)."""
    if not has_tokenizer(directory):
        raise ConversionError(f"{directory}: no BERT tokenizer ({' or '.join(TOKENIZER_FILES)})")
    try:
        with quiet_transformers(transformers):
            return transformers.BertTokenizerFast.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        raise ConversionError(f"{directory}: cannot load its tokenizer ({err})") from None


def special_ids(tokenizer, where):
    """The ids of [CLS] [PAD] [SEP] [UNK] [MASK] (by the tokenizer's own names)."""
    vocab = tokenizer.get_vocab()
    ids, problems = [], []
    for role in (*ROLES, "mask"):
        token = getattr(tokenizer, f"{role}_token")
        if token is None or str(token) not in vocab:
            problems.append(f"no {role} token ({BERT_NAMES[role]}) in the vocabulary")
        else:
            ids.append(vocab[str(token)])
    if not problems and len(set(ids)) < len(ids):
        problems.append(f"the special tokens share ids: {dict(zip((*ROLES, 'mask'), ids))}")
    if problems:
        refuse(f"the tokenizer of {where}", problems)
    return ids


def vocabulary(tokenizer, vocab_size, where):
    """``(HF row -> token or None, the special ids, fairseq order)`` for a model of
    ``vocab_size`` rows; refuses a tokenizer with ids beyond the rows."""
    by_id = {}
    for token, i in tokenizer.get_vocab().items():
        by_id.setdefault(int(i), token)
    if by_id and max(by_id) >= vocab_size:
        refuse(
            f"the tokenizer of {where}",
            f"it has ids up to {max(by_id)} but the model has {vocab_size} embedding rows",
        )
    specials = special_ids(tokenizer, where)
    return by_id, specials, token_order(specials, vocab_size)


def dict_words(by_id, order):
    """dict.txt words for fairseq ids 4 .. V-2 (HF rows ``order[4:-1]``): the token, or a
    ``madeupwordNNNN`` placeholder where the row has no token or one dict.txt cannot
    hold (whitespace, a name fairseq reserves). Returns ``(words, placeholders)``."""
    taken = set(by_id.values())
    seen = set(SPECIALS) | {MASK}
    words, placeholders = [], 0
    for hf_id in order[len(SPECIALS) : -1]:
        word = by_id.get(hf_id)
        if word is None or not valid_word(word, seen):
            word = placeholder(seen, taken)
            placeholders += 1
        seen.add(word)
        words.append(word)
    return words, placeholders


def vocab_txt(names):
    """vocab.txt text: one token per HF row, in HF order."""
    return "".join(f"{name}\n" for name in names)


def save_tokenizer(tokenizer, directory):
    """``save_pretrained`` (tokenizer.json, tokenizer_config.json) plus a vocab.txt in HF
    order: fairseq's ``--bpe bert --bpe-vocab-file`` reads one, transformers 5 writes none."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    names = [by_id.get(i, f"[unused_row_{i}]") for i in range(max(by_id) + 1)]
    files = save_pretrained_files(tokenizer, directory)
    return files + [write_text(os.path.join(directory, "vocab.txt"), vocab_txt(names))]


def check_tokenizer_fits(tokenizer, token_ids, dictionary, where):
    """Refuse a tokenizer whose ids are not the model's: its special tokens must sit at
    the HF rows of fairseq's specials, and each dict.txt word at its HF row."""
    specials = special_ids(tokenizer, where)
    fs_ids = [0, 1, 2, 3, len(token_ids) - 1]
    expected = [int(token_ids[i]) for i in fs_ids]
    problems = []
    if specials != expected:
        problems.append(
            f"its special tokens (cls, pad, sep, unk, mask) have ids {specials}; the "
            f"model's are {expected}"
        )
    if dictionary is not None:
        vocab = tokenizer.get_vocab()
        wrong = [
            (dictionary[i], vocab.get(dictionary[i]), int(token_ids[i]))
            for i in range(len(SPECIALS), len(token_ids) - 1)
            if not dictionary[i].startswith("madeupword")
            and vocab.get(dictionary[i]) != int(token_ids[i])
        ]
        if wrong:
            problems.append(
                f"{len(wrong)} dict.txt words have other ids in it (word, its id, the "
                f"model's): {listed(wrong, 4)}"
            )
    if problems:
        refuse(f"the tokenizer {where} with this model", problems)


# -- fairseq -> HF -------------------------------------------------------------------------


# -- HF -> fairseq -------------------------------------------------------------------------


def check_hf_config(c):
    """Every BertConfig setting the fairseq model cannot reproduce, as messages."""
    problems = []
    if c.get("model_type") != "bert":
        problems.append(f"model_type {c.get('model_type')!r}: not a BERT model")
    if c.get("is_decoder") or c.get("add_cross_attention"):
        problems.append(
            "a decoder / cross-attention configuration (is_decoder, add_cross_attention)"
        )
    if c.get("hidden_act", "gelu") != "gelu":
        problems.append(
            f"hidden_act {c.get('hidden_act')!r}: the fairseq model computes the exact "
            "gelu only (fairseq's 'gelu', HF's 'gelu')"
        )
    if (c.get("position_embedding_type") or "absolute") != "absolute":
        problems.append(
            f"position_embedding_type {c['position_embedding_type']!r}: the fairseq model "
            "has learned absolute positions only"
        )
    eps = float(c.get("layer_norm_eps", LAYER_NORM_EPS))
    if abs(eps - LAYER_NORM_EPS) > 1e-15:
        problems.append(
            f"layer_norm_eps {eps:g}: the fairseq model (BERT's) uses {LAYER_NORM_EPS:g}"
        )
    if c.get("tie_word_embeddings", True) is False:
        problems.append(
            "tie_word_embeddings=False (an untied decoder): the fairseq model ties it to "
            "the token embeddings"
        )
    if c.get("embedding_size", c.get("hidden_size")) != c.get("hidden_size"):
        problems.append("factorised embeddings (embedding_size != hidden_size)")
    if int(c.get("type_vocab_size", 2)) < 1:
        problems.append(f"type_vocab_size {c.get('type_vocab_size')}: token type 0 is needed")
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    if hidden and heads and hidden % heads:
        problems.append(f"hidden_size {hidden} is not a multiple of {heads} heads")
    return problems


# the hf_bert presets: (ENCODER_SHAPE..., type_vocab_size) -> --arch
ARCH_PRESETS = {
    (12, 768, 3072, 12, 512, 2): "hf_bert_base",
    (24, 1024, 4096, 16, 512, 2): "hf_bert_large",
}


def fairseq_args(options):
    """``(--arch, the fairseq-train model flags)`` that rebuild this model."""
    names = (*ENCODER_SHAPE, "type_vocab_size")
    preset = tuple(options[name] for name in names)
    if preset in ARCH_PRESETS:
        return ARCH_PRESETS[preset], []
    return "hf_bert", model_flags(options, names)


# -- raw text -> fairseq-preprocess input ------------------------------------------------------


def _tokenizer_dir(model_dir):
    sub = os.path.join(model_dir, "tokenizer")
    return sub if has_tokenizer(sub) else model_dir


PathLike = Union[str, "os.PathLike[str]"]


def tokenize_files(
    model_dir: PathLike,
    inputs: Iterable[PathLike],
    out_dir: PathLike,
    overwrite: bool = False,
    batch_lines: int = 1000,
) -> list[tuple[str, int, int]]:
    """Raw text files -> the checkpoint's WordPiece pieces, named as in its ``dict.txt``.

    ``model_dir`` is what ``se-convert from-hf`` wrote (``dict.txt`` and ``tokenizer/``;
    a directory with ``dict.txt`` and the tokenizer files themselves works too). Each
    input line becomes one output line ``out_dir/<input name>`` of space-separated
    pieces (lower-cased or not as the tokenizer's config says; no [CLS]/[SEP], which
    the tasks add as ``<s>`` and ``</s>``), in fairseq's names (see :func:`token_order`),
    so ``fairseq-preprocess --only-source --srcdict model_dir/dict.txt`` gives exactly
    the ids of the HF tokenizer. Written atomically. Returns
    ``[(output path, lines, pieces)]``.
    """
    transformers = require_transformers()
    model_dir, out_dir = os.fspath(model_dir), os.fspath(out_dir)
    dict_path = os.path.join(model_dir, "dict.txt")
    if not os.path.isfile(dict_path):
        raise ConversionError(
            f"{model_dir}: no dict.txt (give the folder se-convert from-hf wrote)"
        )
    inputs = [os.fspath(p) for p in inputs]
    outputs = [os.path.join(out_dir, os.path.basename(p)) for p in inputs]
    for src, dst in zip(inputs, outputs):
        if not os.path.isfile(src):
            raise ConversionError(f"{src}: no such file")
        if os.path.abspath(src) == os.path.abspath(dst):
            raise ConversionError(f"{dst} would overwrite its input; choose another --out-dir")
        if os.path.exists(dst) and not overwrite:
            raise OutputExistsError(f"{dst} exists")
    if len(set(outputs)) < len(outputs):
        raise ConversionError(f"two inputs have the same file name: {listed(inputs)}")
    dictionary = load_dictionary(dict_path)
    tokenizer = load_tokenizer(_tokenizer_dir(model_dir), transformers)
    vocab_size = len(dictionary) + (0 if MASK in dictionary.indices else 1)
    by_id, specials, order = vocabulary(tokenizer, vocab_size, model_dir)
    import torch

    check_tokenizer_fits(tokenizer, torch.tensor(order), dictionary, model_dir)
    name_of: list[Optional[str]] = [None] * vocab_size  # HF id -> fairseq name
    for fs_id, hf_id in enumerate(order):
        name_of[hf_id] = MASK if fs_id == vocab_size - 1 else dictionary[fs_id]

    os.makedirs(out_dir, exist_ok=True)
    done = []
    for src, dst in zip(inputs, outputs):
        lines = pieces = 0
        tmp = tmp_path(dst)
        with open(src, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as out:
            while True:
                batch = [line.rstrip("\n") for _, line in zip(range(batch_lines), f)]
                if not batch:
                    break
                with quiet_transformers(
                    transformers
                ):  # no "longer than 512" notes: blocks cut later
                    ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
                for row in ids:
                    out.write(" ".join(name_of[i] for i in row) + "\n")
                    pieces += len(row)
                lines += len(batch)
        os.replace(tmp, dst)
        done.append((dst, lines, pieces))
    return done


# -- the family ------------------------------------------------------------------------------


class BertFamily(Family):
    name = "bert"
    hf_class = "BertForMaskedLM"
    hf_config_class = "BertConfig"
    hf_model_types = ("bert",)
    hf_prefix = HF
    hf_head_prefix = HF_HEAD
    hf_outputs = (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    )
    fairseq_outputs = ("tokenizer",)
    embeddings = EMBEDDINGS
    lm_head = LM_HEAD
    hf_ignored = HF_IGNORED
    hf_other_heads = HF_DROPPED
    token_ids_key = TOKEN_IDS
    token_types = True
    layer_norm_eps = LAYER_NORM_EPS
    fairseq_name = "fairseq hf_bert"
    hf_name = "HF BERT"
    hf_untied_problem = (
        "untied LM head weights (cls.predictions.decoder.weight differs "
        "from the word embeddings): the fairseq model ties them"
    )

    def fairseq_model_class(self):
        from se_fairseq.models.bert import BertModel

        return BertModel

    # -- fairseq -> HF
    def hf_config_options(self, state_dict):
        return dict(type_vocab_size=state_dict[FS + "embed_token_types.weight"].shape[0])

    def hf_extras(self, hf, dictionary, tokenizer_dir, search_dirs, transformers):
        """The tokenizer: ``tokenizer_dir`` (it, or its ``tokenizer/`` folder, must hold
        one), else the first ``tokenizer/`` folder of ``search_dirs``, checked against the
        model's ids; else a vocab.txt rebuilt from dict.txt (a warning: casing unknown)."""
        if tokenizer_dir is not None:
            candidates = [tokenizer_dir, os.path.join(tokenizer_dir, "tokenizer")]
            if not any(has_tokenizer(c) for c in candidates):
                raise ConversionError(
                    f"{tokenizer_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)}) "
                    "in it or in its tokenizer/ folder"
                )
        else:
            candidates = [os.path.join(d, "tokenizer") for d in search_dirs]
        found = next((c for c in candidates if has_tokenizer(c)), None)
        token_ids = hf.token_ids
        if found is not None:
            tokenizer = load_tokenizer(found, transformers)
            check_tokenizer_fits(tokenizer, token_ids, dictionary, found)
            logger.info(f"tokenizer from {found}")
            return lambda out_dir: save_tokenizer(tokenizer, out_dir)
        if dictionary is None:
            logger.warning("no tokenizer and no dict.txt: OUT_DIR gets no tokenizer files")
            return lambda out_dir: []
        names = [None] * len(token_ids)
        roles = {0: "cls", 1: "pad", 2: "sep", 3: "unk", len(token_ids) - 1: "mask"}
        for fs_id, hf_id in enumerate(token_ids.tolist()):
            names[hf_id] = BERT_NAMES[roles[fs_id]] if fs_id in roles else dictionary[fs_id]
        logger.warning(
            "no tokenizer found (--tokenizer, or tokenizer/ beside the dict or the "
            "checkpoint): OUT_DIR gets a vocab.txt rebuilt from dict.txt; copy the "
            "checkpoint's tokenizer_config.json there (its lower-casing) to tokenize as it did"
        )
        return lambda out_dir: [write_text(os.path.join(out_dir, "vocab.txt"), vocab_txt(names))]

    # -- HF -> fairseq
    def hf_config_problems(self, config):
        return check_hf_config(config)

    def to_fairseq_state(self, hf_dir, config, state_dict, transformers):
        tokenizer = load_tokenizer(hf_dir, transformers)
        by_id, specials, order = vocabulary(tokenizer, config.vocab_size, hf_dir)
        options, sd, token_ids = hf_to_fairseq_state(
            self, config, state_dict, lambda vocab: token_order(specials, vocab)
        )
        words, placeholders = dict_words(by_id, order)
        if placeholders:
            logger.warning(
                f"{placeholders} of {len(words)} rows have no token dict.txt can hold; "
                "dict.txt holds madeupwordNNNN placeholders for them"
            )
        arch, args = fairseq_args(options)

        def write_extras(out_dir):
            target = os.path.join(out_dir, "tokenizer")
            os.makedirs(target, exist_ok=True)
            return save_tokenizer(tokenizer, target)

        model = FairseqModel(arch, options, args, sd, token_ids, write_extras)
        return model, dict_text(words), "the tokenizer vocab"


FAMILY = BertFamily()
