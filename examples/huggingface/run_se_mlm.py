#!/usr/bin/env python
"""Masked-LM training with Self-Evolution learning, run as transformers' run_mlm.py is run.

    python run_se_mlm.py --model_name_or_path roberta-base --scored_dataset scored/ \\
        --do_train --output_dir out --se_select topk --tls_alpha 0.1
    python run_se_mlm.py --model_name_or_path roberta-base --train_file a.txt \\
        --do_train --output_dir out --se_online
    python run_se_mlm.py ... --se_select random     # the random-masking baseline

The arguments are run_mlm.py's (model, data, every ``TrainingArguments`` option) plus
the SE options of ``se_fairseq.hf.SelfEvolutionArguments`` and ``--scored_dataset``, the
folder ``se-score --hf`` writes. A single ``.json`` argument is read as the arguments.
Checkpoints and the final model are the Trainer's ``save_pretrained`` folders; torchrun,
``accelerate launch`` and ``--deepspeed`` scale it as they scale run_mlm.py
(examples/huggingface/README.md).
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

    def __post_init__(self) -> None:
        if self.config_overrides is not None and (
            self.config_name is not None or self.model_name_or_path is not None
        ):
            raise ValueError(
                "--config_overrides changes the config of a new model (--model_type); not with "
                "--config_name or --model_name_or_path"
            )


@dataclass
class DataTrainingArguments:
    train_file: Optional[list[str]] = field(
        default=None,
        metadata={"help": "training text files (one line per row), tokenized as run_mlm.py does"},
    )
    validation_file: Optional[str] = field(
        default=None,
        metadata={"help": "a text file to evaluate on (--do_eval), tokenized the same way"},
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
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": "with --do_eval and no --validation_file: the percentage of the training "
            "examples (the first ones) held out to evaluate on"
        },
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "tokens per example, special tokens included (default: the tokenizer's "
            "model_max_length, at most 1024)"
        },
    )
    line_by_line: bool = field(
        default=False,
        metadata={
            "help": "one example per non-blank line (default: concatenate the text and cut it "
            "into blocks of --max_seq_length)"
        },
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "processes that tokenize"}
    )
    mlm_probability: float = field(
        default=0.15, metadata={"help": "the share of each example's tokens to mask"}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "train on the first N training examples only"}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "evaluate on the first N evaluation examples only"}
    )

    def __post_init__(self) -> None:
        if self.train_file is not None and self.scored_dataset is not None:
            raise ValueError(
                "--train_file and --scored_dataset both give the training examples; give one "
                "(a scored dataset is already tokenized)"
            )
        if self.train_file is None and self.scored_dataset is None and not self.validation_file:
            raise ValueError(
                "give the examples: --train_file FILE..., --scored_dataset DIR "
                "or --validation_file FILE"
            )
        if self.scored_dataset is not None and self.validation_file is None:
            given = [
                name
                for name, unset in (
                    ("max_seq_length", None),
                    ("line_by_line", False),
                    ("preprocessing_num_workers", None),
                )
                if getattr(self, name) != unset
            ]
            if given:
                raise ValueError(
                    f"--{given[0]} tokenizes text files; --scored_dataset is already tokenized "
                    "(with --scored_dataset it applies to --validation_file only)"
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
    if training_args.do_train and data_args.train_file is None and data_args.scored_dataset is None:
        raise ValueError("--do_train needs --train_file FILE... or --scored_dataset DIR")
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
            "--scored_dataset would go unused: give --train_file, or drop --se_online"
        )


def load_tokenizer(model_args: Any) -> Any:
    name = model_args.tokenizer_name or model_args.model_name_or_path
    return AutoTokenizer.from_pretrained(
        name,
        cache_dir=model_args.cache_dir,
        use_fast=model_args.use_fast_tokenizer,
        revision=model_args.model_revision,
    )


def load_model(model_args: Any, tokenizer: Any) -> Any:
    """The model to train: from ``--model_name_or_path``, or new from a config."""
    kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name, **kwargs)
    elif model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **kwargs)
    else:
        config = AutoConfig.for_model(model_args.model_type)
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
    if model_args.model_name_or_path:
        model = AutoModelForMaskedLM.from_pretrained(
            model_args.model_name_or_path, config=config, **kwargs
        )
    else:
        logger.info("training a new model from scratch")
        model = AutoModelForMaskedLM.from_config(config)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def tokenized(files: Any, tokenizer: Any, data_args: Any, model_args: Any, training_args: Any):
    from se_fairseq.hf import tokenize_text_files

    with training_args.main_process_first(desc="tokenizing"):
        return tokenize_text_files(
            tokenizer,
            files,
            data_args.max_seq_length,
            data_args.line_by_line,
            preprocessing_num_workers=data_args.preprocessing_num_workers,
            cache_dir=model_args.cache_dir,
        )


def load_datasets(
    data_args: Any, model_args: Any, training_args: Any, tokenizer: Any, model: Any
) -> tuple[Optional[datasets.Dataset], Optional[datasets.Dataset]]:
    """(train, dev), each with its examples' ``se_index``; None where not needed."""
    from se_fairseq.hf import load_scored_dataset

    if data_args.scored_dataset is not None:
        examples = load_scored_dataset(data_args.scored_dataset, tokenizer=tokenizer, model=model)
        logger.info(f"{data_args.scored_dataset}: {len(examples)} scored examples")
    elif data_args.train_file is not None:
        examples = tokenized(data_args.train_file, tokenizer, data_args, model_args, training_args)
    else:
        examples = None
    if examples is not None and INDEX_COLUMN not in examples.column_names:
        # the index in the whole training set, given before any split, so a mask does not
        # depend on --validation_split_percentage or --max_train_samples
        examples = examples.add_column(INDEX_COLUMN, np.arange(len(examples), dtype=np.int64))
    dev = None
    if training_args.do_eval:
        if data_args.validation_file is not None:
            dev = tokenized(
                data_args.validation_file, tokenizer, data_args, model_args, training_args
            )
            dev = dev.add_column(INDEX_COLUMN, np.arange(len(dev), dtype=np.int64))
        else:
            assert examples is not None
            held = max(1, len(examples) * data_args.validation_split_percentage // 100)
            if held >= len(examples):
                raise ValueError(
                    f"{len(examples)} examples are too few to hold out "
                    f"{data_args.validation_split_percentage}% for evaluation; give "
                    "--validation_file"
                )
            dev = examples.select(range(held))
            examples = examples.select(range(held, len(examples)))
            logger.info(f"evaluating on the first {held} examples (--validation_split_percentage)")
        if data_args.max_eval_samples is not None:
            dev = dev.select(range(min(len(dev), data_args.max_eval_samples)))
    train = examples if training_args.do_train else None
    if train is not None and data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
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
        mlm_probability=data_args.mlm_probability,
        seed=training_args.seed,
        **se_args.collator_kwargs(),
    )
    return SelfEvolutionTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        se_args=se_args,
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


