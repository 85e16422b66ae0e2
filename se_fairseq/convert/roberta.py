"""RoBERTa: fairseq ``--arch roberta*`` <-> Hugging Face ``RobertaForMaskedLM``.

The two implementations compute the same function; only names and a few
conventions differ:

- token ids are the fairseq dictionary's in both (HF RoBERTa keeps fairseq's
  ``<s> <pad> </s> <unk>`` at 0-3 and ``<mask>`` last), so no row moves;
- positions start at ``padding_idx + 1 = 2`` in both, so the learned position
  table has ``max_positions + 2`` rows in both;
- fairseq ``layernorm_embedding`` is HF ``embeddings.LayerNorm``; HF adds a
  token-type embedding, which fairseq does not have (zeros on the way to HF;
  on the way back its row 0 is folded into the position table);
- fairseq's separate ``q_proj/k_proj/v_proj`` are HF ``query/key/value`` with
  the same ``[out, in]`` layout, ``out_proj`` is ``attention.output.dense``;
- the LM head is ``dense -> gelu -> layer_norm -> embeddings^T + bias`` in both;
- LayerNorm epsilon 1e-5 in both.

Compared with transformers' own script
(``convert_roberta_original_pytorch_checkpoint_to_pytorch.py``), what is kept in
common: the same HF config for a fairseq RoBERTa (type_vocab_size=1 with zero
token-type embeddings, layer_norm_eps=1e-5, max_position_embeddings =
max_positions + 2, the decoder tied to the token embeddings) and the same kind of
check (max |logit difference| of both models on one input). What differs, and why:
theirs loads through fairseq's hub interface (unpickling the whole checkpoint, and
needing its BPE files) and copies module by module; here the checkpoint loads with
weights_only=True and the state dicts map by a name table, refusing whatever does
not fit instead of asserting on shapes. Theirs checks the in-memory model before
saving; here the check reloads the written files. Theirs also converts an "mnli"
classification head; here the masked LM only, both directions.
"""

import json
import logging
import os
import re
from collections.abc import Mapping

from .dictionaries import BOS, EOS, MASK, PAD, SPECIALS, dict_text, load_dictionary, valid_word
from .errors import ConversionError, refuse
from .fairseq_io import ENCODER_SHAPE, model_flags
from .family import FairseqModel, Family
from .layout import FS
from .state_dicts import config_dict, hf_to_fairseq_state

logger = logging.getLogger("se_fairseq.convert")

LAYER_NORM_EPS = 1e-5  # fairseq's LayerNorm (torch.nn.LayerNorm default); not configurable there
HF_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")  # same modeling code, same keys

HF = "roberta."
HF_HEAD = "lm_head."

EMBEDDINGS = (  # fairseq (under FS) -> HF (under HF)
    ("embed_tokens.weight", "embeddings.word_embeddings.weight"),
    ("embed_positions.weight", "embeddings.position_embeddings.weight"),
    ("layernorm_embedding.weight", "embeddings.LayerNorm.weight"),
    ("layernorm_embedding.bias", "embeddings.LayerNorm.bias"),
)
LM_HEAD = (  # fairseq (under FS_HEAD) -> HF (under HF_HEAD); FS_HEAD + weight is tied
    ("bias", "bias"),
    ("dense.weight", "dense.weight"),
    ("dense.bias", "dense.bias"),
    ("layer_norm.weight", "layer_norm.weight"),
    ("layer_norm.bias", "layer_norm.bias"),
)
TOKEN_TYPE = HF + "embeddings.token_type_embeddings.weight"
HF_IGNORED = re.compile(r"^roberta\.embeddings\.(position_ids|token_type_ids)$")  # buffers
HF_DROPPED = re.compile(r"^roberta\.pooler\.")  # unused by the masked LM
HF_OUTPUTS = ("config.json", "model.safetensors", "fairseq_dict.txt")  # what fairseq_to_hf writes


