"""fairseq checkpoints: reading their model configuration, and writing a new one of
plain containers that ``fairseq-train --restore-file`` continues."""

import argparse
import logging
from collections.abc import Mapping

from .errors import ConversionError

logger = logging.getLogger("se_fairseq.convert")


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
        "cfg": fairseq_config(model.arch, model.args, model.options["max_positions"], data_dir),
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


# the options of an encoder's shape, in the order fairseq-train's flags are written
ENCODER_SHAPE = (
    "encoder_layers",
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_attention_heads",
    "max_positions",
)


def model_flags(options, names):
    """The fairseq-train flags that set these ``options``: ``--encoder-layers 12 ...``."""
    return [arg for name in names for arg in (f"--{name.replace('_', '-')}", str(options[name]))]
