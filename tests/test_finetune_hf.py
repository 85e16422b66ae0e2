"""se-finetune with Hugging Face checkpoints (save_pretrained directories, fine-tuned with
transformers' Trainer) beside fairseq ones, and fairseq BERT checkpoints through the same
path (BERT's pair format, token types and WordPiece tokenizer).

Tiny models from configs, tokenizers built here (tests/support/hf_tokenizers.py); references are
the tokenizers' own pair encodings, scikit-learn on the saved predictions, and a
hand-built [CLS] A [SEP] B [SEP] layout.
"""

import json
import os

import numpy as np
import pytest
import transformers
from support.hf_tokenizers import HF_WORDS, tiny_bert_tokenizer, tiny_wordlevel_tokenizer

from se_fairseq.finetune import FinetuneError, Overrides, finetune, prepare_data
from se_fairseq.finetune.plan import RunSpec, plan_runs

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def deberta_tokenizer():
    """DeBERTa-v3's special-token layout on a WordLevel model: [PAD] [CLS] [SEP] [UNK]
    first, [MASK] last."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    order = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", *HF_WORDS, "[MASK]"]
    vocab = {s: i for i, s in enumerate(order)}
    model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )


def ids_of(tok):
    return dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id)


FAMILIES = {
    "bert": (
        tiny_bert_tokenizer,
        lambda tok: transformers.BertConfig(**SMALL, max_position_embeddings=64, **ids_of(tok)),
        transformers.BertForMaskedLM,
    ),
    "modernbert": (
        tiny_wordlevel_tokenizer,
        lambda tok: transformers.ModernBertConfig(
            **SMALL,
            max_position_embeddings=64,
            cls_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
            **ids_of(tok),
        ),
        transformers.ModernBertForMaskedLM,
    ),
    "deberta-v2": (
        deberta_tokenizer,
        lambda tok: transformers.DebertaV2Config(
            **SMALL, max_position_embeddings=64, type_vocab_size=2, **ids_of(tok)
        ),
        transformers.DebertaV2ForMaskedLM,
    ),
}


def save_tiny(folder, family, seed=0, **tokenizer_options):
    """A tiny random masked LM of ``family`` and its tokenizer, save_pretrained."""
    make_tokenizer, make_config, model_class = FAMILIES[family]
    tokenizer = make_tokenizer(**tokenizer_options)
    transformers.set_seed(seed)
    model_class(make_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), tokenizer


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines("\t".join(str(c) for c in row) + "\n" for row in rows)


def sentence(rng, n):
    return " ".join(rng.choice(HF_WORDS, n))


def make_rte(folder, n_train=32, n_dev=16, seed=0):
    """GLUE's RTE layout; the label is learnable: entailment when sentence2's first word
    occurs in sentence1."""
    rng = np.random.default_rng(seed)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [("index", "sentence1", "sentence2", "label")]
        for i in range(n):
            a, b = sentence(rng, 6), sentence(rng, 3)
            label = "entailment" if b.split()[0] in a.split() else "not_entailment"
            rows.append((i, a, b, label))
        write(os.path.join(folder, name), rows)
    return str(folder)


def make_sst2(folder, n_train=32, n_dev=16, seed=1):
    """GLUE's SST-2 layout (sentence, label); label 1 when the sentence holds 'city'."""
    rng = np.random.default_rng(seed)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [("sentence", "label")]
        for i in range(n):
            words = list(rng.choice(HF_WORDS, 5))
            if i % 2:
                words[int(rng.integers(5))] = "city"
            rows.append((" ".join(words), int("city" in words)))
        write(os.path.join(folder, name), rows)
    return str(folder)


def quiet(*args):
    pass


def planned(checkpoints, tasks, out, overrides=None, seeds=(1,)):
    infos, datas, manifests, dirs = prepare_data(checkpoints, tasks, str(out), {}, log=quiet)
    return plan_runs(infos, datas, manifests, dirs, list(seeds), str(out), overrides or Overrides())


