"""The shared core of ``se-convert``: what every model family converts the same way.

A family (``roberta.py``, ``bert.py``) is a :class:`Family`: the name tables and
refusals of one architecture, at the level of state dicts and configs. Everything
else is here, once: the errors and the result, loading a fairseq checkpoint safely,
the fairseq dictionary on both sides, writing the files (atomically, with the
checkpoint re-checked for unsafe globals), building both models and comparing
their logits (``check=True``), and the two drivers that run a whole conversion
from paths (:func:`fairseq_to_hf`, :func:`hf_to_fairseq`, which the package
exports with the family chosen for them).

Token ids. fairseq fixes ``<s> <pad> </s> <unk>`` to ids 0-3, the words of
``dict.txt`` follow, and the masked_lm tasks append ``<mask>`` as the last id, so
a model has ``len(dict.txt) + 5`` embedding rows. A family whose HF vocabulary is
in another order (BERT) gives the HF row of every fairseq id (``token_ids``); the
embedding rows are permuted with it on the way in and back on the way out, and
the logit check feeds each side its own ids.

Importing this module is cheap: torch, fairseq and transformers are imported by
the functions that need them.
"""

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

logger = logging.getLogger("se_fairseq.convert")

BOS, PAD, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"
ENCODER_VERSION = 3.0  # value of fairseq 0.12's TransformerEncoderBase ``version`` buffer

# fairseq's names, shared by the families built on RobertaEncoder (roberta, hf_bert)
FS = "encoder.sentence_encoder."
FS_HEAD = "encoder.lm_head."
LAYER = (  # fairseq (under FS + layers.i.) -> HF (under <model>.encoder.layer.i.), BERT's names
    ("self_attn.k_proj", "attention.self.key"),
    ("self_attn.v_proj", "attention.self.value"),
    ("self_attn.q_proj", "attention.self.query"),
    ("self_attn.out_proj", "attention.output.dense"),
    ("self_attn_layer_norm", "attention.output.LayerNorm"),
    ("fc1", "intermediate.dense"),
    ("fc2", "output.dense"),
    ("final_layer_norm", "output.LayerNorm"),
)

# max |logit difference| that check=True accepts, in float32 (transformers' own RoBERTa
# script accepts 1e-3; the tiny and base-shaped models of the tests stay below 1e-5)
CHECK_TOLERANCE = 1e-4

INSTALL_HINT = (
    "se-convert needs the Hugging Face extras: pip install 'se-fairseq[hf]' "
    "(or: pip install transformers safetensors)"
)


class ConversionError(Exception):
    """The input cannot be converted faithfully; the message says why."""


class MissingDependencyError(ConversionError):
    """transformers or safetensors is not installed (``pip install 'se-fairseq[hf]'``)."""


class OutputExistsError(ConversionError):
    """An output is there already; ``what`` names it. The library's message names its
    keyword (``overwrite=True``); the CLI says ``--force``."""

    def __init__(self, what):
        super().__init__(f"{what} (overwrite=True replaces it)")
        self.what = what


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
    model: dict = field(
        default_factory=dict
    )  # layers, hidden, ffn, heads, vocab_size, max_positions
    max_logit_difference: Optional[float] = None  # max |fairseq - HF logits|, with check=True
    family: Optional[str] = None  # "roberta", "bert"
    fairseq_args: list = field(default_factory=list)  # fairseq-train model options of this model


@dataclass
class HFModel:
    """A family's HF side: config, the tensors ``save_pretrained`` writes, and the HF
    row of each fairseq token id (None: the same ids)."""

    config: object
    state_dict: dict
    token_ids: object = None


@dataclass
class FairseqModel:
    """A family's fairseq side: ``--arch``, the options (``encoder_layers`` ...) and
    the matching fairseq-train flags, the state dict, and the HF row of each
    fairseq token id (None: the same ids)."""

    arch: str
    options: dict
    args: list
    state_dict: dict
    token_ids: object = None
    write_extras: object = None  # write_extras(out_dir) -> paths of files beyond dict.txt


