#!/usr/bin/env python
"""Masked-LM training with Self-Evolution learning, run as transformers' run_mlm.py is run.

    python run_se_mlm.py --model_name_or_path roberta-base --scored_dataset scored/ \\
        --do_train --output_dir out --se_select topk --tls_alpha 0.1
    python run_se_mlm.py --model_name_or_path roberta-base --train_file a.txt \\
        --do_train --output_dir out --se_online
    python run_se_mlm.py ... --se_select random     # the random-masking baseline

The arguments are run_mlm.py's (model, data, every ``TrainingArguments`` option: data from
``--dataset_name``/``--dataset_config_name``, text/csv/json files or a stream, ``--token``,
``--trust_remote_code``, ``--dtype``...) plus the SE options of
``se_fairseq.hf.SelfEvolutionArguments``, ``--scored_dataset`` (the folder ``se-score --hf``
writes), ``--packing``/``--packed_attention`` and ``--attn_implementation``. A single
``.json`` argument is read as the arguments. Checkpoints and the final model are the
Trainer's ``save_pretrained`` folders; torchrun, ``accelerate launch`` and ``--deepspeed``
scale it as they scale run_mlm.py (examples/huggingface/README.md).
"""

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import datasets
import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from se_fairseq.hf.arguments import SelfEvolutionArguments

logger = logging.getLogger("run_se_mlm")

