"""The RoBERTa recipe and the README's two stages run as written, in miniature.

Every fenced bash block after a ``<!-- recipe-test: NAME -->`` marker in
examples/roberta/README.md and README.md is run by bash, in a folder holding
stand-ins made here for what the recipe downloads: a tiny RoBERTa saved in the
released ``roberta.base/model.pt`` layout (args Namespace, 512 positions, blocking
``complete``) with its ``dict.txt``, tiny GPT-2 BPE files ``gpt2_bpe/encoder.json``
and ``vocab.bpe`` (read by fairseq's own GPT-2 encoder), a raw corpus in
``wikitext-103-raw/`` and a binarized two-class ``RTE-bin/``. The corpus has a
sentence longer than the model in train and in valid, so ``complete`` blocking
meets the case fairseq-train treats differently in training and validation.

The commands change only through SUBSTITUTIONS (scale: one CPU, a tiny model). The
sharded se-score block is only parsed (bash -n): it repeats the scoring of the block
before it under torchrun, which test_se_score.py runs with two ranks.
Training commands run with their full update counts and are stopped (SIGKILL, a
preemption) once they have saved a checkpoint; the main README's stage 2 is then
relaunched unchanged and must resume from that checkpoint.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import threading

import numpy as np
import pytest
import torch
from support.readme import marked_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ARCH = (
    "--encoder-layers 2 --encoder-embed-dim 32 --encoder-ffn-embed-dim 64 "
    "--encoder-attention-heads 2"
)
# (pattern, replacement, why): the whole list of changes made to the documented commands
SUBSTITUTIONS = [
    (
        r"--arch roberta_base",
        f"--arch roberta_base {TINY_ARCH}",
        "the stand-in roberta.base is 2 layers, 32 wide (512 positions, as released)",
    ),
    (r"--fp16(?=\s)", "--cpu", "no GPU"),
    (r"--nproc_per_node 8", "--nproc_per_node 1", "one CPU process"),
    (r"--workers 60", "--workers 1", "two shared cores"),
    (r"--log-interval 100", "--log-interval 1", "log every update of a short run"),
]
WORDS = [f"w{i}" for i in range(120)]


def in_miniature(block):
    for pattern, replacement, _ in SUBSTITUTIONS:
        block = re.sub(pattern, replacement, block)
    return block


def process_tree(root):
    """``root`` and every process below it (torchrun starts its workers in sessions of
    their own, so killing a process group would leave them running)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def kill_tree(root):
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_block(block, cwd, stop_at=None, timeout=240):
    """bash runs the block; with ``stop_at`` (a function of a line of output), bash and
    every process it started are killed (SIGKILL, as a preempted job) at the first line
    for which it is true. Returns (returncode, output)."""
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", in_miniature(block)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    timer = threading.Timer(timeout, kill_tree, (proc.pid,))
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if stop_at and stop_at(line):
                kill_tree(proc.pid)
                break
        proc.wait()
    finally:
        timer.cancel()
    return proc.returncode, "".join(lines)


