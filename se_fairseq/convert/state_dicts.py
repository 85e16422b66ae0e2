"""The state-dict conversion, both ways, written once for every family.

:func:`fairseq_to_hf_state` and :func:`hf_to_fairseq_state` check that a state dict
holds exactly the model's tensors, refuse what the other side cannot compute, map
the names by the family's tables (``layout.py``), permute the rows indexed by token
id where the family's HF vocabulary is in another order, and build the other side's
config or options. A family (:class:`~se_fairseq.convert.family.Family`) gives its
names, its refusals of HF configs, and a few hooks for what only it has (RoBERTa:
old key names, pre-LN weights, token types folded into positions).
"""

import logging
from collections.abc import Mapping

from .dependencies import require_transformers
from .dictionaries import PAD, dictionary_size_problems
from .errors import refuse
from .family import HFModel
from .layout import (
    ENCODER_VERSION,
    FS,
    FS_HEAD,
    PERMUTED,
    fairseq_keys,
    key_pairs,
    num_layers,
    tensor_problems,
)

logger = logging.getLogger("se_fairseq.convert")


def common_fairseq_problems(o, target):
    """fairseq options no HF model of the two families reproduces, as messages."""
    problems = []

    def opt(name, default=None):
        return getattr(o, name, default)

    if opt("encoder_normalize_before", False):
        problems.append(
            "pre-LN layers (encoder_normalize_before=True, e.g. --arch roberta_prenorm): "
            f"{target} normalises after each sub-layer (post-LN)"
        )
    if not opt("layernorm_embedding", True):
        problems.append(
            f"no embedding LayerNorm (layernorm_embedding=False): {target} always has one"
        )
    if opt("activation_fn", "gelu") != "gelu":
        problems.append(
            f"activation {opt('activation_fn')!r}: {target} is converted with the exact "
            "gelu only (its LM head and layers share one hidden_act)"
        )
    if opt("untie_weights_roberta", False):
        problems.append(
            f"untied LM head weights (untie_weights_roberta=True): the converter writes "
            f"the tied layout of {target}"
        )
    if not opt("no_scale_embedding", True):
        problems.append(
            f"scaled token embeddings (no_scale_embedding=False): {target} does not "
            "scale them by sqrt(embed_dim)"
        )
    if opt("no_token_positional_embeddings", False) or not opt("encoder_learned_pos", True):
        problems.append(
            f"sinusoidal or no positional embeddings: {target} has learned absolute positions only"
        )
    if opt("quant_noise_pq", 0) or opt("quant_noise_scalar", 0):
        problems.append("quant-noise (quant_noise_pq / quant_noise_scalar > 0)")
    if opt("adaptive_input", False):
        problems.append("adaptive input embeddings (adaptive_input=True)")
    if opt("encoder_layers_to_keep", None):
        problems.append("LayerDrop pruning (encoder_layers_to_keep): prune with fairseq first")
    if opt("mha_heads_to_keep", -1) != -1 or opt("ffn_blocks_to_remove", -1) != -1:
        problems.append("AdaPrune head/FFN pruning (mha_heads_to_keep / ffn_blocks_to_remove)")
    return problems


def training_only_warnings(o):
    if float(getattr(o, "activation_dropout", 0.0) or 0.0) > 0:
        logger.warning(
            f"activation_dropout={o.activation_dropout} has no HF counterpart (training only)"
        )
    if float(getattr(o, "encoder_layerdrop", 0.0) or 0.0) > 0:
        logger.warning(
            f"encoder_layerdrop={o.encoder_layerdrop} has no HF counterpart (training only)"
        )


def config_dict(config):
    """An HF config (or its config.json as a dict) as a dict."""
    return dict(config) if isinstance(config, Mapping) else config.to_dict()


# -- fairseq -> HF -------------------------------------------------------------------------