def refuse(what, problems):
    if isinstance(problems, str):
        problems = [problems]
    raise ConversionError(f"cannot convert {what}:\n  - " + "\n  - ".join(problems))


def listed(names, limit=8):
    names = list(names)
    return f"{names[:limit]}{' ...' if len(names) > limit else ''}"


def tensor_problems(present, expected, model, *, optional=(), skipped=lambda key: False, head=None):
    """Why the tensors ``present`` are not exactly ``model``'s: tensors beyond ``expected``
    and ``optional`` (those ``skipped`` says to pass over aside), and ``expected`` ones
    missing, in ``expected``'s order (with a hint where the masked-LM ``head`` prefix
    is among them)."""
    present = set(present)
    extra = sorted(k for k in present - set(expected) - set(optional) if not skipped(k))
    missing = [k for k in expected if k not in present]
    problems = []
    if extra:
        problems.append(f"unexpected tensors {listed(extra)}: not a plain {model}")
    if missing:
        hint = (
            f" (no masked-LM head: save a {model})"
            if head and any(k.startswith(head) for k in missing)
            else ""
        )
        problems.append(f"missing tensors {listed(missing)}{hint}")
    return problems


# -- families ---------------------------------------------------------------------


class Family:
    """One model family on both sides. A subclass (one module: roberta.py, bert.py)
    sets the class attributes and implements the methods that raise
    NotImplementedError; :func:`fairseq_to_hf` and :func:`hf_to_fairseq` do the rest
    (paths, files, checks). A new family is a new module with a ``FAMILY`` instance
    and its name in :data:`FAMILY_MODULES`."""

    name = None  # "roberta"
    hf_class = None  # transformers class of the masked LM, e.g. "RobertaForMaskedLM"
    hf_config_class = None  # e.g. "RobertaConfig"
    hf_model_types = ()  # config.json model_type values this family reads
    hf_head_prefix = None  # key prefix of the HF masked-LM head, e.g. "lm_head."
    hf_outputs = ("config.json", "model.safetensors")  # what to-hf writes (+ fairseq_dict.txt)
    fairseq_outputs = ()  # what from-hf writes beside OUT.pt beyond dict.txt (FairseqModel.write_extras)

    def fairseq_model_class(self):
        raise NotImplementedError

    def archs(self):
        from fairseq.models import ARCH_MODEL_REGISTRY

        cls = self.fairseq_model_class()
        return sorted(a for a, m in ARCH_MODEL_REGISTRY.items() if m is cls)

    # -- fairseq -> HF
    def to_hf_state(self, state_dict, options, dictionary):
        """(fairseq state dict, model options Namespace, Dictionary or None) -> HFModel.
        Refuses (ConversionError) what the HF model cannot compute."""
        raise NotImplementedError

    def hf_summary(self, config):
        """layers, hidden, ffn, heads, vocab_size, max_positions of an HF config."""
        raise NotImplementedError

    def hf_extras(self, hf, dictionary, tokenizer_dir, search_dirs, transformers):
        """Checks the files beyond config, weights and fairseq_dict.txt (a tokenizer:
        ``tokenizer_dir``, else looked for in ``search_dirs``) and returns a function
        ``write(out_dir) -> paths`` that writes them."""
        if tokenizer_dir is not None:
            logger.warning(f"--tokenizer is for BERT checkpoints; {self.name} ignores it")
        return lambda out_dir: []

    # -- HF -> fairseq
    def hf_config_problems(self, config):
        """What in a raw config.json dict the fairseq model cannot compute, as messages."""
        raise NotImplementedError

    def hf_dropped(self, key):
        """An HF tensor of another head (pooler, NSP) that the masked LM leaves out."""
        return False

    def hf_unused(self, key):
        """An HF tensor to leave out silently or with a note (buffers, other heads)."""
        return self.hf_dropped(key)

    def to_fairseq_state(self, hf_dir, config, state_dict, transformers):
        """(HF dir, loaded config, masked-LM state dict) -> (FairseqModel, dict.txt text,
        where its words came from). Refuses what fairseq cannot compute."""
        raise NotImplementedError

    def summary(self, options):
        return dict(
            layers=options["encoder_layers"],
            hidden=options["encoder_embed_dim"],
            ffn=options["encoder_ffn_embed_dim"],
            heads=options["encoder_attention_heads"],
            vocab_size=options["vocab_size"],
            max_positions=options["max_positions"],
        )


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
def quiet_transformers(transformers):
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


