"""Two labelled downstream tasks from the documentation every CPython installation carries.

Both tasks are real text with natural labels: where the text comes from, never a model
or token statistics. Source and licence as make_text.py (CPython's docstrings and
``pydoc_data.topics``, PSF-2.0). Nothing is downloaded.

- ``doc-kind`` (one text, classification): the first paragraph of a standard-library
  docstring; label ``class`` or ``function`` (methods count as functions): what the
  docstring documents, read from the source by ``ast``. Balanced.
- ``next-sentence`` (a pair, classification): two short sentences of the documentation;
  label ``1`` when the second follows the first in the same paragraph, ``0`` when the
  second comes from another paragraph (drawn with a fixed seed). Balanced, one pair per
  paragraph.

Out of the pretraining text: make_text.py sends each paragraph to train/valid/test by a
hash of its text; every *dev* example here comes from paragraphs that hash sends to
valid or test (never pretrained on), every *train* example from train paragraphs (as
GLUE's training text may be in a pretraining corpus). The script then checks that no
dev text (a doc-kind paragraph, a next-sentence sentence) occurs in the pretraining
train.txt, drops any that does and prints the count.

    python make_tasks.py TEXT_DIR OUT_DIR [--train 1200 --dev 400]

writes OUT_DIR/{doc-kind,next-sentence}/{train,dev}.tsv in the generic layout
(``se-finetune``'s: a header with sentence / sentence1, sentence2 and label).
"""

import argparse
import ast
import hashlib
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_text import paragraphs, stdlib_documented_nodes, topic_texts  # noqa: E402

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def split_of(para):
    """make_text.py's split of a paragraph: 'train', or 'heldout' (its valid or test)."""
    bucket = int(hashlib.sha1(para.encode()).hexdigest(), 16) % 100
    return "heldout" if bucket < 8 else "train"


def docstrings_with_kind():
    """(kind, docstring) for every class and function docstring of the pure-Python stdlib,
    in make_text.py's walking order."""
    for node in stdlib_documented_nodes():
        kind = (
            "class"
            if isinstance(node, ast.ClassDef)
            else "function"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            else None
        )
        if kind:
            doc = ast.get_docstring(node)
            if doc:
                yield kind, doc


def clean(text):
    return text.replace("\t", " ").strip()


def doc_kind_examples(docstrings):
    """Every paragraph of a class or function docstring, labelled by what it documents."""
    seen, out = set(), {"train": [], "heldout": []}
    for kind, doc in docstrings:
        for para in paragraphs(doc):
            if para.lower() in seen:
                continue
            seen.add(para.lower())
            out[split_of(para)].append((clean(para), kind))
    return out


def sentences(para):
    return [s.strip() for s in SENTENCE_END.split(para) if len(s.split()) >= 3]


def next_sentence_examples(docstrings, rng, words=10):
    """Consecutive sentence pairs of one paragraph: the last WORDS words of a sentence and the
    first WORDS words of the next (label 1) or of a sentence of another paragraph (label 0):
    both fit the small model's 32 positions together."""
    seen, paras = set(), {"train": [], "heldout": []}
    for text in topic_texts() + [doc for _, doc in docstrings]:
        for para in paragraphs(text):
            if para.lower() in seen:
                continue
            seen.add(para.lower())
            paras[split_of(para)].append(para)
    tail = lambda s: clean(" ".join(s.split()[-words:]))
    head = lambda s: clean(" ".join(s.split()[:words]))
    out = {}
    for split, plist in paras.items():
        pool = [(i, s) for i, p in enumerate(plist) for s in sentences(p)]
        pairs = [
            (i, a, b) for i, p in enumerate(plist) for a, b in zip(sentences(p), sentences(p)[1:])
        ]
        rng.shuffle(pairs)
        examples = []
        for n, (i, a, b) in enumerate(pairs):
            if n % 2 == 0:
                examples.append((tail(a), head(b), "1"))
            else:
                while True:
                    k, other = rng.choice(pool)
                    if k != i:
                        break
                examples.append((tail(a), head(other), "0"))
        out[split] = examples
    return out


def balanced(examples, n, rng, label_of):
    """n examples, as equal per label as the data allows, in a seeded order."""
    by_label = {}
    for e in examples:
        by_label.setdefault(label_of(e), []).append(e)
    per = n // len(by_label)
    picked = []
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        picked += items[:per]
    rng.shuffle(picked)
    return picked


def write_tsv(path, header, rows):
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "text_dir", help="make_text.py's output (its train.txt is checked for overlap)"
    )
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=1200, help="train examples per task")
    parser.add_argument("--dev", type=int, default=400, help="dev examples per task")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    pretraining = open(os.path.join(args.text_dir, "train.txt")).read()
    rng = random.Random(args.seed)

    docstrings = list(docstrings_with_kind())
    doc = doc_kind_examples(docstrings)
    dropped_doc = [t for t, _ in doc["heldout"] if t in pretraining]
    doc["heldout"] = [e for e in doc["heldout"] if e[0] not in pretraining]
    nsp = next_sentence_examples(docstrings, rng)
    dropped_nsp = [e for e in nsp["heldout"] if e[0] in pretraining or e[1] in pretraining]
    nsp["heldout"] = [
        e for e in nsp["heldout"] if e[0] not in pretraining and e[1] not in pretraining
    ]

    tasks = {
        "doc-kind": (("sentence", "label"), doc, lambda e: e[1]),
        "next-sentence": (("sentence1", "sentence2", "label"), nsp, lambda e: e[2]),
    }
    for name, (header, data, label_of) in tasks.items():
        folder = os.path.join(args.out_dir, name)
        os.makedirs(folder, exist_ok=True)
        train = balanced(data["train"], args.train, rng, label_of)
        dev = balanced(data["heldout"], args.dev, rng, label_of)
        write_tsv(os.path.join(folder, "train.tsv"), header, train)
        write_tsv(os.path.join(folder, "dev.tsv"), header, dev)
        labels = sorted({label_of(e) for e in dev})
        print(
            f"[tasks] {name}: {len(train)} train / {len(dev)} dev examples (labels {labels}; "
            f"available: {len(data['train'])} train, {len(data['heldout'])} held-out)"
        )
    print(
        f"[tasks] overlap with the pretraining text: dropped {len(dropped_doc)} doc-kind and "
        f"{len(dropped_nsp)} next-sentence dev candidates whose text occurs in train.txt"
    )


if __name__ == "__main__":
    main()