INDEX_COLUMN = "se_index"  # the collator's example index (masks depend on it, not on batches)
KEEP_COLUMNS = "remove_unused_columns"  # the TrainingArguments option that must be False
DTYPES = ("auto", "bfloat16", "float16", "float32")  # run_mlm.py's --dtype choices
PACKED_ATTENTION = ("mask", "flash")  # se_fairseq.hf.collator.PACKED_ATTENTION
# the datasets builder of a --train_file / --validation_file by its extension (run_mlm.py
# takes csv, json and txt); any other extension is read as text, one row per line
BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text"}
TEXT_COLUMN = "text"  # the text of a csv/json row or a dataset's (else its first column)


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "the model to start from (a save_pretrained folder or a hub name); unset: "
            "a new model from --config_name or --model_type, with random weights"
        },
    )
    model_type: Optional[str] = field(
        default=None,
        metadata={"help": "without a model or config: the model type of a new model (e.g. bert)"},
    )
    config_overrides: Optional[str] = field(
        default=None,
        metadata={
            "help": "for a new model: config settings to change, e.g. "
            "num_hidden_layers=4,hidden_size=256"
        },
    )
    config_name: Optional[str] = field(
        default=None, metadata={"help": "config (folder or name) if not the model's"}
    )
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "tokenizer (folder or name) if not the model's"}
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "where downloaded models and datasets' caches are kept"},
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "use a fast (tokenizers library) tokenizer"}
    )
    model_revision: str = field(
        default="main", metadata={"help": "model version on the hub: branch, tag or commit"}
    )
    token: Optional[str] = field(
        default=None,
        metadata={
            "help": "hub token for private models and datasets (default: the one `hf auth "
            "login` stored); given to from_pretrained and load_dataset"
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "run the code a model, config or tokenizer on the hub carries (only for "
            "repositories you trust). datasets 4 and later run no dataset code, so "
            "load_dataset does not get it"
        },
    )
    dtype: Optional[str] = field(
        default=None,
        metadata={
            "help": "load the model in this dtype (auto: the checkpoint's); a new model is "
            "built in it",
            "choices": DTYPES,
        },
    )
    torch_dtype: Optional[str] = field(
        default=None,
        metadata={"help": "the older name of --dtype (run_mlm.py before 4.56)", "choices": DTYPES},
    )
    low_cpu_mem_usage: bool = field(
        default=False,
        metadata={
            "help": "build the model empty and load the weights into it (given to "
            "from_pretrained; transformers 5 always loads this way)"
        },
    )
    attn_implementation: Optional[str] = field(
        default=None,
        metadata={
            "help": "the attention kernel: eager, sdpa, flash_attention_2... (default: the "
            "model's); --packed_attention flash needs a flash one"
        },
    )

    def __post_init__(self) -> None:
        if self.config_overrides is not None and (
            self.config_name is not None or self.model_name_or_path is not None
        ):
            raise ValueError(
                "--config_overrides changes the config of a new model (--model_type); not with "
                "--config_name or --model_name_or_path"
            )
        if self.torch_dtype is not None:
            if self.dtype is not None and self.dtype != self.torch_dtype:
                raise ValueError(
                    f"--torch_dtype {self.torch_dtype} and --dtype {self.dtype} differ: "
                    "--torch_dtype is the older name of --dtype; give one"
                )
            self.dtype = self.torch_dtype


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "a dataset datasets.load_dataset reads: a hub name, or a local folder of "
            "text, csv, json or parquet files (its README's configs name "
            "--dataset_config_name); the text is its 'text' column, else its first column"
        },
    )
    dataset_config_name: Optional[str] = field(
        default=None, metadata={"help": "the configuration of --dataset_name to load"}
    )
    train_file: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "training files: text (one row per line), or .csv / .json / .jsonl (the "
            "'text' column, else the first), tokenized as run_mlm.py does"
        },
    )
    validation_file: Optional[str] = field(
        default=None,
        metadata={"help": "a file to evaluate on (--do_eval), read and tokenized the same way"},
    )
    scored_dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "instead of --train_file: a dataset scored by self-questioning (the --out "
            "folder of se-score --hf, or score_dataset's output_dir; input_ids + se_scores). "
            "It is trained on as it is, without tokenizing, after checking that its ids and "
            "scores are the ones its se_scores.json records and come from this tokenizer's "
            "vocabulary (a warning when the model's weights are not the scoring model's)"
        },
    )
    overwrite_cache: bool = field(
        default=False,
        metadata={"help": "tokenize again instead of reading datasets' cached results"},
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": "when the data has no validation split (no --validation_file, or a "
            "--dataset_name without one): its first N percent of training rows (datasets' "
            "train[:N%%]) are the validation split and are not trained on, with or without "
            "--do_eval, as in run_mlm.py (rows of text before tokenizing; examples of "
            "--scored_dataset)"
        },
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "tokens per example, special tokens included (default: the tokenizer's "
            "model_max_length, at most 1024)"
        },
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "processes that tokenize"}
    )
    mlm_probability: float = field(
        default=0.15,
        metadata={
            "help": "the share of each example's tokens to mask (with --se_mask_prob_schedule: "
            "the evaluation rate)"
        },
    )
    line_by_line: bool = field(
        default=False,
        metadata={
            "help": "one example per non-blank line (default: concatenate the text and cut it "
            "into blocks of --max_seq_length)"
        },
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "with --line_by_line: pad every example to --max_seq_length when "
            "tokenizing (default: each batch is padded to its longest example; blocks are "
            "--max_seq_length tokens already)"
        },
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "train on the first N training examples only"}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "evaluate on the first N evaluation examples only"}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "read --dataset_name or --train_file as a stream (an IterableDataset), "
            "tokenized as it is read and never cached; needs --max_steps. Not with "
            "--scored_dataset (offline SE reads a dataset on disk). No validation split is "
            "held out of a stream"
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "pack each batch into one row without padding (the collator's "
            "packing=True: position ids restart per example, attention stays within each "
            "example); the trainer checks once that the model keeps packed examples apart "
            "and refuses packing otherwise"
        },
    )
    packed_attention: str = field(
        default="mask",
        metadata={
            "help": "with --packing, how examples are kept apart: mask = a block-diagonal 4D "
            "attention mask (eager, sdpa); flash = flash attention's cu_seq_lens (the model's "
            "attention must be a flash one: --attn_implementation flash_attention_2, or its "
            "config's)",
            "choices": PACKED_ATTENTION,
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.train_file, str):  # a .json argument file may give one name
            self.train_file = [self.train_file]
        sources = [
            f"--{name}"
            for name in ("train_file", "scored_dataset", "dataset_name")
            if getattr(self, name) is not None
        ]
        if len(sources) > 1:
            raise ValueError(
                f"{sources[0]} and {sources[1]} both give the training examples; give one"
                + (" (a scored dataset is already tokenized)" if self.scored_dataset else "")
            )
        if self.dataset_name is not None and self.validation_file is not None:
            raise ValueError(
                "--validation_file beside --dataset_name: the dataset's validation split (or "
                "--validation_split_percentage of its train split) is the one evaluated on; "
                "give files or a dataset"
            )
        if self.dataset_config_name is not None and self.dataset_name is None:
            raise ValueError("--dataset_config_name picks a configuration of --dataset_name")
        if not sources and not self.validation_file:
            raise ValueError(
                "give the examples: --dataset_name NAME, --train_file FILE..., "
                "--scored_dataset DIR or --validation_file FILE"
            )
        for name, paths in (
            ("train_file", self.train_file or []),
            ("validation_file", [self.validation_file] if self.validation_file else []),
        ):
            kinds = sorted({builder_of(path) for path in paths})
            if len(kinds) > 1:
                raise ValueError(
                    f"--{name}: {' '.join(paths)} mix {' and '.join(kinds)} files; give files "
                    "of one kind"
                )
        if self.scored_dataset is not None and self.streaming:
            raise ValueError(
                "--streaming reads --dataset_name or --train_file as a stream; --scored_dataset "
                "is a dataset on disk (its scores kept beside its examples): drop --streaming"
            )
        if self.scored_dataset is not None and self.validation_file is None:
            given = [
                name
                for name, unset in (
                    ("max_seq_length", None),
                    ("line_by_line", False),
                    ("preprocessing_num_workers", None),
                    ("pad_to_max_length", False),
                    ("overwrite_cache", False),
                )
                if getattr(self, name) != unset
            ]
            if given:
                raise ValueError(
                    f"--{given[0]} tokenizes text files; --scored_dataset is already tokenized "
                    "(with --scored_dataset it applies to --validation_file only)"
                )
        if self.streaming:
            for name, unset in (("preprocessing_num_workers", None), ("overwrite_cache", False)):
                if getattr(self, name) != unset:
                    raise ValueError(
                        f"--{name} applies to datasets on disk; --streaming tokenizes the "
                        "stream as it is read, in this process, without a cache"
                    )
        if self.packing and self.pad_to_max_length:
            raise ValueError(
                "--pad_to_max_length pads every example; --packing packs them without "
                "padding: give one"
            )
        if self.packed_attention != "mask" and not self.packing:
            raise ValueError(
                f"--packed_attention {self.packed_attention} applies to packed rows: give --packing"
            )
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"--mlm_probability must lie in (0, 1), got {self.mlm_probability}")
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError(
                "--validation_split_percentage must lie in (0, 100), got "
                f"{self.validation_split_percentage}"
            )
        for name in (
            "max_seq_length",
            "preprocessing_num_workers",
            "max_train_samples",
            "max_eval_samples",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value}")


