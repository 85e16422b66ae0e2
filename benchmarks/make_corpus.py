"""Make a synthetic binarized corpus with a random score file, for the benchmarks.

    python benchmarks/make_corpus.py OUT_DIR [--sentences 40000]

Words follow a Zipf law over a 30k vocabulary, sentences are 5-60 words long.
Scores are random (the pipeline's speed does not depend on their values).
"""
import argparse
import os
import subprocess
import sys

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (text and data-bin/)")
    parser.add_argument("--sentences", type=int, default=40000)
    parser.add_argument("--vocab", type=int, default=30000)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, args.vocab + 1)
    p /= p.sum()
    for split, n in (("train", args.sentences), ("valid", max(args.sentences // 100, 10))):
        ids = rng.choice(args.vocab, size=n * 60, p=p)
        lengths = rng.integers(5, 61, size=n)
        with open(os.path.join(args.out, f"{split}.txt"), "w") as f:
            start = 0
            for length in lengths:
                f.write(" ".join(f"w{i}" for i in ids[start:start + length]) + "\n")
                start += length
    dest = os.path.join(args.out, "data-bin")
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--only-source",
                    "--trainpref", os.path.join(args.out, "train.txt"),
                    "--validpref", os.path.join(args.out, "valid.txt"),
                    "--destdir", dest, "--workers", "2"], check=True)
    from se_fairseq.data import score_file

    split = os.path.join(dest, "train")
    fingerprint = score_file.corpus_fingerprint(split)
    scores = rng.gamma(2.0, 2.0, size=fingerprint["num_tokens"])
    score_file.write(score_file.default_prefix(split), scores, metric="correctness",
                     checkpoint={"path": "random scores (benchmark)"}, blocking={},
                     fingerprint=fingerprint)
    print(dest)


if __name__ == "__main__":
    main()
