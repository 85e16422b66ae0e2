"""Real English prose that every CPython installation carries, as train/valid/test text.

Source: the Python documentation shipped inside CPython itself — the language
reference topics in ``pydoc_data.topics`` (what ``help('topic')`` prints) and
the docstrings of the standard library's pure-Python modules. Licence: Python
Software Foundation License (PSF-2.0), as CPython. Nothing is downloaded.

Cleaning: code examples (interactive ``>>>`` sessions, indented blocks, lines
made mostly of symbols) are dropped; paragraphs are joined into one line each;
short fragments and duplicates are dropped. Paragraphs are split into
train/valid/test by a hash of their text, so the split is stable.

    python make_text.py OUT_DIR [--max-words N]
"""

import argparse
import ast
import hashlib
import os
import re
import sys
import sysconfig

WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def topic_texts():
    import pydoc_data.topics as topics

    return list(topics.topics.values())


SKIP_DIRS = ("test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "ensurepip")
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_documented_nodes():
    """Every module, class and function node of the pure-Python stdlib (tests and
    vendored packages left out), in a fixed walking order."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, DOCUMENTED):
                    yield node


def docstring_texts():
    return [doc for doc in map(ast.get_docstring, stdlib_documented_nodes()) if doc]


def is_prose(line):
    stripped = line.strip()
    if not stripped or stripped.startswith((">>>", "...", "$", "%", "#")):
        return False
    if line.startswith(("    ", "\t")):  # indented: code or tables
        return False
    letters = sum(c.isalpha() or c.isspace() for c in stripped)
    return letters >= 0.85 * len(stripped)


def paragraphs(text):
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if is_prose(line)]
        para = " ".join(line.strip() for line in lines)
        para = re.sub(r"\s+", " ", para).strip()
        words = WORD.findall(para)
        if len(words) >= 8 and len(words) >= 0.6 * len(para.split()):
            yield para


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder for train.txt, valid.txt, test.txt")
    parser.add_argument("--max-words", type=int, default=0, help="cap the corpus size (0 = all)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    seen, kept, words = set(), [], 0
    for text in topic_texts() + docstring_texts():
        for para in paragraphs(text):
            key = para.lower()
            if key in seen:
                continue
            seen.add(key)
            kept.append(para)
            words += len(para.split())
            if args.max_words and words >= args.max_words:
                break
        if args.max_words and words >= args.max_words:
            break
    splits = {"train": [], "valid": [], "test": []}
    for para in kept:
        bucket = int(hashlib.sha1(para.encode()).hexdigest(), 16) % 100
        splits["valid" if bucket < 4 else "test" if bucket < 8 else "train"].append(para)
    for name, paras in splits.items():
        with open(os.path.join(args.out, f"{name}.txt"), "w") as f:
            f.write("\n".join(paras) + "\n")
    counts = {k: sum(len(p.split()) for p in v) for k, v in splits.items()}
    print(
        f"[text] CPython {sys.version.split()[0]} documentation and docstrings (PSF licence): "
        + ", ".join(f"{k} {len(splits[k])} paragraphs / {counts[k]} words" for k in splits)
    )


if __name__ == "__main__":
    main()
