"""Throughput of se_fairseq.hf.DataCollatorForSelfEvolution against transformers'
DataCollatorForLanguageModeling: the same tokenized examples (tokenizer built in
memory), the same batch size, through a DataLoader with 0 and 2 workers. Rounds
alternate between the two collators; the ratio is of the median round times.

    python benchmarks/bench_hf_collator.py [--examples 4096] [--batch-size 32] [--rounds 5]
"""

import argparse
import os
import statistics
import sys
import time

import torch
from transformers import DataCollatorForLanguageModeling

from se_fairseq.hf import DataCollatorForSelfEvolution

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from support.hf_tokenizers import hf_examples, tiny_roberta_tokenizer  # noqa: E402


def epoch_seconds(dataset, collator, batch_size, workers):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collator
    )
    start = time.perf_counter()
    tokens = 0
    for batch in loader:
        tokens += batch["input_ids"].numel()
    return time.perf_counter() - start, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--select", default="topk")
    args = parser.parse_args()
    tokenizer = tiny_roberta_tokenizer()
    ours_data = hf_examples(tokenizer, args.examples, min_words=40, max_words=120)
    theirs_data = [{k: v for k, v in ex.items() if not k.startswith("se_")} for ex in ours_data]
    ours = DataCollatorForSelfEvolution(tokenizer, select=args.select)
    theirs = DataCollatorForLanguageModeling(tokenizer, seed=1)
    print(
        f"{args.examples} examples, batch {args.batch_size}, select={args.select}, "
        f"{args.rounds} alternated rounds"
    )
    for workers in (0, 2):
        times = {"se": [], "hf": []}
        for _ in range(args.rounds):
            for name, data, collator in (("hf", theirs_data, theirs), ("se", ours_data, ours)):
                seconds, tokens = epoch_seconds(data, collator, args.batch_size, workers)
                times[name].append(seconds)
        se, hf = statistics.median(times["se"]), statistics.median(times["hf"])
        print(
            f"workers={workers}: DataCollatorForSelfEvolution {tokens / se:,.0f} tokens/s, "
            f"DataCollatorForLanguageModeling {tokens / hf:,.0f} tokens/s, "
            f"ratio {hf / se:.2f}x"
        )


if __name__ == "__main__":
    main()
