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
    "se_random_share_schedule": (["--se_random_share_schedule", "linear:1,0"], "linear:1,0"),
    "tls_alpha": (["--tls_alpha", "0.3"], 0.3),
    "tls_ref": (["--tls_ref", "uniform"], "uniform"),
}


def test_every_se_option_is_listed_here():
    assert set(SE_OPTIONS) == {f.name for f in dataclasses.fields(SelfEvolutionArguments)}


@pytest.mark.parametrize("name", sorted(SE_OPTIONS))
def test_se_option_reaches_self_evolution_arguments(name, tmp_path):
    words, value = SE_OPTIONS[name]
    base = TEXT if name == "se_online" else OFFLINE
    _, _, se_args, _ = parse(*base, tmp_path, *words)
    assert isinstance(se_args, SelfEvolutionArguments)
    assert getattr(se_args, name) == value
    default = SelfEvolutionArguments()
    untouched = [f.name for f in dataclasses.fields(default) if f.name not in (name, "se_select")]
    assert all(getattr(se_args, n) == getattr(default, n) for n in untouched)


def test_every_training_argument_is_an_option():
    parser = script.make_parser()
    dests = {action.dest for action in parser._actions}
    wanted = {f.name for f in dataclasses.fields(T.TrainingArguments) if f.init}
    assert wanted <= dests


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
]


@pytest.mark.parametrize(("extra", "option"), REFUSED, ids=[o for _, o in REFUSED])
def test_bad_values_are_refused_naming_the_option(extra, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        parse(*OFFLINE, tmp_path, *extra)
    assert refused.value.code == 2  # argparse's usage error, not a traceback
    assert option in capsys.readouterr().err


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


# -- the examples ------------------------------------------------------------------------


def test_text_files_give_run_mlm_examples_with_their_index(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    text = write_text(tmp_path / "train.txt", 80, seed=1)
    _, data_args, _, training_args = parse(
        "--model_name_or_path", "m", "--train_file", text, "--do_train", "--do_eval",
        "--output_dir", tmp_path, "--se_select", "random", "--max_seq_length", SEQ,
        "--validation_split_percentage", 10, "--use_cpu",
    )  # fmt: skip
    model_args = script.ModelArguments(cache_dir=str(tmp_path / "cache"))
    train, dev = script.load_datasets(data_args, model_args, training_args, tokenizer, None)
    expected = tokenize_text_files(tokenizer, [text], SEQ, cache_dir=str(tmp_path / "cache"))
    held = len(expected) * 10 // 100
    assert held >= 2 and len(dev) == held and len(train) == len(expected) - held
    assert dev["input_ids"] == expected["input_ids"][:held]
    assert train["input_ids"] == expected["input_ids"][held:]
    assert dev["se_index"] == list(range(held))
    assert train["se_index"] == list(range(held, len(expected)))


def test_a_scored_dataset_is_trained_on_as_it_is_and_checked(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    model = tiny_model(tokenizer)
    text = write_text(tmp_path / "train.txt", 40, seed=2)
    examples = tokenize_text_files(tokenizer, [text], SEQ, cache_dir=str(tmp_path / "cache"))
    scored = score_dataset(model, tokenizer, examples, output_dir=str(tmp_path / "scored"))
    _, data_args, _, training_args = parse(
        *OFFLINE[:2], "--scored_dataset", tmp_path / "scored", "--do_train", "--output_dir",
        tmp_path, "--max_train_samples", 5, "--use_cpu",
    )  # fmt: skip
    model_args = script.ModelArguments()
    train, dev = script.load_datasets(data_args, model_args, training_args, tokenizer, model)
    assert dev is None and len(train) == 5
    assert train["input_ids"] == scored["input_ids"][:5]
    np.testing.assert_array_equal(
        np.concatenate(train["se_scores"]), np.concatenate(scored["se_scores"][:5])
    )
    assert train["se_index"] == list(range(5))
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
