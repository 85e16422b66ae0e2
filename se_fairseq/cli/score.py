"""``se-score``: the self-questioning stage as a command.

    se-score DATA --path CKPT [--split train] [--metric correctness|confidence]
    se-score DATA --path CKPT --metric excess --reference REF_CKPT
    se-score --hf MODEL (--train_file FILE... | --dataset DIR) --out DIR   (cli/score_hf.py)

The model reads every block of the split unmasked (eval mode, no gradient) and
scores every token; the scores go to a score file beside the split, where
``fairseq-train --task se_mlm`` finds them. The work is cut into chunks of
consecutive blocks; each finished chunk is saved at once under
``<out>.partial/``, so an interrupted run continues where it stopped, and the
score file itself appears only when complete (atomic rename). Under
``torchrun`` each rank scores every WORLD_SIZE-th chunk and rank 0 assembles
the file (the partial folder must be on storage all ranks see).
"""

import argparse
import logging
import os
import sys

from se_fairseq.cli.score_hf import add_hf_args, check_hf_args, main_hf
from se_fairseq.core.job import DEFAULT_CHUNK_TOKENS

logger = logging.getLogger(__name__)

# fairseq's --sample-break-mode choices (se_fairseq.scoring_job.BREAK_MODES): written here so
# that the parser, which se-score --hf uses too, imports nothing of the fairseq side
BREAK_MODES = ("none", "complete", "complete_doc", "eos")


def _max_tokens(value):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of tokens or 'auto', not {value!r}") from None


def build_parser():
    from se_fairseq.core.scores import EXCESS, METRICS

    p = argparse.ArgumentParser(
        prog="se-score",
        description="Score every token of a binarized split with a fairseq masked-LM checkpoint "
        "(RoBERTa, or BERT as se-convert writes it: --arch hf_bert), or of a tokenized dataset "
        "with a Hugging Face AutoModelForMaskedLM (--hf) "
        "(the self-questioning stage of Self-Evolution learning).",
    )
    p.add_argument(
        "data",
        nargs="?",
        default=None,
        help="fairseq data-bin folder (with dict.txt and <split>.bin/.idx); not with --hf",
    )
    p.add_argument(
        "--path",
        default=None,
        help="fairseq masked-LM checkpoint (.pt: RoBERTa or hf_bert); not used by --metric rarity",
    )
    p.add_argument("--split", default="train", help="split to score (default: train)")
    p.add_argument(
        "--metric",
        choices=(*METRICS, EXCESS, "rarity"),
        default="correctness",
        help="correctness = -log p(true token); confidence = entropy of the prediction; "
        "excess = correctness minus a frozen reference model's correctness (Rho-1's excess "
        "loss; needs --reference); rarity = -log of the token's unigram probability in the "
        "train split (no model: a control, see se_fairseq/rarity.py)",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="CKPT",
        help="with --metric excess: the reference model whose correctness is subtracted (e.g. "
        "the starting checkpoint): a fairseq checkpoint over the same dictionary as --path, "
        "recorded in the score file beside it; with --hf, a model folder or hub name",
    )
    p.add_argument(
        "--tokens-per-sample",
        type=int,
        default=None,
        help="block length incl. <s> (default: the checkpoint's training value)",
    )
    p.add_argument(
        "--sample-break-mode",
        choices=BREAK_MODES,
        default=None,
        help="blocking (default: the checkpoint's training value)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--max-tokens",
        type=_max_tokens,
        default=None,
        help="tokens per batch, padding included (default: 16384 when no --batch-size; with --hf: "
        "as many as keep the logits under 2^28 values); "
        "'auto': on a GPU, the largest batch that fits 60%% of its free memory (the rule is "
        "in docs/scoring.md), 16384 on the CPU",
    )
    size.add_argument(
        "--batch-size", type=int, default=None, help="blocks (with --hf: examples) per batch"
    )
    p.add_argument("--cpu", action="store_true", help="score on the CPU even if CUDA is available")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_true", help="fp16 forward (GPU); softmax in fp32"
    )
    precision.add_argument("--bf16", action="store_true", help="bf16 forward; softmax in fp32")
    p.add_argument(
        "--out",
        "--output",
        default=None,
        help="score file prefix (default: DATA/<split>.se_scores, where se_mlm looks); with "
        "--hf: the folder the scored dataset is saved to (required)",
    )
    p.add_argument(
        "--chunk-tokens",
        type=int,
        default=DEFAULT_CHUNK_TOKENS,
        help="tokens per resumable chunk (default: 262144; with --hf, whole examples of at "
        "least that many tokens)",
    )
    p.add_argument(
        "--stop-after-chunks",
        type=int,
        default=0,
        help="score at most this many chunks in this run, then exit; a later run "
        "resumes (for jobs split across time-limited allocations)",
    )
    p.add_argument(
        "--no-progress-bar",
        action="store_true",
        help="no progress bar (with --hf there is none either when stderr is not a terminal)",
    )
    add_hf_args(p)
    return p