def builder_of(path: str) -> str:
    """The datasets builder that reads ``path``, from its extension (text by default)."""
    return BUILDERS.get(os.path.splitext(path)[1].lower(), "text")


ARGUMENT_CLASSES: tuple[Any, ...] = (
    ModelArguments,
    DataTrainingArguments,
    SelfEvolutionArguments,
    TrainingArguments,
)


def parse_args(argv: Optional[list[str]] = None) -> tuple[Any, Any, Any, Any]:
    """(model, data, SE, training) arguments of ``argv`` (default: sys.argv[1:]), or of
    the one ``.json`` file it names. Bad values end in a usage error naming the option.
    ``remove_unused_columns`` defaults to False and True is refused: the collator needs
    the se_index and se_scores columns, which the model's forward does not take."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser()
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            with open(argv[0], encoding="utf-8") as f:
                given = json.load(f)
            given.setdefault(KEEP_COLUMNS, False)
            parsed = parser.parse_dict(given)
        else:
            parsed = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(str(err))
    model_args, data_args, se_args, training_args = parsed
    try:
        check_combination(model_args, data_args, se_args, training_args)
    except ValueError as err:
        parser.error(str(err))
    return model_args, data_args, se_args, training_args


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.set_defaults(**{KEEP_COLUMNS: False})
    for action in parser._actions:
        if action.dest == KEEP_COLUMNS:
            action.help = (
                "False here, and must stay False: the collator reads the se_index and "
                "se_scores columns, which the model's forward does not take (the Trainer "
                "would drop them)"
            )
    return parser


def check_combination(model_args: Any, data_args: Any, se_args: Any, training_args: Any) -> None:
    """Refusals that need options of more than one group."""
    if getattr(training_args, KEEP_COLUMNS):
        raise ValueError(
            f"--{KEEP_COLUMNS} must be False: the collator reads the se_index and se_scores "
            "columns, which the Trainer would drop"
        )
    if not (training_args.do_train or training_args.do_eval):
        raise ValueError("nothing to do: give --do_train and/or --do_eval")
    if model_args.model_name_or_path is None and model_args.tokenizer_name is None:
        raise ValueError(
            "a new model (no --model_name_or_path) needs --tokenizer_name: this script does "
            "not train tokenizers"
        )
    if model_args.model_name_or_path is None and not (
        model_args.config_name or model_args.model_type
    ):
        raise ValueError("a new model needs --config_name or --model_type")
    if model_args.model_name_or_path is None and model_args.low_cpu_mem_usage:
        raise ValueError(
            "--low_cpu_mem_usage loads pretrained weights; a new model (no "
            "--model_name_or_path) has none"
        )
    if training_args.do_train and not (
        data_args.train_file or data_args.scored_dataset or data_args.dataset_name
    ):
        raise ValueError(
            "--do_train needs --dataset_name NAME, --train_file FILE... or --scored_dataset DIR"
        )
    if data_args.streaming and training_args.do_train and training_args.max_steps <= 0:
        raise ValueError(
            "--streaming: a stream has no length, so the Trainer cannot count epochs; give "
            "--max_steps"
        )
    offline = se_args.se_select != "random" and not se_args.se_online
    if training_args.do_train and offline and data_args.scored_dataset is None:
        raise ValueError(
            f"--se_select {se_args.se_select} (offline SE) selects from self-questioning "
            "scores: score the text with se-score --hf and pass --scored_dataset DIR, or "
            "train with --se_online, or take the random baseline with --se_select random"
        )
    if se_args.se_threshold is not None and se_args.se_select != "threshold":
        raise ValueError(
            f"--se_threshold applies to --se_select threshold, not {se_args.se_select}"
        )
    if se_args.se_random_share > 0 and se_args.se_select not in ("topk", "sample"):
        raise ValueError(
            f"--se_random_share splits the budget of --se_select topk or sample, not "
            f"{se_args.se_select}"
        )
    if se_args.se_online and data_args.scored_dataset is not None:
        raise ValueError(
            "--se_online scores every batch with the current model; the scores of "
            "--scored_dataset would go unused: give --train_file or --dataset_name, or drop "
            "--se_online"
        )
    attention = model_args.attn_implementation
    if data_args.packed_attention == "flash" and attention is not None and "flash" not in attention:
        raise ValueError(
            "--packed_attention flash gives flash attention's cu_seq_lens, which "
            f"--attn_implementation {attention} does not read: give --attn_implementation "
            "flash_attention_2, or --packed_attention mask"
        )


def hub_kwargs(model_args: Any) -> dict[str, Any]:
    """What from_pretrained gets for the config, the tokenizer and the model."""
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }


def load_tokenizer(model_args: Any) -> Any:
    name = model_args.tokenizer_name or model_args.model_name_or_path
    return AutoTokenizer.from_pretrained(
        name, use_fast=model_args.use_fast_tokenizer, **hub_kwargs(model_args)
    )


def load_model(model_args: Any, tokenizer: Any) -> Any:
    """The model to train: from ``--model_name_or_path``, or new from a config."""
    kwargs = hub_kwargs(model_args)
    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name, **kwargs)
    elif model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **kwargs)
    else:
        config = AutoConfig.for_model(model_args.model_type)
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
    dtype = (
        model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    )
    load: dict[str, Any] = {}
    if model_args.attn_implementation is not None:
        load["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path:
        if dtype is not None:
            load["dtype"] = dtype
        if model_args.low_cpu_mem_usage:
            load["low_cpu_mem_usage"] = True
        model = AutoModelForMaskedLM.from_pretrained(
            model_args.model_name_or_path, config=config, **kwargs, **load
        )
    else:
        logger.info("training a new model from scratch")
        if dtype not in (None, "auto"):  # auto: the weights' dtype; a new model has none
            load["dtype"] = dtype
        model = AutoModelForMaskedLM.from_config(
            config, trust_remote_code=model_args.trust_remote_code, **load
        )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def check_packed_attention(model: Any, data_args: Any) -> None:
    """``--packed_attention flash`` only on a model whose attention reads cu_seq_lens."""
    attention = getattr(model.config, "_attn_implementation", None)
    if data_args.packed_attention == "flash" and "flash" not in str(attention):
        raise ValueError(
            f"--packed_attention flash gives flash attention's cu_seq_lens, which "
            f"{type(model).__name__}'s {attention} attention does not read: load it with "
            "--attn_implementation flash_attention_2, or use --packed_attention mask"
        )


# -- the examples ------------------------------------------------------------------------


def load_raw(data_args: Any, model_args: Any) -> dict[str, Any]:
    """The rows of each split given, before tokenizing: {"train": ..., "validation": ...}
    (a Dataset each, an IterableDataset with --streaming)."""
    from se_fairseq.hf.text import load_text_files

    load = {"cache_dir": model_args.cache_dir, "token": model_args.token}
    if data_args.dataset_name is not None:
        loaded = datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            streaming=data_args.streaming,
            **load,
        )
        return dict(loaded)
    raw = {}
    for split, files in (
        ("train", data_args.train_file),
        ("validation", data_args.validation_file),
    ):
        if files is None:
            continue
        paths = [files] if isinstance(files, str) else list(files)
        builder = builder_of(paths[0])
        if builder == "text" and not data_args.streaming:
            # datasets' text builder, with one-line errors for missing, empty, non-UTF-8 files
            raw[split] = load_text_files(paths, cache_dir=model_args.cache_dir)
        else:
            raw[split] = datasets.load_dataset(
                builder, data_files=paths, split="train", streaming=data_args.streaming, **load
            )
    return raw


def describe(data_args: Any, split: str) -> str:
    """How messages name the rows of ``split``."""
    if data_args.dataset_name is not None:
        config = f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""
        return f"--dataset_name {data_args.dataset_name}{config}, split {split}"
    if split == "validation" and data_args.validation_file is not None:
        return f"--validation_file {data_args.validation_file}"
    if data_args.scored_dataset is not None:
        return f"--scored_dataset {data_args.scored_dataset}"
    return f"--train_file {' '.join(data_args.train_file or [])}"


def hold_out(rows: Any, data_args: Any, training_args: Any) -> tuple[Any, Optional[Any]]:
    """run_mlm.py's validation split of data without one: (the rest, the first
    --validation_split_percentage percent of the rows, rounded as datasets rounds its
    ``train[:N%]``). A stream is not split (None)."""
    percent = data_args.validation_split_percentage
    if isinstance(rows, datasets.IterableDataset):
        if training_args.do_eval:
            raise ValueError(
                "--streaming: a stream cannot be split by --validation_split_percentage; to "
                "evaluate, give --validation_file or a dataset with a validation split"
            )
        return rows, None
    count = len(rows)
    instruction = datasets.ReadInstruction("train", to=percent, unit="%")
    held = instruction.to_absolute({"train": count})[0].to
    if training_args.do_eval and held == 0:
        raise ValueError(
            f"{describe(data_args, 'train')}: {percent}% of {count} rows is no row to evaluate "
            "on; give --validation_file or a larger --validation_split_percentage"
        )
    if training_args.do_train and held == count:
        raise ValueError(
            f"{describe(data_args, 'train')}: {percent}% of {count} rows leaves none to train on"
        )
    return rows.select(range(held, count)), rows.select(range(held))


def column_names(rows: Any) -> list[str]:
    names = rows.column_names
    if names is None:  # a stream whose features are not known before reading
        names = list(next(iter(rows)))
    return list(names)


def tokenize_lines(
    examples: dict, tokenizer: Any, column: str, max_length: int, padding: Any
) -> Any:
    """run_mlm.py's --line_by_line: each non-blank row, truncated (and padded)."""
    lines = [line for line in examples[column] if line and not line.isspace()]
    if not lines:  # a batch of blank rows: no example (the tokenizer fails on no text)
        keys = tokenizer(["x"], return_special_tokens_mask=True).keys()
        return {key: [] for key in keys}
    return tokenizer(
        lines,
        padding=padding,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
    )