# -- inputs: each family's own pair format -----------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_pair_input_is_the_tokenizers_own_pair_encoding(tmp_path, family):
    from se_fairseq.finetune.inputs import example_input
    from se_fairseq.finetune.tasks import read_task

    model_dir, tokenizer = save_tiny(tmp_path / family, family)
    rte = make_rte(tmp_path / "RTE")
    runs = planned({"m": model_dir}, [rte], tmp_path / "out")
    assert [r.engine for r in runs] == ["hf"]
    task = read_task(rte)
    for i in (0, 5):
        a, b = task.train.texts[0][i], task.train.texts[1][i]
        reference = tokenizer(a, b)  # the tokenizer's own pair encoding, called here
        shown = example_input(runs[0], i)
        assert shown["pieces"] == tokenizer.convert_ids_to_tokens(reference["input_ids"])
        if "token_type_ids" in reference:
            assert shown["token_types"] == reference["token_type_ids"]
    if family == "bert":  # BERT's layout, by hand: [CLS] A [SEP] B [SEP], B as type 1
        a, b = (
            tokenizer.tokenize(task.train.texts[0][0]),
            tokenizer.tokenize(task.train.texts[1][0]),
        )
        shown = example_input(runs[0], 0)
        assert shown["pieces"] == ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
        assert shown["token_types"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_a_regression_task_gets_one_output_and_the_run_settings_map_the_recipe(tmp_path):
    model_dir, _ = save_tiny(tmp_path / "mb", "modernbert")
    stsb = tmp_path / "STS-B"
    rng = np.random.default_rng(0)
    for name in ("train.tsv", "dev.tsv"):
        rows = [("sentence1", "sentence2", "score")]
        rows += [
            (sentence(rng, 4), sentence(rng, 4), f"{rng.uniform(0, 5):.2f}") for _ in range(10)
        ]
        write(str(stsb / name), rows)
    (run,) = planned({"m": model_dir}, [str(stsb)], tmp_path / "out")
    assert run.kind == "regression" and run.labels is None and run.label_scale == 5.0
    s = run.settings  # RoBERTa's STS-B recipe: lr 2e-5, batch 16, 10 epochs, 6 % warmup
    assert (s["lr"], s["batch_size"], s["epochs"], s["best_metric"]) == (2e-5, 16, 10, "loss")
    assert s["updates_per_epoch"] == 1 and s["total_updates"] == 10
    assert s["warmup_updates"] == round(214 / 3598 * 10)
    assert s["adam_betas"] == [0.9, 0.98] and s["weight_decay"] == 0.1


def test_bert_checkpoints_take_berts_recipe(tmp_path):
    model_dir, _ = save_tiny(tmp_path / "bert", "bert")
    (run,) = planned({"b": model_dir}, [make_rte(tmp_path / "RTE", n_train=70)], tmp_path / "o")
    s = run.settings
    assert s["recipe"] == "bert"
    assert (s["lr"], s["batch_size"], s["epochs"]) == (2e-5, 32, 3)
    assert s["total_updates"] == 3 * 3 and s["warmup_updates"] == round(0.1 * 9)
    assert s["adam_betas"] == [0.9, 0.999] and s["weight_decay"] == 0.01


def test_the_command_names_a_directory_by_itself(tmp_path):
    from se_fairseq.cli.finetune import parse_checkpoint

    folder = tmp_path / "models" / "se-modernbert"
    folder.mkdir(parents=True)
    assert parse_checkpoint(str(folder)) == ("se-modernbert", (str(folder), None))
    assert parse_checkpoint(f"x={folder}")[0] == "x"
    assert parse_checkpoint(str(tmp_path / "run" / "checkpoint_last.pt"))[0] == "run"


# -- refusals ------------------------------------------------------------------------------


def test_a_directory_without_config_json_is_refused(tmp_path):
    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(FinetuneError, match="without config.json"):
        planned({"m": str(empty)}, [make_rte(tmp_path / "RTE")], tmp_path / "out")


def test_a_tokenizer_without_a_pad_token_is_refused(tmp_path):
    model_dir, tokenizer = save_tiny(tmp_path / "bert", "bert")
    config = json.load(open(os.path.join(model_dir, "tokenizer_config.json")))
    config["pad_token"] = None
    json.dump(config, open(os.path.join(model_dir, "tokenizer_config.json"), "w"))
    special = os.path.join(model_dir, "special_tokens_map.json")
    if os.path.exists(special):
        names = json.load(open(special))
        names.pop("pad_token", None)
        json.dump(names, open(special, "w"))
    with pytest.raises(FinetuneError, match="no pad token"):
        planned({"m": model_dir}, [make_rte(tmp_path / "RTE")], tmp_path / "out")


def test_fairseq_only_options_are_refused_for_an_hf_only_invocation(tmp_path):
    model_dir, _ = save_tiny(tmp_path / "bert", "bert")
    with pytest.raises(FinetuneError, match="--bpe.*fairseq checkpoints only"):
        finetune({"m": model_dir}, [make_rte(tmp_path / "RTE")], str(tmp_path / "o"), bpe="gpt2")
    with pytest.raises(FinetuneError, match="--fairseq-args"):
        finetune(
            {"m": model_dir},
            [make_rte(tmp_path / "RTE")],
            str(tmp_path / "o"),
            overrides=Overrides(fairseq_args=["--num-workers", "0"]),
        )


def test_the_dry_run_counts_the_trainers_batches(tmp_path, capsys):
    from se_fairseq.finetune.dryrun import dry_run
    from se_fairseq.finetune.hf_model import parameter_count

    model_dir, _ = save_tiny(tmp_path / "bert", "bert")
    mb_dir, _ = save_tiny(tmp_path / "mb", "modernbert")
    rte = make_rte(tmp_path / "RTE", n_train=70)
    doc = dry_run({"b": model_dir, "m": mb_dir}, [rte], [1, 2], Overrides(), log=quiet)
    rows = {r["checkpoint"]: r for r in doc["rows"]}
    assert rows["b"]["updates_per_run"] == 3 * 3  # BERT: 3 epochs of ceil(70 / 32)
    assert rows["m"]["updates_per_run"] == 10 * 5  # RoBERTa's RTE recipe: 10 x ceil(70 / 16)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert parameter_count(model_dir) == sum(p.numel() for p in model.parameters())
    (run,) = planned({"m": mb_dir}, [rte], tmp_path / "out")
    assert run.settings["total_updates"] == rows["m"]["updates_per_run"]


# -- training runs --------------------------------------------------------------------------


def read_predictions(run_dir):
    rows = [
        line.rstrip("\n").split("\t") for line in open(os.path.join(run_dir, "dev_predictions.tsv"))
    ]
    assert rows[0] == ["prediction", "target", "head_output"]
    return [r[0] for r in rows[1:]], [r[1] for r in rows[1:]]


@pytest.mark.slow
@pytest.mark.subprocess
def test_hf_runs_end_to_end_and_a_finished_run_is_not_rerun(tmp_path):
    from sklearn.metrics import accuracy_score

    bert, _ = save_tiny(tmp_path / "bert", "bert")
    modernbert, _ = save_tiny(tmp_path / "modernbert", "modernbert")
    tasks = [make_rte(tmp_path / "RTE"), make_sst2(tmp_path / "SST-2")]
    write(  # a GLUE test file: --predict-test writes the server's RTE.tsv
        os.path.join(tasks[0], "test.tsv"),
        [("index", "sentence1", "sentence2")] + [(100 + i, "the city", "city") for i in range(3)],
    )
    out = str(tmp_path / "out")
    kwargs = dict(
        seeds=[1],
        devices=[],
        jobs=1,
        predict_test=True,
        overrides=Overrides(epochs=2, batch_size=8, lr=1e-3),
    )
    doc = finetune({"bert": bert, "modernbert": modernbert}, tasks, out, log=quiet, **kwargs)
    assert not doc["failures"], doc["failures"]
    for name in ("bert", "modernbert"):
        for task in ("RTE", "SST-2"):
            run_dir = os.path.join(out, "runs", name, task, "seed1")
            done = json.load(open(os.path.join(run_dir, "done.json")))
            predictions, targets = read_predictions(run_dir)
            assert len(predictions) == 16
            assert done["value"] == pytest.approx(accuracy_score(targets, predictions))
            assert doc["results"][name][task]["seeds"]["1"] == done["value"]
            assert done["updates_of_eval_checkpoint"] in (4, 8)  # the best of 2 epochs of 4
            kept = sorted(os.listdir(run_dir))
            assert "best" in kept and not [k for k in kept if k.startswith("checkpoint-")]
            best = os.listdir(os.path.join(run_dir, "best"))
            assert "model.safetensors" in best and not [f for f in best if f.endswith(".bin")]
    assert os.path.exists(os.path.join(out, "results.md"))
    server = os.path.join(out, "test_predictions", "modernbert", "seed1", "RTE.tsv")
    rows = [line.rstrip("\n").split("\t") for line in open(server)]
    assert [r[0] for r in rows] == ["index", "100", "101", "102"]
    assert {r[1] for r in rows[1:]} <= {"entailment", "not_entailment"}
    times = {
        k: os.path.getmtime(os.path.join(out, "runs", k, "done.json"))
        for k in ("bert/RTE/seed1", "modernbert/SST-2/seed1")
    }
    lines = []
    again = finetune(
        {"bert": bert, "modernbert": modernbert}, tasks, out, log=lines.append, **kwargs
    )
    assert any("4 runs: 4 already done, 0 to run" in line for line in lines), lines
    assert json.dumps(again["results"]) == json.dumps(doc["results"])  # NaN sd: as text
    for k, t in times.items():
        assert os.path.getmtime(os.path.join(out, "runs", k, "done.json")) == t


@pytest.mark.slow
def test_a_killed_hf_run_resumes_from_the_trainers_last_checkpoint(tmp_path):
    """The worker's own path (in process): a run killed after epoch 1 of 2 (its
    checkpoint-N kept, no done.json) trains only epoch 2 when run again."""
    from se_fairseq.finetune import worker
    from se_fairseq.finetune.runner import prepare

    bert, _ = save_tiny(tmp_path / "bert", "bert")
    out = tmp_path / "out"
    (run,) = planned(
        {"b": bert}, [make_sst2(tmp_path / "SST-2")], out, Overrides(epochs=2, batch_size=8)
    )
    run.keep_checkpoints = "all"
    prepare(run, run.fingerprint())
    spec = RunSpec.from_json(json.load(open(os.path.join(run.run_dir, "spec.json"))))
    spec.settings["total_updates"] = 4  # "killed" at the end of epoch 1
    first = worker.engine_of(spec, run.run_dir)
    first.train()
    assert os.path.isdir(os.path.join(run.run_dir, "checkpoint-4"))
    assert first.updates == 4
    worker.main(run.run_dir)  # the real spec: 8 updates, resumed from checkpoint-4
    done = json.load(open(os.path.join(run.run_dir, "done.json")))
    assert done["resumed_from"] == "checkpoint-4" and done["dev_examples"] == 16
    state = json.load(open(os.path.join(run.run_dir, "checkpoint-8", "trainer_state.json")))
    assert state["global_step"] == 8
    assert [h["epoch"] for h in state["log_history"] if "eval_loss" in h] == [1.0, 2.0]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_mixed_fairseq_and_hf_invocation_writes_one_table_with_the_paired_difference(
    untrained_checkpoint, tmp_path
):
    from se_fairseq.finetune.results import markdown

    words = tuple(f"w{i}" for i in range(20))  # in the fairseq corpus's dictionary
    modernbert, _ = save_tiny(tmp_path / "modernbert", "modernbert", words=words)
    rte = tmp_path / "RTE"
    rng = np.random.default_rng(3)
    for name in ("train.tsv", "dev.tsv"):
        rows = [("index", "sentence1", "sentence2", "label")]
        for i in range(16):
            a, b = " ".join(rng.choice(words, 4)), " ".join(rng.choice(words, 2))
            rows.append((i, a, b, ("entailment", "not_entailment")[i % 2]))
        write(str(rte / name), rows)
    doc = finetune(
        {"fs": untrained_checkpoint, "hf": modernbert},
        [str(rte)],
        str(tmp_path / "out"),
        seeds=[1, 2],
        baseline="fs",
        bpe="none",
        devices=[],
        jobs=1,
        log=quiet,
        overrides=Overrides(epochs=1, batch_size=8, fairseq_args=["--num-workers", "0"]),
    )
    assert not doc["failures"], doc["failures"]
    fs, hf = (doc["results"][c]["RTE"]["seeds"] for c in ("fs", "hf"))
    paired = doc["results"]["hf"]["RTE"]["vs_baseline"]
    assert paired["n"] == 2
    assert paired["mean"] == pytest.approx(np.mean([hf[s] - fs[s] for s in ("1", "2")]))
    table = markdown(doc)
    assert "| fs |" in table and "| hf |" in table and "Difference against **fs**" in table
    specs = [
        json.load(open(tmp_path / "out" / "runs" / c / "RTE" / "seed1" / "spec.json"))
        for c in ("fs", "hf")
    ]
    assert [s.get("engine") for s in specs] == [None, "hf"]


# -- fairseq BERT checkpoints: BERT's pair input (issue 25, fix 2) ---------------------------


def fairseq_bert(tmp_path):
    """A tiny BertForMaskedLM (WordPiece tokenizer built here) converted to fairseq with
    se-convert's library (checkpoint, dict.txt and tokenizer/ beside it)."""
    from se_fairseq.convert import hf_to_fairseq

    hf_dir, tokenizer = save_tiny(tmp_path / "bert-hf", "bert")
    checkpoint = str(tmp_path / "bert-fairseq" / "model.pt")
    os.makedirs(os.path.dirname(checkpoint))
    hf_to_fairseq(hf_dir, checkpoint)
    return hf_dir, tokenizer, checkpoint


@pytest.mark.fairseq
def test_a_fairseq_bert_checkpoint_gets_berts_pair_format_and_token_types(tmp_path):
    """[CLS] A [SEP] B [SEP], B as type 1, as BertTokenizerFast encodes the pair from the
    same vocabulary (before: RoBERTa's <s> A </s></s> B </s>, type 0 everywhere, and raw
    text could not be tokenized for a BERT checkpoint at all)."""
    from transformers import BertTokenizerFast

    from se_fairseq.finetune.inputs import example_input
    from se_fairseq.finetune.tasks import read_task

    _, tokenizer, checkpoint = fairseq_bert(tmp_path)
    rte = make_rte(tmp_path / "RTE")
    (run,) = planned({"bert": checkpoint}, [rte], tmp_path / "out")
    assert run.engine == "hf" and run.settings["recipe"] == "bert"
    vocab = tokenizer.get_vocab()
    reference = BertTokenizerFast(vocab=vocab)  # the same vocabulary, BERT's own pair encoding
    task = read_task(rte)
    for i in (0, 3):
        a, b = task.train.texts[0][i], task.train.texts[1][i]
        expected = reference(a, b)
        shown = example_input(run, i)
        assert shown["pieces"] == reference.convert_ids_to_tokens(expected["input_ids"])
        assert shown["token_types"] == expected["token_type_ids"]
        pieces_a, pieces_b = reference.tokenize(a), reference.tokenize(b)
        assert shown["pieces"] == ["[CLS]", *pieces_a, "[SEP]", *pieces_b, "[SEP]"]
        assert shown["token_types"] == [0] * (len(pieces_a) + 2) + [1] * (len(pieces_b) + 1)


@pytest.mark.fairseq
def test_the_converted_bert_checkpoint_round_trips_exactly(tmp_path):
    import torch

    hf_dir, _, checkpoint = fairseq_bert(tmp_path)
    planned({"bert": checkpoint}, [make_rte(tmp_path / "RTE")], tmp_path / "out")
    (converted,) = [
        os.path.join(tmp_path / "out" / "data", d)
        for d in os.listdir(tmp_path / "out" / "data")
        if d.startswith("hf-bert-")
    ]
    original = transformers.BertForMaskedLM.from_pretrained(hf_dir).state_dict()
    back = transformers.BertForMaskedLM.from_pretrained(converted).state_dict()
    assert sorted(original) == sorted(back)
    for name, value in original.items():
        assert torch.equal(value, back[name]), name
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    types = torch.tensor([[0, 0, 0, 1, 1]])
    for model_dir in (hf_dir, converted):  # same logits on a two-segment input
        model = transformers.BertForMaskedLM.from_pretrained(model_dir).eval()
        logits = model(input_ids=ids, token_type_ids=types).logits
        if model_dir == hf_dir:
            first = logits
    assert torch.equal(first, logits)


@pytest.mark.fairseq
def test_a_bert_checkpoint_without_its_tokenizer_is_refused(tmp_path):
    """Continued pretraining saves elsewhere: the tokenizer/ folder is looked for beside
    the checkpoint, its dict.txt and the checkpoint it started from, never rebuilt."""
    import shutil

    _, _, checkpoint = fairseq_bert(tmp_path)
    moved = tmp_path / "continued" / "checkpoint_last.pt"
    os.makedirs(moved.parent)
    shutil.copyfile(checkpoint, moved)
    shutil.copyfile(
        os.path.join(os.path.dirname(checkpoint), "dict.txt"), moved.parent / "dict.txt"
    )
    with pytest.raises(FinetuneError, match="WordPiece tokenizer was not found.*tokenizer/"):
        planned({"bert": str(moved)}, [make_rte(tmp_path / "RTE")], tmp_path / "out")


@pytest.mark.fairseq
def test_the_dry_run_gives_a_fairseq_bert_checkpoint_berts_recipe(tmp_path):
    from se_fairseq.finetune.dryrun import dry_run

    _, _, checkpoint = fairseq_bert(tmp_path)
    rte = make_rte(tmp_path / "RTE", n_train=70)
    doc = dry_run({"b": checkpoint}, [rte], [1], Overrides(), log=quiet)
    assert doc["rows"][0]["updates_per_run"] == 3 * 3 and doc["rows"][0]["batch_size"] == 32
