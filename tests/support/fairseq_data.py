"""Synthetic corpora, tiny fairseq checkpoints and fairseq-train argument parsing, for the
tests and the benchmarks.

Nothing here is needed to train. It makes the small data the test suite and the
benchmarks run on (offline, no download) and parses options exactly as
fairseq-train does, so tests see the configuration users get.
"""

import os
import subprocess
import sys

import numpy as np

# A RoBERTa small enough to train in seconds on a CPU.
TINY_ROBERTA = [
    "--arch",
    "roberta_base",
    "--encoder-layers",
    "2",
    "--encoder-embed-dim",
    "32",
    "--encoder-ffn-embed-dim",
    "64",
    "--encoder-attention-heads",
    "2",
    "--max-positions",
    "64",
    "--tokens-per-sample",
    "64",
]
NO_DROPOUT = ["--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0"]


def write_zipf_corpus(
    directory,
    *,
    vocab=200,
    splits=(("train", 300), ("valid", 30)),
    min_words=4,
    max_words=40,
    seed=0,
    write_dict=False,
):
    """Lines of words ``w0 .. w{vocab-1}`` drawn from a Zipf law (p ~ 1/rank), each
    min_words to max_words - 1 words long: enough structure for a tiny MLM to learn.

    Writes ``<split>.txt`` for each (split, number of lines), and with ``write_dict``
    a fairseq ``dict.txt`` holding every word (so binarizing needs no counting and
    the dictionary size is ``vocab`` whatever the sample). Returns {name: path}.
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)])
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    paths = {}
    for split, lines in splits:
        paths[split] = os.path.join(directory, f"{split}.txt")
        with open(paths[split], "w") as f:
            for _ in range(lines):
                f.write(
                    " ".join(rng.choice(words, size=rng.integers(min_words, max_words), p=p)) + "\n"
                )
    if write_dict:
        paths["dict"] = os.path.join(directory, "dict.txt")
        with open(paths["dict"], "w") as f:
            f.writelines(f"{w} {vocab - i}\n" for i, w in enumerate(words))
    return paths


def binarize(text_dir, dest, srcdict=None, splits=("train", "valid"), workers=1):
    """fairseq-preprocess ``text_dir/<split>.txt`` into ``dest`` (mmap format)."""
    prefixes = {"train": "--trainpref", "valid": "--validpref", "test": "--testpref"}
    cmd = [
        sys.executable,
        "-m",
        "fairseq_cli.preprocess",
        "--only-source",
        "--destdir",
        dest,
        "--workers",
        str(workers),
    ]
    for split in splits:
        cmd += [prefixes[split], os.path.join(text_dir, f"{split}.txt")]
    if srcdict:
        cmd += ["--srcdict", srcdict]
    subprocess.run(cmd, check=True, capture_output=True)
    return dest


def write_mmap_split(prefix, sequences, dtype=np.uint16):
    """Write token sequences as a binarized split (``prefix.bin``/``.idx``) with fairseq's
    own mmap builder, as fairseq-preprocess does; returns the prefix."""
    import torch
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    builder = MMapIndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for seq in sequences:
        builder.add_item(torch.as_tensor(np.asarray(seq, dtype=np.int64)))
    builder.finalize(prefix + ".idx")
    return prefix


def split_tokens(split_path):
    """Token arrays of a binarized split, read with fairseq's own reader."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    ds = MMapIndexedDataset(split_path)
    return [ds[i].numpy().copy() for i in range(len(ds))]


def write_scores(
    split_path, scores=None, *, metric="correctness", prefix=None, seed=1, blocking=None
):
    """A score file for a split: ``scores``, or gamma(2, 2) draws (the pipeline's
    behaviour and speed do not depend on their values). Returns its two paths."""
    from se_fairseq.data import score_file

    fingerprint = score_file.corpus_fingerprint(split_path)
    if scores is None:
        scores = np.random.default_rng(seed).gamma(2.0, 2.0, size=fingerprint["num_tokens"])
    return score_file.write(
        prefix or score_file.default_prefix(split_path),
        scores,
        metric=metric,
        checkpoint={"path": "synthetic scores"},
        blocking=blocking if blocking is not None else {"independent_of_blocking": True},
        fingerprint=fingerprint,
    )


