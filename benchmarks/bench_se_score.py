"""One epoch of self-questioning: se-score against the reference code's way.

The reference code scores tokens by running a fairseq-train epoch at learning
rate 0 over unmasked input with the loss at every position (forward, backward,
optimizer step). Here that is ``fairseq-train --task masked_lm --lr 0
--mask-prob 0.99 --leave-unmasked-prob 1.0 --random-token-prob 0``, restored
from the same checkpoint, on the same data; against ``se-score`` (inference,
LM head in chunks). Both are timed as whole commands, alternated.

    python benchmarks/bench_se_score.py [--sentences 4000] [--rounds 2]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = [
    "--arch",
    "roberta_base",
    "--encoder-layers",
    "4",
    "--encoder-embed-dim",
    "256",
    "--encoder-ffn-embed-dim",
    "1024",
    "--encoder-attention-heads",
    "4",
    "--tokens-per-sample",
    "256",
    "--max-positions",
    "256",
]


def run(cmd, env=None):
    start = time.perf_counter()
    result = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout[-3000:]}")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", default=None, help="work folder (default: a temp folder)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="se-score-bench-")
    data = os.path.join(work, "data-bin")
    if not os.path.exists(os.path.join(data, "dict.txt")):
        subprocess.run(
            [
                sys.executable,
                os.path.join(HERE, "make_corpus.py"),
                work,
                "--sentences",
                str(args.sentences),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    ckpt_dir = os.path.join(work, "vanilla")
    ckpt = os.path.join(ckpt_dir, "checkpoint_last.pt")
    common = [
        data,
        *MODEL,
        "--task",
        "masked_lm",
        "--criterion",
        "masked_lm",
        "--optimizer",
        "adam",
        "--cpu",
        "--seed",
        "1",
        "--max-tokens",
        "4096",
        "--num-workers",
        "0",
        "--log-format",
        "simple",
        "--log-interval",
        "50",
    ]
    if not os.path.exists(ckpt):
        run(
            [
                "fairseq-train",
                *common,
                "--lr",
                "1e-4",
                "--max-update",
                "2",
                "--save-dir",
                ckpt_dir,
                "--no-epoch-checkpoints",
                "--disable-validation",
            ]
        )
    reference = [
        "fairseq-train",
        *common,
        "--lr",
        "0",
        "--max-epoch",
        "1",
        "--restore-file",
        ckpt,
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        "--no-save",
        "--disable-validation",
        "--mask-prob",
        "0.99",
        "--leave-unmasked-prob",
        "1.0",
        "--random-token-prob",
        "0",
        "--save-dir",
        os.path.join(work, "lr0"),
    ]
    ours = [
        "se-score",
        data,
        "--path",
        ckpt,
        "--max-tokens",
        "4096",
        "--cpu",
        "--no-progress-bar",
        "--out",
        os.path.join(work, "bench.se_scores"),
    ]
    times = {"reference (fairseq-train --lr 0)": [], "se-score": []}
    for r in range(args.rounds):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for name in order:
            cmd = reference if name.startswith("reference") else ours
            seconds = run(cmd)
            times[name].append(seconds)
            print(f"round {r + 1}: {name:<36} {seconds:7.1f} s", flush=True)
    ref = statistics.median(times["reference (fairseq-train --lr 0)"])
    se = statistics.median(times["se-score"])
    print(
        f"median: reference {ref:.1f} s, se-score {se:.1f} s; se-score is {ref / se:.2f}x faster "
        f"(one epoch, CPU, {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
