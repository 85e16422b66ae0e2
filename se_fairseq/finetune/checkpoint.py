"""What the harness needs to know about a pretrained checkpoint: its architecture (as
fairseq-train options), its dictionary, its positions and the tokenizer it names.

Nothing here is specific to RoBERTa: the architecture is the checkpoint's own ``--arch``,
and its options are those the registered fairseq model declares (``add_args``), with
the checkpoint's values, so any fairseq encoder that ``sentence_prediction`` can
fine-tune (a classification head registered by name) works.
"""

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, cast

from se_fairseq.core.files import file_sha256
from se_fairseq.finetune.errors import FinetuneError

#: set by the recipe for fine-tuning, not taken from the pretraining run
RECIPE_MODEL_OPTIONS = {"dropout", "attention_dropout", "max_positions"}


@dataclass
class CheckpointInfo:
    name: str
    path: str
    arch: str
    model_args: list[str]  # fairseq-train options that rebuild the architecture
    dict_path: str
    dict_sha256: str
    vocab_size: int  # rows of the embedding table (dictionary + <mask>)
    max_positions: int
    bpe: dict[str, Any]  # the checkpoint's own cfg.bpe (may be empty)
    engine: Literal["fairseq"] = "fairseq"
    #: the checkpoint training started from (cfg.checkpoint: --restore-file, else
    #: --finetune-from-model), where se-convert's tokenizer/ folder may be
    started_from: str = ""

    @property
    def is_bert(self) -> bool:
        """A BERT checkpoint (``--arch hf_bert*``, se-convert's): fine-tuned through
        transformers (:func:`se_fairseq.finetune.hf_model.convert_fairseq_bert`)."""
        return self.arch == "hf_bert" or self.arch.startswith("hf_bert_")


def _plain(cfg: Any) -> dict[str, Any]:
    """A fairseq config section (omegaconf, argparse Namespace or mapping) as a plain dict."""
    if cfg is None:
        return {}
    if isinstance(cfg, argparse.Namespace):
        return dict(vars(cfg))
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            # a config section is a DictConfig: its container is a dict
            return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    except ImportError:  # pragma: no cover - omegaconf comes with fairseq
        pass
    if isinstance(cfg, Mapping):
        return {k: _plain(v) if isinstance(v, argparse.Namespace) else v for k, v in cfg.items()}
    return {}


def model_cli_args(model_cfg: Mapping[str, Any], arch: str) -> list[str]:
    """fairseq-train options for ``arch`` with the checkpoint's values, from the options the
    registered model declares."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    if arch not in ARCH_MODEL_REGISTRY:
        raise FinetuneError(
            f"the checkpoint's architecture {arch!r} is not registered with "
            "fairseq here (a plugin not installed?)"
        )
    parser = argparse.ArgumentParser(add_help=False)
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    args = []
    for action in parser._actions:
        dest = action.dest
        if dest in RECIPE_MODEL_OPTIONS or dest not in model_cfg or not action.option_strings:
            continue
        value = model_cfg[dest]
        if value is None:
            continue
        flag = (
            action.option_strings[-1]
            if action.option_strings[-1].startswith("--")
            else action.option_strings[0]
        )
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                args.append(flag)
        elif isinstance(action, argparse._StoreFalseAction):
            if not value:
                args.append(flag)
        elif isinstance(action, argparse._StoreAction):
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            if isinstance(value, bool):
                value = str(value)
            args += [flag, str(value)]
    return args


def first_line(err: BaseException) -> str:
    """An exception's message, its first non-empty line only (errors are one line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else repr(err)


def find_dictionary(path: str, cfg: Mapping[str, Any], dict_path: Optional[str] = None) -> str:
    """The checkpoint's dict.txt: given, beside the checkpoint, or in its training data folder."""
    if dict_path is not None:
        if not os.path.exists(dict_path):
            raise FinetuneError(f"dictionary {dict_path} not found")
        return dict_path
    candidates = [os.path.join(os.path.dirname(os.path.abspath(path)), "dict.txt")]
    data = (cfg.get("task") or {}).get("data")
    if isinstance(data, str) and data:
        candidates.append(os.path.join(data.split(":")[0], "dict.txt"))
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise FinetuneError(
        f"no dictionary for checkpoint {path}: looked for {', '.join(candidates)}; "
        "give the dict.txt the model was pretrained with (--dict, or NAME=CKPT:DICT)"
    )


