"""The online SE + TLS step of ``SelfEvolutionTrainer`` in the 2026 encoder recipe, against
plain masked-LM steps of transformers' ``Trainer``: time per step and peak memory.

The model is a ModernBERT at base width (hidden 768, 12 heads, ffn 1152, vocabulary
50,368) with ``--layers`` layers and random weights; 30 % masking; batches of
``--batch-size`` rows of a corpus whose lengths spread as natural text does (log-normal,
median ``--median-length`` tokens, cut at ``--length``), padded per batch. Each
configuration runs in its own process (its peak resident memory is its own), a few warm-up
steps then ``--steps`` timed ones; a step is what the Trainer does per batch: collate,
(SE: the reference forward, scores, selection), forward, backward, AdamW.

    python benchmarks/bench_hf_recipe_step.py [--layers 2] [--batch-size 8] [--length 512]
        [--steps 3] [--configs plain,plain-sparse,se-dense,se,se-excess] [--device cuda --bf16
        --attn flash_attention_2]

Configurations:
- plain: ``DataCollatorForLanguageModeling`` and the model's own loss, full logits;
- plain-sparse: the same with ModernBERT's ``sparse_prediction`` (the LM head at the
  masked positions only);
- se-dense: online SE + TLS (alpha 0.1) with ``--no_se_sparse_head`` (full logits in both
  forwards: the path before the split head);
- se: online SE + TLS with the split head (the default);
- se-excess: online SE + TLS scoring by excess loss (``--se_metric excess``) against a
  frozen reference model of the same shape (a second copy with other weights), which runs
  its own forward beside the live model's reference forward;
- padded, packed: the plain sparse step fed by ``DataCollatorForSelfEvolution(select=
  "random")``, padded per batch or packed into one row (a block-diagonal mask, or with
  ``--attn flash_attention_2`` flash attention's varlen ``cu_seq_lens``): tokens/s;
- se-packed: online SE + TLS on packed rows.

On a GPU (``--device cuda``) peak memory is ``torch.cuda.max_memory_allocated``; on the
CPU, the process's peak resident memory.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = ("plain", "plain-sparse", "se-dense", "se", "se-excess")
PACKED = ("padded", "packed", "se-packed")


def corpus(count, length, median, vocab, specials, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 0.8, size=count), 8, length).astype(int)
    words = np.arange(specials, vocab)
    return [rng.choice(words, n - 2).tolist() for n in lengths]


def run_one(config, args):
    """One configuration in this process: median step seconds, peak RSS, tokens/step."""
    import torch
    import transformers
    from transformers import (
        DataCollatorForLanguageModeling,
        ModernBertConfig,
        ModernBertForMaskedLM,
        PreTrainedTokenizerFast,
        Trainer,
        TrainingArguments,
    )

    from se_fairseq.hf import (
        DataCollatorForSelfEvolution,
        SelfEvolutionArguments,
        SelfEvolutionTrainer,
    )

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    from tokenizers import Tokenizer, models

    specials = ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"]
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), args.vocab)})
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]")),
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )
    device = torch.device(args.device)
    cfg = ModernBertConfig(
        vocab_size=args.vocab,
        hidden_size=768,
        intermediate_size=1152,
        num_attention_heads=12,
        num_hidden_layers=args.layers,
        max_position_embeddings=max(args.length, 512),
        pad_token_id=2,
        cls_token_id=0,
        sep_token_id=1,
        bos_token_id=0,
        eos_token_id=1,
        sparse_prediction=config in ("plain-sparse", "padded", "packed"),
    )
    if args.attn:
        cfg._attn_implementation = args.attn
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(cfg).to(device)
    rows = corpus(args.batch_size * (args.steps + args.warmup), args.length, args.median_length,
                  args.vocab, len(specials))  # fmt: skip
    examples = [{"input_ids": [0, *r, 1]} for r in rows]
    tmp = tempfile.mkdtemp()
    training = TrainingArguments(
        tmp,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=device.type == "cpu",
        bf16=args.bf16,
        save_strategy="no",
        max_steps=args.steps + args.warmup,
        disable_tqdm=True,
    )
    packing = config in ("packed", "se-packed")
    attention = "flash" if args.attn == "flash_attention_2" else "mask"
    if config in ("plain", "plain-sparse"):
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=1)
        trainer = Trainer(model=model, args=training, data_collator=collator)
    elif config in ("padded", "packed"):
        collator = DataCollatorForSelfEvolution(
            tokenizer, mlm_probability=0.3, seed=1, select="random", packing=packing,
            packed_attention=attention,
        )  # fmt: skip
        trainer = Trainer(model=model, args=training, data_collator=collator)
    else:
        reference, reference_path = None, None
        if config == "se-excess":  # saved and loaded back, as run_se_mlm.py loads it
            torch.manual_seed(1)
            reference_path = os.path.join(tmp, "reference")
            ModernBertForMaskedLM(cfg).save_pretrained(reference_path)
            reference = ModernBertForMaskedLM.from_pretrained(reference_path).to(device)
        se_args = SelfEvolutionArguments(
            se_online=True,
            se_sparse_head=config != "se-dense",
            se_metric="excess" if reference is not None else "correctness",
            se_reference_model=reference_path,
        )
        collator = DataCollatorForSelfEvolution(
            tokenizer, mlm_probability=0.3, seed=1, packing=packing, packed_attention=attention,
            **se_args.collator_kwargs(),
        )  # fmt: skip
        trainer = SelfEvolutionTrainer(
            model=model, args=training, data_collator=collator, se_args=se_args,
            reference_model=reference,
        )  # fmt: skip
    trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + args.warmup)
    model.train()
    seconds, tokens = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.steps + args.warmup):
        chunk = examples[step * args.batch_size : (step + 1) * args.batch_size]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        if isinstance(trainer, SelfEvolutionTrainer):
            padded = trainer.data_collator(chunk)
            batches, count = trainer.get_batch_samples(iter([padded]), 1, device)
            batch = batches[0]
        else:
            batch = trainer._prepare_inputs(collator(chunk))
            count = batch["labels"].ne(-100).sum()
        trainer.training_step(trainer.model_wrapped, batch, count)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            seconds.append(time.perf_counter() - start)
            tokens.append(sum(len(e["input_ids"]) for e in chunk))
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(device) / 1024**3
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    median = statistics.median(seconds)
    return {
        "config": config,
        "median_s": median,
        "steps_s": seconds,
        "tokens_per_step": statistics.mean(tokens),
        "tokens_per_s": statistics.mean(tokens) / median,
        "peak_gb": peak_gb,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=50368)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=512, help="longest example, tokens")
    parser.add_argument("--median-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="the Trainer's bf16 (autocast)")
    parser.add_argument(
        "--attn", default=None, help="attn_implementation, e.g. sdpa or flash_attention_2"
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {CONFIGS + PACKED}")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    results = []
    for config in args.configs.split(","):
        argv = [
            f"--{name.replace('_', '-')}={value}"
            for name, value in vars(args).items()
            if name not in ("json", "one", "configs") and value is not None and value is not False
        ]
        argv = [a.split("=")[0] if a.endswith("=True") else a for a in argv]
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), *argv, "--one", config],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{config:13s} median {r['median_s']:7.3f} s/step  peak {r['peak_gb']:5.2f} GB  "
            f"{r['tokens_per_s']:9.0f} tokens/s ({r['tokens_per_step']:.0f} tokens/step)",
            flush=True,
        )
    by = {r["config"]: r for r in results}
    for base_name in ("plain-sparse", "padded"):
        if base_name not in by:
            continue
        base = by[base_name]
        for r in results:
            print(
                f"{r['config']:13s} vs {base_name}: time {r['median_s'] / base['median_s']:.2f}x, "
                f"peak memory {r['peak_gb'] / base['peak_gb']:.2f}x"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
