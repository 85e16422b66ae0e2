"""Conversion between fairseq RoBERTa checkpoints and Hugging Face ``RobertaForMaskedLM``.

Two functions do a whole conversion, from paths to checked files, with every
rule of it (where ``dict.txt`` comes from, the refusals, the tied-weights check,
the safety re-check of what is written, the optional logit comparison):

- :func:`fairseq_to_hf` ``(checkpoint, out_dir, dict_path=None, check=False, overwrite=False)``
- :func:`hf_to_fairseq` ``(hf_dir, out_path, check=False, overwrite=False)``

Both return a :class:`ConversionResult` and raise :class:`ConversionError`
(never ``SystemExit``); the ``se-convert`` command (``se_fairseq.cli.convert``)
only parses its arguments, calls them and prints. Below them, the state-dict
level (:func:`fairseq_state_dict_to_hf`, :func:`hf_state_dict_to_fairseq`)
works on tensors and configs only, for callers that hold models in memory.

The two implementations compute the same function; only names and a few
conventions differ:

- token ids are the fairseq dictionary's ids (``<s> <pad> </s> <unk>`` at 0-3,
  then the words of ``dict.txt``, then the ``<mask>`` the masked_lm task
  appends), so the embedding has ``len(dict.txt) + 5`` rows in both;
- positions start at ``padding_idx + 1 = 2`` in both, so the learned position
  table has ``max_positions + 2`` rows in both;
- fairseq ``layernorm_embedding`` is HF ``embeddings.LayerNorm``; HF adds a
  token-type embedding, which fairseq does not have (zeros on the way to HF;
  on the way back its row 0 is folded into the position table);
- fairseq's separate ``q_proj/k_proj/v_proj`` are HF ``query/key/value`` with
  the same ``[out, in]`` layout, ``out_proj`` is ``attention.output.dense``;
- the LM head is ``dense -> gelu -> layer_norm -> embeddings^T + bias`` in both.

Anything outside that common ground (pre-LN, untied LM head, other
activations, relative positions, ...) is refused with :class:`ConversionError`
instead of being converted wrong. Importing this module is cheap (``se-convert
--help`` stays instant): torch, fairseq and transformers are imported by the
functions that need them.
"""
import argparse
import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

logger = logging.getLogger(__name__)

BOS, PAD, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"
LAYER_NORM_EPS = 1e-5  # fairseq's LayerNorm (torch.nn.LayerNorm default); not configurable there
ENCODER_VERSION = 3.0  # value of fairseq 0.12's TransformerEncoderBase ``version`` buffer
HF_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")  # same modeling code, same keys

FS = "encoder.sentence_encoder."
FS_HEAD = "encoder.lm_head."
HF = "roberta."
HF_HEAD = "lm_head."

EMBEDDINGS = (  # fairseq (under FS) -> HF (under HF)
    ("embed_tokens.weight", "embeddings.word_embeddings.weight"),
    ("embed_positions.weight", "embeddings.position_embeddings.weight"),
    ("layernorm_embedding.weight", "embeddings.LayerNorm.weight"),
    ("layernorm_embedding.bias", "embeddings.LayerNorm.bias"),
)
LAYER = (  # fairseq (under FS + layers.i.) -> HF (under HF + encoder.layer.i.)
    ("self_attn.k_proj", "attention.self.key"),
    ("self_attn.v_proj", "attention.self.value"),
    ("self_attn.q_proj", "attention.self.query"),
    ("self_attn.out_proj", "attention.output.dense"),
    ("self_attn_layer_norm", "attention.output.LayerNorm"),
    ("fc1", "intermediate.dense"),
    ("fc2", "output.dense"),
    ("final_layer_norm", "output.LayerNorm"),
)
LM_HEAD = (  # fairseq (under FS_HEAD) -> HF (under HF_HEAD); FS_HEAD + weight is tied
    ("bias", "bias"),
    ("dense.weight", "dense.weight"),
    ("dense.bias", "dense.bias"),
    ("layer_norm.weight", "layer_norm.weight"),
    ("layer_norm.bias", "layer_norm.bias"),
)
TOKEN_TYPE = HF + "embeddings.token_type_embeddings.weight"
HF_DECODER_WEIGHT, HF_DECODER_BIAS = HF_HEAD + "decoder.weight", HF_HEAD + "decoder.bias"
HF_IGNORED = re.compile(r"^roberta\.embeddings\.(position_ids|token_type_ids)$")  # buffers
HF_DROPPED = re.compile(r"^roberta\.pooler\.")  # unused by the masked LM

INSTALL_HINT = (
    "se-convert needs the Hugging Face extras: pip install 'se-fairseq[hf]' "
    "(or: pip install transformers safetensors)"
)


CHECK_TOLERANCE = 1e-3  # max |logit difference| that check=True accepts (float32), as transformers' script
HF_OUTPUTS = ("config.json", "model.safetensors", "fairseq_dict.txt")  # what fairseq_to_hf writes


class ConversionError(Exception):
    """The input cannot be converted faithfully; the message says why."""