def read_checkpoint(
    path: str, name: Optional[str] = None, dict_path: Optional[str] = None
) -> CheckpointInfo:
    """Inspect a fairseq checkpoint (loaded on the CPU with fairseq's own reader, which the
    plugin makes weights_only) and check its dictionary against its embedding table."""
    from se_fairseq.extras import MissingExtraError, require_fairseq

    if not os.path.exists(path):
        raise FinetuneError(f"checkpoint {path} not found")
    try:
        require_fairseq(f"checkpoint {path} (a fairseq checkpoint, not a folder with config.json)")
    except MissingExtraError as err:
        raise FinetuneError(str(err)) from None
    from fairseq import checkpoint_utils
    from fairseq.data import Dictionary

    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as err:  # torch's and fairseq's readers raise many kinds on a bad file
        raise FinetuneError(
            f"checkpoint {path} cannot be read as a fairseq checkpoint "
            f"({type(err).__name__}: {first_line(err)})"
        ) from err
    if not isinstance(state, Mapping) or not isinstance(state.get("model"), Mapping):
        raise FinetuneError(
            f"checkpoint {path} is not a fairseq checkpoint (no 'model' state dict in it)"
        )
    cfg = state.get("cfg")
    cfg = {k: _plain(v) for k, v in cfg.items()} if cfg is not None else {}
    if not cfg.get("model") and state.get("args") is not None:
        cfg = {
            "model": _plain(state["args"]),
            "task": _plain(state["args"]),
            "bpe": {"_name": getattr(state["args"], "bpe", None)},
        }
    model_cfg = cfg.get("model") or {}
    arch = model_cfg.get("arch") or model_cfg.get("_name")
    if not arch:
        raise FinetuneError(f"checkpoint {path} names no architecture (cfg.model.arch)")
    embed = [v for k, v in state["model"].items() if k.endswith("embed_tokens.weight")]
    if not embed:
        raise FinetuneError(
            f"checkpoint {path} holds no token embedding table (*embed_tokens.weight)"
        )
    dict_path = find_dictionary(path, cfg, dict_path)
    dict_size = (
        len(Dictionary.load(dict_path)) + 1
    )  # + <mask>, as masked_lm and sentence_prediction add it
    if embed[0].shape[0] != dict_size:
        raise FinetuneError(
            f"dictionary mismatch: checkpoint {path} has {embed[0].shape[0]} token embeddings but "
            f"{dict_path} gives {dict_size} symbols (incl. <mask>); use the dict.txt the model was "
            "pretrained with"
        )
    positions = model_cfg.get("max_positions") or (cfg.get("task") or {}).get("tokens_per_sample")
    if not positions:
        raise FinetuneError(f"checkpoint {path} records no max_positions")
    bpe = cfg.get("bpe") or {}
    checkpoint_cfg = cfg.get("checkpoint") or {}
    started_from = next(
        (
            str(checkpoint_cfg[k])
            for k in ("restore_file", "finetune_from_model")
            if checkpoint_cfg.get(k) and checkpoint_cfg[k] != "checkpoint_last.pt"
        ),
        "",
    )
    return CheckpointInfo(
        name=name or os.path.basename(os.path.dirname(os.path.abspath(path))),
        path=os.path.abspath(path),
        arch=arch,
        model_args=model_cli_args(model_cfg, arch),
        dict_path=os.path.abspath(dict_path),
        dict_sha256=file_sha256(dict_path),
        vocab_size=int(embed[0].shape[0]),
        max_positions=int(positions),
        bpe=bpe if isinstance(bpe, dict) else {},
        started_from=started_from,
    )
