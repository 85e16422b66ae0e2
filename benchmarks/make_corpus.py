"""Make a synthetic binarized corpus with a random score file, for the benchmarks.

    python benchmarks/make_corpus.py OUT_DIR [--sentences 40000]

Words follow a Zipf law over a 30k vocabulary, sentences are 5-60 words long.
Scores are random (the pipeline's speed does not depend on their values).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from support.fairseq_data import binarize, write_scores, write_zipf_corpus  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (text and data-bin/)")
    parser.add_argument("--sentences", type=int, default=40000)
    parser.add_argument("--vocab", type=int, default=30000)
    args = parser.parse_args()
    write_zipf_corpus(
        args.out,
        vocab=args.vocab,
        min_words=5,
        max_words=61,
        splits=(("train", args.sentences), ("valid", max(args.sentences // 100, 10))),
    )
    dest = binarize(args.out, os.path.join(args.out, "data-bin"), workers=2)
    write_scores(os.path.join(dest, "train"), blocking={})
    print(dest)


if __name__ == "__main__":
    main()