class MissingDependencyError(ConversionError):
    """transformers or safetensors is not installed (``pip install 'se-fairseq[hf]'``)."""


class CheckFailedError(ConversionError):
    """``check=True`` found different logits. The files were written (and are wrong):
    ``result`` is the :class:`ConversionResult` of what was written."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


@dataclass
class ConversionResult:
    """What :func:`fairseq_to_hf` or :func:`hf_to_fairseq` wrote."""

    output: str  # OUT_DIR (to HF) or the checkpoint OUT.pt (to fairseq)
    files: list  # every file written, in the order written
    dict_path: Optional[str]  # the fairseq dictionary written (None: to HF without a dict.txt)
    dict_source: Optional[str]  # where its words came from
    model: dict = field(default_factory=dict)  # layers, hidden, ffn, heads, vocab_size, max_positions
    max_logit_difference: Optional[float] = None  # max |fairseq - HF logits|, with check=True


def refuse(what, problems):
    if isinstance(problems, str):
        problems = [problems]
    raise ConversionError(f"cannot convert {what}:\n  - " + "\n  - ".join(problems))


# -- optional dependency -------------------------------------------------------

def require_transformers():
    """Import transformers (and safetensors) or raise :class:`MissingDependencyError`."""
    try:
        import safetensors.torch  # noqa: F401
        import transformers
    except ImportError as err:
        raise MissingDependencyError(f"{INSTALL_HINT} ({err})") from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """Loading problems are reported here, as refusals: no transformers warnings or
    progress bars while loading; the caller's settings come back afterwards."""
    log = transformers.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()


def _import_fairseq():
    """Import fairseq with the plugin registered: its checkpoint loading is then
    ``torch.load(weights_only=True)`` with the allow-list (also when autoload is off)."""
    import fairseq  # noqa: F401

    import se_fairseq

    se_fairseq.register_with_fairseq()


# -- fairseq side ---------------------------------------------------------------

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
            key = "encoder." + key[len("decoder."):]
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


def checkpoint_model_cfg(state):
    """The model options of a loaded fairseq checkpoint (``cfg.model`` or old ``args``)."""
    cfg = state.get("cfg")
    if cfg is not None and cfg.get("model") is not None:
        return cfg["model"]
    if state.get("args") is not None:
        return state["args"]
    raise ConversionError("the checkpoint holds no model configuration (neither cfg.model nor args)")


def model_options(model_cfg):
    """fairseq model options as an argparse.Namespace, defaults filled in by the arch."""
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
    from fairseq.models.roberta import RobertaModel
    from omegaconf import OmegaConf

    if isinstance(model_cfg, argparse.Namespace):
        options = dict(vars(model_cfg))
    elif OmegaConf.is_config(model_cfg):
        options = OmegaConf.to_container(model_cfg, resolve=True)
    elif isinstance(model_cfg, Mapping):
        options = dict(model_cfg)
    else:
        raise ConversionError(f"unreadable model configuration of type {type(model_cfg).__name__}")
    arch = options.get("_name") or options.get("arch")
    if arch is None:
        logger.warning("the checkpoint names no architecture; assuming fairseq's 'roberta'")
        arch = "roberta"
    if ARCH_MODEL_REGISTRY.get(arch) is not RobertaModel:
        roberta_archs = sorted(a for a, m in ARCH_MODEL_REGISTRY.items() if m is RobertaModel)
        refuse(f"arch {arch!r}", f"only fairseq RoBERTa architectures are supported ({', '.join(roberta_archs)})")
    namespace = argparse.Namespace(**options)
    ARCH_CONFIG_REGISTRY[arch](namespace)
    return namespace


def check_fairseq_options(o):
    """Every fairseq option the HF model cannot reproduce, as a list of messages."""
    problems = []

    def opt(name, default=None):
        return getattr(o, name, default)

    if opt("encoder_normalize_before", False):
        problems.append("pre-LN layers (encoder_normalize_before=True, e.g. --arch roberta_prenorm): "
                        "HF RoBERTa normalises after each sub-layer (post-LN)")
    if not opt("layernorm_embedding", True):
        problems.append("no embedding LayerNorm (layernorm_embedding=False): HF RoBERTa always has one")
    if opt("activation_fn", "gelu") != "gelu":
        problems.append(f"activation {opt('activation_fn')!r}: HF RoBERTa's LM head is hard-wired to "
                        "gelu, so only activation_fn=gelu converts")
    if opt("untie_weights_roberta", False):
        problems.append("untied LM head weights (untie_weights_roberta=True): the converter writes "
                        "the tied layout of RobertaForMaskedLM")
    if not opt("no_scale_embedding", True):
        problems.append("scaled token embeddings (no_scale_embedding=False): HF RoBERTa does not "
                        "scale them by sqrt(embed_dim)")
    if opt("no_token_positional_embeddings", False) or not opt("encoder_learned_pos", True):
        problems.append("sinusoidal or no positional embeddings: HF RoBERTa has learned absolute "
                        "positions only")
    if opt("quant_noise_pq", 0) or opt("quant_noise_scalar", 0):
        problems.append("quant-noise (quant_noise_pq / quant_noise_scalar > 0)")
    if opt("adaptive_input", False):
        problems.append("adaptive input embeddings (adaptive_input=True)")
    if opt("encoder_layers_to_keep", None):
        problems.append("LayerDrop pruning (encoder_layers_to_keep): prune with fairseq first")
    if opt("mha_heads_to_keep", -1) != -1 or opt("ffn_blocks_to_remove", -1) != -1:
        problems.append("AdaPrune head/FFN pruning (mha_heads_to_keep / ffn_blocks_to_remove)")
    return problems