def import_fairseq():
    """Import fairseq with the plugin registered: its checkpoint loading is then
    ``torch.load(weights_only=True)`` with the allow-list (also when autoload is off),
    and ``--arch hf_bert*`` exists."""
    import fairseq  # noqa: F401

    import se_fairseq

    se_fairseq.register_with_fairseq()


# -- the fairseq side ---------------------------------------------------------------


def checkpoint_model_cfg(state):
    """The model options of a loaded fairseq checkpoint (``cfg.model`` or old ``args``)."""
    cfg = state.get("cfg")
    if cfg is not None and cfg.get("model") is not None:
        return cfg["model"]
    if state.get("args") is not None:
        return state["args"]
    raise ConversionError(
        "the checkpoint holds no model configuration (neither cfg.model nor args)"
    )


def _options_dict(model_cfg):
    from omegaconf import OmegaConf

    if isinstance(model_cfg, argparse.Namespace):
        return dict(vars(model_cfg))
    if OmegaConf.is_config(model_cfg):
        return OmegaConf.to_container(model_cfg, resolve=True)
    if isinstance(model_cfg, Mapping):
        return dict(model_cfg)
    raise ConversionError(f"unreadable model configuration of type {type(model_cfg).__name__}")


def checkpoint_arch(model_cfg):
    options = _options_dict(model_cfg)
    arch = options.get("_name") or options.get("arch")
    if arch is None:
        logger.warning("the checkpoint names no architecture; assuming fairseq's 'roberta'")
        arch = "roberta"
    return arch


