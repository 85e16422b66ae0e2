"""A task folder -> fairseq's sentence_prediction data, as fairseq's GLUE preprocessing makes it.

``preprocess_GLUE_tasks.sh`` BPE-encodes each text column and runs
``fairseq-preprocess --only-source --srcdict dict.txt`` per input, and, for the labels,
``fairseq-preprocess --only-source`` without a dictionary (classification) or plain
text files of floats (regression, STS-B's divided by 5). This module writes the same
files (``input0/``, ``input1/``, ``label/`` with ``train``/``valid`` splits; mmap
datasets, the label dictionary built and padded as fairseq builds it) in-process;
``tests/test_finetune.py`` checks them byte for byte against ``fairseq-preprocess``.

The folder is written under a temporary name and renamed when complete, with a
manifest of what it was made from (task files, tokenizer, dictionary); a folder whose
manifest matches is reused.
"""

import json
import os
import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from se_fairseq.core.files import file_sha256
from se_fairseq.finetune.errors import FinetuneError
from se_fairseq.finetune.folders import built_folder
from se_fairseq.finetune.log import Log, print_line
from se_fairseq.finetune.records import DevSet, Manifest, TestSet
from se_fairseq.finetune.tasks import Split, TaskData

if TYPE_CHECKING:
    from se_fairseq.finetune.encode import Tokenizer, TokenizerSpec


def splits(task: TaskData, test: bool = False) -> list[tuple[str, Split]]:
    """(fairseq split name, Split): train, then valid, valid1, ... for the dev sets (MNLI's
    mismatched dev set is valid1, as fairseq's preprocess_GLUE_tasks.sh names it), and with
    ``test`` the GLUE test sets (test, test1: texts only, no labels)."""
    return (
        [("train", task.train)]
        + [
            ("valid" if i == 0 else f"valid{i}", split)
            for i, (_, split) in enumerate(task.dev_sets)
        ]
        + [
            ("test" if i == 0 else f"test{i}", split)
            for i, (_, split) in enumerate(task.test_sets if test else ())
        ]
    )


def test_sets(task: TaskData) -> list[TestSet]:
    """The manifest's list of test sets: GLUE server file name, fairseq split, index file."""
    return [
        {
            "name": name,
            "split": "test" if i == 0 else f"test{i}",
            "index": "test_index.json" if i == 0 else f"test_index.test{i}.json",
        }
        for i, (name, _) in enumerate(task.test_sets)
    ]


def dev_sets(task: TaskData) -> list[DevSet]:
    """The manifest's list of dev sets: results column, fairseq split, targets file."""
    return [
        {
            "name": column,
            "split": "valid" if i == 0 else f"valid{i}",
            "targets": "dev_targets.json" if i == 0 else f"dev_targets.valid{i}.json",
        }
        for i, (column, _) in enumerate(task.dev_sets)
    ]


#: more <unk> than this share of the dev tokens means text and dictionary do not match
MAX_UNK_SHARE = 0.2


def write_indexed(path_prefix: str, lines: Iterable[str], dictionary: Any) -> tuple[int, int]:
    """Binarize symbol lines as fairseq-preprocess does (append </s>, mmap, no new symbols);
    returns (tokens, unknown tokens)."""
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(
        path_prefix + ".bin", impl="mmap", vocab_size=len(dictionary)
    )
    tokens = unknown = 0
    unk = dictionary.unk()
    for line in lines:
        ids = dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long()
        tokens += len(ids)
        unknown += int((ids == unk).sum())
        builder.add_item(ids)
    builder.finalize(path_prefix + ".idx")
    return tokens, unknown


