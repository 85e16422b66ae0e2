"""Shared fixtures: a small binarized corpus made on the spot, and a tiny RoBERTa."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fairseq  # noqa: F401  (registers se_mlm / token_ls through the plugin hook)

# Console scripts (fairseq-train, se-score, ...) of the environment running the
# tests, whether or not it is activated (CI calls .venv/bin/python directly).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

TINY_ROBERTA = [
    "--arch", "roberta_base", "--encoder-layers", "2", "--encoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
    "--max-positions", "64", "--tokens-per-sample", "64",
]


def write_corpus(directory, num_train=300, num_valid=30, seed=0):
    """Zipf-distributed word sequences (enough structure for a tiny MLM to learn)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(200)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    files = {}
    for split, n in (("train", num_train), ("valid", num_valid)):
        path = os.path.join(directory, f"{split}.txt")
        with open(path, "w") as f:
            for _ in range(n):
                f.write(" ".join(rng.choice(words, size=rng.integers(4, 40), p=p)) + "\n")
        files[split] = path
    return files


def binarize(text_dir, dest, srcdict=None):
    cmd = [
        sys.executable, "-m", "fairseq_cli.preprocess", "--only-source",
        "--trainpref", os.path.join(text_dir, "train.txt"),
        "--validpref", os.path.join(text_dir, "valid.txt"),
        "--destdir", dest, "--workers", "1",
    ]
    if srcdict:
        cmd += ["--srcdict", srcdict]
    subprocess.run(cmd, check=True, capture_output=True)
    return dest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A binarized corpus: data-bin with train/valid splits and dict.txt."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root))
    return binarize(str(root), str(root / "data-bin"))


def split_tokens(split_path):
    """Token arrays of a binarized split, read with fairseq's own reader."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    ds = MMapIndexedDataset(split_path)
    return [ds[i].numpy().copy() for i in range(len(ds))]


def write_scores(split_path, scores, metric="correctness"):
    from se_fairseq.data import score_file

    return score_file.write(
        score_file.default_prefix(split_path), scores, metric=metric,
        checkpoint={"path": "test"}, blocking={"tokens_per_sample": 64},
        fingerprint=score_file.corpus_fingerprint(split_path),
    )


@pytest.fixture
def scored_corpus(corpus, tmp_path):
    """A private copy of the corpus with a random score file for train."""
    import shutil

    data = str(tmp_path / "data-bin")
    shutil.copytree(corpus, data)
    tokens = np.concatenate(split_tokens(os.path.join(data, "train")))
    rng = np.random.default_rng(1)
    scores = rng.gamma(2.0, 2.0, size=len(tokens))
    write_scores(os.path.join(data, "train"), scores)
    return data


def fairseq_train(data, save_dir, *extra, max_update=10, env=None):
    """Run fairseq-train (the installed console script) on a tiny RoBERTa; log in .stdout."""
    cmd = [
        "fairseq-train", data, *TINY_ROBERTA, "--cpu", "--seed", "3", "--batch-size", "8",
        "--optimizer", "adam", "--lr", "1e-3", "--max-update", str(max_update),
        "--log-format", "simple", "--log-interval", "5", "--no-epoch-checkpoints",
        "--save-dir", save_dir, "--num-workers", "0", *extra,
    ]
    run_env = dict(os.environ)
    run_env.update(env or {})
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=run_env)


@pytest.fixture(scope="session")
def vanilla_checkpoint(corpus, tmp_path_factory):
    """A tiny RoBERTa trained with fairseq's own masked_lm task."""
    save = str(tmp_path_factory.mktemp("vanilla"))
    result = fairseq_train(corpus, save, "--task", "masked_lm", "--criterion", "masked_lm")
    assert result.returncode == 0, result.stdout[-3000:]
    return os.path.join(save, "checkpoint_last.pt")
