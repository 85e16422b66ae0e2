"""Shared fixtures: a small binarized corpus made on the spot, and a tiny RoBERTa.

Helpers (corpus writer, binarize, argument parsing, fairseq-train runner) live in
se_fairseq/testing.py, shared with the benchmarks.
"""

import os
import shutil
import sys

import fairseq  # noqa: F401  (registers se_mlm / token_ls through the plugin hook)
import pytest

from se_fairseq.testing import binarize, fairseq_train, write_scores, write_zipf_corpus

# Console scripts (fairseq-train, se-score, ...) of the environment running the
# tests, whether or not it is activated (CI calls .venv/bin/python directly).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A binarized corpus: data-bin with train/valid splits and dict.txt."""
    root = tmp_path_factory.mktemp("corpus")
    write_zipf_corpus(str(root))
    return binarize(str(root), str(root / "data-bin"))


@pytest.fixture
def scored_corpus(corpus, tmp_path):
    """A private copy of the corpus with a random (gamma(2, 2)) score file for train."""
    data = str(tmp_path / "data-bin")
    shutil.copytree(corpus, data)
    write_scores(os.path.join(data, "train"))
    return data


@pytest.fixture(scope="session")
def vanilla_checkpoint(corpus, tmp_path_factory):
    """A tiny RoBERTa trained with fairseq's own masked_lm task."""
    save = str(tmp_path_factory.mktemp("vanilla"))
    result = fairseq_train(corpus, save, "--task", "masked_lm", "--criterion", "masked_lm")
    assert result.returncode == 0, result.stdout[-3000:]
    return os.path.join(save, "checkpoint_last.pt")


@pytest.fixture(scope="session")
def untrained_checkpoint(corpus, tmp_path_factory):
    """A tiny RoBERTa with random weights, saved as fairseq 0.12 saves checkpoints (built
    with fairseq's task/model API, no training run): for tests that need a checkpoint of
    the corpus's dictionary but not a trained model."""
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    from se_fairseq.testing import TINY_ROBERTA

    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [corpus, "--task", "masked_lm", "--criterion", "masked_lm", *TINY_ROBERTA],
    )
    torch.manual_seed(0)
    model = tasks.setup_task(args).build_model(args)
    cfg = OmegaConf.to_container(
        convert_namespace_to_omegaconf(args), resolve=True, enum_to_str=True
    )
    path = str(tmp_path_factory.mktemp("untrained") / "checkpoint.pt")
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
                    "num_updates": 0,
                }
            ],
        },
        path,
    )
    return path