def tokenize_rows(examples: dict, tokenizer: Any, column: str) -> Any:
    return tokenizer(examples[column], return_special_tokens_mask=True)


def tokenize(rows: Any, tokenizer: Any, data_args: Any, block: int, name: str) -> Any:
    """run_mlm.py's examples of ``rows`` (the same maps as se_fairseq.hf.tokenize_text_files,
    on a text column of any dataset): one per non-blank row with --line_by_line, else blocks
    of ``block`` tokens."""
    from se_fairseq.hf.text import _group_texts

    columns = column_names(rows)
    text = TEXT_COLUMN if TEXT_COLUMN in columns else columns[0]
    streaming = isinstance(rows, datasets.IterableDataset)

    def mapped(dataset: Any, function: Any, desc: str, remove: Any, **fn_kwargs: Any) -> Any:
        kwargs: dict[str, Any] = {"batched": True, "fn_kwargs": fn_kwargs, "remove_columns": remove}
        if not streaming:
            kwargs.update(
                num_proc=data_args.preprocessing_num_workers,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=desc,
            )
        return dataset.map(function, **kwargs)

    if data_args.line_by_line:
        examples = mapped(
            rows,
            tokenize_lines,
            "Running tokenizer on dataset line_by_line",
            columns,
            tokenizer=tokenizer,
            column=text,
            max_length=block,
            padding="max_length" if data_args.pad_to_max_length else False,
        )
    else:
        tokens = mapped(
            rows,
            tokenize_rows,
            "Running tokenizer on every text in dataset",
            columns,
            tokenizer=tokenizer,
            column=text,
        )
        examples = mapped(
            tokens, _group_texts, f"Grouping texts in chunks of {block}", None, block=block
        )
    if not streaming and len(examples) == 0:
        raise ValueError(
            f"{name}: no row that is not blank (--line_by_line makes one example of each)"
        )
    return examples


