"""Two labelled downstream tasks from the source every CPython installation carries.

Both tasks are real text with natural labels: where the text comes from, never a model
or token statistics. Source and licence as make_text.py (the docstrings of CPython's
pure-Python standard library, PSF-2.0). Nothing is downloaded.

- ``module`` (one text, 10 classes): a sentence of a docstring from one of ten
  standard-library packages (asyncio, concurrent, email, importlib, json, logging,
  multiprocessing, unittest, urllib, xml); the label is the package whose source holds
  the docstring. A topic task with a lexical signal.
- ``source`` (a pair, 2 classes): the name of a standard-library module and a sentence of a
  docstring from one of ten other modules and packages (decimal, http, inspect, mailbox,
  pathlib, pydoc, subprocess, tarfile, threading, typing); label ``1`` when the sentence comes
  from the named module's source, ``0`` when it comes from another of the ten (the name
  drawn with a fixed seed). Balanced.

Out of the pretraining text: make_text.py sends each paragraph to train/valid/test by a
hash of its text; every *dev* example here comes from docstring paragraphs that hash
sends to valid or test (never pretrained on), every *train* example from train
paragraphs (as GLUE's training text may be in a pretraining corpus). The script then
checks that no dev text occurs in the pretraining train.txt, drops any that does and
prints the count.

    python make_tasks.py TEXT_DIR OUT_DIR [--train 2000 --dev 400]

writes OUT_DIR/{module,source}/{train,dev}.tsv in the generic layout
(``se-finetune``'s: a header with sentence / sentence1, sentence2 and label).
"""

import argparse
import ast
import hashlib
import os
import random
import re
import sys
import sysconfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_text import DOCUMENTED, paragraphs  # noqa: E402

PACKAGES = (
    "asyncio",
    "concurrent",
    "email",
    "importlib",
    "json",
    "logging",
    "multiprocessing",
    "unittest",
    "urllib",
    "xml",
)
# the source task's modules: name as users write it -> file or folder under the stdlib (none
# that distributions split off, as Debian does distutils, idlelib and tkinter)
SOURCE_MODULES = {
    "decimal": "_pydecimal.py",
    "http": "http",
    "inspect": "inspect.py",
    "mailbox": "mailbox.py",
    "pathlib": "pathlib.py",
    "pydoc": "pydoc.py",
    "subprocess": "subprocess.py",
    "tarfile": "tarfile.py",
    "threading": "threading.py",
    "typing": "typing.py",
}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def split_of(para):
    """make_text.py's split of a paragraph: 'train', or 'heldout' (its valid or test)."""
    bucket = int(hashlib.sha1(para.encode()).hexdigest(), 16) % 100
    return "heldout" if bucket < 8 else "train"


def package_trees(packages):
    """(name, parsed module) for every source file of the named modules and packages
    ({name: file or folder under the stdlib}), in a fixed order (tests left out, as
    make_text.py leaves them out)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for name, where in packages.items():
        path = os.path.join(stdlib, where)
        if not os.path.exists(path) and where.endswith(".py"):
            path = path[:-3]  # a module that became a package (pathlib on Python 3.13)
        if not os.path.exists(path):
            sys.exit(f"make_tasks.py: {path} (module {name}) is not in this Python's stdlib")
        files = [path] if path.endswith(".py") else []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(
                d for d in dirs if d not in ("test", "tests", "idle_test", "__pycache__")
            )
            files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
        for file in files:
            with open(file, encoding="utf-8") as f:
                yield name, ast.parse(f.read())


def sentences(para):
    return [s.strip() for s in SENTENCE_END.split(para) if len(s.split()) >= 4]


def clean(text):
    return text.replace("\t", " ").strip()


def module_examples(trees):
    """Every sentence of every docstring paragraph of the sources, labelled by the module or
    package; a sentence's split is its paragraph's."""
    seen, out = set(), {"train": [], "heldout": []}
    for package, tree in trees:
        for node in ast.walk(tree):
            doc = isinstance(node, DOCUMENTED) and ast.get_docstring(node)
            for para in paragraphs(doc) if doc else ():
                for sentence in sentences(para):
                    if sentence.lower() not in seen:
                        seen.add(sentence.lower())
                        out[split_of(para)].append((clean(sentence), package))
    return out


def source_examples(module, rng):
    """module_examples' sentences as pairs: each with its own module's name (label 1) or, for
    every other sentence in a seeded order, with another module's name (label 0)."""
    out = {}
    for split, examples in module.items():
        order = list(range(len(examples)))
        rng.shuffle(order)
        names = sorted({name for _, name in examples})
        pairs = []
        for n, i in enumerate(order):
            sentence, name = examples[i]
            if n % 2:
                name = rng.choice([other for other in names if other != name])
            pairs.append((name, sentence, "0" if n % 2 else "1"))
        out[split] = pairs
    return out


def balanced(examples, n, rng, label_of):
    """Up to n examples, as equal per label as the data allows, in a seeded order."""
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
    parser.add_argument("out_dir", help="output folder for module/ and source/")
    parser.add_argument("--train", type=int, default=2000, help="train examples per task")
    parser.add_argument("--dev", type=int, default=400, help="dev examples per task")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sampling")
    args = parser.parse_args()
    with open(os.path.join(args.text_dir, "train.txt")) as f:
        pretraining = f.read()
    rng = random.Random(args.seed)

    module = module_examples(package_trees(dict(zip(PACKAGES, PACKAGES))))
    pairs = source_examples(module_examples(package_trees(SOURCE_MODULES)), rng)
    dropped = {}
    for name, data in (("module", module), ("source", pairs)):
        # the sentence is the text; the source task's module names are not held-out text
        kept = [e for e in data["heldout"] if e[-2] not in pretraining]
        dropped[name] = len(data["heldout"]) - len(kept)
        data["heldout"] = kept

    tasks = {
        "module": (("sentence", "label"), module),
        "source": (("sentence1", "sentence2", "label"), pairs),
    }
    for name, (header, data) in tasks.items():
        folder = os.path.join(args.out_dir, name)
        os.makedirs(folder, exist_ok=True)
        train = balanced(data["train"], args.train, rng, lambda e: e[-1])
        dev = balanced(data["heldout"], args.dev, rng, lambda e: e[-1])
        write_tsv(os.path.join(folder, "train.tsv"), header, train)
        write_tsv(os.path.join(folder, "dev.tsv"), header, dev)
        labels = sorted({e[-1] for e in dev})
        print(
            f"[tasks] {name}: {len(train)} train / {len(dev)} dev examples ({len(labels)} labels; "
            f"available: {len(data['train'])} train, {len(data['heldout'])} held-out)"
        )
    print(
        "[tasks] overlap with the pretraining text: dropped "
        + ", ".join(f"{n} {name}" for name, n in dropped.items())
        + " dev candidates whose text occurs in train.txt"
    )


if __name__ == "__main__":
    main()