# -- stand-ins -------------------------------------------------------------------
def write_raw_corpus(folder, seed=0):
    """Zipf-distributed words, blank lines as in WikiText, and one sentence of 700
    words (longer than 512 positions) in train and in valid."""
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    for split, lines in (("train", 400), ("valid", 300), ("test", 40)):
        rows = [" ".join(rng.choice(WORDS, size=rng.integers(4, 30), p=p)) for _ in range(lines)]
        rows[::25] = [""] * len(rows[::25])
        if split != "test":
            rows.insert(len(rows) // 2, " ".join(rng.choice(WORDS, size=700, p=p)))
        with open(os.path.join(folder, f"wiki.{split}.raw"), "w") as f:
            f.write("\n".join(rows) + "\n")


def write_gpt2_bpe(folder):
    """encoder.json and vocab.bpe in GPT-2's format: the 256 byte symbols, then merges
    that build every word of WORDS (with and without its leading space)."""
    from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

    byte_symbols = bytes_to_unicode()
    vocab = [byte_symbols[b] for b in range(256)]
    merges = []
    for word in WORDS:
        for form in (word, " " + word):
            symbols = "".join(byte_symbols[b] for b in form.encode("utf-8"))
            for i in range(1, len(symbols)):
                if symbols[: i + 1] not in vocab:
                    merges.append((len(symbols[:i]), symbols[:i], symbols[i]))
                    vocab.append(symbols[: i + 1])
    merges.sort(key=lambda m: m[0])  # shorter prefixes first: each merge's parts exist
    os.makedirs(folder)
    with open(os.path.join(folder, "encoder.json"), "w") as f:
        json.dump({s: i for i, s in enumerate(vocab)}, f)
    with open(os.path.join(folder, "vocab.bpe"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for _, a, b in merges))
    return len(vocab)


def write_roberta_base(folder, num_bpe_ids):
    """dict.txt over every BPE id (as the released one lists GPT-2's ids) and model.pt
    in the released fairseq <= 0.8 layout: ``args`` Namespace, plain containers."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    os.makedirs(folder)
    with open(os.path.join(folder, "dict.txt"), "w") as f:
        f.writelines(f"{i} {num_bpe_ids - i}\n" for i in range(num_bpe_ids))
    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [
            folder,
            "--task",
            "masked_lm",
            "--criterion",
            "masked_lm",
            "--arch",
            "roberta_base",
            *TINY_ARCH.split(),
            "--tokens-per-sample",
            "512",
            "--sample-break-mode",
            "complete",
        ],
    )
    torch.manual_seed(0)
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    model = task.build_model(convert_namespace_to_omegaconf(args).model)
    state = {
        "args": argparse.Namespace(**vars(args)),
        "model": model.state_dict(),
        "optimizer_history": [
            {
                "criterion_name": "MaskedLmLoss",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": 3.0},
                "num_updates": 500000,
            }
        ],
        "extra_state": {"epoch": 1, "val_loss": 3.0},
        "last_optimizer_state": None,
    }
    torch.save(state, os.path.join(folder, "model.pt"))


def write_rte_bin(folder, dict_path, seed=0):
    """RTE-bin as fairseq's preprocess_GLUE_tasks.sh lays it out: input0/, input1/
    (BPE ids, the model's dictionary) and label/ (two classes)."""
    from fairseq.data import Dictionary, indexed_dataset

    rng = np.random.default_rng(seed)
    dictionary = Dictionary.load(dict_path)
    words = [dictionary[i] for i in range(dictionary.nspecial, len(dictionary))]
    labels = Dictionary()
    for name in ("entailment", "not_entailment"):
        labels.add_symbol(name)
    for sub, d in (("input0", dictionary), ("input1", dictionary), ("label", labels)):
        os.makedirs(os.path.join(folder, sub))
        d.save(os.path.join(folder, sub, "dict.txt"))
        for split, n in (("train", 24), ("valid", 8)):
            stem = os.path.join(folder, sub, split)
            builder = indexed_dataset.make_builder(stem + ".bin", impl="mmap", vocab_size=len(d))
            for i in range(n):
                line = (
                    ("entailment", "not_entailment")[i % 2]
                    if sub == "label"
                    else " ".join(rng.choice(words, size=rng.integers(5, 20)))
                )
                builder.add_item(d.encode_line(line, add_if_not_exist=False, append_eos=True))
            builder.finalize(stem + ".idx")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    write_raw_corpus(str(root / "wikitext-103-raw"))
    num_ids = write_gpt2_bpe(str(root / "gpt2_bpe"))
    write_roberta_base(str(root / "roberta.base"), num_ids)
    write_rte_bin(str(root / "RTE-bin"), str(root / "roberta.base" / "dict.txt"))
    return root


def checkpoint_updates(path):
    from se_fairseq.checkpoint_safety import safe_load

    return safe_load(path)["optimizer_history"][-1]["num_updates"]


def checkpoint_config(path):
    from se_fairseq.checkpoint_safety import safe_load

    return safe_load(path)["cfg"]


RECIPE = os.path.join(ROOT, "examples", "roberta", "README.md")
# fairseq's line once a checkpoint (and its copy checkpoint_last.pt) is written
SAVED = r"Saved checkpoint \S+ \(epoch (\d+) @ (\d+) updates"


@pytest.fixture(scope="module")
def corpus_step(workspace):
    """The recipe's step 2 (BPE, binarize), which both tests' data come from."""
    return run_block(marked_blocks(RECIPE)["corpus"], str(workspace))


@pytest.mark.fairseq
@pytest.mark.subprocess
@pytest.mark.slow
def test_roberta_recipe_runs_as_written(workspace, corpus_step):
    blocks = marked_blocks(RECIPE)
    assert list(blocks) == ["corpus", "score", "score-sharded", "train", "glue"]
    root = str(workspace)
    data = os.path.join(root, "data-bin", "wikitext-103")

    rc, out = corpus_step
    assert rc == 0, out[-3000:]
    assert all(os.path.exists(os.path.join(data, f"{s}.bin")) for s in ("train", "valid", "test"))
    bpe = open(os.path.join(root, "wikitext-103-raw", "wiki.valid.bpe")).read().splitlines()
    assert max(len(line.split()) for line in bpe) >= 700  # the long sentence: > 512 positions

    rc, out = run_block(blocks["score"], root)
    assert rc == 0, out[-3000:]
    assert "quantiles" in out and "blocks longer than 512 positions" in out
    meta = json.load(open(os.path.join(data, "train.se_scores.json")))
    assert meta["blocking"]["sample_break_mode"] == "complete"
    assert meta["summary"]["blocks_skipped_too_long"] >= 1 and meta["unscored_ranges"]
    # the sharded variant only parses here (it would rescore the same file, ~15 s; its
    # torchrun path is run by test_se_score.py::test_two_ranks_under_torchrun_equal_one_process)
    check = subprocess.run(
        ["bash", "-n", "-c", in_miniature(blocks["score-sharded"])], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr

    # training runs until its first checkpoint, then is killed
    rc, out = run_block(blocks["train"], root, stop_at=lambda line: re.search(SAVED, line))
    assert "loading pretrained model from roberta.base/model.pt" in out, out[-3000:]
    assert "samples have invalid sizes and will be skipped" in out  # train: fairseq skips
    assert "valid on 'valid' subset" in out  # valid: skipped through the recipe's flag
    ckpt = os.path.join(root, "checkpoints", "roberta.base.se", "checkpoint_last.pt")
    assert checkpoint_updates(ckpt) >= 1

    rc, out = run_block(blocks["glue"], root)
    assert rc == 0, out[-3000:]
    assert re.search(r"valid on 'valid' subset .*accuracy", out)
    assert "done training" in out


@pytest.mark.fairseq
@pytest.mark.subprocess
@pytest.mark.slow
def test_readme_two_stages_run_as_written_and_a_relaunch_resumes(workspace, corpus_step, tmp_path):
    blocks = marked_blocks(os.path.join(ROOT, "README.md"))
    assert {"stage-1", "stage-2"} <= set(blocks)
    assert corpus_step[0] == 0, corpus_step[1][-3000:]
    # the README's layout: data-bin/ and roberta.base/ side by side
    os.symlink(workspace / "roberta.base", tmp_path / "roberta.base")
    shutil.copytree(workspace / "data-bin" / "wikitext-103", tmp_path / "data-bin")
    for f in ("train.se_scores.npy", "train.se_scores.json"):
        (tmp_path / "data-bin" / f).unlink(missing_ok=True)

    rc, out = run_block(blocks["stage-1"], str(tmp_path))
    assert rc == 0, out[-3000:]
    assert (tmp_path / "data-bin" / "train.se_scores.npy").exists()

    saved = SAVED

    def saved_after(updates):
        return lambda line: (m := re.search(saved, line)) and int(m.group(2)) > updates

    rc, first = run_block(blocks["stage-2"], str(tmp_path), stop_at=saved_after(0))
    assert "loading pretrained model from roberta.base/model.pt" in first, first[-3000:]
    stopped_at = int(re.search(saved, first).group(2))
    assert checkpoint_updates(tmp_path / "checkpoints" / "checkpoint_last.pt") == stopped_at
    # the reference code's schedule reached fairseq-train's config as written
    cfg = checkpoint_config(tmp_path / "checkpoints" / "checkpoint_last.pt")
    assert cfg["lr_scheduler"]["_name"] == "polynomial_decay"
    assert (cfg["lr_scheduler"]["warmup_updates"], cfg["lr_scheduler"]["total_num_update"]) == (
        6000,
        60000,
    )
    assert cfg["optimizer"]["adam_betas"] == "(0.9,0.999)"
    assert (cfg["optimizer"]["weight_decay"], cfg["optimizer"]["adam_eps"]) == (0.01, 1e-6)

    # the same command again, after the "preemption"
    rc, second = run_block(blocks["stage-2"], str(tmp_path), stop_at=saved_after(stopped_at))
    assert "loading pretrained model" not in second, second[-3000:]
    assert re.search(
        r"Loaded checkpoint checkpoints/checkpoint_last\.pt "
        rf"\(epoch \d+ @ {stopped_at} updates\)",
        second,
    ), second[-3000:]
    resumed_at = int(re.search(saved, second).group(2))
    assert resumed_at > stopped_at
    assert checkpoint_updates(tmp_path / "checkpoints" / "checkpoint_last.pt") == resumed_at
