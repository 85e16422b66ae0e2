#!/usr/bin/env python
"""A CPU-sized SE-vs-random comparison the paper's way, offline, in about a minute on 2 cores.

1. A corpus from Python's own docstrings (the standard library's), one per line, and a
   word-level tokenizer of its most frequent words with ModernBERT's special tokens.
2. A tiny ModernBERT (random weights) pretrained briefly with random masking: the start.
3. From that start, two continuations with ``run_se_mlm.py``, the same seed, steps and
   data: online SE (top-k masking, TLS alpha 0.1) and its random-masking twin
   (``--se_select random --tls_alpha 0``).
4. ``se-finetune`` both on a labelled fixture from the same docstrings (is a docstring
   a class's or a function's?), 3 seeds, ``--baseline random``: the paired table.

    python examples/huggingface/se_vs_random_finetune.py WORK_DIR

Every command is printed before it runs. A tiny model and a few dozen steps show the
plumbing, not the method's effect: read the table's detectable difference.
"""

import collections
import inspect
import os
import pkgutil
import random
import re
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ("collections", "json", "os", "re", "string", "textwrap", "argparse", "logging")
MODULES += ("pathlib", "inspect", "functools", "itertools", "typing", "unittest", "email")


def docstrings():
    """(first paragraph of a docstring as lower-case words, is it a class's) per object."""
    import importlib

    seen = set()
    for name in MODULES:
        module = importlib.import_module(name)
        subs = [module] + [
            importlib.import_module(f"{name}.{m.name}")
            for m in pkgutil.iter_modules(getattr(module, "__path__", []))
            if not m.name.startswith("_")
        ]
        for mod in subs:
            for _, obj in inspect.getmembers(mod):
                doc = inspect.getdoc(obj) if callable(obj) else None
                if not doc or id(obj) in seen:
                    continue
                seen.add(id(obj))
                words = re.findall(r"[a-z]+|[.,()]", doc.split("\n\n")[0].lower())
                if 4 <= len(words):
                    yield " ".join(words[:48]), int(inspect.isclass(obj))


def word_level_tokenizer(words):
    """A word-level tokenizer over ``words`` with ModernBERT's special tokens after them:
    '[CLS] A [SEP]' and '[CLS] A [SEP] B [SEP]'."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"]
    vocab = {s: i for i, s in enumerate([*words, *specials])}
    model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    names = {f"{n}_token": f"[{n.upper()}]" for n in ("cls", "sep", "pad", "unk", "mask")}
    return PreTrainedTokenizerFast(tokenizer_object=model, **names)


def run(command):
    print("$ " + " ".join(shlex.quote(str(c)) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True)


def main(work):
    import transformers

    os.makedirs(work, exist_ok=True)
    examples = sorted(set(docstrings()))
    random.Random(0).shuffle(examples)
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        f.writelines(text + "\n" for text, _ in examples)
    counts = collections.Counter(w for text, _ in examples for w in text.split())
    words = [w for w, _ in counts.most_common(2000)]
    tokenizer = word_level_tokenizer(words)
    tokenizer.model_max_length = 64
    config = transformers.ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    init = os.path.join(work, "init")
    transformers.set_seed(0)
    transformers.ModernBertForMaskedLM(config).save_pretrained(init)
    tokenizer.save_pretrained(init)
    task = os.path.join(work, "docstring-kind")  # generic layout: sentence, label
    os.makedirs(task, exist_ok=True)
    held = len(examples) // 4
    for name, rows in (("dev.tsv", examples[:held]), ("train.tsv", examples[held:])):
        with open(os.path.join(task, name), "w") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{text}\t{label}\n" for text, label in rows)
    print(f"{len(examples)} docstrings ({held} dev), {len(tokenizer)} token vocabulary")

    script = [sys.executable, os.path.join(HERE, "run_se_mlm.py")]
    common = ["--train_file", corpus, "--line_by_line", "--max_seq_length", 64, "--do_train"]
    common += ["--per_device_train_batch_size", 16, "--learning_rate", "5e-4", "--seed", 1]
    common += ["--use_cpu", "--report_to", "none", "--save_strategy", "no"]
    start = os.path.join(work, "start")
    run(script + ["--model_name_or_path", init, "--output_dir", start, "--max_steps", 300]
        + ["--se_select", "random", "--tls_alpha", 0] + common)  # fmt: skip
    twins = {
        "random": ["--se_select", "random", "--tls_alpha", 0],
        "se": ["--se_online", "--se_select", "topk", "--tls_alpha", "0.1"],
    }
    for name, options in twins.items():
        run(script + ["--model_name_or_path", start, "--output_dir", os.path.join(work, name)]
            + ["--max_steps", 60] + options + common)  # fmt: skip
    run([sys.executable, "-m", "se_fairseq.cli.finetune"]
        + [f"--checkpoint={n}={os.path.join(work, n)}" for n in twins]
        + ["--task", task, "--seeds", "1,2,3", "--baseline", "random", "--devices", "cpu"]
        + ["--epochs", 3, "--batch-size", 32, "--lr", "2e-4"]
        + ["--out", os.path.join(work, "ft")])  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
