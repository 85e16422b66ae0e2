"""Train a SentencePiece unigram vocabulary on train.txt and write space-separated pieces.

    python tokenize_text.py TEXT_DIR OUT_DIR [--vocab-size 8000]

OUT_DIR gets spm.model/spm.vocab and {train,valid,test}.spm, ready for
``fairseq-preprocess --only-source``. (For fairseq's own encoding at inference
time the same model works with ``--bpe sentencepiece --sentencepiece-model``.)
"""

import argparse
import os

import sentencepiece as spm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    prefix = os.path.join(args.out_dir, "spm")
    spm.SentencePieceTrainer.train(
        input=os.path.join(args.text_dir, "train.txt"),
        model_prefix=prefix,
        vocab_size=args.vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=2,
        minloglevel=2,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        pad_id=-1,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    for split in ("train", "valid", "test"):
        with (
            open(os.path.join(args.text_dir, f"{split}.txt")) as src,
            open(os.path.join(args.out_dir, f"{split}.spm"), "w") as out,
        ):
            lines = [line.rstrip("\n") for line in src if line.strip()]
            for pieces in sp.encode(lines, out_type=str):
                out.write(" ".join(pieces) + "\n")
    print(f"[spm] unigram vocabulary of {args.vocab_size} pieces: {prefix}.model")


if __name__ == "__main__":
    main()
