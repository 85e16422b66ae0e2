"""What HF self-questioning scores were computed from, and the checks that use it.

A scored dataset saved to a folder carries ``se_scores.json`` beside datasets' own
files (and the same record, as JSON, in its ``DatasetInfo.description``, which
``save_to_disk`` writes to ``dataset_info.json``): the metric, the model
(``name_or_path``, a sha256 of its weights), the tokenizer (name, size, a sha256 of its
vocabulary), a fingerprint of the token ids (a sha256 over every example's
``input_ids``) and one of the scores (a sha256 over the float32 values of the scores
column), as a fairseq score file records its checkpoint and corpus.
``load_scored_dataset`` refuses a folder whose ids or scores are not the ones recorded,
or whose tokenizer or output vocabulary size differ, and warns when the model given has
other weights than the scoring model (stale scores train, but they are not that model's).
"""

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

FORMAT = "se-fairseq-hf-scores"
VERSION = 1
PROVENANCE_FILE = "se_scores.json"
IDS_COLUMN = "input_ids"
ROWS_PER_READ = 10_000


class ScoredDatasetError(ValueError):
    """A scored dataset that does not match what it is used with (the message says how)."""


class StaleScoresWarning(UserWarning):
    """Scores computed by another model than the one they are used with."""


def list_batches(dataset: Any, column: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(int64 lengths, flat values) of a list column, ``ROWS_PER_READ`` examples at a time."""
    import pyarrow.compute as pc

    arrow = dataset.with_format("arrow")
    for start in range(0, len(dataset), ROWS_PER_READ):
        lists = arrow[start : start + ROWS_PER_READ][column].combine_chunks()
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
        yield lengths.astype(np.int64), lists.flatten().to_numpy(zero_copy_only=False)


def id_batches(dataset: Any, column: str = IDS_COLUMN) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(lengths, flat ids) as int64 arrays, ``ROWS_PER_READ`` examples at a time."""
    for lengths, values in list_batches(dataset, column):
        yield lengths, values.astype(np.int64)


def scan_ids(dataset: Any, column: str = IDS_COLUMN) -> tuple[dict, np.ndarray, int]:
    """One pass over ``column``: its fingerprint (examples, tokens and a sha256 over the
    lengths and the ids), the length of every example and the largest id (-1: none)."""
    lengths_digest, ids_digest = hashlib.sha256(), hashlib.sha256()
    all_lengths, largest = [], -1
    for lengths, values in id_batches(dataset, column):
        lengths_digest.update(lengths.tobytes())
        ids_digest.update(values.tobytes())
        all_lengths.append(lengths)
        if len(values):
            largest = max(largest, int(values.max()))
    lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, dtype=np.int64)
    both = hashlib.sha256((lengths_digest.hexdigest() + ids_digest.hexdigest()).encode())
    fingerprint = {
        "examples": len(dataset),
        "tokens": int(lengths.sum()),
        "sha256": both.hexdigest(),
    }
    return fingerprint, lengths, largest


def ids_fingerprint(dataset: Any, column: str = IDS_COLUMN) -> dict:
    return scan_ids(dataset, column)[0]


def scores_fingerprint(values: np.ndarray) -> dict:
    """The scores column's record: how many values, and a sha256 over them as
    little-endian float32 (NaN included: it marks the unscored tokens)."""
    flat = np.ascontiguousarray(values, dtype="<f4")
    return {"values": int(len(flat)), "sha256": hashlib.sha256(flat.tobytes()).hexdigest()}


