"""Do masks follow the epoch whatever the DataLoader worker count? A table, not a timing.

    python benchmarks/epoch_masks.py DATA [--se-select sample] [--tokens-per-sample 128]

Builds the train split through se_mlm as fairseq-train does, iterates epochs 1-3 through
fairseq's reused DataLoader with 0, 1 and 2 workers, and prints, per worker count, how
many blocks keep the previous epoch's mask and how many equal the 0-worker mask of the
same epoch. DATA needs a score file for the SE modes (e.g. from se-score).
"""

import argparse
import logging
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from support.fairseq_data import setup_task  # noqa: E402


def masks(data, mode, tokens_per_sample, workers, epochs=(1, 2, 3)):
    task, _ = setup_task(
        data,
        "--arch",
        "roberta_base",
        "--task",
        "se_mlm",
        "--se-select",
        mode,
        "--criterion",
        "masked_lm",
        "--tokens-per-sample",
        str(tokens_per_sample),
        "--seed",
        "1",
        "--cpu",
    )
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        task.dataset("train"), max_sentences=32, seed=1, epoch=epochs[0], num_workers=workers
    )
    out = {}
    for epoch in epochs:
        for batch in itr.next_epoch_itr(shuffle=True):
            for row, i in enumerate(batch["id"].tolist()):
                out[(epoch, i)] = batch["net_input"]["src_tokens"][row].clone()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument(
        "--se-select", default="sample", choices=["topk", "sample", "threshold", "random"]
    )
    parser.add_argument("--tokens-per-sample", type=int, default=128)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    runs = {w: masks(args.data, args.se_select, args.tokens_per_sample, w) for w in (0, 1, 2)}
    ids = sorted({i for _, i in runs[0]})
    n = len(ids)
    print(f"--se-select {args.se_select}, {n} blocks: how many masks equal ...")
    print(
        "| num_workers | epoch 2 = epoch 1 | epoch 3 = epoch 2 "
        "| epoch 2 = 0 workers' | epoch 3 = 0 workers' |"
    )
    print("| --- | --- | --- | --- | --- |")
    for workers, m in runs.items():

        def same(a, b):
            return sum(torch.equal(m[(a, i)], m[(b, i)]) for i in ids)

        def as_0(e):
            return sum(torch.equal(m[(e, i)], runs[0][(e, i)]) for i in ids)

        print(
            f"| {workers} | {same(2, 1)}/{n} | {same(3, 2)}/{n} | {as_0(2)}/{n} | {as_0(3)}/{n} |"
        )


if __name__ == "__main__":
    main()
