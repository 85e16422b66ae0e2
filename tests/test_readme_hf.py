"""The README's transformers commands run as written, on a tiny local RoBERTa instead of
``roberta-base`` (no hub here), with no fairseq needed.

The block after ``<!-- recipe-test: hf -->`` in README.md is run by bash after these
substitutions, each for the reason given; everything else runs as users type it.
"""

import os
import re
import subprocess

import pytest
import torch
from support.hf_tokenizers import tiny_roberta_tokenizer
from support.readme import marked_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SUBSTITUTIONS = [
    (r"\broberta-base\b", "tiny-roberta", "a tiny RoBERTa saved here: no hub"),
    (r"--max_seq_length 512", "--max_seq_length 32", "the tiny model has 34 positions"),
    (
        r"--do_train",
        "--do_train --max_steps 2 --per_device_train_batch_size 4 --use_cpu --report_to none",
        "two steps on the CPU",
    ),
]


def write_tiny_roberta(folder):
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = tiny_roberta_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=34,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.model_max_length = 32
    tokenizer.save_pretrained(folder)


@pytest.mark.slow
@pytest.mark.subprocess
def test_readme_transformers_commands_run_as_written(tmp_path):
    block = marked_blocks(os.path.join(ROOT, "README.md"))["hf"]
    for pattern, replacement, _ in SUBSTITUTIONS:
        block, count = re.subn(pattern, replacement, block)
        assert count, f"README's hf block no longer has {pattern!r}"
    write_tiny_roberta(tmp_path / "tiny-roberta")
    words = "the city was new and the school of the world had one university".split()
    with open(tmp_path / "train.txt", "w", encoding="utf-8") as f:
        for i in range(200):
            f.write(" ".join(words[(i + j) % len(words)] for j in range(3 + i % 9)) + "\n")
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "scored" / "se_scores.json").is_file()
    assert (tmp_path / "se-roberta" / "config.json").is_file()
    assert (tmp_path / "se-roberta" / "model.safetensors").is_file()
