"""se_fairseq.hf.score_dataset and se-score --hf: self-questioning with HF masked-LMs.

Tiny random models built from configs (no hub), tokenizers from tests/support/hf_tokenizers.py. The
reference is written out here: one example at a time, unpadded, the model's logits in
float64, log_softmax, -log p(true token) or the entropy.
"""

import errno
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import warnings

import datasets
import numpy as np
import pytest
import torch
import transformers as T
from support.hf_tokenizers import (
    HF_WORDS,
    hf_examples,
    tiny_bert_tokenizer,
    tiny_roberta_tokenizer,
    tiny_wordlevel_tokenizer,
)

from se_fairseq.cli import score
from se_fairseq.hf import ScoredDatasetError, load_scored_dataset, score_dataset
from se_fairseq.hf.provenance import PROVENANCE_FILE
from se_fairseq.scoring_job import ScoringError

LAYERS = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def bert_like(config_class, model_class, positions=64, **extra):
    def build(tokenizer):
        config = config_class(
            vocab_size=len(tokenizer),
            hidden_size=32,
            max_position_embeddings=positions,
            pad_token_id=tokenizer.pad_token_id,
            **LAYERS,
            **extra,
        )
        return model_class(config)

    return build


def modernbert(tokenizer):
    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        cls_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    config = T.ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, max_position_embeddings=64, **LAYERS, **ids
    )
    return T.ModernBertForMaskedLM(config)


def distilbert(tokenizer):
    config = T.DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=37,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    return T.DistilBertForMaskedLM(config)


# name -> (model builder, tokenizer builder)
MODELS = {
    "bert": (bert_like(T.BertConfig, T.BertForMaskedLM), tiny_bert_tokenizer),
    "roberta": (bert_like(T.RobertaConfig, T.RobertaForMaskedLM, 70), tiny_roberta_tokenizer),
    "xlm-roberta": (
        bert_like(T.XLMRobertaConfig, T.XLMRobertaForMaskedLM, 70),
        tiny_roberta_tokenizer,
    ),
    "deberta-v2": (bert_like(T.DebertaV2Config, T.DebertaV2ForMaskedLM), tiny_bert_tokenizer),
    "electra": (
        bert_like(T.ElectraConfig, T.ElectraForMaskedLM, embedding_size=16),
        tiny_bert_tokenizer,
    ),
    "modernbert": (modernbert, tiny_wordlevel_tokenizer),
    "distilbert": (distilbert, tiny_bert_tokenizer),
}


def build(name, seed=0):
    make_model, make_tokenizer = MODELS[name]
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    return make_model(tokenizer), tokenizer


def examples_dataset(tokenizer, count=30, seed=0, **encode):
    """Random sentences of 3..24 words, tokenized with their special_tokens_mask."""
    rows = hf_examples(tokenizer, count, seed=seed, return_special_tokens_mask=True, **encode)
    return datasets.Dataset.from_list(
        [{k: v for k, v in row.items() if k not in ("se_scores", "se_index")} for row in rows]
    )


def dense_reference(model, example, metric):
    """float64 scores of one unpadded example at every position."""
    model.eval()
    ids = torch.tensor([example["input_ids"]])
    inputs = {"input_ids": ids}
    if (
        "token_type_ids" in example
        and "token_type_ids" in inspect.signature(model.forward).parameters
    ):
        inputs["token_type_ids"] = torch.tensor([example["token_type_ids"]])
    with torch.no_grad():
        logits = model(**inputs).logits[0].double()
    lprobs = torch.log_softmax(logits, dim=-1)
    if metric == "correctness":
        return (-lprobs.gather(-1, ids[0][:, None])[:, 0]).numpy()
    return (-(lprobs.exp() * lprobs).sum(-1)).numpy()


def compare_with_reference(model, tokenizer, scored, metric, column="se_scores"):
    """Max abs difference to the dense reference; NaN exactly on special tokens."""
    worst = 0.0
    special = set(tokenizer.all_special_ids)
    for example in scored:
        got = np.asarray(example[column], dtype=np.float64)
        unscored = np.array([i in special for i in example["input_ids"]])
        if "attention_mask" in example:
            unscored |= np.asarray(example["attention_mask"]) == 0
        assert np.array_equal(np.isnan(got), unscored)
        want = dense_reference(model, example, metric)
        worst = max(worst, float(np.abs(got[~unscored] - want[~unscored]).max()))
    return worst


