"""examples/huggingface/run_se_mlm.py, loaded by path: its options through the real
HfArgumentParser, what reaches SelfEvolutionArguments, the collator and the Trainer, the
examples it trains on, and runs of the script itself (random, offline, online; and two
ranks under torchrun with gloo on the CPU).

References: the values written in each command line, dataclasses.fields of
TrainingArguments / SelfEvolutionArguments, se_fairseq.hf.tokenize_text_files (tested
against run_mlm.py's tokenization in test_hf_text.py), the exp of the evaluation loss,
and the weights each rank ends with.
"""

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers as T
from support.hf_tokenizers import HF_WORDS, tiny_bert_tokenizer

from se_fairseq.hf import ScoredDatasetError, score_dataset, tokenize_text_files
from se_fairseq.hf.arguments import SelfEvolutionArguments

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "huggingface" / "run_se_mlm.py"
SEQ = 24  # --max_seq_length of the runs


def load_script():
    spec = importlib.util.spec_from_file_location("run_se_mlm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


def tiny_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = T.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    return T.BertForMaskedLM(config)


def write_text(path, count, seed):
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(HF_WORDS, size=int(rng.integers(2, 14)))) for _ in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def parse(*argv):
    return script.parse_args([str(a) for a in argv])


OFFLINE = ("--model_name_or_path", "m", "--scored_dataset", "d", "--do_train", "--output_dir")
TEXT = ("--model_name_or_path", "m", "--train_file", "a.txt", "--do_train", "--output_dir")


# -- the options -------------------------------------------------------------------------

# every SelfEvolutionArguments field: (command-line words, the value it must arrive as)
SE_OPTIONS = {
    "se_select": (["--se_select", "sample"], "sample"),
    "se_metric": (["--se_metric", "confidence"], "confidence"),
    "se_threshold": (["--se_select", "threshold", "--se_threshold", "0.3"], 0.3),
    "se_threshold_fallback": (["--se_select", "threshold", "--no_se_threshold_fallback"], False),
    "se_random_share": (["--se_random_share", "0.25"], 0.25),
    "se_temperature": (["--se_select", "sample", "--se_temperature", "0.5"], 0.5),
    "se_online": (["--se_online"], True),
    "se_scores_column": (["--se_scores_column", "my_scores"], "my_scores"),
    "se_sparse_head": (["--no_se_sparse_head"], False),
    "se_mask_prob_schedule": (["--se_mask_prob_schedule", "linear:0.3,0.1"], "linear:0.3,0.1"),
    "se_reference_model": (
        ["--se_online", "--se_metric", "excess", "--se_reference_model", "ref"],
        "ref",
    ),
    "se_random_share_schedule": (["--se_random_share_schedule", "linear:1,0"], "linear:1,0"),
    "tls_alpha": (["--tls_alpha", "0.3"], 0.3),
    "tls_ref": (["--tls_ref", "uniform"], "uniform"),
}


def test_every_se_option_is_listed_here():
    assert set(SE_OPTIONS) == {f.name for f in dataclasses.fields(SelfEvolutionArguments)}


@pytest.mark.parametrize("name", sorted(SE_OPTIONS))
def test_se_option_reaches_self_evolution_arguments(name, tmp_path):
    words, value = SE_OPTIONS[name]
    base = TEXT if "--se_online" in words else OFFLINE
    _, _, se_args, _ = parse(*base, tmp_path, *words)
    assert isinstance(se_args, SelfEvolutionArguments)
    assert getattr(se_args, name) == value
    default = SelfEvolutionArguments()
    given = {w[2:] for w in words if w.startswith("--")} | {name, "se_select"}
    untouched = [f.name for f in dataclasses.fields(default) if f.name not in given]
    assert all(getattr(se_args, n) == getattr(default, n) for n in untouched)


def test_every_training_argument_is_an_option():
    parser = script.make_parser()
    dests = {action.dest for action in parser._actions}
    wanted = {f.name for f in dataclasses.fields(T.TrainingArguments) if f.init}
    assert wanted <= dests


# transformers' examples/pytorch/language-modeling/run_mlm.py: the fields of its ModelArguments
# and DataTrainingArguments as of transformers 4.57 (its check_min_version("4.57.0") and
# "transformers==4.57.5" pin), read in PerforatedAI/PerforatedAI-Transformers at commit
# 746e0e9151c668ca6e19f9432b8b2a1e1c6cb4e8 (the stored huggingface/transformers copies are
# 4.20-4.22). Every one must be an option of run_se_mlm.py.
RUN_MLM_MODEL_ARGUMENTS = [
    "model_name_or_path",
    "model_type",
    "config_overrides",
    "config_name",
    "tokenizer_name",
    "cache_dir",
    "use_fast_tokenizer",
    "model_revision",
    "token",
    "trust_remote_code",
    "dtype",
]
RUN_MLM_DATA_ARGUMENTS = [
    "dataset_name",
    "dataset_config_name",
    "train_file",
    "validation_file",
    "overwrite_cache",
    "validation_split_percentage",
    "max_seq_length",
    "preprocessing_num_workers",
    "mlm_probability",
    "line_by_line",
    "pad_to_max_length",
    "max_train_samples",
    "max_eval_samples",
    "streaming",
]
# ModelArguments of run_mlm.py 4.40 (tc-huang/transformers-openvla-oft at commit
# 367a2674a3a1c38bd5a40e8a58fe0cb480016371) that 4.57 dropped or renamed; command lines still
# carry them. (Its use_auth_token, deprecated there for --token, is not taken.)
RUN_MLM_EARLIER = ["torch_dtype", "low_cpu_mem_usage"]


@pytest.mark.parametrize("name", RUN_MLM_MODEL_ARGUMENTS + RUN_MLM_DATA_ARGUMENTS + RUN_MLM_EARLIER)
def test_every_run_mlm_option_is_an_option(name):
    parser = script.make_parser()
    assert name in {action.dest for action in parser._actions}
    assert f"--{name}" in {s for action in parser._actions for s in action.option_strings}


