"""Rows of 512 tokens masked per second, on one core:

- se_fairseq::select (C++), one call per batch of 64 rows, topk and sample;
- the numpy reference (the fallback when the extension is not built);
- fairseq's MaskTokensDataset, one Python call per item, source and target
  (as --task masked_lm builds them);
- Hugging Face's DataCollatorForLanguageModeling, if transformers is installed.

    python benchmarks/bench_select_op.py [--rows 8192]
"""

import argparse
import time

import torch

from se_fairseq.ops import select


def rate(fn, rows, repeat=3):
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return rows / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows, length, batch = args.rows, args.length, args.batch
    scores = torch.rand(rows, length, generator=g).half().float()
    tokens = torch.randint(4, 30000, (rows, length), generator=g)
    tokens[:, 0], tokens[:, -1] = 0, 2
    eligible = tokens >= 4
    seeds = torch.arange(rows)
    results = {}

    def op(mode, use_extension=True, n=rows):
        def go():
            for s in range(0, n, batch):
                select(
                    scores[s : s + batch],
                    eligible[s : s + batch],
                    seeds[s : s + batch],
                    ratio=0.15,
                    mode=mode,
                    use_extension=use_extension,
                )

        return go

    results["se_fairseq::select topk (C++)"] = rate(op("topk"), rows)
    results["se_fairseq::select sample (C++)"] = rate(op("sample"), rows)
    small = min(rows, 512)
    results["numpy reference topk (fallback)"] = rate(op("topk", False, small), small, repeat=1)

    from fairseq.data import Dictionary, MaskTokensDataset

    vocab = Dictionary()
    for i in range(30000):
        vocab.add_symbol(f"w{i}")
    mask_idx = vocab.add_symbol("<mask>")
    items = [t for t in tokens[:small]]
    src, tgt = MaskTokensDataset.apply_mask(
        items, vocab, pad_idx=vocab.pad(), mask_idx=mask_idx, seed=1, mask_prob=0.15
    )

    def fairseq_items():
        for epoch in range(1, 2):
            src.set_epoch(epoch)
            tgt.set_epoch(epoch)
            for i in range(small):
                src[i], tgt[i]

    src.set_epoch(0)
    results["fairseq MaskTokensDataset (per item)"] = rate(fairseq_items, small, repeat=1)

    try:
        from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast  # noqa
        from tokenizers import Tokenizer, models

        tok = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(
                models.WordLevel(
                    {f"w{i}": i for i in range(30000)}
                    | {"[UNK]": 30000, "[MASK]": 30001, "[PAD]": 30002},
                    unk_token="[UNK]",
                )
            ),
            mask_token="[MASK]",
            pad_token="[PAD]",
            unk_token="[UNK]",
        )
        collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, return_tensors="pt")
        examples = [{"input_ids": t.tolist()} for t in tokens[:small]]

        def hf():
            for s in range(0, small, batch):
                collator(examples[s : s + batch])

        results["HF DataCollatorForLanguageModeling"] = rate(hf, small, repeat=1)
    except ImportError:
        results["HF DataCollatorForLanguageModeling"] = None

    base = results["fairseq MaskTokensDataset (per item)"]
    print(f"{'rows of ' + str(length) + ' tokens, 1 thread':<42}{'rows/s':>10}{'vs fairseq':>12}")
    for name, value in results.items():
        if value is None:
            print(f"{name:<42}{'(transformers not installed)':>22}")
        else:
            print(f"{name:<42}{value:10.0f}{value / base:11.1f}x")


if __name__ == "__main__":
    main()