MAX_ABS_DIFF = {}  # name, metric, columns -> the largest difference to the reference


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scores_equal_the_dense_reference(name):
    model, tokenizer = build(name)
    full = examples_dataset(tokenizer, seed=1)
    # input_ids alone: the special tokens and the padding come from the tokenizer only
    datasets_ = {"all columns": full, "input_ids only": full.select_columns(["input_ids"])}
    metrics = ("correctness", "confidence") if name in ("bert", "roberta") else ("correctness",)
    for metric in metrics:
        for columns, dataset in datasets_.items():
            # small chunks and batches: several chunks, batches padded to their longest example
            scored = score_dataset(
                model, tokenizer, dataset, metric=metric, batch_size=4, chunk_tokens=90
            )
            assert scored.features["se_scores"].feature.dtype == "float32"
            assert scored["input_ids"] == full["input_ids"]  # order kept
            worst = compare_with_reference(model, tokenizer, scored, metric)
            MAX_ABS_DIFF[name, metric, columns] = worst
            assert worst < 1e-5, (name, metric, columns, worst)
    print(MAX_ABS_DIFF)


@pytest.mark.parametrize("filler", ["[PAD]", "the"])
def test_padded_examples_get_nan_where_attention_mask_is_0(filler):
    """Examples padded to a fixed length (attention_mask 0), with [PAD] or with a word (a
    filler the tokenizer does not count as special): NaN there, and the unpadded
    example's scores elsewhere."""
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=12, seed=2, padding="max_length", max_length=40)
    # no special_tokens_mask (the tokenizer marks padding in it): the attention_mask tells
    dataset = dataset.remove_columns("special_tokens_mask")
    filler_id = tokenizer.convert_tokens_to_ids(filler)
    dataset = dataset.map(
        lambda e: {
            "input_ids": [
                i if a else filler_id for i, a in zip(e["input_ids"], e["attention_mask"])
            ]
        }
    )
    assert 0 in dataset[0]["attention_mask"] and filler_id in dataset[0]["input_ids"]
    scored = score_dataset(model, tokenizer, dataset, batch_size=5, chunk_tokens=100)
    worst = 0.0
    for example in scored:
        got = np.asarray(example["se_scores"])
        keep = np.asarray(example["attention_mask"]) == 1
        keep &= ~np.isin(example["input_ids"], tokenizer.all_special_ids)
        assert np.array_equal(np.isnan(got), ~keep)
        n = int(np.sum(example["attention_mask"]))
        unpadded = {k: example[k][:n] for k in ("input_ids", "token_type_ids")}
        want = dense_reference(model, unpadded, "correctness")
        worst = max(worst, float(np.abs(got[:n][keep[:n]] - want[keep[:n]]).max()))
    assert worst < 1e-5


def test_special_tokens_mask_column_alone_marks_tokens_unscored():
    """A token the tokenizer does not count as special but special_tokens_mask marks."""
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=6, seed=3)
    marked = dataset.map(lambda e: {"special_tokens_mask": [0, 1] + e["special_tokens_mask"][2:]})
    scored = score_dataset(model, tokenizer, marked)
    for example in scored:
        assert np.isnan(example["se_scores"][1]) and not np.isnan(example["se_scores"][2])


def test_logits_scored_in_pieces_past_the_row_budget(monkeypatch):
    from se_fairseq.core import scores

    model, tokenizer = build("roberta")
    # a batch's scored rows in pieces of 7 (the head's projection and the softmax)
    monkeypatch.setattr(scores, "LOGITS_BUDGET", 7 * model.get_output_embeddings().out_features)
    scored = score_dataset(model, tokenizer, examples_dataset(tokenizer, count=10, seed=11))
    assert compare_with_reference(model, tokenizer, scored, "correctness") < 1e-5


def test_bf16_on_the_cpu_moves_scores_by_bf16_rounding_only():
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=8, seed=4)
    scored = score_dataset(model, tokenizer, dataset, dtype="bf16")
    worst = compare_with_reference(model, tokenizer, scored, "correctness")
    assert 1e-4 < worst < 0.1  # bf16 changed something, and no more than its rounding


def test_model_train_mode_is_restored_and_dropout_is_off():
    model, tokenizer = build("bert")
    model.train()
    dataset = examples_dataset(tokenizer, count=8, seed=5)
    first = score_dataset(model, tokenizer, dataset)["se_scores"]
    assert model.training
    second = score_dataset(model, tokenizer, dataset)["se_scores"]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))