def test_packed_attention_choices_are_the_collators():
    from se_fairseq.hf.collator import PACKED_ATTENTION

    assert script.PACKED_ATTENTION == PACKED_ATTENTION
    assert script.DataTrainingArguments(train_file=["a.txt"]).packed_attention == "mask"


def test_remove_unused_columns_ends_false_and_true_is_refused(tmp_path, capsys):
    _, _, _, training_args = parse(*OFFLINE, tmp_path)
    assert training_args.remove_unused_columns is False
    with pytest.raises(SystemExit):
        parse(*OFFLINE, tmp_path, "--remove_unused_columns", "True")
    assert "--remove_unused_columns must be False" in capsys.readouterr().err
    help_text = script.make_parser().format_help()
    assert "must stay False" in " ".join(help_text.split())


def test_a_json_file_is_read_as_the_arguments(tmp_path):
    path = tmp_path / "args.json"
    given = {
        "model_name_or_path": "m",
        "scored_dataset": "d",
        "do_train": True,
        "output_dir": str(tmp_path),
        "se_select": "threshold",
        "tls_alpha": 0.2,
        "learning_rate": 3e-4,
    }
    path.write_text(json.dumps(given))
    _, data_args, se_args, training_args = script.parse_args([str(path)])
    assert data_args.scored_dataset == "d" and se_args.se_select == "threshold"
    assert se_args.tls_alpha == 0.2 and training_args.learning_rate == 3e-4
    assert training_args.remove_unused_columns is False


REFUSED = [
    (["--se_select", "best"], "--se_select"),
    (["--tls_ref", "teacher"], "--tls_ref"),
    (["--tls_alpha", "1.5"], "--tls_alpha"),
    (["--mlm_probability", "1.5"], "--mlm_probability"),
    (["--learning_rate", "fast"], "--learning_rate"),
    (["--max_seq_length", "0"], "--max_seq_length"),
    (["--line_by_line"], "--line_by_line"),
    (["--validation_split_percentage", "100"], "--validation_split_percentage"),
    (["--train_file", "a.txt"], "--scored_dataset"),
    (["--se_online"], "--se_online"),
    (["--se_threshold", "0.2"], "--se_threshold"),  # with topk
    (["--se_select", "threshold", "--se_random_share", "0.2"], "--se_random_share"),
    (["--streaming"], "--streaming"),  # a scored dataset is on disk
    (["--pad_to_max_length"], "--pad_to_max_length"),  # tokenizes; a scored dataset is not
    (["--overwrite_cache"], "--overwrite_cache"),
    (["--dataset_name", "x"], "--dataset_name"),
    (["--dataset_config_name", "c"], "--dataset_config_name"),
    (["--dtype", "int8"], "--dtype"),
    (["--dtype", "float16", "--torch_dtype", "bfloat16"], "--torch_dtype"),
    (["--packed_attention", "ring"], "--packed_attention"),
    (["--packed_attention", "flash"], "--packed_attention"),  # without --packing
]


