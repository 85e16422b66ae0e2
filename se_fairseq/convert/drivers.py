"""The two conversions, from paths to checked files: :func:`fairseq_to_hf` and
:func:`hf_to_fairseq`. Each finds the family (``family.py``) and lets it map the
state dict and config; the files, their checks and the logit check are here, once."""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Union

from .atomic import copy_file, save_checkpoint, save_pretrained_files, save_safetensors, write_text
from .check import build_fairseq_model, check_logits
from .dependencies import import_fairseq, quiet_transformers, require_transformers
from .dictionaries import checkpoint_dictionary, load_dictionary
from .errors import ConversionError, OutputExistsError, listed, refuse
from .fairseq_io import checkpoint_arch, checkpoint_model_cfg, fairseq_checkpoint, model_options
from .family import family_of_arch, family_of_hf_config
from .state_dicts import fairseq_to_hf_state

logger = logging.getLogger("se_fairseq.convert")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ConversionResult:
    """What :func:`fairseq_to_hf` or :func:`hf_to_fairseq` wrote."""

    output: str  # OUT_DIR (to HF) or the checkpoint OUT.pt (to fairseq)
    files: list[str]  # every file written, in the order written
    dict_path: Optional[str]  # the fairseq dictionary written (None: to HF without a dict.txt)
    dict_source: Optional[PathLike]  # where its words came from (as the caller named it)
    # layers, hidden, ffn, heads, vocab_size, max_positions (BERT: and type_vocab_size)
    model: dict[str, int] = field(default_factory=dict)
    max_logit_difference: Optional[float] = None  # max |fairseq - HF logits|, with check=True
    family: Optional[str] = None  # "roberta", "bert"
    fairseq_args: list[str] = field(default_factory=list)  # fairseq-train model options


def fairseq_to_hf(
    checkpoint: PathLike,
    out_dir: PathLike,
    dict_path: Optional[PathLike] = None,
    check: bool = False,
    overwrite: bool = False,
    tokenizer_dir: Optional[PathLike] = None,
) -> ConversionResult:
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
    hf = fairseq_to_hf_state(family, state["model"], model_options(model_cfg), dictionary)
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


def hf_to_fairseq(
    hf_dir: PathLike, out_path: PathLike, check: bool = False, overwrite: bool = False
) -> ConversionResult:
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
    problems, dropped = loading_problems(family, info)
    if problems:
        refuse(f"{hf_dir}", problems)
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


def loading_problems(family, info):
    """``(problems, dropped)`` of transformers' ``output_loading_info``: weights missing,
    of the wrong shape or unused by the masked LM are problems; tensors of other heads
    (pooler, NSP) are dropped."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [
        str(m[0]) if isinstance(m, (list, tuple)) else str(m)
        for m in info.get("mismatched_keys") or []
    ]
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not family.hf_unused(k))
    dropped = sorted(k for k in info.get("unexpected_keys") or [] if family.hf_dropped(k))
    problems = []
    if missing:
        head = (
            " (no masked-LM head: save a " + family.hf_class + ")"
            if any(k.startswith(family.hf_head_prefix) for k in missing)
            else ""
        )
        problems.append(
            "weights missing from the files (HF would initialise them randomly): "
            f"{listed(missing)}{head}"
        )
    if mismatched:
        problems.append(f"weights of the wrong shape: {listed(mismatched)}")
    if unexpected:
        problems.append(f"weights {family.hf_class} does not use: {listed(unexpected)}")
    return problems, dropped