def fairseq_to_hf_state(family, state_dict, options, dictionary=None):
    """fairseq (state dict, model options Namespace, Dictionary or None) -> :class:`HFModel`:
    the HF config, the HF state dict (the keys ``save_pretrained`` writes: the tied
    decoder is left out) in HF row order, and the HF row of each fairseq id (None where
    the family keeps fairseq's ids). Refuses (ConversionError) what the HF model cannot
    compute."""
    import torch

    transformers = require_transformers()
    sd = family.upgrade_fairseq_state_dict(state_dict)
    o = options
    problems = common_fairseq_problems(o, family.hf_name)
    layers = num_layers(sd, FS + "layers.")
    dropped = sorted(k for k in sd if k.startswith("classification_heads."))
    if layers == 0:
        problems.append("no encoder layers under encoder.sentence_encoder.layers.*")
    problems += family.fairseq_layout_problems(sd)
    optional = [FS + "version"] + ([family.token_ids_key] if family.token_ids_key else [])
    problems += tensor_problems(
        sd,
        [k for k in fairseq_keys(family, layers) if k not in optional],
        family.fairseq_name,
        optional=optional,
        skipped=set(dropped).__contains__,
    )
    if problems:
        refuse("this fairseq checkpoint", problems)

    embed = sd[FS + "embed_tokens.weight"]
    if not torch.equal(sd[FS_HEAD + "weight"], embed):
        refuse(
            "this fairseq checkpoint",
            "untied LM head weights (encoder.lm_head.weight differs from "
            f"the token embeddings): the converter writes the tied layout of {family.hf_class}",
        )
    if getattr(o, "encoder_layers", layers) != layers:
        refuse(
            "this fairseq checkpoint",
            f"cfg says {o.encoder_layers} layers, the weights have {layers}",
        )
    vocab, dim = embed.shape
    heads = int(o.encoder_attention_heads)
    if dim % heads:
        refuse("this fairseq checkpoint", f"embed dim {dim} is not a multiple of {heads} heads")
    positions = sd[FS + "embed_positions.weight"].shape[0]
    family.note_fairseq_positions(o, positions)
    problems = dictionary_size_problems(dictionary, vocab)
    if problems:
        refuse("this checkpoint with this dictionary", problems)
    token_ids = fairseq_token_ids(family, sd, vocab)
    if dropped:
        logger.warning(
            f"dropping classification head(s) {sorted({k.split('.')[1] for k in dropped})}: "
            f"{family.hf_class} has none"
        )
    training_only_warnings(o)

    pairs = key_pairs(family, layers)
    if token_ids is None:
        hf_sd = {hf: sd[fs] for fs, hf in pairs}
    else:
        hf_order = torch.argsort(token_ids)  # fairseq id of each HF row
        hf_sd = {
            hf: sd[fs].index_select(0, hf_order) if fs in PERMUTED else sd[fs] for fs, hf in pairs
        }
    hf_sd.update(family.hf_extra_tensors(dim, embed.dtype))
    config = getattr(transformers, family.hf_config_class)(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=sd[f"{FS}layers.0.fc1.weight"].shape[0],
        hidden_act="gelu",
        hidden_dropout_prob=float(getattr(o, "dropout", 0.1)),
        attention_probs_dropout_prob=float(getattr(o, "attention_dropout", 0.1)),
        max_position_embeddings=positions,
        initializer_range=0.02,
        layer_norm_eps=family.layer_norm_eps,
        pad_token_id=PAD if token_ids is None else int(token_ids[PAD]),
        tie_word_embeddings=True,
        architectures=[family.hf_class],
        **family.hf_config_options(sd),
    )
    config.dtype = embed.dtype
    return HFModel(config, hf_sd, token_ids)


def fairseq_token_ids(family, sd, vocab):
    """The HF row of each fairseq id, as the checkpoint stores it (``family.token_ids_key``;
    absent: the same ids), checked to be a permutation; None for a family without one."""
    import torch

    key = family.token_ids_key
    if key is None:
        return None
    token_ids = sd.get(key)
    if token_ids is None:
        token_ids = torch.arange(vocab)
    token_ids = token_ids.long()
    if token_ids.shape != (vocab,) or not torch.equal(token_ids.sort().values, torch.arange(vocab)):
        refuse("this fairseq checkpoint", f"{key} is not a permutation of the {vocab} token ids")
    return token_ids