class Killed(Exception):
    pass


def count_forward_rows(model):
    rows = []
    model.register_forward_hook(
        lambda m, args, kwargs, out: rows.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    return rows


def test_resume_after_a_kill_reuses_finished_chunks(tmp_path):
    model, tokenizer = build("roberta")
    dataset = examples_dataset(tokenizer, count=40, seed=6)
    options = dict(batch_size=3, chunk_tokens=120)
    whole = score_dataset(model, tokenizer, dataset, output_dir=str(tmp_path / "whole"), **options)
    out = str(tmp_path / "resumed")

    def kill_after_chunk_1(i):
        if i == 1:
            raise Killed

    with pytest.raises(Killed):
        score_dataset(
            model, tokenizer, dataset, output_dir=out, chunk_callback=kill_after_chunk_1, **options
        )
    partial = out + ".partial"
    assert sorted(os.listdir(partial)) == ["chunk-000000.npy", "chunk-000001.npy", "manifest.json"]
    assert not os.path.exists(out)
    manifest = json.load(open(os.path.join(partial, "manifest.json")))
    chunks = manifest["chunks"]
    assert len(chunks) > 3
    chunk_examples = sum(last - first for first, last in chunks[2:])

    rows = count_forward_rows(model)
    done = []
    resumed = score_dataset(
        model, tokenizer, dataset, output_dir=out, chunk_callback=done.append, **options
    )
    assert done == list(range(2, len(chunks)))  # chunks 0 and 1 not recomputed
    assert sum(rows) == chunk_examples
    assert not os.path.exists(partial)
    np.testing.assert_array_equal(
        np.concatenate(resumed["se_scores"]), np.concatenate(whole["se_scores"])
    )
    assert compare_with_reference(model, tokenizer, resumed, "correctness") < 1e-5
    record = json.load(open(os.path.join(out, PROVENANCE_FILE)))
    assert record["ids"]["examples"] == 40 and record["metric"] == "correctness"
    assert record["tokenizer"]["vocab_size"] == len(tokenizer)
    assert record["model"]["class"] == "RobertaForMaskedLM"


def test_partial_scores_of_another_run_are_refused(tmp_path):
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=20, seed=7)
    out = str(tmp_path / "s")
    assert (
        score_dataset(
            model, tokenizer, dataset, output_dir=out, chunk_tokens=50, stop_after_chunks=1
        )
        is None
    )
    with pytest.raises(ScoringError, match=r"s\.partial holds partial scores .*different metric"):
        score_dataset(
            model, tokenizer, dataset, output_dir=out, chunk_tokens=50, metric="confidence"
        )
    other = dataset.select(range(19))
    with pytest.raises(ScoringError, match="different chunks, ids"):
        score_dataset(model, tokenizer, other, output_dir=out, chunk_tokens=50)
    torch.manual_seed(1)
    retrained, _ = build("bert", seed=1)
    with pytest.raises(ScoringError, match="different model"):
        score_dataset(retrained, tokenizer, dataset, output_dir=out, chunk_tokens=50)