def _num_layers(keys, prefix):
    found = {int(m.group(1)) for k in keys for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    if found and found != set(range(max(found) + 1)):
        raise ConversionError(f"layers {sorted(set(range(max(found) + 1)) - found)} are missing")
    return max(found) + 1 if found else 0


def fairseq_keys(num_layers):
    """The state-dict keys of a fairseq 0.12 RoBERTa, in the order fairseq writes them."""
    keys = [FS + "version"] + [FS + fs for fs, _ in EMBEDDINGS]
    for i in range(num_layers):
        for fs, _ in LAYER:
            keys += [f"{FS}layers.{i}.{fs}.weight", f"{FS}layers.{i}.{fs}.bias"]
    keys.append(FS_HEAD + "weight")
    keys += [FS_HEAD + fs for fs, _ in LM_HEAD]
    return keys


def key_pairs(num_layers):
    """(fairseq key, HF key) for every tensor both sides have."""
    pairs = [(FS + fs, HF + hf) for fs, hf in EMBEDDINGS]
    for i in range(num_layers):
        for fs, hf in LAYER:
            for p in ("weight", "bias"):
                pairs.append((f"{FS}layers.{i}.{fs}.{p}", f"{HF}encoder.layer.{i}.{hf}.{p}"))
    pairs += [(FS_HEAD + fs, HF_HEAD + hf) for fs, hf in LM_HEAD]
    return pairs


def fairseq_state_dict_to_hf(state_dict, model_cfg, dictionary=None):
    """fairseq RoBERTa (state dict, model cfg, optional Dictionary) -> (RobertaConfig, HF state dict).

    ``dictionary`` is the fairseq Dictionary of ``dict.txt`` (with or without
    the ``<mask>`` the task appends); when given, its size must match the
    embedding. The HF state dict holds the keys ``save_pretrained`` writes
    (the tied ``lm_head.decoder.*`` are left out).
    """
    import torch

    transformers = require_transformers()
    sd = upgrade_fairseq_state_dict(state_dict)
    o = model_options(model_cfg)
    problems = check_fairseq_options(o)

    num_layers = _num_layers(sd, FS + "layers.")
    expected = fairseq_keys(num_layers)
    dropped = sorted(k for k in sd if k.startswith("classification_heads."))
    extra = sorted(set(sd) - set(expected) - set(dropped))
    if num_layers == 0:
        problems.append("no encoder layers under encoder.sentence_encoder.layers.*")
    if any(k.startswith(FS + "layer_norm.") for k in extra):
        problems.append("a final encoder LayerNorm (encoder.sentence_encoder.layer_norm): pre-LN model")
    if extra:
        problems.append(f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}: "
                        "not a plain fairseq RoBERTa")
    missing = [k for k in expected if k not in sd and k != FS + "version"]
    if missing:
        problems.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if problems:
        refuse("this fairseq checkpoint", problems)

    embed = sd[FS + "embed_tokens.weight"]
    if not torch.equal(sd[FS_HEAD + "weight"], embed):
        refuse("this fairseq checkpoint", "untied LM head weights (encoder.lm_head.weight differs from "
               "the token embeddings): the converter writes the tied layout of RobertaForMaskedLM")
    if getattr(o, "encoder_layers", num_layers) != num_layers:
        refuse("this fairseq checkpoint", f"cfg says {o.encoder_layers} layers, the weights have {num_layers}")
    vocab, dim = embed.shape
    heads = int(o.encoder_attention_heads)
    if dim % heads:
        refuse("this fairseq checkpoint", f"embed dim {dim} is not a multiple of {heads} heads")
    positions = sd[FS + "embed_positions.weight"].shape[0]
    if getattr(o, "max_positions", None) not in (None, positions - 2):
        logger.warning(f"cfg max_positions={o.max_positions} but the position table has {positions} rows; "
                       f"using {positions - 2}")
    if dictionary is not None:
        if dictionary.pad() != PAD:
            refuse("this dictionary", f"pad index {dictionary.pad()}: HF RoBERTa needs pad id {PAD}")
        size = len(dictionary) + (0 if MASK in dictionary.indices else 1)
        if size != vocab:
            refuse("this checkpoint with this dictionary",
                   f"the dictionary gives {size} ids (incl. {MASK}) but the embedding has {vocab} rows; "
                   "pass the checkpoint's own dict.txt with --dict")
    if dropped:
        heads_dropped = sorted({k.split(".")[1] for k in dropped})
        logger.warning(f"dropping classification head(s) {heads_dropped}: RobertaForMaskedLM has none")
    if float(getattr(o, "activation_dropout", 0.0) or 0.0) > 0:
        logger.warning(f"activation_dropout={o.activation_dropout} has no HF counterpart (training only)")
    if float(getattr(o, "encoder_layerdrop", 0.0) or 0.0) > 0:
        logger.warning(f"encoder_layerdrop={o.encoder_layerdrop} has no HF counterpart (training only)")

    hf_sd = {}
    for fs, hf in key_pairs(num_layers):
        hf_sd[hf] = sd[fs]
    hf_sd[TOKEN_TYPE] = torch.zeros(1, dim, dtype=embed.dtype)
    config = transformers.RobertaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=sd[f"{FS}layers.0.fc1.weight"].shape[0],
        hidden_act="gelu",
        hidden_dropout_prob=float(getattr(o, "dropout", 0.1)),
        attention_probs_dropout_prob=float(getattr(o, "attention_dropout", 0.1)),
        max_position_embeddings=positions,
        type_vocab_size=1,
        initializer_range=0.02,
        layer_norm_eps=LAYER_NORM_EPS,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
        architectures=["RobertaForMaskedLM"],
    )
    config.dtype = embed.dtype
    return config, hf_sd