def save_untrained_checkpoint(data, path, model_args, seed=0, head_bias_std=0.0):
    """A masked_lm model of ``model_args`` over ``data``'s dictionary, random weights from
    torch seed ``seed``, saved at ``path`` as fairseq 0.12 saves checkpoints (no training
    run); returns ``path``. fairseq starts the LM head's output bias at zero; a trained
    head has one, and ``head_bias_std`` > 0 draws it from N(0, head_bias_std^2)."""
    import torch
    from fairseq import options, tasks

    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [data, "--task", "masked_lm", "--criterion", "masked_lm", *model_args],
    )
    torch.manual_seed(seed)
    model = tasks.setup_task(args).build_model(args)
    if head_bias_std:
        with torch.no_grad():
            model.encoder.lm_head.bias.normal_(0.0, head_bias_std)
    return save_checkpoint(path, args, model)


def save_checkpoint(path, args, model, num_updates=0):
    """Save ``model`` (built from the parsed fairseq-train ``args``) at ``path`` as fairseq
    0.12 saves checkpoints: its cfg, weights and an optimizer history; returns ``path``."""
    import torch
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(
        convert_namespace_to_omegaconf(args), resolve=True, enum_to_str=True
    )
    torch.save(
        {
            "cfg": cfg,
            "model": model.state_dict(),
            "extra_state": {"epoch": 1},
            "optimizer_history": [
                {
                    "criterion_name": "MaskedLmLoss",
                    "optimizer_name": "FairseqAdam",
                    "lr_scheduler_state": {"best": None},
                    "num_updates": num_updates,
                }
            ],
        },
        path,
    )
    return path


def fairseq_train(data, save_dir, *extra, max_update=10, env=None):
    """Run the installed fairseq-train on TINY_ROBERTA (CPU, fairseq's data loading with
    --num-workers 0 unless ``extra`` says otherwise); the log is in ``.stdout``."""
    cmd = [
        "fairseq-train",
        data,
        *TINY_ROBERTA,
        "--cpu",
        "--seed",
        "3",
        "--batch-size",
        "8",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--max-update",
        str(max_update),
        "--log-format",
        "simple",
        "--log-interval",
        "5",
        "--no-epoch-checkpoints",
        "--save-dir",
        save_dir,
        "--num-workers",
        "0",
        *extra,
    ]
    return subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, **(env or {})),
    )


def parse_training_args(data, *args):
    """The config fairseq-train builds from ``fairseq-train DATA ARGS``."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parsed = options.parse_args_and_arch(options.get_training_parser(), [data, *args])
    return convert_namespace_to_omegaconf(parsed)


def setup_task(data, *args):
    """(task, cfg) as fairseq-train sets them up."""
    from fairseq import tasks

    cfg = parse_training_args(data, *args)
    return tasks.setup_task(cfg.task), cfg


def make_task(data, *extra):
    """(task, cfg) on TINY_ROBERTA (CPU, seed 5, criterion masked_lm) for ``extra``'s
    --task and its options."""
    return setup_task(
        data, *TINY_ROBERTA, "--cpu", "--seed", "5", "--criterion", "masked_lm", *extra
    )


def epoch_batches(task, split="train", epoch=1, batch_size=8):
    """Every batch of one epoch of ``split``, as fairseq-train's iterator gives them."""
    task.load_dataset(split)
    itr = task.get_batch_iterator(
        task.dataset(split), max_sentences=batch_size, seed=5, epoch=epoch, num_workers=0
    ).next_epoch_itr(shuffle=True)
    return list(itr)


def sentence_scores(split_path):
    """(sentences, their scores) read straight from the split and its score file."""
    sentences = split_tokens(split_path)
    flat = np.load(split_path + ".se_scores.npy").astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sentences])])
    return sentences, [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def flat_scores_of_batch(batch, split_path):
    """Scores of each row of an eos-mode batch (0 for <s>), read straight from the score file."""
    _, sentence_score = sentence_scores(split_path)
    return [np.concatenate([[0.0], sentence_score[i]]) for i in batch["id"].tolist()]