def dataset_files(path: str) -> list[str]:
    """The files of the scored dataset saved at ``path``: datasets' (its state, its info,
    the data files its state lists, or that datasets names so) and the record."""
    names = ["state.json", "dataset_info.json", PROVENANCE_FILE]
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            names += [os.path.basename(d["filename"]) for d in json.load(f)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        names += [n for n in os.listdir(path) if _DATA_FILE.fullmatch(n)]
    return names


_DATA_FILE = re.compile(r"data-\d{5}-of-\d{5}\.arrow")


def weights_sha256(model: Any) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the model's state dict."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_vocab_size(model: Any) -> Optional[int]:
    """Rows of the MLM head's output embeddings; None when the model has no such head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        return None
    return int(head.weight.shape[0])


def model_record(model: Any) -> dict:
    config = getattr(model, "config", None)
    return {
        "name_or_path": str(getattr(config, "_name_or_path", "") or ""),
        "class": type(model).__name__,
        "vocab_size": model_vocab_size(model),
        "weights_sha256": weights_sha256(model),
    }


def tokenizer_record(tokenizer: Any) -> dict:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_sha256": digest.hexdigest(),
        "special_ids": sorted(int(i) for i in tokenizer.all_special_ids),
    }


def provenance(*, metric: str, column: str, model: dict, tokenizer: dict, ids: dict) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "metric": metric,
        "column": column,
        "model": model,
        "tokenizer": tokenizer,
        "ids": ids,
    }


def read_provenance(path: str) -> dict:
    """The record of the scored dataset saved at ``path`` (its se_scores.json)."""
    record_path = os.path.join(path, PROVENANCE_FILE)
    if not os.path.isfile(record_path):
        raise ScoredDatasetError(
            f"{record_path} not found: {path} is not a dataset scored by se_fairseq.hf "
            "(score it with se_fairseq.hf.score_dataset or se-score --hf)"
        )
    with open(record_path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("format") != FORMAT:
        raise ScoredDatasetError(f"{record_path} is not an {FORMAT} record")
    return record


def load_scored_dataset(path: str, tokenizer: Any = None, model: Any = None) -> Any:
    """``datasets.load_from_disk(path)``, checked against its se_scores.json: the token ids
    and the scores must be the ones recorded, and each example must hold one score per
    id; with ``tokenizer``, its vocabulary must be the scoring tokenizer's; with
    ``model``, its output vocabulary size must be the scoring model's, and other weights
    than the scoring model's give a ``StaleScoresWarning``."""
    import datasets

    record = read_provenance(path)
    record_path = os.path.join(path, PROVENANCE_FILE)
    dataset = datasets.load_from_disk(path)
    if not isinstance(dataset, datasets.Dataset):
        raise ScoredDatasetError(f"{path} holds a {type(dataset).__name__}, not one Dataset")
    column = record["column"]
    for name in (IDS_COLUMN, column):
        if name not in dataset.column_names:
            raise ScoredDatasetError(f"{path} has no column {name!r} ({record_path} expects it)")
    found = ids_fingerprint(dataset)
    if found != record["ids"]:
        raise ScoredDatasetError(
            f"the input_ids of {path} ({found['examples']} examples, {found['tokens']} tokens, "
            f"sha256 {found['sha256'][:12]}) are not the ones {record_path} says were scored "
            f"({record['ids']['examples']} examples, {record['ids']['tokens']} tokens, "
            f"sha256 {record['ids']['sha256'][:12]}); score this dataset again"
        )
    pairs = zip(list_batches(dataset, IDS_COLUMN), list_batches(dataset, column))
    digest, count = hashlib.sha256(), 0
    for (lengths, _), (score_lengths, scores) in pairs:
        if not np.array_equal(lengths, score_lengths):
            raise ScoredDatasetError(f"{path}: column {column!r} does not hold one score per id")
        flat = np.ascontiguousarray(scores, dtype="<f4")
        digest.update(flat.tobytes())
        count += len(flat)
    wanted_scores = record.get("scores")  # records written before it was kept: not checked
    found_sha256 = digest.hexdigest()
    if wanted_scores is not None and {"values": count, "sha256": found_sha256} != wanted_scores:
        raise ScoredDatasetError(
            f"the column {column!r} of {path} ({count} values, sha256 "
            f"{found_sha256[:12]}) is not the one {record_path} records "
            f"({wanted_scores['values']} values, sha256 {wanted_scores['sha256'][:12]}): the "
            "scores were changed after scoring; score this dataset again"
        )
    if tokenizer is not None:
        check_tokenizer(record, tokenizer_record(tokenizer), record_path)
    if model is not None:
        wanted, got = record["model"]["vocab_size"], model_vocab_size(model)
        if got != wanted:
            raise ScoredDatasetError(
                f"the model's output vocabulary has {got} entries but the scores in {path} "
                f"come from a model with {wanted} ({record_path}); use a model of the same "
                "vocabulary"
            )
        check_model(record, model_record(model), path)
    return dataset


def check_model(record: dict, found: dict, where: str) -> None:
    """A ``StaleScoresWarning`` when ``found`` (a ``model_record``) has other weights than
    the model the scores in ``where`` were computed with."""
    wanted = record["model"]
    if found["weights_sha256"] == wanted.get("weights_sha256"):
        return
    scorer = wanted.get("name_or_path") or wanted.get("class")
    given = found["name_or_path"] or found["class"]
    warnings.warn(
        f"the scores in {where} come from another model: {scorer!r} (weights sha256 "
        f"{str(wanted.get('weights_sha256'))[:12]}, {PROVENANCE_FILE}), not {given!r} (weights "
        f"sha256 {found['weights_sha256'][:12]}); they train as they are, but they are not "
        "this model's self-questioning (score again with se-score --hf to refresh them)",
        StaleScoresWarning,
        stacklevel=3,
    )


def check_tokenizer(record: dict, found: dict, where: str) -> None:
    wanted = record["tokenizer"]
    differ = [k for k in ("vocab_size", "vocab_sha256") if found[k] != wanted[k]]
    if differ:
        raise ScoredDatasetError(
            f"the tokenizer {found['name_or_path'] or found['class']!r} is not the one the scores "
            f"in {where} were computed with ({wanted['name_or_path'] or wanted['class']!r}): "
            f"vocabulary size {found['vocab_size']} vs {wanted['vocab_size']}, vocabulary "
            f"sha256 {found['vocab_sha256'][:12]} vs {wanted['vocab_sha256'][:12]}"
        )