# -- HF side ---------------------------------------------------------------------

def _config_dict(config):
    return dict(config) if isinstance(config, Mapping) else config.to_dict()


def check_hf_config(config):
    """Every HF config setting fairseq RoBERTa cannot reproduce, as a list of messages."""
    c = _config_dict(config)
    problems = []
    model_type = c.get("model_type", "roberta")
    if model_type not in HF_MODEL_TYPES:
        problems.append(f"model_type {model_type!r}: only {', '.join(HF_MODEL_TYPES)} are RoBERTa models")
    if c.get("is_decoder") or c.get("add_cross_attention"):
        problems.append("a decoder / cross-attention configuration (is_decoder, add_cross_attention)")
    if c.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {c.get('hidden_act')!r}: fairseq RoBERTa converts with gelu only")
    if (c.get("position_embedding_type") or "absolute") != "absolute":
        problems.append(f"position_embedding_type {c['position_embedding_type']!r}: fairseq RoBERTa "
                        "has learned absolute positions only")
    if c.get("pad_token_id", PAD) != PAD:
        problems.append(f"pad_token_id {c.get('pad_token_id')}: fairseq fixes <pad> to id {PAD} "
                        "(and positions to start at pad + 1)")
    eps = float(c.get("layer_norm_eps", 1e-12))
    if abs(eps - LAYER_NORM_EPS) > 1e-9:
        problems.append(f"layer_norm_eps {eps:g}: fairseq's LayerNorm uses {LAYER_NORM_EPS:g}")
    if c.get("embedding_size", c.get("hidden_size")) != c.get("hidden_size"):
        problems.append("factorised embeddings (embedding_size != hidden_size)")
    if int(c.get("max_position_embeddings", 0)) <= PAD + 1:
        problems.append(f"max_position_embeddings {c.get('max_position_embeddings')}: need more than "
                        f"{PAD + 1} rows (positions start at {PAD + 1})")
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    if hidden and heads and hidden % heads:
        problems.append(f"hidden_size {hidden} is not a multiple of {heads} heads")
    return problems