def model_options(model_cfg):
    """fairseq model options as an argparse.Namespace, defaults filled in by the arch."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    options = _options_dict(model_cfg)
    arch = checkpoint_arch(model_cfg)
    namespace = argparse.Namespace(**options)
    ARCH_CONFIG_REGISTRY[arch](namespace)
    return namespace


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


def num_layers(keys, prefix):
    import re

    found = {
        int(m.group(1)) for k in keys for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m
    }
    if found and found != set(range(max(found) + 1)):
        raise ConversionError(f"layers {sorted(set(range(max(found) + 1)) - found)} are missing")
    return max(found) + 1 if found else 0


def dictionary_size_problems(dictionary, vocab):
    """A fairseq Dictionary (with or without the task's <mask>) against ``vocab`` rows."""
    if dictionary is None:
        return []
    problems = []
    if dictionary.pad() != PAD:
        problems.append(f"pad index {dictionary.pad()}: fairseq's <pad> must be id {PAD}")
    size = len(dictionary) + (0 if MASK in dictionary.indices else 1)
    if size != vocab:
        problems.append(
            f"the dictionary gives {size} ids (incl. {MASK}) but the embedding has {vocab} "
            "rows; pass the checkpoint's own dict.txt with --dict"
        )
    return problems


def fairseq_config(arch, args, max_positions, data_dir, task="masked_lm"):
    """A complete fairseq cfg (plain containers) for ``--arch arch`` with model flags ``args``.

    Built by fairseq's own argument parser and ``convert_namespace_to_omegaconf``
    so that every field fairseq reads is present; ``cfg.task.data`` is
    ``data_dir`` (where ``dict.txt`` is), so ``load_model_ensemble`` works as is.
    """
    import warnings

    from fairseq import options as fairseq_options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    argv = [
        data_dir,
        "--task",
        task,
        "--criterion",
        "masked_lm",
        "--arch",
        arch,
        *args,
        "--tokens-per-sample",
        str(max_positions),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = fairseq_options.parse_args_and_arch(fairseq_options.get_training_parser(), argv)
        cfg = convert_namespace_to_omegaconf(parsed)
        return _plain(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def _plain(obj):
    """Namespaces (fairseq keeps cfg.model as one for legacy models) -> dicts, recursively."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)  # enums and the like: fairseq stores them by name


def fairseq_checkpoint(model, data_dir):
    """A fairseq checkpoint of plain containers that ``--restore-file`` and
    ``load_checkpoint_to_cpu`` accept (no optimizer state: reset by construction)."""
    return {
        "cfg": fairseq_config(model.arch, model.args, model.options["tokens_per_sample"], data_dir),
        "model": model.state_dict,
        # fairseq's _upgrade_state_dict indexes optimizer_history[-1]: one entry, no optimizer
        "optimizer_history": [
            {
                "criterion_name": "MaskedLmLoss",
                "optimizer_name": "none",
                "lr_scheduler_state": {"best": None},
                "num_updates": 0,
            }
        ],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True}},
        "last_optimizer_state": None,
    }


# -- dictionaries ----------------------------------------------------------------------


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
    logger.warning(
        f"no dict.txt beside {checkpoint} (and no --dict): converting the weights "
        "only; OUT_DIR gets no fairseq_dict.txt, so a later from-hf cannot restore the "
        "vocabulary exactly"
    )
    return None, None


def valid_word(word, seen):
    """Can ``word`` be a line of dict.txt (one whitespace-free token, not yet used)?"""
    return bool(word) and not any(ch.isspace() for ch in word) and word not in seen


def placeholder(seen, taken=()):
    """The next ``madeupwordNNNN`` not in ``seen`` or ``taken`` (fairseq's own filler name)."""
    i = 0
    while f"madeupword{i:04d}" in seen or f"madeupword{i:04d}" in taken:
        i += 1
    return f"madeupword{i:04d}"


def placeholder_dictionary(vocab_size):
    """A fairseq Dictionary with ``vocab_size`` ids, ``<mask>`` last."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(vocab_size - len(d) - 1):
        d.add_symbol(f"madeupword{i:04d}")
    d.add_symbol(MASK)
    return d


# -- building models and comparing them ----------------------------------------------


def build_fairseq_model(model_cfg, state_dict, dictionary=None):
    """The fairseq model of ``--arch`` of ``model_cfg`` with these weights, in eval mode
    (fairseq upgrades old key names while loading)."""
    import copy
    import types

    from fairseq.models import ARCH_MODEL_REGISTRY

    o = model_options(model_cfg)
    vocab = next(
        v for k, v in state_dict.items() if k.endswith("sentence_encoder.embed_tokens.weight")
    ).shape[0]
    if dictionary is None:
        dictionary = placeholder_dictionary(vocab)
    elif MASK not in dictionary.indices:
        dictionary = copy.deepcopy(dictionary)
        dictionary.add_symbol(MASK)
    task = types.SimpleNamespace(
        source_dictionary=dictionary,
        target_dictionary=dictionary,
        max_positions=lambda: o.max_positions,
    )
    model = ARCH_MODEL_REGISTRY[checkpoint_arch(model_cfg)].build_model(o, task)
    model.load_state_dict(dict(state_dict), strict=True)
    return model.float().eval()


def sample_batch(vocab_size, max_positions, seed=0):
    """Two sequences ``<s> ... </s>`` of fairseq ids, the second one right-padded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    length = max(3, min(16, max_positions))
    ids = torch.randint(len(SPECIALS), vocab_size - 1, (2, length), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    short = max(3, length // 2)
    ids[1, short - 1], ids[1, short:] = EOS, PAD
    return ids


def max_logit_difference(fairseq_model, hf_model, tokens, token_ids=None):
    """max |fairseq logits - HF logits| over the non-pad positions of ``tokens`` (fairseq
    ids). The HF model reads ``token_ids[tokens]`` and its logits are put back in
    fairseq's order (``token_ids``: the HF row of each fairseq id; None: the same)."""
    import torch

    hf_tokens = tokens if token_ids is None else token_ids[tokens]
    with torch.no_grad():
        fs = fairseq_model(tokens)[0].float()
        hf = (
            hf_model.float()
            .eval()(input_ids=hf_tokens, attention_mask=tokens.ne(PAD).long())
            .logits
        )
    if token_ids is not None:
        hf = hf[..., token_ids]
    keep = tokens.ne(PAD)
    return (fs[keep] - hf[keep]).abs().max().item()


def check_logits(fairseq_model, hf_model, model, result, token_ids=None):
    """Set ``result.max_logit_difference``; :class:`CheckFailedError` above the tolerance."""
    diff = max_logit_difference(
        fairseq_model,
        hf_model,
        sample_batch(model["vocab_size"], model["max_positions"]),
        token_ids,
    )
    result.max_logit_difference = diff
    if diff > CHECK_TOLERANCE:
        raise CheckFailedError(
            f"--check: fairseq and HF logits differ by {diff:.3g} "
            f"(> {CHECK_TOLERANCE:g}); the converted files are wrong",
            result,
        )
    return result


# -- writing files ----------------------------------------------------------------------


def unshared(state_dict):
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


def _tmp(path):
    return f"{path}.tmp{os.getpid()}"


def write_text(path, text):
    from se_fairseq.data.score_file import atomic_write_text

    atomic_write_text(path, text)
    return path


def copy_file(src, dst):
    tmp = _tmp(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def save_safetensors(state_dict, path):
    from safetensors.torch import save_file

    tmp = _tmp(path)
    save_file(unshared(state_dict), tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def save_pretrained_files(obj, out_dir):
    """``obj.save_pretrained`` (a config or tokenizer) into ``out_dir`` without leaving
    half-written files: into a scratch folder beside it, then each file moved in."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    with tempfile.TemporaryDirectory(dir=parent, prefix=".se-convert-") as scratch:
        obj.save_pretrained(scratch)
        names = sorted(os.listdir(scratch))
        for name in names:
            os.replace(os.path.join(scratch, name), os.path.join(out_dir, name))
    return [os.path.join(out_dir, name) for name in names]


def save_checkpoint(checkpoint, out):
    """torch.save to ``out`` (atomically), then re-read what the file would unpickle:
    anything beyond the checkpoint allow-list removes the file and is an error."""
    import torch

    from se_fairseq.checkpoint_safety import allowed_globals

    tmp = _tmp(out)
    torch.save(checkpoint, tmp)
    found, aliases = allowed_globals()
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in found} | {name for _, name in aliases}
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp)) - allowed
    if unsafe:  # cannot happen with plain containers; never leave such a file behind
        os.remove(tmp)
        raise ConversionError(f"internal error: the checkpoint would pickle {sorted(unsafe)}")
    os.replace(tmp, out)
    return out


# -- the two conversions ------------------------------------------------------------------

FAMILY_MODULES = ("roberta", "bert")  # se_fairseq/convert/<name>.py, each with a FAMILY


def families():
    import importlib

    return [importlib.import_module(f"se_fairseq.convert.{name}").FAMILY for name in FAMILY_MODULES]


def family_of_arch(arch):
    """The family whose fairseq model class ``--arch arch`` builds (exactly that class)."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    model_class = ARCH_MODEL_REGISTRY.get(arch)
    for family in families():
        if model_class is family.fairseq_model_class():
            return family
    supported = ", ".join(a for family in families() for a in family.archs())
    refuse(f"arch {arch!r}", f"only these fairseq architectures convert: {supported}")


def family_of_hf_config(config):
    model_type = config.get("model_type", "roberta")
    for family in families():
        if model_type in family.hf_model_types:
            return family
    types = ", ".join(t for family in families() for t in family.hf_model_types)
    refuse("this Hugging Face model", f"model_type {model_type!r}: se-convert converts {types}")


def fairseq_to_hf(
    checkpoint, out_dir, dict_path=None, check=False, overwrite=False, tokenizer_dir=None
):
    """fairseq checkpoint -> HF masked-LM directory (``se-convert to-hf``); the family
    (RoBERTa, BERT) comes from the checkpoint's ``--arch``.

    Writes ``config.json`` and ``model.safetensors`` into ``out_dir`` (created), what
    ``<Family>ForMaskedLM.from_pretrained(out_dir)`` loads, plus the fairseq dictionary
    as ``fairseq_dict.txt``: ``dict_path``, else ``dict.txt`` beside the checkpoint,
    else none (a warning); a BERT model also gets its tokenizer (from ``tokenizer_dir``,
    else a ``tokenizer/`` folder beside the dictionary or the checkpoint, else a
    ``vocab.txt`` rebuilt from the dictionary). The checkpoint loads with
    ``weights_only=True`` and the checkpoint allow-list. Refused with
    :class:`ConversionError`, before anything is written: what the HF model cannot
    compute (pre-LN, untied LM head by option or by value, other activations, ...), a
    dictionary of another size, existing outputs unless ``overwrite``
    (:class:`OutputExistsError`). ``check=True`` reloads the written files with
    transformers and compares logits with the fairseq model (:class:`CheckFailedError`
    above :data:`CHECK_TOLERANCE`). Returns a :class:`ConversionResult`.
    """
    transformers = require_transformers()
    import_fairseq()
    from fairseq import checkpoint_utils

    checkpoint, out_dir = os.fspath(checkpoint), os.fspath(out_dir)
    if not os.path.isfile(checkpoint):
        raise ConversionError(f"{checkpoint}: no such checkpoint")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConversionError(f"{out_dir} exists and is not a directory")
    if os.path.exists(os.path.join(out_dir, "model.safetensors.index.json")):
        raise ConversionError(f"{out_dir} holds a sharded model; use an empty directory")
    dictionary, dict_path = checkpoint_dictionary(checkpoint, dict_path)

    state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
    model_cfg = checkpoint_model_cfg(state)
    family = family_of_arch(checkpoint_arch(model_cfg))
    clash = [
        f
        for f in (*family.hf_outputs, "fairseq_dict.txt")
        if os.path.exists(os.path.join(out_dir, f))
    ]
    if clash and not overwrite:
        raise OutputExistsError(f"{out_dir} already holds {', '.join(clash)}")
    hf = family.to_hf_state(state["model"], model_options(model_cfg), dictionary)
    search = [os.path.dirname(os.path.abspath(p)) for p in (dict_path, checkpoint) if p]
    write_extras = family.hf_extras(
        hf, dictionary, tokenizer_dir and os.fspath(tokenizer_dir), search, transformers
    )

    os.makedirs(out_dir, exist_ok=True)
    files = save_pretrained_files(hf.config, out_dir)
    files.append(save_safetensors(hf.state_dict, os.path.join(out_dir, "model.safetensors")))
    dict_out = None
    if dictionary is not None:
        dict_out = copy_file(dict_path, os.path.join(out_dir, "fairseq_dict.txt"))
        files.append(dict_out)
    files += write_extras(out_dir)
    model = family.hf_summary(hf.config)
    result = ConversionResult(
        out_dir,
        files,
        dict_out,
        dict_path,
        model,
        family=family.name,
        fairseq_args=["--arch", checkpoint_arch(model_cfg)],
    )
    if check:
        with quiet_transformers(transformers):
            hf_model = getattr(transformers, family.hf_class).from_pretrained(
                out_dir, local_files_only=True
            )
        fs_model = build_fairseq_model(model_cfg, state["model"], dictionary)
        check_logits(fs_model, hf_model, model, result, hf.token_ids)
    return result


def hf_to_fairseq(hf_dir, out_path, check=False, overwrite=False):
    """HF masked-LM directory -> fairseq checkpoint (``se-convert from-hf``); the family
    comes from ``config.json``'s ``model_type``.

    Writes ``out_path``, a checkpoint of plain containers (re-checked: nothing outside
    the checkpoint allow-list is pickled) that ``fairseq-train --restore-file`` continues
    and ``torch.load(weights_only=True)`` reads, and ``dict.txt`` beside it (RoBERTa: from
    ``hf_dir/fairseq_dict.txt``, else the tokenizer vocab, else placeholder words; BERT:
    from the tokenizer, which is also saved beside it as ``tokenizer/``). Refused with
    :class:`ConversionError`, before anything is written: configurations the fairseq
    model cannot compute (other activations, relative positions, untied LM head, ...),
    weights missing or of the wrong shape, an existing ``out_path`` or a different
    ``dict.txt`` unless ``overwrite`` (:class:`OutputExistsError`). ``check=True`` loads
    the written checkpoint with fairseq and compares logits with the HF model
    (:class:`CheckFailedError` above :data:`CHECK_TOLERANCE`). Returns a
    :class:`ConversionResult`.
    """
    import json

    transformers = require_transformers()
    import_fairseq()

    hf_dir = os.fspath(hf_dir)
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{hf_dir}: no config.json (not a saved HF model directory)")
    out = os.path.abspath(out_path)
    out_dir = os.path.dirname(out)
    dict_out = os.path.join(out_dir, "dict.txt")
    if os.path.exists(out) and not overwrite:
        raise OutputExistsError(f"{os.fspath(out_path)} exists")

    with open(config_path, encoding="utf-8") as f:
        raw_config = json.load(f)
    family = family_of_hf_config(raw_config)
    problems = family.hf_config_problems(raw_config)
    if problems:
        refuse("this Hugging Face model", problems)

    with quiet_transformers(transformers):
        config = getattr(transformers, family.hf_config_class).from_pretrained(
            hf_dir, local_files_only=True
        )
        hf_model, info = getattr(transformers, family.hf_class).from_pretrained(
            hf_dir, config=config, local_files_only=True, output_loading_info=True, dtype="auto"
        )
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [
        str(m[0]) if isinstance(m, (list, tuple)) else str(m)
        for m in info.get("mismatched_keys") or []
    ]
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not family.hf_unused(k))
    dropped = sorted(k for k in info.get("unexpected_keys") or [] if family.hf_dropped(k))
    if missing or mismatched or unexpected:
        head = (
            " (no masked-LM head: save a " + family.hf_class + ")"
            if any(k.startswith(family.hf_head_prefix) for k in missing)
            else ""
        )
        refuse(
            f"{hf_dir}",
            [
                *(
                    [
                        f"weights missing from the files (HF would initialise them randomly): {listed(missing)}{head}"
                    ]
                    if missing
                    else []
                ),
                *([f"weights of the wrong shape: {listed(mismatched)}"] if mismatched else []),
                *(
                    [f"weights {family.hf_class} does not use: {listed(unexpected)}"]
                    if unexpected
                    else []
                ),
            ],
        )
    if dropped:
        logger.warning(
            f"dropping {len(dropped)} tensors the masked LM does not use: {listed(dropped, 4)}"
        )
    fs, text, source = family.to_fairseq_state(hf_dir, config, hf_model.state_dict(), transformers)
    if os.path.exists(dict_out) and not overwrite:
        with open(dict_out, encoding="utf-8") as f:
            if f.read() != text:
                raise OutputExistsError(f"{dict_out} exists with other contents")
    clash = [
        os.path.join(out_dir, f)
        for f in family.fairseq_outputs
        if os.path.exists(os.path.join(out_dir, f))
    ]
    if clash and not overwrite:
        raise OutputExistsError(f"{', '.join(clash)} exists")

    os.makedirs(out_dir, exist_ok=True)
    files = [save_checkpoint(fairseq_checkpoint(fs, out_dir), out), write_text(dict_out, text)]
    if fs.write_extras is not None:
        files += fs.write_extras(out_dir)
    model = family.summary(fs.options)
    result = ConversionResult(
        out,
        files,
        dict_out,
        source,
        model,
        family=family.name,
        fairseq_args=["--arch", fs.arch, *fs.args],
    )
    if check:
        from fairseq import checkpoint_utils

        state = checkpoint_utils.load_checkpoint_to_cpu(out)
        fs_model = build_fairseq_model(
            state["cfg"]["model"], state["model"], load_dictionary(dict_out)
        )
        check_logits(fs_model, hf_model, model, result, fs.token_ids)
    return result