def with_index(examples: Any) -> Any:
    """Each example's row as its ``se_index`` (a stream's examples are known by their ids)."""
    if isinstance(examples, datasets.IterableDataset) or INDEX_COLUMN in examples.column_names:
        return examples
    return examples.add_column(INDEX_COLUMN, np.arange(len(examples), dtype=np.int64))


def first(examples: Any, count: Optional[int]) -> Any:
    if count is None:
        return examples
    if isinstance(examples, datasets.IterableDataset):
        return examples.take(count)
    return examples.select(range(min(len(examples), count)))


def load_datasets(
    data_args: Any, model_args: Any, training_args: Any, tokenizer: Any, model: Any
) -> tuple[Any, Any]:
    """(train, dev) as run_mlm.py makes them, each with its examples' ``se_index``; None
    where not needed. Text is split (--validation_split_percentage) before tokenizing, as
    there; a scored dataset is split as it is, its index given before the split."""
    from se_fairseq.hf import load_scored_dataset
    from se_fairseq.hf.text import resolve_max_seq_length

    with training_args.main_process_first(desc="loading and tokenizing"):
        raw = load_raw(data_args, model_args)
        ready = set()  # the splits that are examples already (a scored dataset's)
        if data_args.scored_dataset is not None:
            scored = load_scored_dataset(data_args.scored_dataset, tokenizer=tokenizer, model=model)
            logger.info(f"{data_args.scored_dataset}: {len(scored)} scored examples")
            # the index in the whole scored dataset, given before any split, so a mask does
            # not depend on --validation_split_percentage or --max_train_samples
            raw["train"] = with_index(scored)
            ready.add("train")
        if "validation" not in raw and "train" in raw:
            raw["train"], held = hold_out(raw["train"], data_args, training_args)
            if held is not None:
                raw["validation"] = held
                if "train" in ready:
                    ready.add("validation")
                logger.info(
                    f"evaluating on the first {len(held)} rows of {describe(data_args, 'train')} "
                    "(--validation_split_percentage)"
                )
        block = None

        def examples_of(split: str) -> Any:
            nonlocal block
            if split not in raw:
                raise ValueError(f"{describe(data_args, split)}: no such split")
            if split in ready:
                return raw[split]
            if block is None:
                block = resolve_max_seq_length(tokenizer, data_args.max_seq_length)
            examples = tokenize(raw[split], tokenizer, data_args, block, describe(data_args, split))
            return with_index(examples)

        train = dev = None
        if training_args.do_train:
            train = first(examples_of("train"), data_args.max_train_samples)
        if training_args.do_eval:
            dev = first(examples_of("validation"), data_args.max_eval_samples)
    return train, dev