@pytest.mark.parametrize(("extra", "option"), REFUSED, ids=[o for _, o in REFUSED])
def test_bad_values_are_refused_naming_the_option(extra, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        parse(*OFFLINE, tmp_path, *extra)
    assert refused.value.code == 2  # argparse's usage error, not a traceback
    assert option in capsys.readouterr().err.strip().splitlines()[-1]  # one line


# refused beside text files (the random baseline)
REFUSED_TEXT = [
    (["--packing", "--line_by_line", "--pad_to_max_length"], "--packing"),
    (["--packing", "--packed_attention", "flash", "--attn_implementation", "sdpa"],
     "--attn_implementation sdpa"),
    (["--streaming"], "--max_steps"),
    (["--streaming", "--max_steps", "3", "--preprocessing_num_workers", "2"],
     "--preprocessing_num_workers"),
    (["--streaming", "--max_steps", "3", "--overwrite_cache"], "--overwrite_cache"),
    (["--dataset_name", "x"], "--dataset_name"),
    (["--train_file", "a.txt", "b.json"], "--train_file"),  # text and json
    (["--validation_file", "dev.txt", "--train_file", "a.txt", "--dataset_name", "x"],
     "--dataset_name"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "option"), REFUSED_TEXT, ids=[o for _, o in REFUSED_TEXT])
def test_bad_combinations_beside_text_are_refused_naming_the_option(
    extra, option, tmp_path, capsys
):
    with pytest.raises(SystemExit) as refused:
        parse(*TEXT, tmp_path, "--se_select", "random", *extra)
    assert refused.value.code == 2
    assert option in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--dataset_name", "d", "--validation_file", "v.txt", "--do_eval"], "--validation_file"),
        (
            [
                "--model_type",
                "bert",
                "--tokenizer_name",
                "t",
                "--low_cpu_mem_usage",
                "--train_file",
                "a.txt",
                "--do_train",
            ],
            "--low_cpu_mem_usage",
        ),
    ],  # fmt: skip
    ids=["dataset-and-validation-file", "low-cpu-mem-without-weights"],
)
def test_options_that_would_be_ignored_are_refused(argv, option, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script.parse_args([*argv, "--output_dir", str(tmp_path), "--se_select", "random"])
    assert option in capsys.readouterr().err.strip().splitlines()[-1]


def test_data_refusals_at_load_name_the_option_in_one_line(saved, tmp_path):
    text = write_text(tmp_path / "few.txt", 10, seed=4)
    for extra, option in (
        (["--streaming", "--max_steps", 2, "--do_eval"], "--validation_split_percentage"),
        (["--do_eval"], "--validation_split_percentage"),  # 5 % of 10 rows: none
    ):
        with pytest.raises(SystemExit) as refused:
            script.main(
                [str(a) for a in (
                    "--model_name_or_path", saved, "--train_file", text, "--do_train",
                    "--output_dir", tmp_path / "out", "--se_select", "random", "--use_cpu",
                    "--cache_dir", tmp_path / "cache", *extra,
                )]
            )  # fmt: skip
        message = str(refused.value)
        assert message.startswith("run_se_mlm.py: ") and option in message, message
        assert "\n" not in message


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--model_name_or_path", "m", "--train_file", "a.txt", "--output_dir", "o"], "--do_train"),
        (list(TEXT) + ["o"], "--scored_dataset"),  # offline SE (topk) with unscored text
        (
            ["--train_file", "a.txt", "--do_train", "--output_dir", "o", "--se_select", "random"],
            "--tokenizer_name",
        ),
    ],
    ids=["nothing-to-do", "offline-without-scores", "new-model-without-tokenizer"],
)
def test_incomplete_commands_are_refused(argv, option, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(argv)
    assert option in capsys.readouterr().err


def test_options_reach_the_collator_and_the_trainer(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    model = tiny_model(tokenizer)
    training = {
        "--learning_rate": 3e-4,
        "--per_device_train_batch_size": 3,
        "--gradient_accumulation_steps": 2,
        "--max_steps": 7,
        "--warmup_steps": 2,
        "--weight_decay": 0.01,
        "--logging_steps": 3,
        "--save_steps": 5,
        "--seed": 11,
        "--dataloader_num_workers": 0,
    }
    words = [str(w) for kv in training.items() for w in kv]
    model_args, data_args, se_args, training_args = parse(
        *OFFLINE, tmp_path, *words, "--use_cpu", "--report_to", "none",
        "--lr_scheduler_type", "constant", "--mlm_probability", "0.2",
        "--se_select", "sample", "--se_temperature", "0.5", "--se_random_share", "0.2",
        "--se_metric", "confidence", "--se_scores_column", "sc",
        "--tls_alpha", "0.25", "--tls_ref", "uniform",
    )  # fmt: skip
    trainer = script.build_trainer(model, tokenizer, None, None, data_args, se_args, training_args)
    assert trainer.args is training_args
    for flag, value in training.items():
        assert getattr(trainer.args, flag[2:]) == value, flag
    assert trainer.args.use_cpu and trainer.args.report_to == []
    assert trainer.args.lr_scheduler_type == "constant"
    assert trainer.args.remove_unused_columns is False
    assert trainer.se_args is se_args
    assert (se_args.tls_alpha, se_args.tls_ref) == (0.25, "uniform")
    collator = trainer.data_collator
    assert type(collator).__name__ == "DataCollatorForSelfEvolution"
    assert collator.tokenizer is tokenizer and trainer.processing_class is tokenizer
    assert (collator.select, collator.temperature, collator.random_share) == ("sample", 0.5, 0.2)
    assert (collator.metric, collator.scores_column) == ("confidence", "sc")
    assert (collator.mlm_probability, collator.seed) == (0.2, 11)

    _, data_args, se_args, training_args = parse(
        *OFFLINE, tmp_path, "--use_cpu", "--se_select", "threshold", "--se_threshold", "0.3",
        "--no_se_threshold_fallback",
    )  # fmt: skip
    collator = script.build_trainer(
        model, tokenizer, None, None, data_args, se_args, training_args
    ).data_collator
    assert (collator.select, collator.threshold, collator.threshold_fallback) == (
        "threshold",
        0.3,
        False,
    )


def test_a_new_model_comes_from_config_name_or_model_type_with_overrides(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    config = tiny_model(tokenizer).config
    config.save_pretrained(tmp_path / "config")
    model = script.load_model(
        script.ModelArguments(config_name=str(tmp_path / "config")), tokenizer
    )
    assert type(model).__name__ == "BertForMaskedLM"
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tokenizer)
    overrides = "hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=20"
    args = script.ModelArguments(model_type="bert", config_overrides=overrides)
    model = script.load_model(args, tokenizer)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (16, 1)
    assert model.config.vocab_size == T.BertConfig().vocab_size  # larger than the tokenizer's


@pytest.fixture
def saved(tmp_path):
    """A tiny BERT and its tokenizer in one save_pretrained folder."""
    tokenizer = tiny_bert_tokenizer()
    tiny_model(tokenizer).save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    return tmp_path / "start"


def record_calls(monkeypatch, owner, name, calls):
    """Record the keyword arguments of every call of ``owner.name`` (then make it)."""
    original = getattr(owner, name)

    def recording(*args, **kwargs):
        calls.append((f"{getattr(owner, '__name__', owner)}.{name}", kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)


def test_token_and_trust_remote_code_reach_the_loaders(saved, tmp_path, monkeypatch):
    """--token goes to every from_pretrained and to load_dataset; --trust_remote_code (False
    unless given) to every from_pretrained and from_config (datasets 5 runs no dataset code,
    so load_dataset does not take it)."""
    dataset_folder(tmp_path / "data")
    calls = []
    for owner, name in (
        (T.AutoConfig, "from_pretrained"),
        (T.AutoTokenizer, "from_pretrained"),
        (T.AutoModelForMaskedLM, "from_pretrained"),
        (T.AutoModelForMaskedLM, "from_config"),
        (datasets, "load_dataset"),
    ):
        record_calls(monkeypatch, owner, name, calls)

    def run(*extra):
        calls.clear()
        model_args, data_args, _, training_args = parse(
            "--model_name_or_path", saved, "--dataset_name", tmp_path / "data",
            "--dataset_config_name", "withdev", "--line_by_line", "--do_train",
            "--output_dir", tmp_path, "--se_select", "random", "--use_cpu",
            "--cache_dir", tmp_path / "cache", *extra,
        )  # fmt: skip
        tokenizer = script.load_tokenizer(model_args)
        model = script.load_model(model_args, tokenizer)
        script.load_datasets(data_args, model_args, training_args, tokenizer, model)
        return dict(calls)

    given = run("--token", "hf_not_a_real_token", "--trust_remote_code")
    assert set(given) == {
        "AutoConfig.from_pretrained",
        "AutoTokenizer.from_pretrained",
        "AutoModelForMaskedLM.from_pretrained",
        "datasets.load_dataset",
    }
    for name, kwargs in given.items():
        assert kwargs["token"] == "hf_not_a_real_token", name
        if name != "datasets.load_dataset":
            assert kwargs["trust_remote_code"] is True, name
    assert "trust_remote_code" not in given["datasets.load_dataset"]
    unset = run()
    for name, kwargs in unset.items():
        assert kwargs["token"] is None, name
        assert kwargs.get("trust_remote_code", False) is False, name

    calls.clear()
    model_args, _, _, _ = parse(
        "--model_type", "bert", "--tokenizer_name", saved, "--config_overrides",
        "hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=20",
        "--trust_remote_code", "--train_file", "a.txt", "--do_train", "--output_dir", tmp_path,
        "--se_select", "random",
    )  # fmt: skip
    script.load_model(model_args, tiny_bert_tokenizer())
    assert dict(calls)["AutoModelForMaskedLM.from_config"]["trust_remote_code"] is True


def test_dtype_torch_dtype_low_cpu_mem_usage_and_attn_implementation_load_the_model(
    saved, tmp_path, monkeypatch
):
    tokenizer = tiny_bert_tokenizer()

    def load(*extra):
        model_args, _, _, _ = parse(
            "--model_name_or_path", saved, "--train_file", "a.txt", "--do_train",
            "--output_dir", tmp_path, "--se_select", "random", *extra,
        )  # fmt: skip
        return script.load_model(model_args, tokenizer)

    def dtype_of(model):
        return next(model.parameters()).dtype

    assert dtype_of(load()) == torch.float32  # the checkpoint's
    assert dtype_of(load("--dtype", "bfloat16")) == torch.bfloat16
    assert dtype_of(load("--torch_dtype", "float16")) == torch.float16  # the older name
    assert dtype_of(load("--dtype", "auto")) == torch.float32
    model_args, _, _, _ = parse(
        "--model_type", "bert", "--tokenizer_name", saved, "--dtype", "bfloat16",
        "--config_overrides", "hidden_size=16,num_hidden_layers=1,num_attention_heads=2",
        "--train_file", "a.txt", "--do_train", "--output_dir", tmp_path, "--se_select", "random",
    )  # fmt: skip
    assert dtype_of(script.load_model(model_args, tokenizer)) == torch.bfloat16  # a new model

    assert load().config._attn_implementation != "eager"
    assert load("--attn_implementation", "eager").config._attn_implementation == "eager"

    calls = []
    record_calls(monkeypatch, T.AutoModelForMaskedLM, "from_pretrained", calls)
    load()
    load("--low_cpu_mem_usage")
    assert "low_cpu_mem_usage" not in calls[0][1]
    assert calls[1][1]["low_cpu_mem_usage"] is True


# -- the examples ------------------------------------------------------------------------


def write_rows(path, rows):
    path.write_text("".join(f"{row}\n" for row in rows))
    return str(path)


def test_text_files_are_split_by_rows_as_run_mlm_splits_them(tmp_path):
    """No validation file: the first 10 % of the lines (datasets' train[:10%], run_mlm.py's own
    call) are the validation split, tokenized apart; the rest is trained on, with or without
    --do_eval, as in run_mlm.py."""
    tokenizer = tiny_bert_tokenizer()
    cache = str(tmp_path / "cache")
    text = write_text(tmp_path / "train.txt", 84, seed=1)
    held = datasets.load_dataset("text", data_files=text, split="train[:10%]", cache_dir=cache)
    rest = datasets.load_dataset("text", data_files=text, split="train[10%:]", cache_dir=cache)
    assert len(held) == 8
    assert list(held["text"]) + list(rest["text"]) == Path(text).read_text().splitlines()
    expected_dev = tokenize_text_files(
        tokenizer, [write_rows(tmp_path / "held.txt", held["text"])], SEQ, cache_dir=cache
    )
    expected_train = tokenize_text_files(
        tokenizer, [write_rows(tmp_path / "rest.txt", rest["text"])], SEQ, cache_dir=cache
    )
    model_args = script.ModelArguments(cache_dir=cache)
    for evaluate in (True, False):
        _, data_args, _, training_args = parse(
            "--model_name_or_path", "m", "--train_file", text, "--do_train",
            *(["--do_eval"] if evaluate else []), "--output_dir", tmp_path,
            "--se_select", "random", "--max_seq_length", SEQ,
            "--validation_split_percentage", 10, "--use_cpu",
        )  # fmt: skip
        train, dev = script.load_datasets(data_args, model_args, training_args, tokenizer, None)
        assert train["input_ids"] == expected_train["input_ids"]
        assert train["se_index"] == list(range(len(expected_train)))
        if evaluate:
            assert dev["input_ids"] == expected_dev["input_ids"]
            assert dev["se_index"] == list(range(len(expected_dev)))
        else:
            assert dev is None


def random_lines(count, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(HF_WORDS, size=int(rng.integers(2, 14)))) for _ in range(count)]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


DATASET_CARD = """---
configs:
- config_name: withdev
  data_files:
  - split: train
    path: withdev/train.jsonl
  - split: validation
    path: withdev/validation.jsonl
- config_name: plain
  data_files:
  - split: train
    path: plain/train.jsonl
---
"""


def dataset_folder(folder):
    """A local dataset (no script, no hub) with two configurations: 'withdev' (train and
    validation splits, a 'text' column) and 'plain' (a train split only; its text is the
    first column, 'body')."""
    lines = {
        "withdev/train": random_lines(20, seed=11),
        "withdev/validation": random_lines(6, seed=12),
        "plain/train": random_lines(40, seed=13),
    }
    write_jsonl(folder / "withdev" / "train.jsonl", [{"text": t} for t in lines["withdev/train"]])
    write_jsonl(
        folder / "withdev" / "validation.jsonl",
        [{"text": t} for t in lines["withdev/validation"]],
    )
    write_jsonl(
        folder / "plain" / "train.jsonl",
        [{"body": t, "id": i} for i, t in enumerate(lines["plain/train"])],
    )
    (folder / "README.md").write_text(DATASET_CARD)
    return lines


def line_ids(tokenizer, lines, length=SEQ):
    """run_mlm.py's --line_by_line examples of ``lines``, from the tokenizer itself."""
    return tokenizer(lines, truncation=True, max_length=length)["input_ids"]


def test_dataset_name_loads_a_local_folder_by_its_config(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    lines = dataset_folder(tmp_path / "data")
    cache = str(tmp_path / "cache")
    model_args = script.ModelArguments(cache_dir=cache)

    def load(config):
        _, data_args, _, training_args = parse(
            "--model_name_or_path", "m", "--dataset_name", tmp_path / "data",
            "--dataset_config_name", config, "--line_by_line", "--max_seq_length", SEQ,
            "--validation_split_percentage", 10, "--do_train", "--do_eval",
            "--output_dir", tmp_path, "--se_select", "random", "--use_cpu",
        )  # fmt: skip
        return script.load_datasets(data_args, model_args, training_args, tokenizer, None)

    train, dev = load("withdev")  # its own validation split: nothing held out
    assert train["input_ids"] == line_ids(tokenizer, lines["withdev/train"])
    assert dev["input_ids"] == line_ids(tokenizer, lines["withdev/validation"])
    assert train["se_index"] == list(range(20)) and dev["se_index"] == list(range(6))

    train, dev = load("plain")  # no validation split: run_mlm.py's train[:10%] / train[10%:]
    held = datasets.load_dataset(
        str(tmp_path / "data"), "plain", split="train[:10%]", cache_dir=cache
    )
    assert list(held["body"]) == lines["plain/train"][:4]
    assert dev["input_ids"] == line_ids(tokenizer, lines["plain/train"][:4])  # column 'body'
    assert train["input_ids"] == line_ids(tokenizer, lines["plain/train"][4:])


def test_csv_and_json_train_files_are_read_by_their_text_column(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    lines = random_lines(30, seed=21)
    json_file = tmp_path / "train.json"
    write_jsonl(json_file, [{"id": i, "text": t} for i, t in enumerate(lines)])  # 'text' second
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("body,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(lines)))
    model_args = script.ModelArguments(cache_dir=str(tmp_path / "cache"))
    for path in (json_file, csv_file):
        _, data_args, _, training_args = parse(
            "--model_name_or_path", "m", "--train_file", path, "--line_by_line",
            "--max_seq_length", SEQ, "--validation_split_percentage", 10, "--do_train",
            "--output_dir", tmp_path, "--se_select", "random", "--use_cpu",
        )  # fmt: skip
        train, _ = script.load_datasets(data_args, model_args, training_args, tokenizer, None)
        assert train["input_ids"] == line_ids(tokenizer, lines[3:]), path.name


def test_pad_to_max_length_gives_examples_and_batches_of_max_seq_length(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    text = write_text(tmp_path / "train.txt", 40, seed=7)
    model_args = script.ModelArguments(cache_dir=str(tmp_path / "cache"))
    shapes = {}
    for pad in (False, True):
        _, data_args, se_args, training_args = parse(
            *TEXT[:2], "--train_file", text, "--do_train", "--output_dir", tmp_path,
            "--line_by_line", "--max_seq_length", SEQ, "--se_select", "random", "--use_cpu",
            *(["--pad_to_max_length"] if pad else []),
        )  # fmt: skip
        train, _ = script.load_datasets(data_args, model_args, training_args, tokenizer, None)
        collator = script.build_trainer(
            tiny_model(tokenizer), tokenizer, train, None, data_args, se_args, training_args
        ).data_collator
        batch = collator([train[i] for i in range(6)])
        shapes[pad] = tuple(batch["input_ids"].shape)
        if pad:
            assert {len(ids) for ids in train["input_ids"]} == {SEQ}
            padding = batch["attention_mask"] == 0
            assert padding.any() and (batch["labels"][padding] == -100).all()
    assert shapes[True] == (6, SEQ)
    assert shapes[False][1] < SEQ  # the test's lines are shorter: padding came from the option


def test_overwrite_cache_tokenizes_again(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    text = write_text(tmp_path / "train.txt", 30, seed=8)
    cache = tmp_path / "cache"
    model_args = script.ModelArguments(cache_dir=str(cache))

    def load(*extra):
        _, data_args, _, training_args = parse(
            *TEXT[:2], "--train_file", text, "--do_train", "--output_dir", tmp_path,
            "--max_seq_length", SEQ, "--se_select", "random", "--use_cpu", *extra,
        )  # fmt: skip
        return script.load_datasets(data_args, model_args, training_args, tokenizer, None)[0]

    def mapped_files():
        return sorted(cache.rglob("cache-*.arrow"))

    first = load()
    files = mapped_files()
    assert files  # the maps' results, cached by datasets
    for path in files:
        os.utime(path, ns=(0, 0))
    assert load()["input_ids"] == first["input_ids"]
    assert mapped_files() == files and all(p.stat().st_mtime_ns == 0 for p in files)  # read
    assert load("--overwrite_cache")["input_ids"] == first["input_ids"]
    assert all(p.stat().st_mtime_ns > 0 for p in files)  # written again


def test_a_scored_dataset_is_trained_on_as_it_is_and_checked(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    model = tiny_model(tokenizer)
    text = write_text(tmp_path / "train.txt", 40, seed=2)
    examples = tokenize_text_files(tokenizer, [text], SEQ, cache_dir=str(tmp_path / "cache"))
    scored = score_dataset(model, tokenizer, examples, output_dir=str(tmp_path / "scored"))
    _, data_args, _, training_args = parse(
        *OFFLINE[:2], "--scored_dataset", tmp_path / "scored", "--do_train", "--output_dir",
        tmp_path, "--max_train_samples", 5, "--validation_split_percentage", 10, "--use_cpu",
    )  # fmt: skip
    model_args = script.ModelArguments()
    train, dev = script.load_datasets(data_args, model_args, training_args, tokenizer, model)
    # the first 10 % of the examples are the validation split, not trained on (run_mlm.py)
    assert len(scored) * 10 % 100 not in (0, 50)  # no tie in the rounding
    held = round(len(scored) * 10 / 100)
    assert held >= 1 and dev is None and len(train) == 5
    assert train["input_ids"] == scored["input_ids"][held : held + 5]
    np.testing.assert_array_equal(
        np.concatenate(train["se_scores"]), np.concatenate(scored["se_scores"][held : held + 5])
    )
    assert train["se_index"] == list(range(held, held + 5))  # the index before the split
    other = tiny_bert_tokenizer(words=HF_WORDS[:-3])
    with pytest.raises(ScoredDatasetError, match="tokenizer"):
        script.load_datasets(data_args, model_args, training_args, other, None)


def test_a_scored_dataset_of_another_model_warns_and_replaced_scores_are_refused(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    model = tiny_model(tokenizer)
    text = write_text(tmp_path / "train.txt", 20, seed=3)
    examples = tokenize_text_files(tokenizer, [text], SEQ, cache_dir=str(tmp_path / "cache"))
    scored = str(tmp_path / "scored")
    score_dataset(model, tokenizer, examples, output_dir=scored)
    _, data_args, _, training_args = parse(
        *OFFLINE[:2], "--scored_dataset", scored, "--do_train", "--output_dir", tmp_path,
        "--use_cpu",
    )  # fmt: skip
    model_args = script.ModelArguments()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scoring model: silent
        script.load_datasets(data_args, model_args, training_args, tokenizer, model)
    other = tiny_model(tokenizer, seed=1)  # same vocabulary, other weights
    with pytest.warns(UserWarning, match="come from another model"):
        train, _ = script.load_datasets(data_args, model_args, training_args, tokenizer, other)
    assert train["input_ids"] == examples["input_ids"]  # a warning: it still trains
    loaded = datasets.load_from_disk(scored)
    zeroed = loaded.map(lambda e: {"se_scores": [0.0] * len(e["se_scores"])})
    replaced = str(tmp_path / "replaced")
    zeroed.save_to_disk(replaced)
    shutil.copy(os.path.join(scored, "se_scores.json"), replaced)
    data_args.scored_dataset = replaced
    with pytest.raises(ScoredDatasetError, match="column 'se_scores' of .*replaced"):
        script.load_datasets(data_args, model_args, training_args, tokenizer, model)


def test_a_validation_file_beside_a_scored_dataset_is_tokenized_with_the_length_given(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    model = tiny_model(tokenizer)
    cache = str(tmp_path / "cache")
    train_text = write_text(tmp_path / "train.txt", 20, seed=5)
    dev_text = write_text(tmp_path / "dev.txt", 20, seed=6)
    examples = tokenize_text_files(tokenizer, [train_text], SEQ, cache_dir=cache)
    score_dataset(model, tokenizer, examples, output_dir=str(tmp_path / "scored"))
    _, data_args, _, training_args = parse(
        *OFFLINE[:2], "--scored_dataset", tmp_path / "scored", "--validation_file", dev_text,
        "--max_seq_length", 8, "--line_by_line", "--do_train", "--do_eval",
        "--output_dir", tmp_path, "--use_cpu",
    )  # fmt: skip
    model_args = script.ModelArguments(cache_dir=cache)
    train, dev = script.load_datasets(data_args, model_args, training_args, tokenizer, model)
    assert train["input_ids"] == examples["input_ids"]  # not tokenized again
    expected = tokenize_text_files(tokenizer, [dev_text], 8, line_by_line=True, cache_dir=cache)
    assert dev["input_ids"] == expected["input_ids"]
    assert max(len(ids) for ids in dev["input_ids"]) == 8


# -- short runs in this process ------------------------------------------------------------


def run_main(saved, out, *extra, steps=2):
    """script.main on the saved tiny model: ``steps`` CPU steps of 4 examples."""
    text = write_text(out.parent / "lines.txt", 60, seed=9)
    return script.main(
        [str(a) for a in (
            "--model_name_or_path", saved, "--train_file", text, "--line_by_line",
            "--max_seq_length", SEQ, "--do_train", "--max_steps", steps,
            "--per_device_train_batch_size", 4, "--learning_rate", 1e-3, "--use_cpu",
            "--report_to", "none", "--save_strategy", "no", "--logging_steps", 1, "--seed", 5,
            "--dataloader_num_workers", 0, "--cache_dir", out.parent / "cache",
            "--output_dir", out, *extra,
        )]
    )  # fmt: skip


def changed_weights(saved, trainer):
    initial = T.AutoModelForMaskedLM.from_pretrained(saved).state_dict()
    return [
        name
        for name, tensor in trainer.model.state_dict().items()
        if not torch.equal(tensor.cpu(), initial[name])
    ]


def test_a_run_on_a_dataset_by_name_trains_and_evaluates_on_its_held_out_rows(saved, tmp_path):
    dataset_folder(tmp_path / "data")
    out = tmp_path / "out"
    trainer = script.main(
        [str(a) for a in (
            "--model_name_or_path", saved, "--dataset_name", tmp_path / "data",
            "--dataset_config_name", "plain", "--validation_split_percentage", 10,
            "--line_by_line", "--max_seq_length", SEQ, "--do_train", "--do_eval",
            "--max_steps", 2, "--per_device_train_batch_size", 4, "--use_cpu", "--report_to",
            "none", "--save_strategy", "no", "--dataloader_num_workers", 0, "--se_select",
            "random", "--cache_dir", tmp_path / "cache", "--output_dir", out,
        )]
    )  # fmt: skip
    assert len(trainer.train_dataset) == 36 and trainer.state.global_step == 2
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_samples"] == 4  # 10 % of the config's 40 rows
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert changed_weights(saved, trainer)


def test_streaming_reads_the_text_as_a_stream_and_trains(saved, tmp_path):
    tokenizer = tiny_bert_tokenizer()
    text = write_text(tmp_path / "stream.txt", 30, seed=10)
    _, data_args, _, training_args = parse(
        *TEXT[:2], "--train_file", text, "--streaming", "--max_steps", 3, "--line_by_line",
        "--max_seq_length", SEQ, "--do_train", "--output_dir", tmp_path, "--se_select",
        "random", "--use_cpu", "--max_train_samples", 12,
    )  # fmt: skip
    model_args = script.ModelArguments(cache_dir=str(tmp_path / "cache"))
    train, _ = script.load_datasets(data_args, model_args, training_args, tokenizer, None)
    assert isinstance(train, datasets.IterableDataset)
    examples = list(train)
    lines = Path(text).read_text().splitlines()
    assert [e["input_ids"] for e in examples] == line_ids(tokenizer, lines[:12])  # none held out
    assert "se_index" not in examples[0]  # a stream's examples are known by their ids

    trainer = run_main(saved, tmp_path / "out", "--streaming", "--se_online", "--se_select", "topk")
    assert isinstance(trainer.train_dataset, datasets.IterableDataset)
    assert trainer.state.global_step == 2 and changed_weights(saved, trainer)


def test_packing_gives_packed_batches_and_trains(saved, tmp_path):
    trainer = run_main(saved, tmp_path / "out", "--packing", "--se_select", "random")
    collator = trainer.data_collator
    assert collator.packing and collator.packed_attention == "mask"
    examples = [trainer.train_dataset[i] for i in range(4)]
    lengths = [len(e["input_ids"]) for e in examples]
    batch = collator(examples)
    assert batch["input_ids"].shape == (1, sum(lengths))  # one row, no padding
    starts = np.cumsum([0] + lengths[:-1])
    assert batch["position_ids"][0, starts].tolist() == [0] * 4  # restart per example
    assert batch["attention_mask"].shape == (1, 1, sum(lengths), sum(lengths))  # block-diagonal
    mask = batch["attention_mask"][0, 0].bool()
    assert mask[0, : lengths[0]].all() and not mask[0, lengths[0] :].any()  # its own example
    assert trainer.state.global_step == 2 and changed_weights(saved, trainer)


def test_packed_flash_attention_needs_a_flash_model(saved, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        run_main(saved, tmp_path / "out", "--packing", "--packed_attention", "flash",
                 "--se_select", "random")  # fmt: skip
    message = str(refused.value)
    assert "--packed_attention flash" in message and "sdpa" in message and "\n" not in message
    flash = types.SimpleNamespace(
        config=types.SimpleNamespace(_attn_implementation="flash_attention_2")
    )
    _, data_args, se_args, training_args = parse(
        *TEXT, tmp_path, "--packing", "--packed_attention", "flash", "--se_select", "random"
    )
    script.check_packed_attention(flash, data_args)  # accepted
    tokenizer = tiny_bert_tokenizer()
    collator = script.build_trainer(
        tiny_model(tokenizer), tokenizer, None, None, data_args, se_args, training_args
    ).data_collator
    batch = collator([{"input_ids": tokenizer("the of and")["input_ids"]}] * 2)
    assert "cu_seq_lens_q" in batch and "attention_mask" not in batch


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry and "loss" in entry]


def test_a_scheduled_mask_rate_is_logged(saved, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="run_se_mlm"):
        trainer = run_main(
            saved, tmp_path / "out", "--se_online", "--se_select", "topk",
            "--se_mask_prob_schedule", "linear:0.4,0.1", "--log_level", "warning", steps=4,
        )  # fmt: skip
    # --log_level: the default ("passive") follows transformers' verbosity, which other test
    # modules lower to errors at import
    assert "mask rate linear:0.4,0.1 over training" in caplog.text
    # online: the start line says the trainer scores, not that the collator reads scores
    assert "no scores column is read" in caplog.text and "reads se_scores" not in caplog.text
    # linear from 0.4 to 0.1 over 4 steps, logged after steps 1..4
    assert logged(trainer, "mask_prob") == pytest.approx([0.325, 0.25, 0.175, 0.1])


def test_mlm_probability_is_the_schedules_constant_mask_rate(saved, tmp_path):
    trainer = run_main(
        saved, tmp_path / "out", "--se_online", "--se_select", "topk", "--mlm_probability",
        0.2, "--se_random_share_schedule", "linear:1,0", steps=4,
    )  # fmt: skip
    assert logged(trainer, "mask_prob") == pytest.approx([0.2] * 4)
    assert logged(trainer, "random_share") == pytest.approx([0.75, 0.5, 0.25, 0.0])


# -- runs of the script ------------------------------------------------------------------

ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
)


def run(argv, cwd, timeout=300, **env):
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=dict(ENV, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-12000:]
    return result.stdout


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny BERT and its tokenizer saved with save_pretrained, and text files."""
    folder = tmp_path_factory.mktemp("run_se_mlm")
    tokenizer = tiny_bert_tokenizer()
    tokenizer.model_max_length = 64
    model = tiny_model(tokenizer)
    model.save_pretrained(folder / "start")
    tokenizer.save_pretrained(folder / "start")
    write_text(folder / "train.txt", 120, seed=3)
    write_text(folder / "dev.txt", 30, seed=4)
    return folder


def common_args(start, out):
    return [
        "--model_name_or_path", start / "start", "--do_train",
        "--max_steps", 4, "--per_device_train_batch_size", 4,
        "--learning_rate", 1e-3, "--use_cpu", "--report_to", "none", "--save_strategy", "no",
        "--logging_steps", 1, "--seed", 5, "--dataloader_num_workers", 0,
        "--cache_dir", start / "cache", "--output_dir", out,
    ]  # fmt: skip


def assert_trained_and_reloadable(start, out):
    initial = T.AutoModelForMaskedLM.from_pretrained(start / "start").state_dict()
    trained = T.AutoModelForMaskedLM.from_pretrained(out)
    assert type(trained).__name__ == "BertForMaskedLM"
    changed = [
        name
        for name, tensor in trained.state_dict().items()
        if not torch.equal(tensor, initial[name])
    ]
    assert changed, "the saved model is the initial one"
    assert all(torch.isfinite(t).all() for t in trained.state_dict().values())
    T.AutoTokenizer.from_pretrained(out)  # the tokenizer is saved beside it


@pytest.mark.slow
@pytest.mark.subprocess
def test_random_baseline_run_trains_evaluates_and_saves_pretrained(start):
    out = start / "random"
    run(
        [sys.executable, SCRIPT, *common_args(start, out), "--train_file", start / "train.txt",
         "--validation_file", start / "dev.txt", "--max_seq_length", SEQ, "--do_eval",
         "--se_select", "random"],
        cwd=start,
    )  # fmt: skip
    assert_trained_and_reloadable(start, out)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4


@pytest.mark.slow
@pytest.mark.subprocess
def test_offline_run_trains_on_the_scores_se_score_wrote(start):
    scored = start / "scored"
    run(
        [sys.executable, "-m", "se_fairseq.cli.score", "--hf", start / "start", "--train_file",
         start / "train.txt", "--max_seq_length", SEQ, "--cpu", "--cache_dir", start / "cache",
         "--out", scored, "--no-progress-bar"],
        cwd=start,
    )  # fmt: skip
    out = start / "offline"
    log = run(
        [sys.executable, SCRIPT, *common_args(start, out), "--scored_dataset", scored,
         "--se_select", "topk", "--tls_alpha", 0.1, "--do_eval",
         "--validation_split_percentage", 10],
        cwd=start,
    )  # fmt: skip
    assert "offline SE (--se_select topk" in log
    assert_trained_and_reloadable(start, out)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))


@pytest.mark.slow
@pytest.mark.subprocess
def test_online_run_trains_and_saves_pretrained(start):
    out = start / "online"
    log = run(
        [sys.executable, SCRIPT, *common_args(start, out), "--train_file", start / "train.txt",
         "--max_seq_length", SEQ, "--se_online", "--se_select", "topk", "--tls_alpha", 0.1],
        cwd=start,
    )  # fmt: skip
    assert "online SE" in log
    assert_trained_and_reloadable(start, out)


# Run under torchrun by the DDP test: records, per rank, the se_index of every batch the
# collator makes, runs the script's main, then dumps the rank's weights.
RECORDER = """
import json, os, sys
import importlib.util
from safetensors.torch import save_file
import se_fairseq.hf.collator as collator

rank = int(os.environ["RANK"])
seen = []
make_batch = collator.DataCollatorForSelfEvolution.__call__

def recording(self, examples):
    seen.append([int(example["se_index"]) for example in examples])
    return make_batch(self, examples)

collator.DataCollatorForSelfEvolution.__call__ = recording
spec = importlib.util.spec_from_file_location("run_se_mlm", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
trainer = script.main(sys.argv[2:])
dump = os.environ["SE_DUMP"]
with open(os.path.join(dump, f"seen-{rank}.json"), "w") as f:
    json.dump(seen, f)
state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}  # tied: copies
save_file(state, os.path.join(dump, f"weights-{rank}.safetensors"))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_ranks_under_torchrun_see_different_data_and_end_equal(start):
    """16 examples, 2 per rank and step: one epoch is 4 steps."""
    from safetensors.torch import load_file

    dump = start / "ddp-dump"
    dump.mkdir()
    recorder = start / "record_ranks.py"
    recorder.write_text(RECORDER)
    out = start / "ddp"
    argv = common_args(start, out)
    argv[argv.index("--max_steps") + 1] = -1
    argv[argv.index("--per_device_train_batch_size") + 1] = 2
    run(
        ["torchrun", "--standalone", "--nproc_per_node", 2, recorder, SCRIPT, *argv,
         "--num_train_epochs", 1, "--max_train_samples", 16, "--ddp_backend", "gloo",
         "--train_file", start / "train.txt", "--max_seq_length", SEQ, "--se_select", "random"],
        cwd=start,
        SE_DUMP=str(dump),
    )  # fmt: skip
    seen = [json.loads((dump / f"seen-{rank}.json").read_text()) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    for step, (first, second) in enumerate(zip(*seen)):
        assert len(first) == len(second) == 2, step
        assert not set(first) & set(second), f"step {step}: both ranks saw {first} / {second}"
    everything = sorted(i for rank in seen for batch in rank for i in batch)
    assert everything == list(range(16))  # together, every example once
    weights = [load_file(str(dump / f"weights-{rank}.safetensors")) for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    assert_trained_and_reloadable(start, out)
    saved = T.AutoModelForMaskedLM.from_pretrained(out).state_dict()
    for name, tensor in saved.items():
        assert torch.equal(tensor, weights[0][name]), name
    print("rank 0 saw", seen[0], "rank 1 saw", seen[1])