def label_dictionary(labels: Iterable[str]) -> Any:
    """The label dictionary ``fairseq-preprocess --only-source`` builds from train labels."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for label in labels:
        for word in label.split():
            d.add_symbol(word)
        d.add_symbol(d.eos_word)
    d.finalize(threshold=-1, nwords=-1, padding_factor=8)
    return d


def manifest_for(task: TaskData, tokenizer_spec: "TokenizerSpec", dict_path: str) -> Manifest:
    files = {os.path.basename(s.path): file_sha256(s.path) for _, s in splits(task, test=True)}
    return {
        "task": task.name,
        "layout": task.layout,
        "kind": task.kind,
        "files": files,
        "tokenizer": tokenizer_spec.kind,
        "tokenizer_id": tokenizer_spec.identity(),
        "dictionary_sha256": file_sha256(dict_path),
        "label_scale": task.label_scale,
        "format": 1,
    }


def binarize_task(
    task: TaskData, tokenizer: "Tokenizer", dict_path: str, out_dir: str, log: Log = print_line
) -> Manifest:
    """Write (or reuse) the binarized task; returns its manifest (with label names and sizes)."""
    wanted = manifest_for(task, tokenizer.spec, dict_path)
    manifest_path = os.path.join(out_dir, "manifest.json")
    if os.path.exists(manifest_path):
        have = json.load(open(manifest_path))
        if {k: have.get(k) for k in wanted} == wanted:
            return have
        log(f"[finetune] {out_dir} was made from other inputs; rebuilding it")
    with built_folder(out_dir, "manifest.json") as tmp:
        manifest = _write_binarized(task, tokenizer, dict_path, wanted, tmp)
    labels = manifest["labels"]
    log(
        f"[finetune] binarized {task.name}: {len(task.train)} train / {len(task.dev)} dev "
        "examples, "
        f"{task.num_inputs} text column(s), {task.kind}"
        + (f", {len(labels)} labels" if labels else "")
        + f" -> {out_dir}"
    )
    return manifest


def _write_binarized(
    task: TaskData, tokenizer: "Tokenizer", dict_path: str, wanted: Manifest, tmp: str
) -> Manifest:
    """The binarized task's files and manifest.json, written into the folder ``tmp``."""
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(dict_path)
    stats = {}
    for i in range(task.num_inputs):
        folder = os.path.join(tmp, f"input{i}")
        os.makedirs(folder)
        shutil.copyfile(dict_path, os.path.join(folder, "dict.txt"))
        for split, data in splits(task, test=True):
            lines = [tokenizer.encode(t) for t in data.texts[i]]
            tokens, unknown = write_indexed(os.path.join(folder, split), lines, dictionary)
            stats[f"input{i}.{split}"] = {"tokens": tokens, "unknown": unknown}
            text_tokens = tokens - len(lines)  # without the </s> of each line
            if split == "valid" and text_tokens and unknown > MAX_UNK_SHARE * text_tokens:
                raise FinetuneError(
                    f"dictionary mismatch: {100 * unknown / text_tokens:.0f} % of the tokens of "
                    f"{data.path} (text {i + 1}) are not in {dict_path} after "
                    f"{tokenizer.spec.kind} encoding; the text must be encoded with the "
                    "tokenizer the checkpoint was pretrained with"
                )
    label_folder = os.path.join(tmp, "label")
    os.makedirs(label_folder)
    labels = None
    if task.kind == "classification":
        labels_dict = label_dictionary(task.train.labels)
        labels_dict.save(os.path.join(label_folder, "dict.txt"))
        for split, data in splits(task):
            write_indexed(os.path.join(label_folder, split), data.labels, labels_dict)
        # class i of the model's head is symbol i + nspecial, as sentence_prediction offsets it
        labels = [
            labels_dict[i]
            for i in range(labels_dict.nspecial, len(labels_dict))
            if labels_dict.count[i] > 0
        ]
    else:
        scale = task.label_scale or 1.0
        for split, data in splits(task):
            with open(os.path.join(label_folder, f"{split}.label"), "w") as f:
                f.writelines(f"{float(v) / scale}\n" for v in data.labels)
    tests, devs = test_sets(task), dev_sets(task)
    manifest: Manifest = {
        **wanted,
        "labels": labels,
        "num_classes": len(labels) if labels else 1,
        "sizes": {split: len(data) for split, data in splits(task, test=True)},
        "tokens": stats,
        "num_inputs": task.num_inputs,
        "dev_sets": devs,
        "test_sets": tests,
    }
    for test_entry, (_, data) in zip(tests, task.test_sets):
        with open(os.path.join(tmp, test_entry["index"]), "w") as f:
            json.dump(data.labels, f)
    for entry, (_, data) in zip(devs, task.dev_sets):
        with open(os.path.join(tmp, entry["targets"]), "w") as f:
            json.dump(data.labels, f)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