def hf_state_dict_to_fairseq(config, state_dict):
    """HF RoBERTa (config, state dict) -> (fairseq model options dict, fairseq state dict).

    ``state_dict`` is ``RobertaForMaskedLM.state_dict()`` (the tied
    ``lm_head.decoder.*`` may be present or not). The fairseq state dict has
    exactly the keys of a fairseq 0.12 RoBERTa, with ``encoder.lm_head.weight``
    sharing the token embedding tensor as fairseq's own checkpoints do.
    """
    import torch

    c = _config_dict(config)
    problems = check_hf_config(c)
    num_layers = _num_layers(state_dict, HF + "encoder.layer.")
    pairs = key_pairs(num_layers)
    expected = {hf for _, hf in pairs} | {TOKEN_TYPE}
    optional = {HF_DECODER_WEIGHT, HF_DECODER_BIAS}
    dropped = sorted(k for k in state_dict if HF_DROPPED.match(k))
    extra = sorted(k for k in set(state_dict) - expected - optional - set(dropped) if not HF_IGNORED.match(k))
    missing = sorted(expected - set(state_dict))
    if num_layers != c.get("num_hidden_layers", num_layers):
        problems.append(f"config says {c['num_hidden_layers']} layers, the weights have {num_layers}")
    if extra:
        problems.append(f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}: "
                        "not a plain RobertaForMaskedLM")
    if missing:
        hint = " (no masked-LM head: save a RobertaForMaskedLM)" if any(k.startswith(HF_HEAD) for k in missing) else ""
        problems.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}{hint}")
    if problems:
        refuse("this Hugging Face model", problems)

    embed = state_dict[HF + "embeddings.word_embeddings.weight"]
    decoder = state_dict.get(HF_DECODER_WEIGHT)
    if decoder is not None and not torch.equal(decoder, embed):
        refuse("this Hugging Face model", "untied LM head weights (lm_head.decoder.weight differs from "
               "the word embeddings, tie_word_embeddings=False): fairseq RoBERTa ties them")
    token_type = state_dict[TOKEN_TYPE]
    if not torch.equal(token_type, token_type[:1].expand_as(token_type)):
        refuse("this Hugging Face model", f"{token_type.shape[0]} different token-type embeddings "
               "(type_vocab_size > 1 in use): fairseq RoBERTa has no token types")
    sd = {hf: state_dict[hf] for _, hf in pairs}
    bias = state_dict.get(HF_DECODER_BIAS)
    if bias is not None and not torch.equal(bias, sd[HF_HEAD + "bias"]):
        logger.warning("lm_head.decoder.bias differs from lm_head.bias; converting decoder.bias, "
                       "the one RobertaForMaskedLM's forward adds")
        sd[HF_HEAD + "bias"] = bias
    positions_key = HF + "embeddings.position_embeddings.weight"
    if token_type[0].any():
        logger.info("folding token_type_embeddings[0] into the position embeddings (fairseq RoBERTa "
                    "has no token types; the logits for token type 0 are unchanged)")
        sd[positions_key] = sd[positions_key] + token_type[0].to(sd[positions_key].dtype)

    out = {}
    hf_of = dict(pairs)
    for key in fairseq_keys(num_layers):
        if key == FS + "version":
            out[key] = torch.tensor([ENCODER_VERSION])
        elif key == FS_HEAD + "weight":
            out[key] = out[FS + "embed_tokens.weight"]  # tied: one tensor, as fairseq saves it
        else:
            out[key] = sd[hf_of[key]]
    options = dict(
        encoder_layers=num_layers,
        encoder_embed_dim=embed.shape[1],
        encoder_ffn_embed_dim=sd[f"{HF}encoder.layer.0.intermediate.dense.weight"].shape[0],
        encoder_attention_heads=int(c["num_attention_heads"]),
        max_positions=sd[positions_key].shape[0] - (PAD + 1),
        dropout=float(c.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(c.get("attention_probs_dropout_prob", 0.1)),
        activation_fn="gelu",
        vocab_size=embed.shape[0],
    )
    return options, out


def fairseq_config(options, data_dir, task="masked_lm"):
    """A complete fairseq cfg (plain containers) for a RoBERTa with these options.

    Built by fairseq's own argument parser and ``convert_namespace_to_omegaconf``
    so that every field fairseq reads is present; ``cfg.task.data`` is
    ``data_dir`` (where ``dict.txt`` is), so ``load_model_ensemble`` works as is.
    """
    import warnings

    from fairseq import options as fairseq_options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    argv = [
        data_dir, "--task", task, "--criterion", "masked_lm", "--arch", "roberta",
        "--encoder-layers", str(options["encoder_layers"]),
        "--encoder-embed-dim", str(options["encoder_embed_dim"]),
        "--encoder-ffn-embed-dim", str(options["encoder_ffn_embed_dim"]),
        "--encoder-attention-heads", str(options["encoder_attention_heads"]),
        "--max-positions", str(options["max_positions"]),
        "--tokens-per-sample", str(options["max_positions"]),
        "--dropout", repr(options["dropout"]),
        "--attention-dropout", repr(options["attention_dropout"]),
        "--activation-fn", options["activation_fn"],
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = fairseq_options.parse_args_and_arch(fairseq_options.get_training_parser(), argv)
        cfg = convert_namespace_to_omegaconf(args)
        return _plain(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def _plain(obj):
    """Namespaces (fairseq keeps cfg.model as one for RoBERTa) -> dicts, recursively."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)  # enums and the like: fairseq stores them by name


def fairseq_checkpoint(options, state_dict, data_dir):
    """A fairseq checkpoint of plain containers that ``--restore-file`` and
    ``load_checkpoint_to_cpu`` accept (no optimizer state: reset by construction)."""
    return {
        "cfg": fairseq_config(options, data_dir),
        "model": state_dict,
        # fairseq's _upgrade_state_dict indexes optimizer_history[-1]: one entry, no optimizer
        "optimizer_history": [{
            "criterion_name": "MaskedLmLoss", "optimizer_name": "none",
            "lr_scheduler_state": {"best": None}, "num_updates": 0,
        }],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True}},
        "last_optimizer_state": None,
    }


# -- dictionaries ----------------------------------------------------------------

def _valid_word(word, seen):
    return bool(word) and not any(ch.isspace() for ch in word) and word not in seen


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
        logger.warning(f"the tokenizer's ids 0-3 are {names}; fairseq fixes them to {list(SPECIALS)}")
    mask_id = vocab.get(MASK)
    if mask_id is not None and mask_id != vocab_size - 1:
        logger.warning(f"the tokenizer's {MASK} has id {mask_id}; fairseq's masked_lm uses the last id, "
                       f"{vocab_size - 1}")
    seen = set(SPECIALS) | {MASK}
    words, placeholders = [], 0
    for i in range(len(SPECIALS), vocab_size - 1):
        word = by_id.get(i)
        if word is None or not _valid_word(word, seen):
            word = f"madeupword{placeholders:04d}"
            while word in seen or word in vocab:
                placeholders += 1
                word = f"madeupword{placeholders:04d}"
            placeholders += 1
        seen.add(word)
        words.append(word)
    return words, placeholders


def read_hf_vocab(hf_dir):
    """``token -> id`` of the tokenizer files in ``hf_dir`` (vocab.json or tokenizer.json), or None."""
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


# -- building models (checks and tests) ------------------------------------------

def placeholder_dictionary(vocab_size):
    """A fairseq Dictionary with ``vocab_size`` ids, ``<mask>`` last."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(vocab_size - len(d) - 1):
        d.add_symbol(f"madeupword{i:04d}")
    d.add_symbol(MASK)
    return d


def build_fairseq_model(model_cfg, state_dict, dictionary=None):
    """A fairseq RobertaModel with these weights, in eval mode (old key names are upgraded)."""
    import types

    from fairseq.models.roberta import RobertaModel

    o = model_options(model_cfg)
    sd = dict(state_dict)
    vocab = upgrade_fairseq_state_dict(sd)[FS + "embed_tokens.weight"].shape[0]
    if dictionary is None:
        dictionary = placeholder_dictionary(vocab)
    elif MASK not in dictionary.indices:
        import copy

        dictionary = copy.deepcopy(dictionary)
        dictionary.add_symbol(MASK)
    task = types.SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary,
                                 max_positions=lambda: o.max_positions)
    model = RobertaModel.build_model(o, task)
    model.load_state_dict(sd, strict=True)
    return model.float().eval()


def sample_batch(vocab_size, max_positions, seed=0):
    """Two sequences ``<s> ... </s>``, the second one right-padded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    length = max(3, min(16, max_positions))
    ids = torch.randint(len(SPECIALS), vocab_size - 1, (2, length), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    short = max(3, length // 2)
    ids[1, short - 1], ids[1, short:] = EOS, PAD
    return ids


def max_logit_difference(fairseq_model, hf_model, tokens):
    """max |fairseq logits - HF logits| over the non-pad positions of ``tokens``."""
    import torch

    with torch.no_grad():
        fs = fairseq_model(tokens)[0].float()
        hf = hf_model.float().eval()(input_ids=tokens, attention_mask=tokens.ne(PAD).long()).logits
    keep = tokens.ne(PAD)
    return (fs[keep] - hf[keep]).abs().max().item()


# -- files: the two conversions --------------------------------------------------
#
# Compared with transformers' own script
# (transformers/models/roberta/convert_roberta_original_pytorch_checkpoint_to_pytorch.py,
# ``convert_roberta_checkpoint_to_pytorch(checkpoint_path, dump_folder, classification_head)``),
# what is kept in common: one function from paths to a converted, checked model;
# the same HF config for a fairseq RoBERTa (type_vocab_size=1 with zero token-type
# embeddings, layer_norm_eps=1e-5, max_position_embeddings = max_positions + 2, the
# decoder tied to the token embeddings); and the same check (max |logit difference| of
# both models on one input, 1e-3 at most, an error otherwise). What differs, and why:
# theirs loads through fairseq's hub interface (unpickling the whole checkpoint, and
# needing its BPE files) and copies module by module; here the checkpoint loads with
# weights_only=True and the state dicts map by a name table, refusing whatever does
# not fit instead of asserting on shapes. Theirs checks the in-memory model before
# saving; here the check reloads the written files, so the files themselves are
# checked. Theirs encodes one sentence with the BPE; here a random-id batch with a
# padded row (no tokenizer needed; it exercises the attention mask). Theirs also
# converts an "mnli" classification head; here the masked LM only, both directions.

def _unshared(state_dict):
    """Contiguous tensors that own their memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for key, t in state_dict.items():
        t = t.detach().contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def load_dictionary(path):
    """A fairseq ``Dictionary`` from ``dict.txt``, or :class:`ConversionError`."""
    from fairseq.data import Dictionary

    try:
        return Dictionary.load(path)
    except Exception as err:
        raise ConversionError(f"{path}: not a fairseq dict.txt ({err})") from None


def checkpoint_dictionary(checkpoint, dict_path=None):
    """``(Dictionary or None, its path)`` for a fairseq checkpoint: ``dict_path`` if given
    (it must exist), else ``dict.txt`` beside the checkpoint if there is one, else None
    (the weights convert without a vocabulary; a warning says what that costs)."""
    if dict_path is not None:
        dict_path = os.fspath(dict_path)
        if not os.path.isfile(dict_path):
            raise ConversionError(f"{dict_path}: no such dictionary")
        return load_dictionary(dict_path), dict_path
    dict_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "dict.txt")
    if os.path.isfile(dict_path):
        return load_dictionary(dict_path), dict_path
    logger.warning(f"no dict.txt beside {checkpoint} (and no --dict): converting the weights "
                   "only; OUT_DIR gets no fairseq_dict.txt, so a later from-hf cannot restore the "
                   "vocabulary exactly")
    return None, None


def hf_dict_text(hf_dir, vocab_size):
    """``(dict.txt contents, where they came from)`` for an HF model with ``vocab_size`` ids:
    ``fairseq_dict.txt`` (as :func:`fairseq_to_hf` writes it) if present, else the
    tokenizer vocab (vocab.json, tokenizer.json), else placeholder words."""
    fairseq_dict = os.path.join(hf_dir, "fairseq_dict.txt")
    if os.path.isfile(fairseq_dict):
        d = load_dictionary(fairseq_dict)
        if len(d) + 1 != vocab_size:
            raise ConversionError(
                f"{fairseq_dict} gives {len(d) + 1} ids (incl. <mask>) but the model has {vocab_size}")
        with open(fairseq_dict, encoding="utf-8") as f:
            return f.read(), "fairseq_dict.txt"
    vocab = read_hf_vocab(hf_dir)
    words, placeholders = dict_words_from_vocab(vocab, vocab_size)
    text = "".join(f"{w} 1\n" for w in words)
    if vocab is None:
        logger.warning(f"{hf_dir} has neither fairseq_dict.txt nor a tokenizer vocab (vocab.json, "
                       f"tokenizer.json): dict.txt gets placeholder words madeupwordNNNN for ids "
                       f"4..{vocab_size - 2}; binarize data only with ids that match the model's")
        return text, "placeholders"
    if placeholders:
        logger.warning(f"{placeholders} of {len(words)} ids have no usable token in the tokenizer "
                       "vocab; dict.txt holds madeupwordNNNN placeholders for them")
    return text, "the tokenizer vocab"


def _check(fairseq_model, hf_model, model, result):
    """Set ``result.max_logit_difference``; :class:`CheckFailedError` above the tolerance."""
    diff = max_logit_difference(fairseq_model, hf_model,
                                sample_batch(model["vocab_size"], model["max_positions"]))
    result.max_logit_difference = diff
    if diff > CHECK_TOLERANCE:
        raise CheckFailedError(f"--check: fairseq and HF logits differ by {diff:.3g} "
                               f"(> {CHECK_TOLERANCE:g}); the converted files are wrong", result)
    return result


def _save_without_unsafe_globals(checkpoint, out):
    """torch.save to ``out`` (atomically), then re-read what the file would unpickle:
    anything beyond the checkpoint allow-list removes the file and is an error."""
    import torch

    from se_fairseq.checkpoint_safety import allowed_globals

    tmp = out + ".tmp"
    torch.save(checkpoint, tmp)
    found, aliases = allowed_globals()
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in found} | {name for _, name in aliases}
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp)) - allowed
    if unsafe:  # cannot happen with plain containers; never leave such a file behind
        os.remove(tmp)
        raise ConversionError(f"internal error: the checkpoint would pickle {sorted(unsafe)}")
    os.replace(tmp, out)