def test_output_dir_with_other_content_is_refused(tmp_path):
    model, tokenizer = build("bert")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ScoringError, match="mine exists and holds no scored dataset"):
        score_dataset(
            model, tokenizer, examples_dataset(tokenizer, 4), output_dir=str(tmp_path / "mine")
        )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_load_scored_dataset_checks_ids_tokenizer_and_model(tmp_path):
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=10, seed=8)
    out = str(tmp_path / "scored")
    score_dataset(model, tokenizer, dataset, output_dir=out)
    loaded = load_scored_dataset(out, tokenizer=tokenizer, model=model)
    assert loaded["input_ids"] == dataset["input_ids"]

    # another dataset saved under the record: one id of the first example differs
    changed = str(tmp_path / "changed")
    one_id_changed = loaded.map(
        lambda e, i: (
            {"input_ids": e["input_ids"][:1] + [(e["input_ids"][1] + 1) % 127] + e["input_ids"][2:]}
            if i == 0
            else {}
        ),
        with_indices=True,
    )
    one_id_changed.save_to_disk(changed)
    with (
        open(os.path.join(out, PROVENANCE_FILE)) as f,
        open(os.path.join(changed, PROVENANCE_FILE), "w") as g,
    ):
        g.write(f.read())
    with pytest.raises(
        ScoredDatasetError, match=r"input_ids of .*changed .* not the ones .*se_scores\.json"
    ):
        load_scored_dataset(changed)

    fewer_words = tiny_bert_tokenizer(words=HF_WORDS[:-5])
    smaller = len(fewer_words)
    assert smaller < len(tokenizer)
    with pytest.raises(ScoredDatasetError, match=f"vocabulary size {smaller} vs {len(tokenizer)}"):
        load_scored_dataset(out, tokenizer=fewer_words)
    reordered = tiny_bert_tokenizer(words=(HF_WORDS[1], HF_WORDS[0]) + HF_WORDS[2:])
    assert len(reordered) == len(tokenizer)
    with pytest.raises(ScoredDatasetError, match="vocabulary sha256"):
        load_scored_dataset(out, tokenizer=reordered)
    small_model = bert_like(T.BertConfig, T.BertForMaskedLM)(fewer_words)
    with pytest.raises(ScoredDatasetError, match=f"{smaller} entries but the scores .* with 127"):
        load_scored_dataset(out, model=small_model)
    with pytest.raises(ScoredDatasetError, match="se_scores.json not found"):
        load_scored_dataset(changed + "-none")


def test_bad_inputs_get_one_clear_error():
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=4)
    config = model.config
    for headless in (T.BertModel(config), T.BertForSequenceClassification(config)):
        with pytest.raises(ScoringError, match=f"{type(headless).__name__} has no masked-LM head"):
            score_dataset(headless, tokenizer, dataset)
    maskless = tiny_bert_tokenizer()
    maskless.mask_token = None
    with pytest.raises(ScoringError, match="has no mask token"):
        score_dataset(model, maskless, dataset)
    with pytest.raises(ScoringError, match="no column 'input_ids'"):
        score_dataset(model, tokenizer, dataset.rename_column("input_ids", "ids"))
    roberta_tokenizer = tiny_roberta_tokenizer()  # 634 tokens for a model of 127
    with pytest.raises(
        ScoringError, match="tokenizer has 634 tokens but the model's MLM head scores 127"
    ):
        score_dataset(model, roberta_tokenizer, dataset)
    roberta_text = examples_dataset(roberta_tokenizer, count=4)
    with pytest.raises(
        ScoringError, match="holds id 6\\d\\d, outside the model's vocabulary of 127"
    ):
        score_dataset(model, tokenizer, roberta_text)
    with pytest.raises(ScoringError, match="unknown metric 'rarity'"):
        score_dataset(model, tokenizer, dataset, metric="rarity")
    with pytest.raises(ScoringError, match="fp16 needs a CUDA device"):
        score_dataset(model, tokenizer, dataset, dtype="fp16", device="cpu")
    with pytest.raises(ScoringError, match="one datasets.Dataset"):
        score_dataset(model, tokenizer, datasets.DatasetDict(train=dataset))
    with pytest.raises(ScoringError, match="batch_size must be a positive integer"):
        score_dataset(model, tokenizer, dataset, batch_size=0)


class LogitsOfOtherWidth(T.BertForMaskedLM):
    """An MLM head whose logits are not vocabulary-sized (a model's head can be anything)."""

    def forward(self, **inputs):
        out = super().forward(**inputs)
        out.logits = out.logits[..., :-1]
        return out


def test_logits_that_are_not_vocabulary_sized_are_refused():
    model, tokenizer = build("bert")
    odd = LogitsOfOtherWidth(model.config)
    with pytest.raises(
        ScoringError, match=r"logits of shape \(\d+, \d+, 126\), not \(batch, length, 127\)"
    ):
        score_dataset(odd, tokenizer, examples_dataset(tokenizer, count=3))


def test_examples_longer_than_the_model_takes_are_refused():
    model, tokenizer = build("bert")  # 64 positions
    long = datasets.Dataset.from_dict({"input_ids": [[5] * 80]})
    with pytest.raises(
        ScoringError, match="1 examples of up to 80 tokens failed .*max_position_embeddings: 64"
    ):
        score_dataset(model, tokenizer, long)


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=4)
    score_dataset(model, tokenizer, dataset)  # stderr is not a terminal under pytest
    assert "se-score --hf" not in capsys.readouterr().err
    score_dataset(model, tokenizer, dataset, progress=True)
    assert "se-score --hf correctness" in capsys.readouterr().err


