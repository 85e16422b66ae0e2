"""Data-pipeline throughput: a task's batches against a baseline task's, same process.

Both tasks are built from fairseq-train options (argparse namespaces from
``options.parse_args_and_arch``); whole epochs of batches go through each,
alternating round after round so that machine noise hits both alike. The
ratio is of median batches/s over rounds (> 1: the task under test is faster).
"""

import sys
import time

import numpy as np


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
    itr = epoch_iterator(epoch)
    if max_batches:
        # Truncate through fairseq's own take(), never by leaving the loop: fairseq's
        # BufferedIterator prefetches in a daemon thread that, left blocked on its full
        # queue, is still inside torch code at interpreter exit and aborts the process
        # ("terminate called without an active exception"). take() makes that thread
        # stop after max_batches and exit.
        itr.take(max_batches)
    for batch in itr:
        batches += 1
        tokens += int(batch["ntokens"])
    return time.perf_counter() - start, batches, tokens


def compare_pipelines(args, base_args, rounds=5, max_batches=0, out=None):
    """Print per-round and median rates of ``base_args``' task and ``args``' task to ``out``
    (default: the sys.stdout of the call); return the ratio of their median batches/s
    (task / baseline)."""
    import torch

    out = sys.stdout if out is None else out
    torch.set_num_threads(1)  # the pipeline's own cost, not intra-op parallelism
    if getattr(args, "se_online", False) or getattr(base_args, "se_online", False):
        raise ValueError(
            "--se-online masks in the train step, not in the data pipeline: "
            "its collater leaves batches unmasked, so there is no masking to time"
        )
    names = [f"{base_args.task} (baseline)", f"{args.task}"]
    if getattr(args, "se_select", None):
        names[1] += f" --se-select {args.se_select}"
    factories = [build_iterator_factory(base_args)[1], build_iterator_factory(args)[1]]
    measured = [[] for _ in factories]  # (seconds, batches, tokens) per round
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            seconds, batches, tokens = time_epoch(factories[i], r + 1, max_batches)
            measured[i].append((seconds, batches, tokens))
            print(
                f"round {r + 1}/{rounds} {names[i]:<32} {batches:6d} batches "
                f"{seconds:8.2f} s  {batches / seconds:9.1f} batches/s",
                file=out,
                flush=True,
            )
    # medians over rounds: one round slowed down by another process does not decide
    rates = []
    print(f"\n{'task (median of rounds)':<34}{'batches/s':>12}{'tokens/s':>14}", file=out)
    for name, per_round in zip(names, measured):
        batch_rate = float(np.median([b / s for s, b, _ in per_round]))
        token_rate = float(np.median([t / s for s, _, t in per_round]))
        rates.append(batch_rate)
        print(f"{name:<34}{batch_rate:12.1f}{token_rate:14.0f}", file=out)
    ratio = rates[1] / rates[0]
    print(
        f"ratio {args.task} / {base_args.task} (batches/s): {ratio:.2f}"
        f" (workers: {args.num_workers}, rounds: {rounds})",
        file=out,
        flush=True,
    )
    return ratio
