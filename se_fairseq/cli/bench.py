"""``se-bench DATA``: data-pipeline throughput of a task against a baseline task.

Takes fairseq-train's task and dataset options (``--task se_mlm --se-select topk
--tokens-per-sample 512 --max-tokens 8192 --num-workers 2`` ...), builds the
same split through the task under test and through ``--baseline-task``
(default ``masked_lm``), and iterates whole epochs of batches through both in
one process, alternating them round after round so that machine noise hits both
alike. Prints batches/s and tokens/s of each and the ratio task / baseline
(> 1: the task under test is faster).
"""

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def add_bench_args(parser):
    group = parser.add_argument_group("se-bench")
    group.add_argument(
        "--baseline-task",
        default="masked_lm",
        help="task to compare against, built from the same options (default: masked_lm)",
    )
    group.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternating rounds; each round runs one epoch of each task (default: 5)",
    )
    group.add_argument("--split", default="train", help="split to iterate (default: train)")
    group.add_argument(
        "--max-batches",
        type=int,
        default=0,
        help="stop each epoch after this many batches (0 = whole epoch)",
    )
    return parser


USAGE = (
    "se-bench DATA [--task TASK] [task options] [dataset options: --max-tokens N | "
    "--batch-size N, --num-workers N ...] [--baseline-task TASK] [--rounds N] "
    "[--split SPLIT] [--max-batches N]"
)


def print_help(task):
    """One help text: DATA, se-bench's own options, then the task's and the dataset's
    options as fairseq-train parses them (fairseq's own --help lists no task options)."""
    from fairseq import options
    from fairseq.tasks import TASK_REGISTRY

    parser = argparse.ArgumentParser(
        prog="se-bench",
        usage=USAGE,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bench_args(parser)
    parser.add_argument(
        "--task",
        default="se_mlm",
        help="task under test (default: se_mlm); any fairseq-train option of "
        "the task and of data loading applies to both tasks",
    )
    if task not in TASK_REGISTRY:
        raise SystemExit(f"se-bench: unknown --task {task}")
    TASK_REGISTRY[task].add_args(parser.add_argument_group(f"task {task} (DATA is its data)"))
    options.add_dataset_args(parser, train=True)
    parser.print_help()


def parse(argv):
    from fairseq import options

    bench_parser = add_bench_args(argparse.ArgumentParser(add_help=False))
    bench_args, rest = bench_parser.parse_known_args(argv)
    task = rest[rest.index("--task") + 1] if "--task" in rest[:-1] else "se_mlm"
    if "-h" in rest or "--help" in rest:
        print_help(task)
        raise SystemExit(0)
    parser = options.get_training_parser()
    add_bench_args(parser)
    if "--task" not in rest:
        rest = ["--task", "se_mlm"] + rest
    if "--arch" not in rest and "-a" not in rest:
        rest = rest + ["--arch", "roberta_base"]  # needed by the parser, unused here
    args = options.parse_args_and_arch(parser, rest)
    if getattr(args, "se_online", False):
        raise SystemExit(
            "se-bench: --se-online masks in the train step (it scores each batch with the live "
            "model), not in the data pipeline, so se-bench would time an unmasked collater; "
            "time online SE with benchmarks/bench_token_ls.py --online, or bench the offline "
            "modes (--se-select topk, sample, threshold) here"
        )
    base_argv = _replace_task(rest, bench_args.baseline_task)
    base_args, _ = options.parse_args_and_arch(
        add_bench_args(options.get_training_parser()), base_argv, parse_known=True
    )
    args.split = base_args.split = bench_args.split  # consumed above: not in ``rest``
    return args, base_args, bench_args


def _replace_task(argv, task):
    argv = list(argv)
    i = argv.index("--task")
    argv[i + 1] = task
    return argv


def cli_main(argv=None):
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)  # hydra/dataloader chatter
    warnings.filterwarnings("ignore", module="hydra")
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        level=logging.WARNING,
        stream=sys.stderr,
    )
    from se_fairseq.extras import MissingExtraError, require_fairseq

    try:
        require_fairseq("se-bench (fairseq's data pipeline)")
    except MissingExtraError as err:
        raise SystemExit(f"se-bench: {err}") from None
    from se_fairseq.pipeline_bench import compare_pipelines

    args, base_args, bench_args = parse(sys.argv[1:] if argv is None else argv)
    compare_pipelines(args, base_args, bench_args.rounds, bench_args.max_batches)


if __name__ == "__main__":
    cli_main()