def _init_distributed(args):
    """(rank, world size) from torchrun's environment; nccl on GPU, gloo with --cpu."""
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() and not args.cpu else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _device(args):
    import torch

    if args.cpu or not torch.cuda.is_available():
        return "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return str(device)


def main(argv=None):
    import warnings

    args = build_parser().parse_args(argv)
    check_hf_args(args)
    if args.hf is None and args.data is None:
        raise SystemExit("se-score: give DATA (a data-bin folder) or --hf MODEL")
    warnings.filterwarnings("ignore", category=UserWarning)  # hydra/dataloader chatter
    warnings.filterwarnings("ignore", module="hydra")
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        level=logging.INFO,
        stream=sys.stderr,
    )
    if args.hf is not None:
        rank, world_size = _init_distributed(args)
        try:
            return main_hf(args, rank, world_size, _device(args))
        finally:
            if world_size > 1:
                import torch.distributed as dist

                dist.destroy_process_group()
    from se_fairseq.extras import MissingExtraError, require_fairseq

    try:
        require_fairseq("se-score on a data-bin folder (the fairseq side; --hf MODEL is not)")
    except MissingExtraError as err:
        raise SystemExit(f"se-score: {err}") from None
    import fairseq  # noqa: F401  (registers the safe checkpoint loader)

    _check_reference(args)
    if args.metric == "rarity":
        return _score_rarity(args)
    if not args.path:
        raise SystemExit(f"se-score: --metric {args.metric} needs --path CKPT")
    import torch
    from tqdm import tqdm

    from se_fairseq.data.score_file import ScoreFileError
    from se_fairseq.scoring_job import ScoringError, format_summary, score_corpus

    rank, world_size = _init_distributed(args)

    def progress(total):
        return tqdm(
            total=total,
            unit="tok",
            unit_scale=True,
            desc=f"se-score {args.split}",
            disable=args.no_progress_bar or rank != 0,
            file=sys.stderr,
            smoothing=0.1,
        )

    try:
        result = score_corpus(
            args.data,
            args.path,
            split=args.split,
            metric=args.metric,
            rank=rank,
            world_size=world_size,
            stop_after_chunks=args.stop_after_chunks,
            progress=progress,
            tokens_per_sample=args.tokens_per_sample,
            sample_break_mode=args.sample_break_mode,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            device=_device(args),
            precision="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
            out=args.out,
            chunk_tokens=args.chunk_tokens,
            reference=args.reference,
        )
    except (ScoringError, ScoreFileError) as err:
        raise SystemExit(f"se-score: {err}") from None
    if rank == 0:
        if not result.complete:
            print(
                f"se-score: stopped with {result.chunks_left} of {result.chunks_total} chunks "
                f"left in {result.partial_dir}; run the same command again to resume",
                file=sys.stderr,
            )
        else:
            print(format_summary(args.metric, result.summary))
            print(f"wrote {result.array_path} and {result.meta_path}")
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return 0


def _check_reference(args):
    """--metric excess and --reference go together (one line otherwise)."""
    if args.metric == "excess" and args.reference is None:
        raise SystemExit(
            "se-score: --metric excess scores --path against a frozen reference model: give "
            "--reference CKPT (e.g. the starting checkpoint)"
        )
    if args.reference is not None and args.metric != "excess":
        raise SystemExit(
            f"se-score: --reference is the reference model of --metric excess, not of "
            f"--metric {args.metric}"
        )


def _score_rarity(args):
    """--metric rarity: unigram surprisal from the train split's counts; no model, no blocking."""
    import json

    from se_fairseq import rarity
    from se_fairseq.core.job import format_summary

    if args.path:
        logger.info("--metric rarity uses no checkpoint; ignoring --path")
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one pass over the token file: nothing to shard
    (array_path, meta_path), _ = rarity.write_score_file(args.data, args.split, args.out)
    with open(meta_path) as f:
        print(format_summary("rarity", json.load(f)["summary"]))  # of the non-special tokens
    print(f"wrote {array_path} and {meta_path}")
    return 0


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
