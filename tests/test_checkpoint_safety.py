"""Checkpoints load with torch.load(weights_only=True) and fairseq's allow-list only."""

import argparse
import fractions
import os

import numpy as np
import pytest
import torch
from support.fairseq_data import TINY_ROBERTA, fairseq_train

from se_fairseq.checkpoint_safety import UnsafeCheckpointError, safe_load


def roberta_base_layout(state, path):
    """Re-save a checkpoint the way fairseq <= 0.8 saved the released roberta.base."""
    from fairseq import options
    from fairseq.logging import meters

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, ["data-bin", "--task", "masked_lm", "--criterion", "masked_lm", *TINY_ROBERTA]
    )
    old_meter = meters.AverageMeter()
    old_meter.__dict__.update(val=np.float64(2.5), sum=np.float64(25.0), count=10)
    old = {
        "args": args,
        "model": state["model"],
        "optimizer_history": [
            {
                "criterion_name": "MaskedLmLoss",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": np.float64(3.25)},
                "num_updates": 10,
            }
        ],
        "extra_state": {
            "epoch": 1,
            "train_iterator": {"epoch": 1, "iterations_in_epoch": 5, "shuffle": True},
            "val_loss": np.float64(3.25),
            "best": np.float32(3.0),
            "lengths": np.array([1, 2, 3], dtype=np.int64),
            "dtype": np.dtype("float32"),
            "train_meters": {"train_loss": old_meter},
        },
        "last_optimizer_state": None,
    }
    # fairseq <= 0.8 pickled meters as fairseq.meters.X (fairseq 0.12 aliases that name)
    saved_module = meters.AverageMeter.__module__
    meters.AverageMeter.__module__ = "fairseq.meters"
    try:
        torch.save(old, path)
    finally:
        meters.AverageMeter.__module__ = saved_module
    return path


@pytest.fixture(scope="module")
def old_layout(untrained_checkpoint, tmp_path_factory):
    state = safe_load(untrained_checkpoint)
    path = str(tmp_path_factory.mktemp("old") / "model.pt")
    return roberta_base_layout(state, path)


def test_old_layout_needs_the_allow_list(old_layout):
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(old_layout))
    assert "argparse.Namespace" in unsafe and "fairseq.meters.AverageMeter" in unsafe
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(old_layout, weights_only=True)


def test_safe_load_reads_the_old_layout(old_layout):
    state = safe_load(old_layout)
    assert isinstance(state["args"], argparse.Namespace)
    assert state["args"].encoder_layers == 2
    assert state["extra_state"]["val_loss"] == np.float64(3.25)
    assert state["extra_state"]["dtype"] == np.dtype("float32")
    np.testing.assert_array_equal(state["extra_state"]["lengths"], [1, 2, 3])
    assert state["extra_state"]["train_meters"]["train_loss"].sum == 25.0


def test_fairseq_loader_upgrades_the_old_layout(old_layout):
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(old_layout)
    assert state["cfg"]["model"].encoder_layers == 2


@pytest.mark.fairseq
def test_unknown_global_is_refused_naming_it_and_the_file(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {}, "extra": fractions.Fraction(1, 3)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_load(path)
    assert "fractions.Fraction" in str(err.value) and path in str(err.value)

    from fairseq import checkpoint_utils

    with pytest.raises(UnsafeCheckpointError, match="fractions.Fraction"):
        checkpoint_utils.load_checkpoint_to_cpu(path)


@pytest.mark.fairseq
def test_weights_only_false_is_refused():
    from fairseq import checkpoint_utils

    with pytest.raises(UnsafeCheckpointError):
        checkpoint_utils.torch.load("x.pt", weights_only=False)


@pytest.mark.subprocess
@pytest.mark.slow
def test_restore_file_in_roberta_base_layout(old_layout, scored_corpus, tmp_path):
    """fairseq-train --restore-file with the released-RoBERTa layout, as users continue it."""
    result = fairseq_train(
        scored_corpus,
        str(tmp_path / "ckpt"),
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        "--restore-file",
        old_layout,
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        max_update=4,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"Loaded checkpoint {old_layout}" in result.stdout
    assert os.path.exists(tmp_path / "ckpt" / "checkpoint_last.pt")


@pytest.mark.subprocess
@pytest.mark.slow
def test_restore_without_plugin_fails_as_documented(old_layout, corpus, tmp_path):
    """The problem this module solves: plain fairseq on torch >= 2.6 cannot restore."""
    result = fairseq_train(
        corpus,
        str(tmp_path / "ckpt"),
        "--task",
        "masked_lm",
        "--criterion",
        "masked_lm",
        "--restore-file",
        old_layout,
        "--reset-optimizer",
        max_update=2,
        env={"SE_FAIRSEQ_NO_AUTOLOAD": "1"},
    )
    assert result.returncode != 0 and "weights_only" in result.stdout