def upgrade_fairseq_state_dict(state_dict):
    """Old fairseq key names -> fairseq 0.12 names (a new dict; tensors are shared).

    The renames of ``RobertaModel.upgrade_state_dict_named`` and its children:
    ``decoder.*`` -> ``encoder.*``, ``emb_layer_norm`` -> ``layernorm_embedding``,
    ``layer_norms.{0,1}`` -> ``{self_attn,final}_layer_norm``, and the fused
    ``in_proj_{weight,bias}`` of old MultiheadAttention split into q/k/v.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("decoder."):
            key = "encoder." + key[len("decoder.") :]
        key = key.replace(".emb_layer_norm.", ".layernorm_embedding.")
        key = key.replace(".layer_norms.0.", ".self_attn_layer_norm.")
        key = key.replace(".layer_norms.1.", ".final_layer_norm.")
        match = re.match(r"^(.*self_attn\.)in_proj_(weight|bias)$", key)
        if match:
            q, k, v = value.chunk(3, dim=0)
            for name, part in (("q", q), ("k", k), ("v", v)):
                out[f"{match.group(1)}{name}_proj.{match.group(2)}"] = part
            continue
        out[key] = value
    return out


def check_hf_config(config):
    """Every HF config setting fairseq RoBERTa cannot reproduce, as a list of messages."""
    c = config_dict(config)
    problems = []
    model_type = c.get("model_type", "roberta")
    if model_type not in HF_MODEL_TYPES:
        problems.append(
            f"model_type {model_type!r}: only {', '.join(HF_MODEL_TYPES)} are RoBERTa models"
        )
    if c.get("is_decoder") or c.get("add_cross_attention"):
        problems.append(
            "a decoder / cross-attention configuration (is_decoder, add_cross_attention)"
        )
    if c.get("hidden_act", "gelu") != "gelu":
        problems.append(
            f"hidden_act {c.get('hidden_act')!r}: fairseq RoBERTa converts with gelu only"
        )
    if (c.get("position_embedding_type") or "absolute") != "absolute":
        problems.append(
            f"position_embedding_type {c['position_embedding_type']!r}: fairseq RoBERTa "
            "has learned absolute positions only"
        )
    if c.get("pad_token_id", PAD) != PAD:
        problems.append(
            f"pad_token_id {c.get('pad_token_id')}: fairseq fixes <pad> to id {PAD} "
            "(and positions to start at pad + 1)"
        )
    eps = float(c.get("layer_norm_eps", 1e-12))
    if abs(eps - LAYER_NORM_EPS) > 1e-9:
        problems.append(f"layer_norm_eps {eps:g}: fairseq's LayerNorm uses {LAYER_NORM_EPS:g}")
    if c.get("embedding_size", c.get("hidden_size")) != c.get("hidden_size"):
        problems.append("factorised embeddings (embedding_size != hidden_size)")
    if int(c.get("max_position_embeddings", 0)) <= PAD + 1:
        problems.append(
            f"max_position_embeddings {c.get('max_position_embeddings')}: need more than "
            f"{PAD + 1} rows (positions start at {PAD + 1})"
        )
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    if hidden and heads and hidden % heads:
        problems.append(f"hidden_size {hidden} is not a multiple of {heads} heads")
    return problems


# -- dictionaries ----------------------------------------------------------------


def dict_words_from_vocab(vocab, vocab_size):
    """fairseq dict.txt words for ids 4 .. vocab_size-2 from an HF ``token -> id`` vocab.

    Ids the vocab lacks, and tokens dict.txt cannot hold (whitespace, duplicates,
    the specials), become ``madeupwordNNNN`` placeholders. Returns
    ``(words, placeholders)``.
    """
    vocab = vocab or {}
    by_id = {}
    for token, idx in vocab.items():
        by_id.setdefault(int(idx), token)
    names = [by_id.get(i) for i in range(len(SPECIALS))]
    if vocab and names != list(SPECIALS):
        logger.warning(
            f"the tokenizer's ids 0-3 are {names}; fairseq fixes them to {list(SPECIALS)}"
        )
    mask_id = vocab.get(MASK)
    if mask_id is not None and mask_id != vocab_size - 1:
        logger.warning(
            f"the tokenizer's {MASK} has id {mask_id}; fairseq's masked_lm uses the last id, "
            f"{vocab_size - 1}"
        )
    seen = set(SPECIALS) | {MASK}
    words, placeholders = [], 0
    for i in range(len(SPECIALS), vocab_size - 1):
        word = by_id.get(i)
        if word is None or not valid_word(word, seen):
            word = f"madeupword{placeholders:04d}"
            while word in seen or word in vocab:
                placeholders += 1
                word = f"madeupword{placeholders:04d}"
            placeholders += 1
        seen.add(word)
        words.append(word)
    return words, placeholders


def read_hf_vocab(hf_dir):
    """``token -> id`` of the tokenizer files in ``hf_dir`` (vocab.json or tokenizer.json),
    or None."""
    path = os.path.join(hf_dir, "vocab.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
        added = os.path.join(hf_dir, "added_tokens.json")
        if os.path.isfile(added):
            with open(added, encoding="utf-8") as f:
                vocab.update(json.load(f))
        return vocab
    path = os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tok = json.load(f)
        model_vocab = (tok.get("model") or {}).get("vocab")
        if isinstance(model_vocab, Mapping):
            vocab = dict(model_vocab)
        elif isinstance(model_vocab, list):  # Unigram: [[piece, score], ...] in id order
            vocab = {entry[0]: i for i, entry in enumerate(model_vocab)}
        else:
            return None
        for added in tok.get("added_tokens") or []:
            vocab[added["content"]] = added["id"]
        return vocab
    return None


def hf_dict_text(hf_dir, vocab_size):
    """``(dict.txt contents, where they came from)`` for an HF model with ``vocab_size`` ids:
    ``fairseq_dict.txt`` (as :func:`fairseq_to_hf` writes it) if present, else the
    tokenizer vocab (vocab.json, tokenizer.json), else placeholder words."""
    fairseq_dict = os.path.join(hf_dir, "fairseq_dict.txt")
    if os.path.isfile(fairseq_dict):
        d = load_dictionary(fairseq_dict)
        if len(d) + 1 != vocab_size:
            raise ConversionError(
                f"{fairseq_dict} gives {len(d) + 1} ids (incl. <mask>) "
                f"but the model has {vocab_size}"
            )
        with open(fairseq_dict, encoding="utf-8") as f:
            return f.read(), "fairseq_dict.txt"
    vocab = read_hf_vocab(hf_dir)
    words, placeholders = dict_words_from_vocab(vocab, vocab_size)
    text = dict_text(words)
    if vocab is None:
        logger.warning(
            f"{hf_dir} has neither fairseq_dict.txt nor a tokenizer vocab (vocab.json, "
            f"tokenizer.json): dict.txt gets placeholder words madeupwordNNNN for ids "
            f"4..{vocab_size - 2}; binarize data only with ids that match the model's"
        )
        return text, "placeholders"
    if placeholders:
        logger.warning(
            f"{placeholders} of {len(words)} ids have no usable token in the tokenizer "
            "vocab; dict.txt holds madeupwordNNNN placeholders for them"
        )
    return text, "the tokenizer vocab"


# -- the family ------------------------------------------------------------------------


class RobertaFamily(Family):
    name = "roberta"
    hf_class = "RobertaForMaskedLM"
    hf_config_class = "RobertaConfig"
    hf_model_types = HF_MODEL_TYPES
    hf_prefix = HF
    hf_head_prefix = HF_HEAD
    embeddings = EMBEDDINGS
    lm_head = LM_HEAD
    hf_extra_keys = (TOKEN_TYPE,)
    hf_ignored = HF_IGNORED
    hf_other_heads = HF_DROPPED
    position_offset = PAD + 1
    layer_norm_eps = LAYER_NORM_EPS
    fairseq_name = "fairseq RoBERTa"
    hf_name = "HF RoBERTa"
    hf_untied_problem = (
        "untied LM head weights (lm_head.decoder.weight differs from "
        "the word embeddings, tie_word_embeddings=False): fairseq RoBERTa ties them"
    )

    def fairseq_model_class(self):
        from fairseq.models.roberta import RobertaModel

        return RobertaModel

    # -- fairseq -> HF
    def upgrade_fairseq_state_dict(self, state_dict):
        return upgrade_fairseq_state_dict(state_dict)

    def fairseq_layout_problems(self, state_dict):
        if any(k.startswith(FS + "layer_norm.") for k in state_dict):
            return ["a final encoder LayerNorm (encoder.sentence_encoder.layer_norm): pre-LN model"]
        return []

    def note_fairseq_positions(self, options, positions):
        if getattr(options, "max_positions", None) not in (None, positions - 2):
            logger.warning(
                f"cfg max_positions={options.max_positions} but the position table has "
                f"{positions} rows; using {positions - 2}"
            )

    def hf_extra_tensors(self, dim, dtype):
        import torch

        return {TOKEN_TYPE: torch.zeros(1, dim, dtype=dtype)}  # HF's one token type, unused

    def hf_config_options(self, state_dict):
        return dict(type_vocab_size=1, bos_token_id=BOS, eos_token_id=EOS)

    # -- HF -> fairseq
    def hf_config_problems(self, config):
        return check_hf_config(config)

    def check_hf_weights(self, state_dict):
        import torch

        token_type = state_dict[TOKEN_TYPE]
        if not torch.equal(token_type, token_type[:1].expand_as(token_type)):
            refuse(
                "this Hugging Face model",
                f"{token_type.shape[0]} different token-type embeddings "
                "(type_vocab_size > 1 in use): fairseq RoBERTa has no token types",
            )

    def fold_hf_weights(self, state_dict, mapped):
        token_type = state_dict[TOKEN_TYPE]
        positions_key = HF + "embeddings.position_embeddings.weight"
        if token_type[0].any():
            logger.info(
                "folding token_type_embeddings[0] into the position embeddings (fairseq "
                "RoBERTa has no token types; the logits for token type 0 are unchanged)"
            )
            positions = mapped[positions_key]
            mapped[positions_key] = positions + token_type[0].to(positions.dtype)

    def to_fairseq_state(self, hf_dir, config, state_dict, transformers):
        options, sd, _ = hf_to_fairseq_state(self, config, state_dict)
        text, source = hf_dict_text(hf_dir, options["vocab_size"])
        flags = (*ENCODER_SHAPE, "dropout", "attention_dropout", "activation_fn")
        return FairseqModel("roberta", options, model_flags(options, flags), sd), text, source


FAMILY = RobertaFamily()
