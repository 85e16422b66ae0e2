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
import time

import numpy as np

logger = logging.getLogger("se_fairseq.bench")


def add_bench_args(parser):
    group = parser.add_argument_group("se-bench")
    group.add_argument("--baseline-task", default="masked_lm",
                       help="task to compare against, built from the same options (default: masked_lm)")
    group.add_argument("--rounds", type=int, default=5,
                       help="alternating rounds; each round runs one epoch of each task (default: 5)")
    group.add_argument("--split", default="train", help="split to iterate (default: train)")
    group.add_argument("--max-batches", type=int, default=0,
                       help="stop each epoch after this many batches (0 = whole epoch)")
    return parser


def parse(argv):
    from fairseq import options

    bench_parser = add_bench_args(argparse.ArgumentParser(add_help=False))
    bench_args, rest = bench_parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        bench_parser.print_help()
    parser = options.get_training_parser()
    add_bench_args(parser)
    if "--task" not in rest:
        rest = ["--task", "se_mlm"] + rest
    if "--arch" not in rest and "-a" not in rest:
        rest = rest + ["--arch", "roberta_base"]  # needed by the parser, unused here
    args = options.parse_args_and_arch(parser, rest)
    base_argv = _replace_task(rest, bench_args.baseline_task)
    base_args, _ = options.parse_args_and_arch(
        add_bench_args(options.get_training_parser()), base_argv, parse_known=True
    )
    return args, base_args, bench_args


def _replace_task(argv, task):
    argv = list(argv)
    i = argv.index("--task")
    argv[i + 1] = task
    return argv


def build_iterator_factory(args):
    from fairseq import tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset(args.split, combine=False, epoch=1)
    dataset = task.dataset(args.split)

    def epoch_iterator(epoch):
        itr = task.get_batch_iterator(
            dataset=dataset,
            max_tokens=cfg.dataset.max_tokens,
            max_sentences=cfg.dataset.batch_size,
            max_positions=task.max_positions(),
            ignore_invalid_inputs=True,
            required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
            seed=cfg.common.seed,
            num_workers=cfg.dataset.num_workers,
            epoch=epoch,
            data_buffer_size=cfg.dataset.data_buffer_size,
            disable_iterator_cache=True,
        )
        return itr.next_epoch_itr(shuffle=True)

    return task, epoch_iterator


def time_epoch(epoch_iterator, epoch, max_batches):
    start = time.perf_counter()
    batches = tokens = 0
    for batch in epoch_iterator(epoch):
        batches += 1
        tokens += int(batch["ntokens"])
        if max_batches and batches >= max_batches:
            break
    return time.perf_counter() - start, batches, tokens


def run(args, base_args, bench_args, out=sys.stdout):
    import torch

    torch.set_num_threads(1)  # the pipeline's own cost, not intra-op parallelism
    names = [f"{base_args.task} (baseline)", f"{args.task}"]
    if getattr(args, "se_select", None):
        names[1] += f" --se-select {args.se_select}"
    factories = [build_iterator_factory(base_args)[1], build_iterator_factory(args)[1]]
    rounds = [[] for _ in factories]  # (seconds, batches, tokens) per round
    for r in range(bench_args.rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            seconds, batches, tokens = time_epoch(factories[i], r + 1, bench_args.max_batches)
            rounds[i].append((seconds, batches, tokens))
            print(f"round {r + 1}/{bench_args.rounds} {names[i]:<32} {batches:6d} batches "
                  f"{seconds:8.2f} s  {batches / seconds:9.1f} batches/s", file=out, flush=True)
    # medians over rounds: one round slowed down by another process does not decide
    rates = []
    print(f"\n{'task (median of rounds)':<34}{'batches/s':>12}{'tokens/s':>14}", file=out)
    for name, per_round in zip(names, rounds):
        batch_rate = float(np.median([b / s for s, b, _ in per_round]))
        token_rate = float(np.median([t / s for s, _, t in per_round]))
        rates.append(batch_rate)
        print(f"{name:<34}{batch_rate:12.1f}{token_rate:14.0f}", file=out)
    ratio = rates[1] / rates[0]
    print(f"ratio {args.task} / {base_args.task} (batches/s): {ratio:.2f}"
          f" (workers: {args.num_workers}, rounds: {bench_args.rounds})", file=out, flush=True)
    return ratio


def cli_main(argv=None):
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)  # hydra/dataloader chatter
    warnings.filterwarnings("ignore", module="hydra")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.WARNING, stream=sys.stderr)
    args, base_args, bench_args = parse(sys.argv[1:] if argv is None else argv)
    run(args, base_args, bench_args)


if __name__ == "__main__":
    cli_main()
