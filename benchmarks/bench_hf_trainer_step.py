"""One online SE + TLS train step of ``SelfEvolutionTrainer`` against one plain masked-LM
step of transformers' ``Trainer`` (``DataCollatorForLanguageModeling``, the model's own
loss), on the same BERT model and the same examples.

A step is what the Trainer does per batch: collate, (online: the reference forward,
the scores, the selection on the device), forward, backward and the AdamW update.
Rounds alternate between the two; the ratio is of the median step times.

    python benchmarks/bench_hf_trainer_step.py [--layers 4] [--hidden 256] [--vocab 30522]
        [--batch-size 16] [--length 128] [--rounds 10]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from se_fairseq.hf import DataCollatorForSelfEvolution, SelfEvolutionArguments, SelfEvolutionTrainer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from support.hf_tokenizers import tiny_wordlevel_tokenizer  # noqa: E402


def examples_of(tokenizer, count, length, seed=0):
    """``count`` rows of ``length`` ids ([CLS] words [SEP]), with their index."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    words = np.array([i for i in range(len(tokenizer)) if i not in special])
    rows = []
    for index in range(count):
        ids = [tokenizer.cls_token_id, *rng.choice(words, length - 2), tokenizer.sep_token_id]
        rows.append({"input_ids": [int(i) for i in ids], "se_index": index})
    return rows


def plain_step(trainer, collator, rows):
    batch = trainer._prepare_inputs(collator([{"input_ids": r["input_ids"]} for r in rows]))
    count = batch["labels"].ne(-100).sum()
    trainer.training_step(trainer.model, batch, count)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()


def se_step(trainer, rows):
    batches, count = trainer.get_batch_samples(iter([trainer.data_collator(rows)]), 1, "cpu")
    trainer.training_step(trainer.model, batches[0], count)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=30522, help="vocabulary size (BERT's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--select", default="topk", help="--se_select of the SE step")
    parser.add_argument("--tls-alpha", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    words = [f"w{i}" for i in range(args.vocab - 6)]
    tokenizer = tiny_wordlevel_tokenizer(words=words)
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            intermediate_size=4 * args.hidden,
            max_position_embeddings=max(512, args.length),
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    rows = examples_of(tokenizer, args.batch_size, args.length)
    se_args = SelfEvolutionArguments(
        se_online=True, se_select=args.select, tls_alpha=args.tls_alpha
    )
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            out, report_to=[], use_cpu=True, remove_unused_columns=False, disable_tqdm=True
        )
        plain = Trainer(
            model=model,
            args=training,
            data_collator=DataCollatorForLanguageModeling(tokenizer, seed=1),
        )
        se = SelfEvolutionTrainer(
            model=model,
            args=training,
            data_collator=DataCollatorForSelfEvolution(
                tokenizer, seed=1, **se_args.collator_kwargs()
            ),
            se_args=se_args,
        )
        plain.create_optimizer()
        se.create_optimizer()
        model.train()
        times = {"plain": [], "se": []}
        for r in range(args.warmup + args.rounds):
            for name in ("plain", "se"):
                start = time.perf_counter()
                if name == "plain":
                    plain_step(plain, plain.data_collator, rows)
                else:
                    se_step(se, rows)
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    p, s = statistics.median(times["plain"]), statistics.median(times["se"])
    print(
        f"BERT {args.layers} layers x {args.hidden}, vocab {len(tokenizer)}, batch "
        f"{args.batch_size} x {args.length}, {args.threads} threads, {args.rounds} alternated "
        f"rounds (+{args.warmup} warm-up)"
    )
    print(f"plain MLM step (DataCollatorForLanguageModeling, model loss): {p * 1000:.0f} ms")
    print(
        f"online SE + TLS step (--se_select {args.select}, --tls_alpha {args.tls_alpha}): "
        f"{s * 1000:.0f} ms"
    )
    print(f"ratio {s / p:.2f}x")


if __name__ == "__main__":
    main()
