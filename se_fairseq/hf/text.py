"""Text files to a tokenized ``datasets.Dataset``, as transformers' run_mlm.py makes it.

The same loader (datasets' ``text`` builder: one example per line, line breaks
dropped), the same tokenizer calls and the same ``Dataset.map`` batching, so a dataset
made here holds exactly the examples run_mlm.py would train on:

- ``line_by_line``: each non-blank line (blank = empty or only whitespace) is one
  example, truncated to ``max_seq_length`` with its special tokens, unpadded;
- otherwise every line (blank ones too) is tokenized with its special tokens, the ids
  of each ``map`` batch of 1,000 lines are concatenated and cut into blocks of
  ``max_seq_length``; the remainder of each batch is dropped (a batch shorter than one
  block is kept whole, as run_mlm.py keeps it).

``max_seq_length`` defaults to ``min(tokenizer.model_max_length, 1024)`` and is capped at
``tokenizer.model_max_length`` with run_mlm.py's warning, as there. With
``preprocessing_num_workers`` the map runs on that many contiguous shards, so the batches
(and the dropped remainders) are those of run_mlm.py with the same
``--preprocessing_num_workers``.

Files that give no example (all empty; only blank lines with ``line_by_line``), and a file
that is not UTF-8 text, are a ``ValueError`` that names them.
"""

import codecs
import logging
import os
from collections.abc import Sequence
from itertools import chain
from typing import Any, Optional, Union

import datasets

logger = logging.getLogger(__name__)

TEXT_COLUMN = "text"
DEFAULT_MAX_SEQ_LENGTH = 1024  # run_mlm.py's cap on an unset --max_seq_length


def resolve_max_seq_length(tokenizer: Any, max_seq_length: Optional[int]) -> int:
    """run_mlm.py's block length: the tokenizer's ``model_max_length``, at most 1024 when
    unset; when set, at most ``model_max_length``."""
    model_max = int(tokenizer.model_max_length)
    if max_seq_length is None:
        return min(model_max, DEFAULT_MAX_SEQ_LENGTH)
    if max_seq_length < 1:
        raise ValueError(
            f"max_seq_length must be a positive number of tokens, not {max_seq_length}"
        )
    if max_seq_length > model_max:  # run_mlm.py's warning
        logger.warning(
            f"The max_seq_length passed ({max_seq_length}) is larger than the maximum length "
            f"for the model ({model_max}). Using max_seq_length={model_max}."
        )
    return min(int(max_seq_length), model_max)


def load_text_files(
    files: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    cache_dir: Optional[str] = None,
) -> datasets.Dataset:
    """The lines of ``files`` (in order) as a dataset with one column ``text``."""
    listed = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    paths = [str(os.fspath(path)) for path in listed]
    if not paths:
        raise ValueError("no text files given")
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"text file {path!r} does not exist")
    if all(os.path.getsize(path) == 0 for path in paths):
        raise ValueError(f"{', '.join(paths)}: empty file{'s' if len(paths) > 1 else ''}")
    try:
        return datasets.load_dataset("text", data_files=paths, split="train", cache_dir=cache_dir)
    except datasets.exceptions.DatasetGenerationError as err:
        cause: Optional[BaseException] = err
        while cause is not None and not isinstance(cause, UnicodeDecodeError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        for path in paths:
            where = first_bad_utf8(path)
            if where is not None:
                raise ValueError(
                    f"{path}: not UTF-8 text (byte 0x{where[1]:02x} at offset {where[0]}); "
                    "convert it, e.g. with iconv -t UTF-8"
                ) from None
        raise


def first_bad_utf8(path: str, block: int = 1 << 20) -> Optional[tuple[int, int]]:
    """(offset, value) of the first byte of ``path`` that is not UTF-8 text, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last block
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:  # err.object: the pending bytes, then data
                return offset - pending + err.start, err.object[err.start]
            if not data:
                return None
            offset += len(data)


def tokenize_text_files(
    tokenizer: Any,
    files: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    max_seq_length: Optional[int] = None,
    line_by_line: bool = False,
    *,
    preprocessing_num_workers: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> datasets.Dataset:
    """The examples run_mlm.py makes of ``files`` (module docstring).

    Columns: ``input_ids``, ``attention_mask``, ``special_tokens_mask`` and
    ``token_type_ids`` when the tokenizer gives them. ``cache_dir``: where datasets keeps
    the loaded text and the map results (default: its own cache, as run_mlm.py's)."""
    block = resolve_max_seq_length(tokenizer, max_seq_length)
    raw = load_text_files(files, cache_dir=cache_dir)
    if line_by_line:
        examples = raw.map(
            _tokenize_lines,
            batched=True,
            num_proc=preprocessing_num_workers,
            remove_columns=[TEXT_COLUMN],
            fn_kwargs={"tokenizer": tokenizer, "max_length": block},
            desc="Running tokenizer on dataset line_by_line",
        )
        if len(examples) == 0:
            listed = [files] if isinstance(files, (str, os.PathLike)) else list(files)
            raise ValueError(
                f"{', '.join(str(os.fspath(p)) for p in listed)}: no line that is not blank "
                "(line_by_line makes one example of each)"
            )
        return examples
    tokenized = raw.map(
        _tokenize_all,
        batched=True,
        num_proc=preprocessing_num_workers,
        remove_columns=raw.column_names,
        fn_kwargs={"tokenizer": tokenizer},
        desc="Running tokenizer on every text in dataset",
    )
    return tokenized.map(
        _group_texts,
        batched=True,
        num_proc=preprocessing_num_workers,
        fn_kwargs={"block": block},
        desc=f"Grouping texts in chunks of {block}",
    )


def _tokenize_lines(examples: dict, tokenizer: Any, max_length: int) -> Any:
    lines = [line for line in examples[TEXT_COLUMN] if len(line) > 0 and not line.isspace()]
    if not lines:  # a batch of blank lines: no example (the tokenizer fails on no text)
        keys = tokenizer(["x"], return_special_tokens_mask=True).keys()
        return {key: [] for key in keys}
    return tokenizer(
        lines,
        padding=False,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
    )


def _tokenize_all(examples: dict, tokenizer: Any) -> Any:
    return tokenizer(examples[TEXT_COLUMN], return_special_tokens_mask=True)


def _group_texts(examples: dict, block: int) -> dict:
    joined = {key: list(chain(*values)) for key, values in examples.items()}
    total = len(next(iter(joined.values())))
    if total >= block:
        total = total // block * block
    return {
        key: [values[i : i + block] for i in range(0, total, block)]
        for key, values in joined.items()
    }