# -- HF -> fairseq -------------------------------------------------------------------------


def hf_to_fairseq_state(family, config, state_dict, token_order=None):
    """HF (config, ``<Family>ForMaskedLM.state_dict()``) -> (fairseq model options dict,
    fairseq state dict, the HF row of each fairseq id or None).

    ``token_order(vocab_size)`` gives the HF row of each fairseq id (None: the same ids).
    The tied decoder may be in ``state_dict`` or not. The fairseq state dict has exactly
    the keys of the family's fairseq model, in fairseq's order, with
    ``encoder.lm_head.weight`` sharing the token embedding tensor as fairseq's own
    checkpoints do.
    """
    import torch

    c = config_dict(config)
    hf, hf_head = family.hf_prefix, family.hf_head_prefix
    decoder_weight, decoder_bias = hf_head + "decoder.weight", hf_head + "decoder.bias"
    problems = family.hf_config_problems(c)
    layers = num_layers(state_dict, hf + "encoder.layer.")
    pairs = key_pairs(family, layers)
    expected = {name for _, name in pairs} | set(family.hf_extra_keys)
    if layers != c.get("num_hidden_layers", layers):
        problems.append(f"config says {c['num_hidden_layers']} layers, the weights have {layers}")
    problems += tensor_problems(
        state_dict,
        sorted(expected),
        family.hf_class,
        optional={decoder_weight, decoder_bias},
        skipped=family.hf_unused,
        head=hf_head,
    )
    if problems:
        refuse("this Hugging Face model", problems)

    embed = state_dict[hf + "embeddings.word_embeddings.weight"]
    decoder = state_dict.get(decoder_weight)
    if decoder is not None and not torch.equal(decoder, embed):
        refuse("this Hugging Face model", family.hf_untied_problem)
    family.check_hf_weights(state_dict)
    sd = {name: state_dict[name] for _, name in pairs}
    bias = state_dict.get(decoder_bias)
    if bias is not None and not torch.equal(bias, sd[hf_head + "bias"]):
        logger.warning(
            f"{decoder_bias} differs from {hf_head}bias; converting decoder.bias, "
            f"the one {family.hf_class}'s forward adds"
        )
        sd[hf_head + "bias"] = bias
    family.fold_hf_weights(state_dict, sd)
    vocab = embed.shape[0]
    token_ids = None
    if token_order is not None:
        token_ids = torch.tensor(token_order(vocab), dtype=torch.long)

    out = {}
    hf_of = dict(pairs)
    for key in fairseq_keys(family, layers):
        if key == FS + "version":
            out[key] = torch.tensor([ENCODER_VERSION])
        elif key == FS_HEAD + "weight":
            out[key] = out[FS + "embed_tokens.weight"]  # tied: one tensor, as fairseq saves it
        elif key == family.token_ids_key:
            out[key] = token_ids
        elif token_ids is not None and key in PERMUTED:
            out[key] = sd[hf_of[key]].index_select(0, token_ids)
        else:
            out[key] = sd[hf_of[key]]
    positions = sd[hf + "embeddings.position_embeddings.weight"].shape[0]
    options = dict(
        encoder_layers=layers,
        encoder_embed_dim=embed.shape[1],
        encoder_ffn_embed_dim=sd[f"{hf}encoder.layer.0.intermediate.dense.weight"].shape[0],
        encoder_attention_heads=int(c["num_attention_heads"]),
        max_positions=positions - family.position_offset,
        **(
            {"type_vocab_size": sd[hf + "embeddings.token_type_embeddings.weight"].shape[0]}
            if family.token_types
            else {}
        ),
        dropout=float(c.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(c.get("attention_probs_dropout_prob", 0.1)),
        activation_fn="gelu",
        vocab_size=vocab,
    )
    return options, out, token_ids