def main(argv: Optional[list[str]] = None) -> Any:
    """Parse ``argv``, train and/or evaluate; returns the Trainer."""
    model_args, data_args, se_args, training_args = parse_args(argv)
    setup_logging(training_args)
    logger.warning(
        f"rank {training_args.process_index} of {training_args.world_size}, device "
        f"{training_args.device}; {mode_of(se_args)}, tls_alpha {se_args.tls_alpha} "
        f"({se_args.tls_ref}); remove_unused_columns=False (the collator reads se_index "
        "and se_scores)"
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
    from se_fairseq.hf import ScoredDatasetError

    try:
        train, dev = load_datasets(data_args, model_args, training_args, tokenizer, model)
    except (ScoredDatasetError, FileNotFoundError) as err:
        raise SystemExit(f"run_se_mlm.py: {err}") from None
    trainer = build_trainer(model, tokenizer, train, dev, data_args, se_args, training_args)
    if training_args.do_train:
        assert train is not None
        result = trainer.train(
            resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint
        )
        trainer.save_model()  # save_pretrained: the model and its tokenizer
        metrics = dict(result.metrics, train_samples=len(train))
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        assert dev is not None
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(dev)
        try:
            metrics["perplexity"] = math.exp(metrics["eval_loss"])
        except OverflowError:
            metrics["perplexity"] = float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer


if __name__ == "__main__":
    main()