def masked_accuracy(eval_pred: Any) -> dict:
    """Share of the masked positions predicted right (labels -100 elsewhere)."""
    predictions, labels = eval_pred
    masked = labels != -100
    if not masked.any():
        return {"accuracy": float("nan")}
    return {"accuracy": float((predictions[masked] == labels[masked]).mean())}


def argmax_logits(logits: Any, labels: Any) -> Any:
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def build_trainer(
    model: Any,
    tokenizer: Any,
    train: Any,
    dev: Any,
    data_args: Any,
    se_args: Any,
    training_args: Any,
) -> Any:
    from se_fairseq.hf import DataCollatorForSelfEvolution, SelfEvolutionTrainer

    collator = DataCollatorForSelfEvolution(
        tokenizer,
        mlm_probability=data_args.mlm_probability,  # the schedules' default rate, evaluation's
        seed=training_args.seed,
        packing=data_args.packing,
        packed_attention=data_args.packed_attention,
        **se_args.collator_kwargs(),
    )
    reference = None
    if se_args.se_reference_model is not None:  # --se_metric excess: a frozen reference model
        reference = AutoModelForMaskedLM.from_pretrained(se_args.se_reference_model)
    return SelfEvolutionTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        se_args=se_args,
        reference_model=reference,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        compute_metrics=masked_accuracy if dev is not None else None,
        preprocess_logits_for_metrics=argmax_logits if dev is not None else None,
    )