# -- the command -----------------------------------------------------------------------


def save_model(tmp_path, name="bert", head=True):
    model, tokenizer = build(name)
    folder = tmp_path / f"{name}-model"
    (model if head else model.base_model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), model, tokenizer


def write_text(path, count=60, seed=0):
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(HF_WORDS, size=int(rng.integers(0, 15)))) for _ in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def se_score(*argv):
    return score.main([str(a) for a in argv] + ["--no-progress-bar"])


def test_command_scores_text_files_as_run_mlm_tokenizes_them(tmp_path, capsys):
    folder, model, tokenizer = save_model(tmp_path)
    a, b = write_text(tmp_path / "a.txt", seed=1), write_text(tmp_path / "b.txt", seed=2)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    assert (
        se_score(
            "--hf",
            folder,
            "--train_file",
            a,
            b,
            "--line_by_line",
            "--max_seq_length",
            12,
            "--out",
            out,
            "--cache_dir",
            cache,
            "--metric",
            "confidence",
            "--batch-size",
            5,
            "--chunk-tokens",
            80,
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "confidence:" in printed and f"wrote {out}" in printed
    scored = load_scored_dataset(str(out), tokenizer=tokenizer, model=model)
    from se_fairseq.hf import tokenize_text_files

    expected = tokenize_text_files(tokenizer, [a, b], 12, True, cache_dir=str(cache))
    assert scored["input_ids"] == expected["input_ids"]
    assert max(len(ids) for ids in scored["input_ids"]) == 12
    assert compare_with_reference(model, tokenizer, scored, "confidence") < 1e-5
    record = json.load(open(out / PROVENANCE_FILE))
    assert record["metric"] == "confidence" and record["model"]["name_or_path"] == folder


def test_command_scores_a_saved_dataset(tmp_path, capsys):
    folder, model, tokenizer = save_model(tmp_path, "roberta")
    saved = tmp_path / "tokenized"
    examples_dataset(tokenizer, count=9, seed=9).save_to_disk(saved)
    out = tmp_path / "out"
    assert se_score("--hf", folder, "--dataset", saved, "--output", out, "--bf16") == 0
    scored = load_scored_dataset(str(out), tokenizer=tokenizer)
    assert json.load(open(out / PROVENANCE_FILE))["dtype"] == "bf16"
    assert compare_with_reference(model, tokenizer, scored, "correctness") < 0.1
    # a second run replaces the earlier scores
    assert se_score("--hf", folder, "--dataset", saved, "--out", out) == 0
    scored = load_scored_dataset(str(out), tokenizer=tokenizer)
    assert compare_with_reference(model, tokenizer, scored, "correctness") < 1e-5


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--hf", "M", "--out", "o"],
            "--hf needs the examples: --train_file FILE... or --dataset DIR",
        ),
        (["--hf", "M", "--dataset", "d"], "--hf needs --out DIR"),
        (
            ["data-bin", "--hf", "M", "--dataset", "d", "--out", "o"],
            "DATA (a data-bin folder) is for fairseq",
        ),
        (["--hf", "M", "--dataset", "d", "--out", "o", "--path", "x.pt"], "--path is for fairseq"),
        (
            ["--hf", "M", "--dataset", "d", "--out", "o", "--tokens-per-sample", "8"],
            "--tokens-per-sample is for",
        ),
        (
            ["--hf", "M", "--dataset", "d", "--out", "o", "--metric", "rarity"],
            "--metric rarity reads a data-bin",
        ),
        (
            ["--hf", "M", "--dataset", "d", "--out", "o", "--max-tokens", "auto"],
            "--max-tokens auto is for fairseq",
        ),
        (
            ["--hf", "M", "--dataset", "d", "--out", "o", "--line_by_line"],
            "a --dataset is already tokenized",
        ),
        (
            ["data-bin", "--path", "x.pt", "--train_file", "a.txt"],
            "--train_file goes with --hf MODEL",
        ),
        ([], "give DATA (a data-bin folder) or --hf MODEL"),
    ],
)
def test_command_refuses_options_of_the_other_mode(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        score.main(argv)


def test_command_refuses_a_model_without_a_trained_head(tmp_path):
    folder, _, _ = save_model(tmp_path, head=False)  # an AutoModel's save_pretrained
    text = write_text(tmp_path / "a.txt")
    with pytest.raises(SystemExit, match="holds no trained masked-LM head .* missing"):
        se_score("--hf", folder, "--train_file", text, "--out", tmp_path / "out")


def test_command_refuses_a_missing_text_file(tmp_path):
    folder, _, _ = save_model(tmp_path)
    with pytest.raises(SystemExit, match="--train_file: text file .*nope.txt.* does not exist"):
        se_score("--hf", folder, "--train_file", tmp_path / "nope.txt", "--out", tmp_path / "out")


def test_command_stop_after_chunks_then_resume(tmp_path, capsys):
    folder, model, tokenizer = save_model(tmp_path)
    text = write_text(tmp_path / "a.txt", count=80)
    args = [
        "--hf",
        folder,
        "--train_file",
        text,
        "--max_seq_length",
        16,
        "--chunk-tokens",
        64,
        "--out",
        tmp_path / "out",
        "--cache_dir",
        tmp_path / "cache",
    ]
    assert se_score(*args, "--stop-after-chunks", 2) == 0
    assert "run the same command again to resume" in capsys.readouterr().err
    assert len(os.listdir(tmp_path / "out.partial")) == 3  # manifest + 2 chunks
    assert se_score(*args) == 0
    scored = load_scored_dataset(str(tmp_path / "out"), tokenizer=tokenizer)
    assert {len(ids) for ids in scored["input_ids"]} == {16}
    assert compare_with_reference(model, tokenizer, scored, "correctness") < 1e-5


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_ranks_under_torchrun_equal_one_process(tmp_path):
    folder, model, tokenizer = save_model(tmp_path)
    text = write_text(tmp_path / "a.txt", count=120)
    common = [
        "--hf",
        folder,
        "--train_file",
        text,
        "--max_seq_length",
        16,
        "--chunk-tokens",
        100,
        "--batch-size",
        4,
        "--cpu",
        "--cache_dir",
        tmp_path / "cache",
    ]
    assert se_score(*common, "--out", tmp_path / "one") == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "se_fairseq.cli.score",
            *map(str, common),
            "--out",
            str(tmp_path / "two"),
            "--no-progress-bar",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 rank(s)" in result.stdout
    scored_by = [
        re.search(rf"rank {r}: scored (\d+) of (\d+) chunks", result.stdout) for r in (0, 1)
    ]
    counts = [(int(m.group(1)), int(m.group(2))) for m in scored_by]
    total = counts[0][1]
    assert total >= 4 and counts == [((total + 1) // 2, total), (total // 2, total)]
    one = load_scored_dataset(str(tmp_path / "one"))
    two = load_scored_dataset(str(tmp_path / "two"), tokenizer=tokenizer)
    assert two["input_ids"] == one["input_ids"]
    np.testing.assert_array_equal(
        np.concatenate(two["se_scores"]), np.concatenate(one["se_scores"])
    )
    assert compare_with_reference(model, tokenizer, two, "correctness") < 1e-5


# -- nothing a user wrote is deleted; one line for bad input; nothing left behind --------


def test_rescoring_into_a_folder_keeps_what_the_user_put_there(tmp_path):
    folder, model, tokenizer = save_model(tmp_path)
    a, b = write_text(tmp_path / "a.txt", count=40, seed=1), write_text(tmp_path / "b.txt", seed=2)
    out = tmp_path / "S"
    common = ["--hf", folder, "--max_seq_length", 16, "--cache_dir", tmp_path / "cache"]
    assert se_score(*common, "--train_file", a, "--out", out) == 0
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("mine too")
    assert se_score(*common, "--train_file", b, "--out", out) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "sub" / "keep.txt").read_text() == "mine too"
    scored = load_scored_dataset(str(out), tokenizer=tokenizer, model=model)
    from se_fairseq.hf import tokenize_text_files

    expected = tokenize_text_files(tokenizer, [b], 16, cache_dir=str(tmp_path / "cache"))
    assert scored["input_ids"] == expected["input_ids"]
    assert compare_with_reference(model, tokenizer, scored, "correctness") < 1e-5
    state = json.load(open(out / "state.json"))
    datasets_files = {f["filename"] for f in state["_data_files"]}
    assert sorted(os.listdir(out)) == sorted(
        {"notes.txt", "sub", "state.json", "dataset_info.json", PROVENANCE_FILE} | datasets_files
    )
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p or ".old" in p]


def test_the_partial_folder_loses_only_the_files_the_job_wrote(tmp_path):
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=20, seed=7)
    out = str(tmp_path / "s")
    options = dict(output_dir=out, chunk_tokens=50)
    assert score_dataset(model, tokenizer, dataset, stop_after_chunks=1, **options) is None
    with open(os.path.join(out + ".partial", "notes.txt"), "w") as f:
        f.write("mine")
    scored = score_dataset(model, tokenizer, dataset, **options)
    assert compare_with_reference(model, tokenizer, scored, "correctness") < 1e-5
    assert os.listdir(out + ".partial") == ["notes.txt"]


