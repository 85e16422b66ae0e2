"""se-score against the forward it cannot avoid, at two model sizes, in one process.

Over the same padded batches of the same corpus (fixed 128-token blocks, --batch-size 32):
  (a) the floor: ``model(src, features_only=True)`` + the LM head on the non-pad positions,
      nothing else (no softmax, no copy back);
  (b) the bare loop a user would write: ``log_softmax(model(src)[0])``, ``gather``, all
      positions;
  (c) ``score_corpus`` (the whole call: model load, checkpoint hash, blocking, scoring,
      chunk files, assembly), and its scoring part alone (the call less its set-up).
Rounds alternate the order. Ratios are against the floor of the same run. Per-stage
seconds inside se-score come from ``score_corpus(stage_times={})``.

    python benchmarks/bench_se_score_floor.py [--rounds 3] [--sizes tiny,base]
        [--tiny-tokens 600000] [--base-batches 3] [--device cpu] [--precision fp32]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # tests/support

SIZES = {
    # the tiny shape: 2 layers, 128-d (TINY_ROBERTA's layout, wider)
    "tiny": dict(layers=2, dim=128, ffn=512, heads=2, vocab=8000),
    # roberta-base's shape with random weights and its vocabulary size (50265 with <mask>)
    "base": dict(layers=12, dim=768, ffn=3072, heads=12, vocab=50260),
}
TOKENS_PER_SAMPLE = 128
BATCH = 32


def make_data(root, vocab, tokens, seed=0):
    """A binarized split of Zipf-distributed sentences (4-40 tokens + </s>) of about
    ``tokens`` tokens, written with fairseq's mmap builder, and its dict.txt (``vocab``
    words; with the 4 specials and <mask>, ``vocab + 5`` embeddings)."""
    from support.fairseq_data import write_mmap_split

    data = os.path.join(root, "data-bin")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "dict.txt"), "w") as f:
        f.writelines(f"w{i} {vocab - i}\n" for i in range(vocab))
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    flat = rng.choice(vocab, size=tokens, p=p) + 4  # ids 4.. are the words
    cuts = np.cumsum(rng.integers(4, 40, size=tokens // 4))
    cuts = cuts[cuts < tokens]
    sentences = [np.append(s, 2) for s in np.split(flat, cuts) if len(s)]
    dtype = np.uint16 if vocab + 5 < 65500 else np.int32
    write_mmap_split(os.path.join(data, "train"), sentences, dtype=dtype)
    return data


def save_checkpoint(data, s, path):
    from support.fairseq_data import save_untrained_checkpoint

    arch = [
        "--arch",
        "roberta_base",
        "--encoder-layers",
        str(s["layers"]),
        "--encoder-embed-dim",
        str(s["dim"]),
        "--encoder-ffn-embed-dim",
        str(s["ffn"]),
        "--encoder-attention-heads",
        str(s["heads"]),
        "--max-positions",
        str(TOKENS_PER_SAMPLE),
        "--tokens-per-sample",
        str(TOKENS_PER_SAMPLE),
    ]
    return save_untrained_checkpoint(data, path, arch)


def padded_batches(job):
    """The batches se-score forms, collated once (the loops below do no data loading)."""
    from fairseq.data import data_utils

    out = []
    for first, last in job.chunks:
        for batch in job.batches(first, last):
            src = data_utils.collate_tokens([job.items[b] for b in batch], job.pad)
            out.append(src.to(job.device))
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor(model, batches, pad, device):
    """Encoder + LM head on the non-pad positions, nothing else."""
    start = time.perf_counter()
    with torch.no_grad():
        for src in batches:
            features, _ = model(src, features_only=True)
            model.encoder.output_layer(features[src.ne(pad)])
    sync(device)
    return time.perf_counter() - start


def bare_loop(model, batches, pad, device):
    """What a user would write: full logits, log_softmax, gather, every position."""
    start = time.perf_counter()
    with torch.no_grad():
        for src in batches:
            lprobs = torch.log_softmax(model(src)[0].float(), dim=-1)
            (-lprobs.gather(-1, src.unsqueeze(-1))).squeeze(-1).cpu()
    sync(device)
    return time.perf_counter() - start


def se_score(data, ckpt, out, options):
    from se_fairseq.scoring_job import score_corpus

    for suffix in (".npy", ".json"):
        if os.path.exists(out + suffix):
            os.remove(out + suffix)
    stages = {}
    start = time.perf_counter()
    result = score_corpus(data, ckpt, out=out, stage_times=stages, **options)
    seconds = time.perf_counter() - start
    assert result.complete
    return seconds, stages


def run_size(name, s, args, root):
    from se_fairseq.scoring_job import ScoringJob

    device = torch.device(args.device)
    tokens = args.tiny_tokens if name == "tiny" else args.base_batches * BATCH * 127
    work = os.path.join(root, name)
    data = make_data(work, s["vocab"], tokens)
    ckpt = save_checkpoint(data, s, os.path.join(work, "model.pt"))
    options = dict(
        batch_size=BATCH,
        device=args.device,
        precision=args.precision,
        sample_break_mode="none",
        tokens_per_sample=TOKENS_PER_SAMPLE,
    )
    job = ScoringJob(data, ckpt, out=os.path.join(work, "probe"), **options)
    model, pad = job.model, job.pad
    batches = padded_batches(job)
    scored = int(sum(int(src.ne(pad).sum()) - len(src) for src in batches))  # less <s>
    nonpad = int(sum(int(src.ne(pad).sum()) for src in batches))
    print(
        f"\n== {name}: {s['layers']} layers, {s['dim']}-d, ffn {s['ffn']}, {s['heads']} heads, "
        f"vocab {s['vocab'] + 5}; {scored} tokens in {len(batches)} batches of {BATCH} x "
        f"{TOKENS_PER_SAMPLE}; {args.device} {args.precision}, {torch.get_num_threads()} threads",
        flush=True,
    )
    # warm-up: one batch of each loop, one whole se-score call
    floor(model, batches[:1], pad, device)
    bare_loop(model, batches[:1], pad, device)
    se_score(data, ckpt, os.path.join(work, "warm"), options)
    times = {"floor": [], "bare loop": [], "se-score": [], "se-score scoring": []}
    all_stages = []
    for r in range(args.rounds):
        order = ["floor", "bare loop", "se-score"]
        order = order[r % 3 :] + order[: r % 3]
        for what in order:
            if what == "floor":
                t = floor(model, batches, pad, device)
            elif what == "bare loop":
                t = bare_loop(model, batches, pad, device)
            else:
                t, stages = se_score(data, ckpt, os.path.join(work, "s"), options)
                all_stages.append(stages)
                times["se-score scoring"].append(t - stages.get("setup", 0.0))
            times[what].append(t)
            print(f"round {r + 1}: {what:<10} {t:8.2f} s  {scored / t:10.0f} tokens/s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    stage_med = {k: statistics.median(st.get(k, 0.0) for st in all_stages) for k in all_stages[0]}
    report = {
        "size": name,
        "shape": s,
        "tokens": scored,
        "nonpad_positions": nonpad,
        "batches": len(batches),
        "threads": torch.get_num_threads(),
        "median_s": med,
        "tokens_per_s": {k: scored / v for k, v in med.items()},
        "ratio_to_floor": {k: med["floor"] / v for k, v in med.items()},
        "se_score_stage_s": stage_med,
    }
    print(f"{'what':<18} {'tokens/s':>10} {'x floor':>8}")
    for k in times:
        print(f"{k:<18} {report['tokens_per_s'][k]:10.0f} {report['ratio_to_floor'][k]:8.2f}")
    print(
        "se-score stages (median s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(stage_med.items(), key=lambda kv: -kv[1]))
    )
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--tiny-tokens", type=int, default=600_000)
    parser.add_argument("--base-batches", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    import fairseq  # noqa: F401

    reports = []
    with tempfile.TemporaryDirectory(prefix="se-score-floor-") as root:
        for name in args.sizes.split(","):
            reports.append(run_size(name, SIZES[name], args, root))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)


if __name__ == "__main__":
    main()