def setup_logging(training_args: Any) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def mode_of(se_args: Any) -> str:
    if se_args.se_online:
        return f"online SE (--se_select {se_args.se_select})"
    if se_args.se_select == "random":
        return "random masking (the baseline)"
    return f"offline SE (--se_select {se_args.se_select}, scores {se_args.se_scores_column})"


def rates_of(se_args: Any, data_args: Any) -> str:
    """The training mask rate (and random share) the run masks at."""
    if not se_args.has_schedule:
        return f"mask rate {data_args.mlm_probability}"
    rates = f"mask rate {se_args.se_mask_prob_schedule or data_args.mlm_probability}"
    if se_args.se_random_share_schedule is not None:
        rates += f", random share {se_args.se_random_share_schedule}"
    return (
        f"{rates} over training (logged as mask_prob with the loss; evaluation masks at "
        f"{data_args.mlm_probability})"
    )


def samples(examples: Any) -> dict[str, int]:
    """{"samples": N} for a dataset with a length (not a stream)."""
    return {} if isinstance(examples, datasets.IterableDataset) else {"samples": len(examples)}


def main(argv: Optional[list[str]] = None) -> Any:
    """Parse ``argv``, train and/or evaluate; returns the Trainer."""
    from se_fairseq.hf.packed import PackingError

    model_args, data_args, se_args, training_args = parse_args(argv)
    setup_logging(training_args)
    packed = f"; packed rows ({data_args.packed_attention})" if data_args.packing else ""
    if se_args.se_online:
        reads = "the trainer scores each batch itself: no scores column is read"
    elif se_args.se_select == "random":
        reads = "random masking: no scores column is read"
    else:
        reads = f"the collator reads {se_args.se_scores_column} (and se_index where present)"
    logger.warning(
        f"rank {training_args.process_index} of {training_args.world_size}, device "
        f"{training_args.device}; {mode_of(se_args)}, {rates_of(se_args, data_args)}, "
        f"tls_alpha {se_args.tls_alpha} ({se_args.tls_ref}){packed}; {reads}"
    )
    last_checkpoint = None
    if training_args.do_train and training_args.resume_from_checkpoint is None:
        if os.path.isdir(training_args.output_dir):
            last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None:
            logger.info(f"resuming from {last_checkpoint} (choose another --output_dir to restart)")
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, tokenizer)
    try:
        check_packed_attention(model, data_args)
        train, dev = load_datasets(data_args, model_args, training_args, tokenizer, model)
    except (ValueError, FileNotFoundError) as err:  # ScoredDatasetError is a ValueError
        raise SystemExit(f"run_se_mlm.py: {err}") from None
    trainer = build_trainer(model, tokenizer, train, dev, data_args, se_args, training_args)
    if training_args.do_train:
        assert train is not None
        try:
            result = trainer.train(
                resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint
            )
        except PackingError as err:
            raise SystemExit(f"run_se_mlm.py: --packing: {err}") from None
        trainer.save_model()  # save_pretrained: the model and its tokenizer
        metrics = dict(result.metrics)
        metrics.update({f"train_{k}": v for k, v in samples(train).items()})
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        assert dev is not None
        metrics = trainer.evaluate()
        metrics.update({f"eval_{k}": v for k, v in samples(dev).items()})
        try:
            metrics["perplexity"] = math.exp(metrics["eval_loss"])
        except OverflowError:
            metrics["perplexity"] = float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer


if __name__ == "__main__":
    main()
