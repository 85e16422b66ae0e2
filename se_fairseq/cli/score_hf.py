"""``se-score --hf MODEL``: self-questioning with a Hugging Face masked-LM.

    se-score --hf MODEL_DIR --train_file a.txt [b.txt] [--line_by_line] [--max_seq_length N]
             --out DIR
    se-score --hf MODEL_DIR --dataset TOKENIZED_DIR --out DIR

Text files are tokenized as transformers' run_mlm.py tokenizes them
(se_fairseq.hf.tokenize_text_files); a saved dataset (``save_to_disk``) is read as it
is. The scored dataset (column ``se_scores``) is saved to ``--out`` with its provenance
record (se_scores.json), resumably and, under torchrun, sharded
(se_fairseq.hf.score_dataset).
"""

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

# se-score's fairseq options that mean nothing with --hf: (dest, flag, default)
FAIRSEQ_ONLY: tuple[tuple[str, str, Any], ...] = (
    ("data", "DATA (a data-bin folder)", None),
    ("path", "--path", None),
    ("split", "--split", "train"),
    ("tokens_per_sample", "--tokens-per-sample", None),
    ("sample_break_mode", "--sample-break-mode", None),
)
HF_ONLY: tuple[tuple[str, str, Any], ...] = (
    ("tokenizer", "--tokenizer", None),
    ("train_file", "--train_file", None),
    ("dataset", "--dataset", None),
    ("line_by_line", "--line_by_line", False),
    ("max_seq_length", "--max_seq_length", None),
    ("preprocessing_num_workers", "--preprocessing_num_workers", None),
    ("cache_dir", "--cache_dir", None),
)


def add_hf_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Hugging Face models (--hf)",
        "score a tokenized datasets.Dataset with any AutoModelForMaskedLM; the result is a "
        "saved dataset with a column se_scores (docs/huggingface.md, Self-questioning)",
    )
    group.add_argument(
        "--hf",
        metavar="MODEL",
        default=None,
        help="score with this AutoModelForMaskedLM (a save_pretrained folder or a hub name) "
        "instead of a fairseq checkpoint; needs --train_file or --dataset, and --out",
    )
    group.add_argument(
        "--tokenizer",
        default=None,
        metavar="TOKENIZER",
        help="with --hf: the tokenizer (folder or name; default: the --hf model's)",
    )
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--train_file",
        "--train-file",
        nargs="+",
        default=None,
        metavar="FILE",
        help="with --hf: text files to tokenize as transformers' run_mlm.py does (one line "
        "per row, in order)",
    )
    source.add_argument(
        "--dataset",
        default=None,
        metavar="DIR",
        help="with --hf: a tokenized dataset saved with save_to_disk (one split, with "
        "input_ids; special_tokens_mask and attention_mask are honoured)",
    )
    group.add_argument(
        "--line_by_line",
        "--line-by-line",
        action="store_true",
        help="with --train_file: one example per non-blank line, as run_mlm.py --line_by_line "
        "(default: concatenate and cut into blocks of --max_seq_length)",
    )
    group.add_argument(
        "--max_seq_length",
        "--max-seq-length",
        type=int,
        default=None,
        metavar="N",
        help="with --train_file: tokens per example incl. special tokens (default, as "
        "run_mlm.py: the tokenizer's model_max_length, at most 1024)",
    )
    group.add_argument(
        "--preprocessing_num_workers",
        "--preprocessing-num-workers",
        type=int,
        default=None,
        metavar="N",
        help="with --train_file: processes that tokenize, as run_mlm.py's (it changes where "
        "grouped blocks are cut, as there)",
    )
    group.add_argument(
        "--cache_dir",
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="with --train_file: where datasets caches the text and its tokenization "
        "(default: datasets' own cache)",
    )


def check_hf_args(args: argparse.Namespace) -> None:
    """One clear refusal for options of the other mode."""

    def given(dest: str, default: Any) -> bool:
        return getattr(args, dest) != default

    if args.hf is None:
        for dest, flag, default in HF_ONLY:
            if given(dest, default):
                raise SystemExit(f"se-score: {flag} goes with --hf MODEL")
        return
    for dest, flag, default in FAIRSEQ_ONLY:
        if given(dest, default):
            raise SystemExit(f"se-score: {flag} is for fairseq checkpoints; not with --hf")
    if args.metric == "rarity":
        raise SystemExit("se-score: --metric rarity reads a data-bin split; not with --hf")
    reference = getattr(args, "reference", None)
    if (args.metric == "excess") != (reference is not None):
        raise SystemExit(
            "se-score: --metric excess scores against a reference model (--reference MODEL, "
            "e.g. the starting checkpoint), and only it takes --reference"
        )
    if args.max_tokens == "auto":
        raise SystemExit(
            "se-score: --max-tokens auto is for fairseq models; give a number with --hf"
        )
    if args.train_file is None and args.dataset is None:
        raise SystemExit("se-score: --hf needs the examples: --train_file FILE... or --dataset DIR")
    if args.dataset is not None and (args.line_by_line or args.max_seq_length is not None):
        raise SystemExit(
            "se-score: --line_by_line and --max_seq_length tokenize --train_file; a --dataset "
            "is already tokenized"
        )
    if not args.out:
        raise SystemExit("se-score: --hf needs --out DIR, the folder for the scored dataset")


