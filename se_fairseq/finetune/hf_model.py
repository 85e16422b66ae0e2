"""Hugging Face checkpoints in the harness: a ``save_pretrained`` directory (config.json,
weights, tokenizer files) read into a :class:`HFCheckpointInfo`, a fairseq ``hf_bert``
checkpoint converted back into one (the project's own converter, exact), and a task
folder written as plain text for the Trainer (:func:`write_text_task`).

The run itself is :mod:`se_fairseq.finetune.hf_worker`; this module only reads, checks
and writes files, and imports transformers lazily.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal, Optional

from se_fairseq.core.files import file_sha256
from se_fairseq.finetune.binarize import dev_sets, splits, test_sets
from se_fairseq.finetune.checkpoint import CheckpointInfo, first_line
from se_fairseq.finetune.errors import FinetuneError
from se_fairseq.finetune.folders import built_folder
from se_fairseq.finetune.log import Log, print_line
from se_fairseq.finetune.records import Manifest
from se_fairseq.finetune.tasks import TaskData

#: families whose position table holds pad_token_id + 1 offset rows before the positions
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")
#: a tokenizer's model_max_length above this is transformers' "no limit" placeholder
NO_LIMIT = 1_000_000
#: the marker of a converted checkpoint's folder: what it was converted from
CONVERTED = "converted.json"


@dataclass
class HFCheckpointInfo:
    name: str
    path: str  # the save_pretrained directory
    model_type: str  # config.json's model_type (bert, modernbert, deberta-v2, ...)
    max_length: int  # tokens per input the tokenizer truncates to
    engine: Literal["hf"] = "hf"
    converted_from: str = ""  # a fairseq checkpoint this directory was converted from


def is_hf_directory(path: str) -> bool:
    """A directory given as a checkpoint is a Hugging Face one (fairseq's are files)."""
    return os.path.isdir(path)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, ...
        raise FinetuneError(
            f"checkpoint {path}: cannot load its tokenizer with AutoTokenizer "
            f"({type(err).__name__}: {first_line(err)}); save it into the directory with "
            "tokenizer.save_pretrained"
        ) from None


def max_length(config: Any, tokenizer: Any) -> int:
    """Tokens per input: the tokenizer's model_max_length where it sets one, else the
    model's positions (less RoBERTa's offset rows), whichever is smaller."""
    positions = getattr(config, "max_position_embeddings", None) or 512
    if config.model_type in OFFSET_POSITIONS:
        positions -= (config.pad_token_id or 0) + 1
    limit = tokenizer.model_max_length
    return int(min(limit, positions)) if limit and limit < NO_LIMIT else int(positions)


def read_hf_checkpoint(
    path: str, name: Optional[str] = None, converted_from: str = ""
) -> HFCheckpointInfo:
    """Inspect a save_pretrained directory: config.json readable by AutoConfig, a tokenizer
    AutoTokenizer loads, with a pad token (batches are padded)."""
    from transformers import AutoConfig

    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FinetuneError(
            f"checkpoint {path} is a directory without config.json: give a fairseq checkpoint "
            "file or a Hugging Face save_pretrained directory"
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise FinetuneError(
            f"checkpoint {path}/config.json: not a transformers config "
            f"({type(err).__name__}: {first_line(err)})"
        ) from None
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token is None:
        raise FinetuneError(
            f"checkpoint {path}: its tokenizer has no pad token (batches are padded); set "
            "one (tokenizer.pad_token = ...) and save it again"
        )
    return HFCheckpointInfo(
        name=name or os.path.basename(os.path.normpath(path)),
        path=path,
        model_type=config.model_type,
        max_length=max_length(config, tokenizer),
        converted_from=converted_from,
    )


def parameter_count(path: str) -> int:
    """Parameters of the sequence-classification model of a directory (built on the meta
    device from its config: nothing is loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return int(sum(p.numel() for p in model.parameters()))


def bert_tokenizer_dir(info: CheckpointInfo) -> str:
    """The ``tokenizer/`` folder se-convert from-hf wrote: beside the checkpoint, beside
    its dict.txt, or beside the checkpoint its training started from (``--restore-file``:
    continued pretraining saves elsewhere). None found is an error: a vocab.txt rebuilt
    from dict.txt would not know the tokenizer's lower-casing."""
    places = [os.path.dirname(info.path), os.path.dirname(info.dict_path)]
    if info.started_from:
        places.append(os.path.dirname(os.path.abspath(info.started_from)))
    candidates = [os.path.join(p, "tokenizer") for p in places]
    for candidate in candidates:
        if any(os.path.isfile(os.path.join(candidate, f)) for f in ("tokenizer.json", "vocab.txt")):
            return candidate
    raise FinetuneError(
        f"checkpoint {info.path} is a BERT checkpoint (--arch {info.arch}) and its WordPiece "
        f"tokenizer was not found: looked for {', '.join(candidates)}; copy the tokenizer/ "
        "folder se-convert from-hf wrote beside the checkpoint"
    )


def convert_fairseq_bert(
    info: CheckpointInfo, out_dir: str, log: Log = print_line
) -> HFCheckpointInfo:
    """A fairseq ``hf_bert`` checkpoint -> OUT_DIR/data/hf-NAME-SHA/, a save_pretrained
    directory (BertForMaskedLM weights, config, the checkpoint's own WordPiece tokenizer:
    :func:`bert_tokenizer_dir`), made once per checkpoint content."""
    from se_fairseq.convert import ConversionError, fairseq_to_hf

    tokenizer_dir = bert_tokenizer_dir(info)
    sha = file_sha256(info.path)
    folder = os.path.join(out_dir, "data", f"hf-{info.name}-{sha[:12]}")
    marker = os.path.join(folder, CONVERTED)
    if not os.path.exists(marker):
        with built_folder(folder, CONVERTED) as tmp:
            try:
                fairseq_to_hf(info.path, tmp, dict_path=info.dict_path, tokenizer_dir=tokenizer_dir)
            except ConversionError as err:
                raise FinetuneError(f"checkpoint {info.path}: cannot convert it ({err})") from None
            with open(os.path.join(tmp, CONVERTED), "w") as f:
                json.dump({"checkpoint": info.path, "sha256": sha}, f, indent=1)
        log(f"[finetune] {info.name}: BERT checkpoint converted for transformers -> {folder}")
    return read_hf_checkpoint(folder, info.name, converted_from=info.path)


def label_names(task: TaskData) -> Optional[list[str]]:
    """Class i of the head is label i: the train labels in sorted order."""
    return sorted(set(task.train.labels)) if task.kind == "classification" else None


def write_text_task(task: TaskData, out_dir: str, log: Log = print_line) -> Manifest:
    """Write (or reuse) OUT_DIR: ``examples.json`` (per split: the text columns and labels,
    as read from the task folder), dev targets and test indices under the names the
    fairseq data folder uses, and a manifest. Returns the manifest."""
    files = {os.path.basename(s.path): file_sha256(s.path) for _, s in splits(task, test=True)}
    wanted: Manifest = {
        "task": task.name,
        "layout": task.layout,
        "kind": task.kind,
        "files": files,
        "label_scale": task.label_scale,
        "format": "text-1",
    }
    manifest_path = os.path.join(out_dir, "manifest.json")
    if os.path.exists(manifest_path):
        have = json.load(open(manifest_path))
        if {k: have.get(k) for k in wanted} == wanted:
            return have
    with built_folder(out_dir, "manifest.json") as tmp:
        manifest = _write_text(task, wanted, tmp)
    log(f"[finetune] {task.name}: text for transformers -> {out_dir}")
    return manifest


def _write_text(task: TaskData, wanted: Manifest, tmp: str) -> Manifest:
    """examples.json, the dev targets, test indices and manifest.json, written into ``tmp``."""
    labels = label_names(task)
    examples = {
        split: {"texts": data.texts, "labels": data.labels}
        for split, data in splits(task, test=True)
    }
    with open(os.path.join(tmp, "examples.json"), "w") as f:
        json.dump(examples, f)
    devs, tests = dev_sets(task), test_sets(task)
    manifest: Manifest = {
        **wanted,
        "labels": labels,
        "num_classes": len(labels) if labels else 1,
        "sizes": {split: len(data) for split, data in splits(task, test=True)},
        "num_inputs": task.num_inputs,
        "dev_sets": devs,
        "test_sets": tests,
    }
    for entry, (_, data) in zip(devs, task.dev_sets):
        with open(os.path.join(tmp, entry["targets"]), "w") as f:
            json.dump(data.labels, f)
    for test_entry, (_, data) in zip(tests, task.test_sets):
        with open(os.path.join(tmp, test_entry["index"]), "w") as f:
            json.dump(data.labels, f)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def text_folder(out_dir: str, task: TaskData) -> str:
    """OUT_DIR/data/TASK-text-HASH: one per task folder content, shared by every HF
    checkpoint (each tokenizes it with its own tokenizer in its run)."""
    h = hashlib.sha256()
    for _, split in splits(task, test=True):
        h.update(file_sha256(split.path).encode())
    return os.path.join(out_dir, "data", f"{task.name}-text-{h.hexdigest()[:12]}")
