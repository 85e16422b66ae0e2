"""se-convert from the command line (--check, --force) and se-score on a from-hf output.

transformers is part of the project's environment (examples/setup.sh installs it): a venv
without it fails here, it does not skip.
"""

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
import transformers
from support.fairseq_data import split_tokens

from se_fairseq.checkpoint_safety import safe_load
from se_fairseq.cli import convert as convert_cli
from se_fairseq.cli import score
from se_fairseq.data.score_file import ScoreFile

transformers.logging.set_verbosity_error()


def hf_model(directory, dictionary_path, seed):
    """A tiny RobertaForMaskedLM over the corpus's dictionary (+ <mask>), saved with
    save_pretrained, with that dictionary as fairseq_dict.txt (what to-hf writes)."""
    from fairseq.data import Dictionary

    vocab = len(Dictionary.load(dictionary_path)) + 1
    config = transformers.RobertaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = transformers.RobertaForMaskedLM(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.roberta.embeddings.token_type_embeddings.weight.zero_()
    model.save_pretrained(directory)
    shutil.copy(dictionary_path, os.path.join(directory, "fairseq_dict.txt"))
    return model.eval()


def embeddings(path):
    state = safe_load(str(path))["model"]
    return next(v for k, v in state.items() if k.endswith("embed_tokens.weight"))


def test_from_hf_force_and_check_in_process(corpus, tmp_path, capsys):
    hf_dir, out = tmp_path / "hf", tmp_path / "fs" / "model.pt"
    first = hf_model(hf_dir, os.path.join(corpus, "dict.txt"), seed=1)
    assert convert_cli.main(["from-hf", str(hf_dir), str(out), "--check"]) == 0
    printed = capsys.readouterr().out
    assert "check: fairseq and HF logits agree" in printed
    hf_embed = first.roberta.embeddings.word_embeddings.weight
    assert torch.equal(embeddings(out), hf_embed)
    second = hf_model(hf_dir, os.path.join(corpus, "dict.txt"), seed=2)  # new weights, same dir
    assert convert_cli.main(["from-hf", str(hf_dir), str(out)]) == 1  # no --force: refused
    assert "--force" in capsys.readouterr().err
    assert torch.equal(embeddings(out), hf_embed)  # untouched
    assert convert_cli.main(["from-hf", str(hf_dir), str(out), "--force"]) == 0
    assert "logits agree" not in capsys.readouterr().out  # no --check, no check
    assert torch.equal(embeddings(out), second.roberta.embeddings.word_embeddings.weight)


@pytest.mark.subprocess
@pytest.mark.slow
def test_installed_command_and_se_score_on_its_output(corpus, tmp_path):
    """The installed se-convert from-hf --check, then se-score --path on the checkpoint it
    wrote: the scores are -log p of the HF model itself, on blocks cut by hand."""
    hf_dir, out = tmp_path / "hf", tmp_path / "fs" / "model.pt"
    hf = hf_model(hf_dir, os.path.join(corpus, "dict.txt"), seed=3)
    result = subprocess.run(
        ["se-convert", "from-hf", str(hf_dir), str(out), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logits agree" in result.stdout
    assert open(out.parent / "dict.txt").read() == open(os.path.join(corpus, "dict.txt")).read()
    data = str(shutil.copytree(corpus, tmp_path / "data-bin"))
    assert (
        score.main(
            [
                data,
                "--path",
                str(out),
                "--tokens-per-sample",
                "64",
                "--sample-break-mode",
                "none",
                "--no-progress-bar",
            ]
        )
        == 0
    )
    split = os.path.join(data, "train")
    stored = ScoreFile(split + ".se_scores", split).scores.astype(np.float64)
    flat = np.concatenate(split_tokens(split)).astype(np.int64)
    expected = np.zeros(len(flat))
    starts = range(0, len(flat), 63)  # break mode none: 63 tokens behind <s>
    blocks = torch.ones(len(starts), 64, dtype=torch.long)  # right-padded with <pad> = 1
    for row, start in enumerate(starts):
        piece = torch.from_numpy(np.concatenate([[0], flat[start : start + 63]]))
        blocks[row, : len(piece)] = piece
    with torch.no_grad():
        logits = hf(input_ids=blocks, attention_mask=blocks.ne(1).long()).logits
    lprobs = torch.log_softmax(logits.double(), -1)
    for row, start in enumerate(starts):
        n = min(63, len(flat) - start)
        expected[start : start + n] = -lprobs[row, torch.arange(1, n + 1), blocks[row, 1 : n + 1]]
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)