def fairseq_to_hf(checkpoint, out_dir, dict_path=None, check=False, overwrite=False):
    """fairseq RoBERTa checkpoint -> HF ``RobertaForMaskedLM`` directory (``se-convert to-hf``).

    Writes ``config.json`` and ``model.safetensors`` into ``out_dir`` (created), what
    ``RobertaForMaskedLM.from_pretrained(out_dir)`` loads, plus the fairseq dictionary
    as ``fairseq_dict.txt``: ``dict_path``, else ``dict.txt`` beside the checkpoint,
    else none (a warning). The checkpoint loads with ``weights_only=True`` and the
    checkpoint allow-list; the released ``roberta.base`` layout converts too. Refused
    with :class:`ConversionError`, before anything is written: architectures HF RoBERTa
    cannot compute (pre-LN, untied LM head by option or by value, other activations,
    ...), a dictionary of another size, existing outputs unless ``overwrite``.
    ``check=True`` reloads the written files with transformers and compares logits
    with the fairseq model (:class:`CheckFailedError` above :data:`CHECK_TOLERANCE`).
    Returns a :class:`ConversionResult`.
    """
    transformers = require_transformers()
    from safetensors.torch import save_file

    _import_fairseq()
    from fairseq import checkpoint_utils

    checkpoint, out_dir = os.fspath(checkpoint), os.fspath(out_dir)
    if not os.path.isfile(checkpoint):
        raise ConversionError(f"{checkpoint}: no such checkpoint")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConversionError(f"{out_dir} exists and is not a directory")
    clash = [f for f in HF_OUTPUTS if os.path.exists(os.path.join(out_dir, f))]
    if clash and not overwrite:
        raise ConversionError(f"{out_dir} already holds {', '.join(clash)} (--force overwrites)")
    if os.path.exists(os.path.join(out_dir, "model.safetensors.index.json")):
        raise ConversionError(f"{out_dir} holds a sharded model; use an empty directory")
    dictionary, dict_path = checkpoint_dictionary(checkpoint, dict_path)

    state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
    model_cfg = checkpoint_model_cfg(state)
    config, hf_sd = fairseq_state_dict_to_hf(state["model"], model_cfg, dictionary)

    os.makedirs(out_dir, exist_ok=True)
    config.save_pretrained(out_dir)
    files = [os.path.join(out_dir, "config.json"), os.path.join(out_dir, "model.safetensors")]
    save_file(_unshared(hf_sd), files[1], metadata={"format": "pt"})
    dict_out = None
    if dictionary is not None:
        dict_out = os.path.join(out_dir, "fairseq_dict.txt")
        shutil.copyfile(dict_path, dict_out)
        files.append(dict_out)
    model = dict(layers=config.num_hidden_layers, hidden=config.hidden_size,
                 ffn=config.intermediate_size, heads=config.num_attention_heads,
                 vocab_size=config.vocab_size, max_positions=config.max_position_embeddings - 2)
    result = ConversionResult(out_dir, files, dict_out, dict_path, model)
    if check:
        with _quiet_transformers(transformers):
            hf_model = transformers.RobertaForMaskedLM.from_pretrained(out_dir, local_files_only=True)
        _check(build_fairseq_model(model_cfg, state["model"], dictionary), hf_model, model, result)
    return result