def test_scores_of_another_model_of_the_same_vocabulary_warn(tmp_path):
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=6, seed=8)
    out = str(tmp_path / "scored")
    score_dataset(model, tokenizer, dataset, output_dir=out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scoring model itself: no warning
        load_scored_dataset(out, tokenizer=tokenizer, model=model)
    other, _ = build("bert", seed=1)  # same class and vocabulary, other weights
    with pytest.warns(UserWarning, match=r"scores in .*scored come from another model") as caught:
        loaded = load_scored_dataset(out, tokenizer=tokenizer, model=other)
    message = str(caught[0].message)
    record = json.load(open(os.path.join(out, PROVENANCE_FILE)))
    assert record["model"]["weights_sha256"][:12] in message
    assert loaded["input_ids"] == dataset["input_ids"]  # stale scores are legitimate


def test_a_replaced_scores_column_is_refused(tmp_path):
    model, tokenizer = build("bert")
    out = str(tmp_path / "scored")
    score_dataset(model, tokenizer, examples_dataset(tokenizer, count=6, seed=9), output_dir=out)
    loaded = datasets.load_from_disk(out)
    first = loaded[0]["se_scores"]
    scored_at = next(j for j, s in enumerate(first) if s == s)  # not NaN
    bumped = first[:scored_at] + [first[scored_at] + 1.0] + first[scored_at + 1 :]
    replaced = loaded.map(lambda e, i: {"se_scores": bumped} if i == 0 else {}, with_indices=True)
    assert replaced["input_ids"] == loaded["input_ids"]
    changed = str(tmp_path / "changed")
    replaced.save_to_disk(changed)
    with open(os.path.join(changed, PROVENANCE_FILE), "w") as f:
        f.write(open(os.path.join(out, PROVENANCE_FILE)).read())
    with pytest.raises(
        ScoredDatasetError, match=r"column 'se_scores' of .*changed .*not the one .*se_scores\.json"
    ):
        load_scored_dataset(changed)
    load_scored_dataset(out)  # the original passes


def test_the_record_is_also_the_dataset_info_description(tmp_path):
    model, tokenizer = build("bert")
    out = str(tmp_path / "scored")
    score_dataset(model, tokenizer, examples_dataset(tokenizer, count=4, seed=10), output_dir=out)
    record = json.load(open(os.path.join(out, PROVENANCE_FILE)))
    assert json.loads(datasets.load_from_disk(out).info.description) == record
    from se_fairseq.hf import provenance

    assert "DatasetInfo.description" in provenance.__doc__


def test_a_failed_forward_leaves_nothing_behind_and_the_corrected_rerun_runs(tmp_path):
    model, tokenizer = build("bert")  # 64 positions
    good = examples_dataset(tokenizer, count=6, seed=11)
    too_long = datasets.concatenate_datasets(
        [good, good.select([0]).map(lambda e: {k: (v * 80)[:80] for k, v in e.items()})]
    )
    out = str(tmp_path / "s")
    with pytest.raises(ScoringError, match="max_position_embeddings: 64"):
        score_dataset(model, tokenizer, too_long, output_dir=out)
    scored = score_dataset(model, tokenizer, good, output_dir=out)  # refused before the fix
    assert compare_with_reference(model, tokenizer, scored, "correctness") < 1e-5
    assert not os.path.exists(out + ".partial")


def test_a_partial_folder_with_a_manifest_and_no_chunk_is_taken_over(tmp_path):
    """A run that ended before its first chunk (on another rank, or killed) left only its
    manifest: a rerun with other options replaces it; one with chunks stays refused."""
    model, tokenizer = build("bert")
    dataset = examples_dataset(tokenizer, count=20, seed=12)
    out = str(tmp_path / "s")
    os.makedirs(out + ".partial")
    with open(os.path.join(out + ".partial", "manifest.json"), "w") as f:
        json.dump({"metric": "confidence", "chunks": [[0, 20]]}, f)
    scored = score_dataset(model, tokenizer, dataset, output_dir=out, chunk_tokens=50)
    assert compare_with_reference(model, tokenizer, scored, "correctness") < 1e-5
    assert not os.path.exists(out + ".partial")


def refused(*argv):
    """se-score's one-line refusal: exit status non-zero, no traceback."""
    with pytest.raises(SystemExit) as exit_:
        se_score(*argv)
    message = exit_.value.code
    assert isinstance(message, str), message  # printed as it is, exit status 1
    assert message.startswith("se-score: ") and "\n" not in message, message
    return message


def test_command_bad_text_files_get_one_line_naming_the_file(tmp_path):
    folder, _, _ = save_model(tmp_path)
    common = ["--hf", folder, "--out", tmp_path / "out", "--cache_dir", tmp_path / "cache"]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    message = refused(*common, "--train_file", empty)
    assert re.search(r"--train_file: .*empty\.txt: .*empty", message), message
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n\n")
    message = refused(*common, "--train_file", blank, "--line_by_line")
    assert re.search(r"--train_file: .*blank\.txt: .*no line that is not blank", message)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("the café of\n".encode("latin-1"))
    message = refused(*common, "--train_file", latin)
    assert re.search(r"--train_file: .*latin\.txt: not UTF-8 text .*byte 0xe9 at offset 7", message)
    assert not os.path.exists(tmp_path / "out")


def test_command_a_dataset_without_examples_gets_one_line(tmp_path):
    folder, _, tokenizer = save_model(tmp_path)
    saved = tmp_path / "none"
    examples_dataset(tokenizer, count=3).select([]).save_to_disk(saved)
    message = refused("--hf", folder, "--dataset", saved, "--out", tmp_path / "out")
    assert re.search(r"--dataset .*none: .*no examples", message), message
    message = refused("--hf", folder, "--dataset", tmp_path, "--out", tmp_path / "out")
    assert re.search(rf"--dataset {re.escape(str(tmp_path))}: not a dataset", message), message


def test_command_a_read_only_out_gets_one_line(tmp_path, monkeypatch):
    folder, _, _ = save_model(tmp_path)
    text = write_text(tmp_path / "a.txt")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: the kernel's answer to anyone else
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if os.path.dirname(os.path.abspath(path)) == str(locked):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        message = refused("--hf", folder, "--train_file", text, "--out", locked / "S")
    finally:
        locked.chmod(0o755)
    assert re.search(r"locked/S\.partial: .*Permission denied", message), message
    assert os.listdir(locked) == []


def test_command_a_damaged_chunk_gets_one_line_naming_it(tmp_path):
    folder, _, _ = save_model(tmp_path)
    text = write_text(tmp_path / "a.txt", count=80)
    args = ["--hf", folder, "--train_file", text, "--max_seq_length", 16, "--chunk-tokens", 64]
    args += ["--out", tmp_path / "out", "--cache_dir", tmp_path / "cache"]
    assert se_score(*args, "--stop-after-chunks", 2) == 0
    chunk = tmp_path / "out.partial" / "chunk-000001.npy"
    chunk.write_bytes(chunk.read_bytes()[:40])  # cut short, as by a full disk
    message = refused(*args)
    assert re.search(r"out\.partial/chunk-000001\.npy: damaged .*delete it", message), message


def test_command_max_seq_length_above_the_tokenizer_limit_warns_as_run_mlm(tmp_path, caplog):
    folder, _, tokenizer = save_model(tmp_path)
    tokenizer.model_max_length = 12
    tokenizer.save_pretrained(folder)
    text = write_text(tmp_path / "a.txt")
    args = ["--hf", folder, "--train_file", text, "--out", tmp_path / "out"]
    with caplog.at_level(logging.WARNING):
        assert se_score(*args, "--max_seq_length", 40, "--cache_dir", tmp_path / "cache") == 0
    assert (
        "The max_seq_length passed (40) is larger than the maximum length for the model (12). "
        "Using max_seq_length=12." in caplog.text
    )
    assert {len(ids) for ids in load_scored_dataset(str(tmp_path / "out"))["input_ids"]} == {12}