def load_model(name: str) -> Any:
    """The AutoModelForMaskedLM at ``name``, refused when its masked-LM head is not in the
    saved weights (transformers would start it at random)."""
    from transformers import AutoModelForMaskedLM

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(name, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise SystemExit(f"se-score: --hf {name}: not a masked-LM model: {err}") from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise SystemExit(
            f"se-score: --hf {name} holds no trained masked-LM head ({len(missing)} weights "
            f"missing, e.g. {', '.join(missing[:3])}): save the model as an "
            "AutoModelForMaskedLM (not AutoModel or a classifier)"
        )
    return model


@contextmanager
def main_process_first(rank: int, world_size: int) -> Iterator[None]:
    """Rank 0 first (it fills datasets' cache), then the others (they read it)."""
    import torch.distributed as dist

    if world_size > 1 and rank != 0:
        dist.barrier()
    yield
    if world_size > 1 and rank == 0:
        dist.barrier()


def load_examples(args: argparse.Namespace, tokenizer: Any, rank: int, world_size: int) -> Any:
    """The examples of ``--dataset`` or ``--train_file``; bad input ends in one line that
    names the option and the file."""
    import datasets

    from se_fairseq.hf.text import tokenize_text_files

    if args.dataset is not None:
        where = f"se-score: --dataset {args.dataset}"
        if not os.path.isdir(args.dataset):
            raise SystemExit(f"{where}: not a folder")
        if _saved_without_data(args.dataset):  # datasets cannot even load it
            raise SystemExit(f"{where}: no examples: nothing to score")
        try:
            dataset = datasets.load_from_disk(args.dataset)
        except FileNotFoundError as err:
            raise SystemExit(f"{where}: not a dataset saved with save_to_disk ({err})") from None
        if not isinstance(dataset, datasets.Dataset):
            raise SystemExit(
                f"{where}: holds a {type(dataset).__name__} ({', '.join(dataset)}); save one split"
            )
        if len(dataset) == 0:
            raise SystemExit(f"{where}: no examples: nothing to score")
        return dataset
    with main_process_first(rank, world_size):
        try:
            dataset = tokenize_text_files(
                tokenizer,
                args.train_file,
                args.max_seq_length,
                args.line_by_line,
                preprocessing_num_workers=args.preprocessing_num_workers,
                cache_dir=args.cache_dir,
            )
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"se-score: --train_file: {err}") from None
    if len(dataset) == 0:
        raise SystemExit(f"se-score: --train_file: {', '.join(args.train_file)}: no examples")
    return dataset


def _saved_without_data(path: str) -> bool:
    """Whether ``path`` holds a dataset saved with no data file (no example)."""
    import json

    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            return json.load(f).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def main_hf(args: argparse.Namespace, rank: int, world_size: int, device: str) -> int:
    import json

    from transformers import AutoTokenizer

    from se_fairseq.core.job import ScoringError, format_summary
    from se_fairseq.hf.provenance import PROVENANCE_FILE
    from se_fairseq.hf.scoring import score_dataset

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.hf)
    model = load_model(args.hf)
    reference = getattr(args, "reference", None)
    reference_model = load_model(reference) if reference is not None else None
    dataset = load_examples(args, tokenizer, rank, world_size)
    if rank == 0:
        logger.info(
            f"scoring {len(dataset)} examples with {args.hf} ({type(model).__name__}), metric "
            f"{args.metric}, {world_size} rank(s), device {device}"
        )
    try:
        scored = score_dataset(
            model,
            tokenizer,
            dataset,
            metric=args.metric,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            output_dir=args.out,
            dtype="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
            device=device,
            chunk_tokens=args.chunk_tokens,
            progress=False if args.no_progress_bar else None,
            stop_after_chunks=args.stop_after_chunks,
            reference_model=reference_model,
        )
    except ScoringError as err:
        raise SystemExit(f"se-score: {err}") from None
    if rank != 0:
        return 0
    if scored is None:
        print(
            f"se-score: stopped with chunks left in {os.path.abspath(args.out)}.partial; run "
            "the same command again to resume",
            file=sys.stderr,
        )
        return 0
    with open(os.path.join(args.out, PROVENANCE_FILE), encoding="utf-8") as f:
        print(format_summary(args.metric, json.load(f)["summary"]))
    print(f"wrote {args.out} ({len(scored)} examples, column se_scores)")
    return 0