def hf_to_fairseq(hf_dir, out_path, check=False, overwrite=False):
    """HF ``RobertaForMaskedLM`` directory -> fairseq checkpoint (``se-convert from-hf``).

    Writes ``out_path``, a checkpoint of plain containers (re-checked: nothing outside
    the checkpoint allow-list is pickled) that ``fairseq-train --restore-file`` continues
    and ``torch.load(weights_only=True)`` reads, and ``dict.txt`` beside it: from
    ``hf_dir/fairseq_dict.txt``, else the tokenizer vocab, else placeholder words
    (:func:`hf_dict_text`). Refused with :class:`ConversionError`, before anything is
    written: configurations fairseq RoBERTa cannot compute (other activations, relative
    positions, pad id other than 1, untied LM head, distinct token types, ...), weights
    missing or of the wrong shape, an existing ``out_path`` or a different ``dict.txt``
    unless ``overwrite``. ``check=True`` loads the written checkpoint with fairseq and
    compares logits with the HF model (:class:`CheckFailedError` above
    :data:`CHECK_TOLERANCE`). Returns a :class:`ConversionResult`.
    """
    transformers = require_transformers()
    _import_fairseq()

    hf_dir = os.fspath(hf_dir)
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{hf_dir}: no config.json (not a saved HF model directory)")
    out = os.path.abspath(out_path)
    out_dir = os.path.dirname(out)
    dict_out = os.path.join(out_dir, "dict.txt")
    if os.path.exists(out) and not overwrite:
        raise ConversionError(f"{os.fspath(out_path)} exists (--force overwrites)")

    with open(config_path, encoding="utf-8") as f:
        problems = check_hf_config(json.load(f))
    if problems:
        refuse("this Hugging Face model", problems)

    with _quiet_transformers(transformers):
        config = transformers.RobertaConfig.from_pretrained(hf_dir, local_files_only=True)
        hf_model, info = transformers.RobertaForMaskedLM.from_pretrained(
            hf_dir, config=config, local_files_only=True, output_loading_info=True, dtype="auto")
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(m[0]) if isinstance(m, (list, tuple)) else str(m) for m in info.get("mismatched_keys") or []]
    unexpected = sorted(k for k in info.get("unexpected_keys") or []
                        if not (HF_DROPPED.match(k) or HF_IGNORED.match(k)))
    if missing or mismatched or unexpected:
        refuse(f"{hf_dir}", [
            *([f"weights missing from the files (HF would initialise them randomly): {missing[:8]}"]
              if missing else []),
            *([f"weights of the wrong shape: {mismatched[:8]}"] if mismatched else []),
            *([f"weights RobertaForMaskedLM does not use: {unexpected[:8]}"] if unexpected else []),
        ])
    options, fs_sd = hf_state_dict_to_fairseq(config, hf_model.state_dict())
    text, source = hf_dict_text(hf_dir, options["vocab_size"])
    if os.path.exists(dict_out) and not overwrite:
        with open(dict_out, encoding="utf-8") as f:
            if f.read() != text:
                raise ConversionError(f"{dict_out} exists with other contents (--force overwrites)")

    os.makedirs(out_dir, exist_ok=True)
    _save_without_unsafe_globals(fairseq_checkpoint(options, fs_sd, out_dir), out)
    from se_fairseq.data.score_file import atomic_write_text

    atomic_write_text(dict_out, text)
    model = dict(layers=options["encoder_layers"], hidden=options["encoder_embed_dim"],
                 ffn=options["encoder_ffn_embed_dim"], heads=options["encoder_attention_heads"],
                 vocab_size=options["vocab_size"], max_positions=options["max_positions"])
    result = ConversionResult(out, [out, dict_out], dict_out, source, model)
    if check:
        from fairseq import checkpoint_utils

        state = checkpoint_utils.load_checkpoint_to_cpu(out)
        fs_model = build_fairseq_model(state["cfg"]["model"], state["model"], load_dictionary(dict_out))
        _check(fs_model, hf_model, model, result)
    return result
