"""se-finetune: GLUE-layout readers, binarization against fairseq-preprocess, metrics and paired
statistics against independent formulas, the device pool, bad-input errors, and real
sentence_prediction runs (one per kind) with kill-and-resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from se_fairseq.finetune import FinetuneError, Overrides, finetune
from se_fairseq.finetune import metrics as ft_metrics
from se_fairseq.finetune import results as ft_results
from se_fairseq.finetune.tasks import read_task

WORDS = [f"w{i}" for i in range(40)]


def sentence(rng, lo=3, hi=9):
    return " ".join(rng.choice(WORDS, size=rng.integers(lo, hi)))


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines("\t".join(str(c) for c in row) + "\n" for row in rows)


def make_cola(folder, n_train=64, n_dev=24, seed=0):
    """CoLA's layout: no header; source, label, original label, sentence. Label 1 when the
    sentence holds w1 (learnable from the text)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for i in range(n):
            s = sentence(rng)
            if i % 2:
                s += " w1"
            rows.append(
                (f"src{i % 3}", int("w1" in s.split()), "*" if "w1" not in s.split() else "", s)
            )
        write(os.path.join(folder, f"{split}.tsv"), rows)
    return folder


def make_mrpc(folder, n_train=64, n_dev=24, seed=1):
    """MRPC's layout: header; Quality, #1 ID, #2 ID, #1 String, #2 String; sentences with
    unbalanced quote characters (which a csv reader would mangle)."""
    rng = np.random.default_rng(seed)
    header = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [header]
        for i in range(n):
            a = sentence(rng)
            b = a if i % 2 else sentence(rng)
            if i % 5 == 0:
                a = '" ' + a
            rows.append((int(a.strip('" ') == b), 1000 + i, 2000 + i, a, b))
        write(os.path.join(folder, f"{split}.tsv"), rows)
    return folder


def make_stsb(folder, n_train=64, n_dev=24, seed=2):
    """STS-B's layout: header; 10 columns, the pair in 8 and 9, the score (0 to 5) in 10."""
    rng = np.random.default_rng(seed)
    header = (
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
    )
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [header]
        for i in range(n):
            a, b = sentence(rng), sentence(rng)
            score = round(5 * len(set(a.split()) & set(b.split())) / max(1, len(set(a.split()))), 3)
            rows.append((i, "main-news", "x", "2012", i, "none", "none", a, b, score))
        write(os.path.join(folder, f"{split}.tsv"), rows)
    return folder


# -- readers -------------------------------------------------------------------------


def test_glue_layouts_read_their_columns(tmp_path):
    cola = read_task(make_cola(str(tmp_path / "CoLA")))
    assert cola.layout == "glue" and cola.kind == "classification" and cola.metric == "mcc"
    first = open(tmp_path / "CoLA" / "train.tsv").readline().rstrip("\n").split("\t")
    assert cola.train.texts[0][0] == first[3] and cola.train.labels[0] == first[1]
    assert len(cola.train) == 64  # no header: the first row is an example
    mrpc = read_task(make_mrpc(str(tmp_path / "MRPC")))
    assert mrpc.num_inputs == 2 and mrpc.metric == "f1" and len(mrpc.train) == 64
    assert mrpc.train.texts[0][0].startswith('" ')  # quotes kept as text
    assert mrpc.train.lines[0] == 2
    stsb = read_task(make_stsb(str(tmp_path / "STS-B")))
    assert stsb.kind == "regression" and stsb.label_scale == 5.0 and stsb.metric == "pearson"


def test_qqp_drops_malformed_rows_and_mnli_reads_dev_matched(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    good = ["1", "1", "2", "w1 w2", "w3 w4", "0"]
    write(
        str(tmp_path / "QQP" / "train.tsv"),
        [header, good, good[:5], ["2", "3", "4", "w5", "w6", "1"]],
    )
    write(str(tmp_path / "QQP" / "dev.tsv"), [header, good, good + ["extra"]])
    qqp = read_task(str(tmp_path / "QQP"))
    assert len(qqp.train) == 2 and len(qqp.dev) == 1
    assert "dropped" in qqp.notes[0]
    mnli = tmp_path / "MNLI"
    row = [str(i) for i in range(12)]
    row[8], row[9], row[11] = "w1 w2", "w3", "entailment"
    dev = [str(i) for i in range(16)]
    dev[8], dev[9], dev[11], dev[15] = "w1", "w2", "neutral", "contradiction"
    write(str(mnli / "train.tsv"), [MNLI_HEADER, row, row[:11] + ["contradiction"]])
    write(str(mnli / "dev_matched.tsv"), [MNLI_DEV_HEADER, dev])
    task = read_task(str(mnli))
    assert task.dev.labels == ["contradiction"]  # gold label: column 16, not 12
    assert task.train.texts == [["w1 w2", "w1 w2"], ["w3", "w3"]]


# GLUE's own headers (as its download script writes the files)
MNLI_HEADER = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
    "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label"
).split()
MNLI_DEV_HEADER = MNLI_HEADER[:11] + ["label2", "label3", "label4", "label5", "gold_label"]


@pytest.mark.parametrize(
    "task, header, texts, label",
    [
        ("RTE", ["index", "sentence1", "sentence2", "label"], (1, 2), 3),
        ("QNLI", ["index", "question", "sentence", "label"], (1, 2), 3),
        ("SST-2", ["sentence", "label"], (0,), 1),
        ("QQP", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], (3, 4), 5),
        ("MRPC", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], (3, 4), 0),
        (
            "STS-B",
            [
                "index",
                "genre",
                "filename",
                "year",
                "old_index",
                "source1",
                "source2",
                "sentence1",
                "sentence2",
                "score",
            ],
            (7, 8),
            9,
        ),
        # exported from Hugging Face datasets (features, then idx)
        ("RTE", ["sentence1", "sentence2", "label", "idx"], (0, 1), 2),
        ("QNLI", ["question", "sentence", "label", "idx"], (0, 1), 2),
        ("MRPC", ["sentence1", "sentence2", "label", "idx"], (0, 1), 2),
        ("QQP", ["question1", "question2", "label", "idx"], (0, 1), 2),
        ("STS-B", ["sentence1", "sentence2", "label", "idx"], (0, 1), 2),
        ("CoLA", ["sentence", "label", "idx"], (0,), 1),
        ("SST-2", ["sentence", "label", "idx"], (0,), 1),
    ],
)
def test_glue_files_are_read_by_their_header(tmp_path, task, header, texts, label):
    rng = np.random.default_rng(3)
    folder = tmp_path / task
    values = ["0.5", "4.0"] if task == "STS-B" else ["0", "1"]
    written = {}
    for split in ("train", "dev"):
        rows = [header]
        for i in range(6):
            row = [f"x{i}" for _ in header]  # idx, ids, genre...: never text, never a label
            for c in texts:
                row[c] = sentence(rng)
            row[label] = values[i % 2]
            rows.append(row)
        write(str(folder / f"{split}.tsv"), rows)
        written[split] = rows
    data = read_task(str(folder))
    for split, rows in written.items():
        got = getattr(data, split)
        assert got.labels == [r[label] for r in rows[1:]]
        assert got.texts == [[r[c] for r in rows[1:]] for c in texts]
        assert got.lines[0] == 2


def test_glue_header_with_other_columns_is_refused(tmp_path):
    folder = tmp_path / "RTE"
    header = ["id", "premise", "hypothesis", "label"]
    for split in ("train", "dev"):
        write(
            str(folder / f"{split}.tsv"), [header, ["1", "w1", "w2", "0"], ["2", "w3", "w4", "1"]]
        )
    with pytest.raises(FinetuneError) as err:
        read_task(str(folder))
    message = str(err.value)
    assert "train.tsv: the header row ['id', 'premise', 'hypothesis', 'label']" in message
    assert "expected ['sentence1', 'sentence2', 'label']" in message
    # QNLI's names, in an RTE folder: refused, not read by position
    for split in ("train", "dev"):
        write(
            str(folder / f"{split}.tsv"),
            [
                ["question", "sentence", "label", "idx"],
                ["w1", "w2", "0", "0"],
                ["w3", "w4", "1", "1"],
            ],
        )
    with pytest.raises(FinetuneError, match=r"does not hold RTE's columns"):
        read_task(str(folder))


def test_a_byte_order_mark_before_a_header_is_dropped(tmp_path):
    for name, header in (
        ("mytask", "sentence\tlabel"),
        ("MRPC", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        row = "w1\ta\n" if name == "mytask" else "a\t1\t2\tw1\tw2\n"
        other = "w2\tb\n" if name == "mytask" else "b\t1\t2\tw1\tw3\n"
        for split in ("train", "dev"):
            (folder / f"{split}.tsv").write_bytes(("\ufeff" + header + "\n" + row + other).encode())
        data = read_task(str(folder))
        assert data.train.labels == ["a", "b"] and len(data.dev) == 2


@pytest.mark.parametrize(
    "case, message",
    [
        ("short_row", "train.tsv, line 3: no column 4 (text 1)"),
        ("missing_dev", "dev.tsv: file not found"),
        ("no_label", "has no 'label' column"),
        ("no_text", "names no text column"),
        ("regression_text", "regression label 'high' is not a number"),
        ("unseen_label", "never occur in"),
        ("bad_kind", "kind must be one of"),
        ("empty_text", "line 2, column 1 (text 1 ('sentence')): empty text"),
        ("spaced_label", "train.tsv, line 3: label 'not ok' holds whitespace"),
        ("spaced_dev_label", "dev.tsv, line 2: label 'a b' holds whitespace"),
        ("bad_positive", "the positive class 'c' is not a label of"),
        ("positive_regression", "'positive' names the positive class of a classification"),
    ],
)
def test_unreadable_task_folders_name_file_and_column(tmp_path, case, message):
    folder = tmp_path / ("CoLA" if case == "short_row" else "mytask")
    if case == "short_row":
        make_cola(str(folder))
        lines = open(folder / "train.tsv").read().splitlines()
        lines[2] = "\t".join(lines[2].split("\t")[:3])
        (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    else:
        train = [["sentence", "label"], ["w1 w2", "a"], ["w3", "b"]]
        dev = [["sentence", "label"], ["w1", "a"]]
        if case == "no_label":
            train[0] = ["sentence", "gold"]
        if case == "no_text":
            train[0] = ["words", "label"]
        if case == "regression_text":
            (folder / "task.json").parent.mkdir(parents=True, exist_ok=True)
            (folder / "task.json").write_text('{"kind": "regression"}')
            train = [["sentence", "label"], ["w1", "0.5"], ["w2", "high"]]
        if case == "unseen_label":
            dev = [["sentence", "label"], ["w1", "c"]]
        if case == "bad_kind":
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "task.json").write_text('{"kind": "ranking"}')
        if case == "empty_text":
            train = [["sentence", "label"], [" ", "a"], ["w3", "b"]]
        if case == "spaced_label":
            train = [["sentence", "label"], ["w1 w2", "a"], ["w3", "not ok"]]
        if case == "spaced_dev_label":
            dev = [["sentence", "label"], ["w1", "a b"]]
        if case in ("bad_positive", "positive_regression"):
            folder.mkdir(parents=True, exist_ok=True)
            kind = "regression" if case == "positive_regression" else "classification"
            (folder / "task.json").write_text(json.dumps({"kind": kind, "positive": "c"}))
        write(str(folder / "train.tsv"), train)
        if case != "missing_dev":
            write(str(folder / "dev.tsv"), dev)
    with pytest.raises(FinetuneError, match=None) as err:
        read_task(str(folder))
    assert message in str(err.value), str(err.value)


# -- metrics and statistics against independent formulas --------------------------------


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.7, y, 1 - y)
    ys, ps = [str(v) for v in y], [str(v) for v in p]
    tp, tn = int(((p == 1) & (y == 1)).sum()), int(((p == 0) & (y == 0)).sum())
    fp, fn = int(((p == 1) & (y == 0)).sum()), int(((p == 0) & (y == 1)).sum())
    assert ft_metrics.compute("accuracy", ps, ys) == pytest.approx((tp + tn) / 200)
    assert ft_metrics.compute("f1", ps, ys) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert ft_metrics.compute("mcc", ps, ys) == pytest.approx(mcc)
    a, b = rng.normal(size=100), rng.normal(size=100)
    b = a + b
    assert ft_metrics.compute("pearson", list(a), list(b)) == pytest.approx(np.corrcoef(a, b)[0, 1])
    ranks = lambda v: np.argsort(np.argsort(v))  # no ties in continuous draws
    assert ft_metrics.compute("spearman", list(a), list(b)) == pytest.approx(
        np.corrcoef(ranks(a), ranks(b))[0, 1]
    )


def test_paired_differences_and_average_over_tasks():
    records = []
    vals = {
        ("base", "t1"): [0.70, 0.72, 0.71],
        ("se", "t1"): [0.73, 0.74, 0.72],
        ("base", "t2"): [0.50, 0.55, 0.52],
        ("se", "t2"): [0.50, 0.54, 0.55],
    }
    for (c, t), vs in vals.items():
        for seed, v in enumerate(vs, 1):
            records.append(
                {
                    "checkpoint": c,
                    "task": t,
                    "seed": seed,
                    "value": v,
                    "metric": "accuracy",
                    "metrics": {"accuracy": v},
                }
            )
    doc = ft_results.summarize(records, ["base", "se"], ["t1", "t2"], baseline="base")
    d = np.array(vals["se", "t1"]) - np.array(vals["base", "t1"])
    p = doc["results"]["se"]["t1"]["vs_baseline"]
    assert p["mean"] == pytest.approx(d.mean()) and p["n"] == 3
    assert p["se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(3))
    # exact power of the two-sided paired t-test at 5 %: 80 % at 5.6535 standard errors (n = 3)
    assert p["detectable"] == pytest.approx(5.6535 * p["se"], rel=1e-4)
    assert p["detected"] == (abs(d.mean()) > 4.3027 * p["se"])
    avg = doc["results"]["se"]["average"]
    per_seed = [(vals["se", "t1"][i] + vals["se", "t2"][i]) / 2 for i in range(3)]
    assert avg["mean"] == pytest.approx(np.mean(per_seed))
    assert avg["sd"] == pytest.approx(np.std(per_seed, ddof=1))
    md = ft_results.markdown(doc)
    assert "| se |" in md and "Difference against **base**" in md


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 20])
def test_the_detectable_difference_is_the_exact_noncentral_t_power(n):
    """The difference detected with 80 % power by a two-sided paired t-test at 5 %, solved
    here independently on scipy's noncentral t (upper tail; the lower tail is below 1e-6)."""
    from scipy import optimize, stats

    crit = stats.t.ppf(0.975, n - 1)
    expected = optimize.brentq(lambda d: stats.nct.sf(crit, n - 1, d) - 0.8, 0.5, 40)
    got = ft_results.detectable_in_se(n)
    assert got == pytest.approx(expected, rel=1e-5)
    lower = np.nan_to_num(stats.nct.cdf(-crit, n - 1, got))  # NaN for 1 dof: it is ~1e-17
    power = stats.nct.sf(crit, n - 1, got) + lower
    assert power == pytest.approx(0.8, abs=1e-6)
    if n == 3:
        assert round(got, 2) == 5.65
    d = {s: 0.01 * s for s in range(1, n + 1)}
    p = ft_results.paired({s: 0.7 + v for s, v in d.items()}, {s: 0.7 for s in d})
    assert p["detectable"] == pytest.approx(got * p["se"], rel=1e-9)


def test_the_positive_class_of_f1_is_set_in_task_json(untrained_checkpoint, tmp_path, monkeypatch):
    """task.json {"positive": "different"}: F1 is that class's (not the alphabetically last
    label's), from the folder through the plan and the worker to done.json."""
    from sklearn.metrics import f1_score

    from se_fairseq.finetune import prepare_data, worker
    from se_fairseq.finetune.plan import plan_runs
    from se_fairseq.finetune.runner import prepare

    folder = tmp_path / "para"
    labels = ["same", "different", "different", "same", "different", "same"]
    rows = [("sentence1", "sentence2", "label")] + [
        (f"w{i}", f"w{i + 1}", y) for i, y in enumerate(labels)
    ]
    write(str(folder / "train.tsv"), rows)
    write(str(folder / "dev.tsv"), rows)
    (folder / "task.json").write_text('{"metric": "f1", "positive": "different"}')
    assert read_task(str(folder)).positive == "different"
    infos, datas, manifests, dirs = prepare_data(
        {"c": untrained_checkpoint},
        [str(folder)],
        str(tmp_path / "out"),
        {"bpe": "none"},
        log=lambda *a: None,
    )
    run = plan_runs(infos, datas, manifests, dirs, [1], str(tmp_path / "out"), Overrides())[0]
    assert run.positive_label == "different"
    prepare(run, run.fingerprint())
    predictions = ["same", "same", "different", "same", "same", "same"]
    monkeypatch.setattr(
        worker, "train", lambda spec: open(os.path.join(run.run_dir, "checkpoint_best.pt"), "w")
    )
    monkeypatch.setattr(
        worker, "predict", lambda spec, path: (predictions, [[0.0, 0.0]] * len(labels), 1)
    )
    worker.main(run.run_dir)
    done = json.load(open(os.path.join(run.run_dir, "done.json")))
    expected = f1_score(labels, predictions, pos_label="different")
    assert done["metrics"]["f1"] == pytest.approx(expected)
    assert expected != pytest.approx(f1_score(labels, predictions, pos_label="same"))


# -- what a run cannot tell (issue 39, item 8) ----------------------------------------------


def seed_records(values_of):
    """done.json records: {(checkpoint, task): [value per seed 1, 2, ...]}."""
    return [
        {
            "checkpoint": c,
            "task": t,
            "seed": seed,
            "value": v,
            "metric": "accuracy",
            "metrics": {"accuracy": v},
        }
        for (c, t), values in values_of.items()
        for seed, v in enumerate(values, 1)
    ]


def paired_row(md, checkpoint):
    """The checkpoint's row of results.md's paired-difference table."""
    paired_table = md.split("Difference against")[1]
    return next(line for line in paired_table.splitlines() if line.startswith(f"| {checkpoint} |"))


def test_equal_seeds_resolve_no_difference_instead_of_a_detectable_zero():
    """Both models score the same on every seed (each predicted the majority class, say):
    the paired differences have no spread, so the run resolves nothing. results.md says
    n/a where it printed a detectable difference of 0.00; results.json says no_spread
    with a NaN detectable, and the method says what that means."""
    records = seed_records({("base", "t"): [0.5, 0.5, 0.5], ("se", "t"): [0.5, 0.5, 0.5]})
    doc = ft_results.summarize(records, ["base", "se"], ["t"], baseline="base")
    row = paired_row(ft_results.markdown(doc), "se")
    assert "(0.00)" not in row
    assert row.count("+0.00 ± 0.00 (n/a: no spread, the same difference on every seed)") == 2
    assert "can resolve no difference" in ft_results.markdown(doc)
    p = doc["results"]["se"]["t"]["vs_baseline"]
    assert math.isnan(p["detectable"]) and p["se"] == 0 and p["mean"] == 0
    assert p["no_spread"] is True and p["detected"] is False
    assert "no_spread" in doc["method"]


def test_the_same_nonzero_difference_on_every_seed_is_not_a_detection():
    """+6 points on every seed, the differences equal but for float rounding: no spread, so
    the t-test is undefined; it was reported as detected with a detectable ~1e-14."""
    se, base = {1: 0.53, 2: 0.51, 3: 0.56}, {1: 0.47, 2: 0.45, 3: 0.50}
    p = ft_results.paired(se, base)
    assert not p["detected"] and math.isnan(p["detectable"])
    assert p["mean"] == pytest.approx(0.06) and p["se"] == 0 and p["no_spread"]
    spread = ft_results.paired({1: 0.53, 2: 0.52, 3: 0.56}, base)  # 6, 7, 6 points
    assert not spread["no_spread"] and spread["se"] > 0
    assert spread["detectable"] == pytest.approx(5.6535 * spread["se"], rel=1e-4)


def test_a_model_predicting_one_class_is_recorded_and_warned_about(
    untrained_checkpoint, tmp_path, monkeypatch
):
    """The worker records how many dev examples each class got (done.json
    prediction_counts); a run that gave every example the same class is listed in
    results.json (single_class) and warned about in results.md."""
    from se_fairseq.finetune import prepare_data, worker
    from se_fairseq.finetune.plan import plan_runs
    from se_fairseq.finetune.runner import prepare

    out = str(tmp_path / "out")
    infos, datas, manifests, dirs = prepare_data(
        {"c": untrained_checkpoint},
        [generic_task(str(tmp_path / "mytask"))],
        out,
        {"bpe": "none"},
        log=lambda *a: None,
    )
    runs = plan_runs(infos, datas, manifests, dirs, [1, 2], out, Overrides())
    records = []
    for run, predicted in zip(runs, (["a"] * 8, ["a", "b"] * 4)):
        prepare(run, run.fingerprint())
        monkeypatch.setattr(
            worker, "train", lambda run, d=run.run_dir: open(f"{d}/checkpoint_best.pt", "w")
        )
        monkeypatch.setattr(
            worker, "predict", lambda run, path, p=predicted: (p, [[0.0, 0.0]] * 8, 1)
        )
        worker.main(run.run_dir)
        records.append(json.load(open(os.path.join(run.run_dir, "done.json"))))
    assert [r["prediction_counts"] for r in records] == [{"a": 8}, {"a": 4, "b": 4}]
    doc = ft_results.summarize(records, ["c"], ["mytask"])
    assert doc["single_class"] == [{"checkpoint": "c", "task": "mytask", "seeds": {"1": "a"}}]
    md = ft_results.markdown(doc)
    assert "**Warning: single-class predictions.**" in md
    assert "- c on mytask: every dev example got the same class ('a' on seed 1)" in md


@pytest.mark.subprocess
def test_single_class_runs_are_warned_about_on_the_log(untrained_checkpoint, tmp_path, monkeypatch):
    """The run's done line and the end of the invocation say it, per checkpoint and task."""
    from se_fairseq.finetune import runner

    script = tmp_path / "one_class_worker.py"
    counts = '"metrics": {"accuracy": 0.5}, "prediction_counts": {"a": 8},'
    script.write_text(FAKE_WORKER.replace('"metrics": {"accuracy": 0.5},', counts))
    real_run_all = runner.run_all
    monkeypatch.setattr(
        runner,
        "run_all",
        lambda runs, **kw: real_run_all(
            runs, command=lambda run_dirs: [sys.executable, str(script), *run_dirs], **kw
        ),
    )
    logs = []
    doc = finetune(
        {"c": untrained_checkpoint},
        [generic_task(str(tmp_path / "mytask"))],
        str(tmp_path / "out"),
        seeds=[1, 2],
        bpe="none",
        jobs=1,
        devices=[],
        log=logs.append,
    )
    assert doc["single_class"][0]["seeds"] == {"1": "a", "2": "a"}
    done_lines = [line for line in logs if "] done c/mytask/seed" in line]
    assert len(done_lines) == 2
    assert all(line.endswith("; every dev prediction is 'a'") for line in done_lines)
    assert (
        "[finetune] warning: c on mytask: every dev example got the same class ('a' on seeds "
        "1, 2); the metric of such a run is that class's alone"
    ) in logs


# -- the device pool ---------------------------------------------------------------------

FAKE_WORKER = r"""
import json, os, sys, time
for run_dir in sys.argv[1:]:
    try:  # the real worker's claim protocol
        os.close(os.open(os.path.join(run_dir, "claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        continue
    start = time.time()
    time.sleep(0.6)
    spec = json.load(open(os.path.join(run_dir, "spec.json")))
    json.dump({"device": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(),
               "checkpoint": spec["checkpoint"], "task": spec["task"], "seed": spec["seed"],
               "metric": "accuracy", "value": 0.5, "metrics": {"accuracy": 0.5},
               "fingerprint": spec["fingerprint"]}, open(os.path.join(run_dir, "done.tmp"), "w"))
    # renamed into place as the real worker does: the pool reads done.json once it exists
    os.replace(os.path.join(run_dir, "done.tmp"), os.path.join(run_dir, "done.json"))
"""


def fake_runs(out, n=4):
    from se_fairseq.finetune.plan import RunSpec

    return [
        RunSpec(
            checkpoint="c",
            checkpoint_path="c.pt",
            task="t",
            seed=s,
            run_dir=str(out / f"seed{s}"),
            data_dir="d",
            kind="classification",
            metric="accuracy",
            labels=["0", "1"],
            label_scale=None,
            eval_checkpoint="best",
            precision="auto",
            fairseq_args=[],
            settings={},
        )
        for s in range(1, n + 1)
    ]


@pytest.mark.subprocess
def test_pool_spreads_runs_over_devices_and_skips_finished_runs(tmp_path):
    from se_fairseq.finetune.runner import run_all

    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    logs = []
    runs = fake_runs(tmp_path, 4)
    done, failures = run_all(
        runs,
        devices="0,1",
        log=logs.append,
        poll=0.05,
        command=lambda run_dirs: [sys.executable, str(script), *run_dirs],
    )
    assert len(done) == 4 and failures == []
    records = sorted(done.values(), key=lambda r: r["start"])
    assert {r["device"] for r in records} == {"0", "1"}
    for a in records:  # runs that overlapped in time ran on different devices
        for b in records:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["device"] != b["device"]
    assert records[1]["start"] < records[0]["end"]  # two at once
    logs.clear()
    again, _ = run_all(
        runs,
        devices="0,1",
        log=logs.append,
        command=lambda run_dirs: pytest.fail("a finished run was started again"),
    )
    assert len(again) == 4 and "4 already done, 0 to run" in logs[0]


FAILING_WORKER = FAKE_WORKER.replace(
    "    start = time.time()",
    """    spec = json.load(open(os.path.join(run_dir, "spec.json")))
    if spec["seed"] == 2:  # as the real worker leaves a run that raises
        open(os.path.join(run_dir, "train.log"), "w").write("fairseq output...\\n")
        open(os.path.join(run_dir, "failed.txt"), "w").write(
            "Traceback (most recent call last):\\n  ...\\n"
            "RuntimeError: train.idx: corrupted index\\n")
        continue
    start = time.time()""",
)


def generic_task(folder, n=8):
    rows = [("sentence", "label")] + [(f"w{i} w{i + 1}", "ab"[i % 2]) for i in range(n)]
    write(os.path.join(folder, "train.tsv"), rows)
    write(os.path.join(folder, "dev.tsv"), rows)
    return folder


@pytest.mark.subprocess
def test_results_are_written_from_the_finished_runs_with_the_failures_listed(
    untrained_checkpoint, tmp_path, monkeypatch
):
    from se_fairseq.finetune import runner

    script = tmp_path / "failing_worker.py"
    script.write_text(FAILING_WORKER)
    real_run_all = runner.run_all
    monkeypatch.setattr(
        runner,
        "run_all",
        lambda runs, **kw: real_run_all(
            runs, command=lambda run_dirs: [sys.executable, str(script), *run_dirs], **kw
        ),
    )
    out = tmp_path / "out"
    logs = []
    doc = finetune(
        {"c": untrained_checkpoint},
        [generic_task(str(tmp_path / "mytask"))],
        str(out),
        seeds=[1, 2, 3],
        bpe="none",
        jobs=2,
        devices=[],
        log=logs.append,
    )
    on_disk = json.load(open(out / "results.json"))
    for d in (doc, on_disk):
        entry = d["results"]["c"]["mytask"]
        assert entry["n"] == 2 and sorted(entry["seeds"]) == ["1", "3"]
        assert [f["key"] for f in d["failures"]] == ["c/mytask/seed2"]
        failure = d["failures"][0]
        assert failure["log"] == os.path.join("runs", "c", "mytask", "seed2", "train.log")
        assert failure["reason"] == "RuntimeError: train.idx: corrupted index"
    md = open(out / "results.md").read()
    assert "| c | 50.00 ± 0.00 (2)" in md
    assert "**1 runs failed**" in md
    assert "| c/mytask/seed2 | runs/c/mytask/seed2/train.log | RuntimeError: train.idx" in md
    assert any("FAILED c/mytask/seed2" in line for line in logs)
    # the command prints the table and exits non-zero, naming the failures
    from se_fairseq.cli.finetune import cli_main

    with pytest.raises(SystemExit, match="1 runs failed"):
        cli_main(
            [
                "--checkpoint",
                f"c={untrained_checkpoint}",
                "--task",
                str(tmp_path / "mytask"),
                "--out",
                str(out),
                "--seeds",
                "1,2,3",
                "--bpe",
                "none",
                "--devices",
                "cpu",
            ]
        )


@pytest.mark.subprocess
def test_a_moved_out_folder_keeps_its_finished_runs(untrained_checkpoint, tmp_path, monkeypatch):
    import shutil

    from se_fairseq.finetune import runner

    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    started = []

    def command(run_dirs):
        started.append(list(run_dirs))
        return [sys.executable, str(script), *run_dirs]

    real_run_all = runner.run_all
    monkeypatch.setattr(
        runner, "run_all", lambda runs, **kw: real_run_all(runs, command=command, **kw)
    )
    task = generic_task(str(tmp_path / "mytask"))
    kwargs = dict(seeds=[1, 2], bpe="none", jobs=1, devices=[])
    finetune(
        {"c": untrained_checkpoint}, [task], str(tmp_path / "out"), log=lambda *a: None, **kwargs
    )
    moved = tmp_path / "elsewhere" / "moved-out"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "out"), str(moved))
    os.remove(moved / "runs" / "c" / "mytask" / "seed2" / "done.json")  # as if killed
    started.clear()
    logs = []
    doc = finetune({"c": untrained_checkpoint}, [task], str(moved), log=logs.append, **kwargs)
    assert any("2 runs: 1 already done, 1 to run" in line for line in logs), logs
    assert started == [[str(moved / "runs" / "c" / "mytask" / "seed2")]]
    assert doc["results"]["c"]["mytask"]["n"] == 2
    spec = json.load(open(moved / "runs" / "c" / "mytask" / "seed2" / "spec.json"))
    assert spec["run_dir"] == str(moved / "runs" / "c" / "mytask" / "seed2")
    assert spec["data_dir"].startswith(str(moved / "data"))
    assert spec["fairseq_args"][0] == spec["data_dir"]
    assert spec["fairseq_args"][spec["fairseq_args"].index("--save-dir") + 1] == spec["run_dir"]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_real_run_failing_on_corrupted_data_leaves_the_others_reported(
    vanilla_checkpoint, tmp_path
):
    """Real workers: one task's binarized train split is truncated after binarization, its
    run fails inside fairseq; the other task's run finishes and the table is written."""
    from se_fairseq.finetune import prepare_data

    good = make_cola(str(tmp_path / "CoLA"), n_train=32, n_dev=8)
    bad = generic_task(str(tmp_path / "broken"), n=16)
    out = str(tmp_path / "out")
    _, _, _, dirs = prepare_data(
        {"tiny": vanilla_checkpoint}, [good, bad], out, {"bpe": "none"}, log=lambda *a: None
    )
    bin_path = os.path.join(dirs["tiny", "broken"], "input0", "train.bin")
    with open(bin_path, "r+b") as f:
        f.truncate(3)  # the index still names all the examples
    doc = finetune(
        {"tiny": vanilla_checkpoint},
        [good, bad],
        out,
        seeds=[1],
        bpe="none",
        jobs=1,
        devices=[],
        log=lambda *a: None,
        overrides=Overrides(epochs=1, batch_size=8, fairseq_args=["--num-workers", "0"]),
    )
    assert doc["results"]["tiny"]["CoLA"]["n"] == 1
    assert doc["results"]["tiny"]["broken"]["n"] == 0
    assert [f["key"] for f in doc["failures"]] == ["tiny/broken/seed1"]
    md = open(os.path.join(out, "results.md")).read()
    assert "| tiny/broken/seed1 | runs/tiny/broken/seed1/train.log |" in md
    assert os.path.exists(os.path.join(out, "runs", "tiny", "broken", "seed1", "failed.txt"))


def test_a_run_folder_with_other_settings_is_refused(tmp_path):
    from se_fairseq.finetune.runner import prepare

    run = fake_runs(tmp_path, 1)[0]
    prepare(run, run.fingerprint())
    run.settings = {"lr": 1.0}
    with pytest.raises(FinetuneError, match="holds a run with other settings .*settings"):
        prepare(run, run.fingerprint())


@pytest.mark.fairseq
def test_a_run_does_not_inherit_the_previous_runs_best_score(monkeypatch):
    """A worker trains several runs in one process; fairseq's save_checkpoint keeps the best
    validation score seen on the function itself, so a second run scoring below the first
    would never write its checkpoint_best.pt. train() must start each run without it."""
    from fairseq import checkpoint_utils
    from fairseq_cli import train as fairseq_train

    from se_fairseq.finetune import worker

    seen = []
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(
        fairseq_train,
        "cli_main",
        lambda: seen.append(
            (getattr(checkpoint_utils.save_checkpoint, "best", None), list(sys.argv))
        ),
    )
    checkpoint_utils.save_checkpoint.best = 0.99  # as an earlier run of this worker leaves it
    try:
        run = fake_runs(Path("unused"), 1)[0]
        worker.train(replace(run, fairseq_args=["data", "--seed", "2"], precision="fp32"))
    finally:
        vars(checkpoint_utils.save_checkpoint).pop("best", None)
    assert seen == [(None, ["fairseq-train", "data", "--seed", "2", "--cpu"])]


# -- checkpoints, tokenizers, binarization --------------------------------------------------


def test_checkpoint_architecture_options_rebuild_the_model(vanilla_checkpoint):
    from fairseq import options

    from se_fairseq.finetune.checkpoint import read_checkpoint

    info = read_checkpoint(vanilla_checkpoint)
    assert info.arch == "roberta_base" and info.max_positions == 64
    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [
            "data",
            "--task",
            "sentence_prediction",
            "--criterion",
            "sentence_prediction",
            "--num-classes",
            "2",
            "--arch",
            info.arch,
            *info.model_args,
        ],
    )
    assert (
        args.encoder_layers,
        args.encoder_embed_dim,
        args.encoder_ffn_embed_dim,
        args.encoder_attention_heads,
    ) == (2, 32, 64, 2)


def test_dictionary_mismatch_and_missing_bpe_files(vanilla_checkpoint, tmp_path):
    from se_fairseq.finetune.checkpoint import read_checkpoint
    from se_fairseq.finetune.encode import tokenizer_spec

    other = tmp_path / "dict.txt"
    dict_path = read_checkpoint(vanilla_checkpoint).dict_path
    other.write_text(open(dict_path).read() + "extra 1\n")
    with pytest.raises(
        FinetuneError,
        match=r"dictionary mismatch: checkpoint .* has \d+ token "
        r"embeddings but .*dict.txt gives \d+ symbols",
    ):
        read_checkpoint(vanilla_checkpoint, dict_path=str(other))
    with pytest.raises(
        FinetuneError, match="missing BPE file: --gpt2-encoder-json .*nope.json does not exist"
    ):
        tokenizer_spec(
            "gpt2", gpt2_encoder_json=str(tmp_path / "nope.json"), gpt2_vocab_bpe=str(other)
        )
    with pytest.raises(FinetuneError, match="missing BPE file: --gpt2-vocab-bpe is the URL"):
        tokenizer_spec(
            checkpoint_bpe={"_name": "gpt2", "gpt2_vocab_bpe": "https://x/vocab.bpe"},
            gpt2_encoder_json=str(other),
        )
    with pytest.raises(FinetuneError, match="missing BPE file: give --sentencepiece-model"):
        tokenizer_spec("sentencepiece")
    with pytest.raises(FinetuneError, match="records no BPE"):
        tokenizer_spec(checkpoint_bpe={})


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "{}"])
def test_a_bad_encoder_json_is_a_one_line_error_naming_it(untrained_checkpoint, tmp_path, content):
    from se_fairseq.cli.finetune import cli_main

    encoder = tmp_path / "encoder.json"
    encoder.write_text(content)
    vocab = tmp_path / "vocab.bpe"
    vocab.write_text("#version: 0.2\nw 1\n")
    folder = generic_task(str(tmp_path / "mytask"))
    with pytest.raises(SystemExit) as err:
        cli_main(
            [
                "--checkpoint",
                f"c={untrained_checkpoint}",
                "--task",
                folder,
                "--out",
                str(tmp_path / "out"),
                "--bpe",
                "gpt2",
                "--gpt2-encoder-json",
                str(encoder),
                "--gpt2-vocab-bpe",
                str(vocab),
            ]
        )
    message = str(err.value.code)
    assert message.startswith(f"se-finetune: error: --gpt2-encoder-json {encoder}: not a GPT-2 ")
    assert "\n" not in message


@pytest.mark.fairseq
def test_a_bad_vocab_bpe_is_an_error_naming_its_line(tmp_path):
    from se_fairseq.finetune.encode import Tokenizer, tokenizer_spec

    encoder = tmp_path / "encoder.json"
    encoder.write_text('{"w": 0}')
    vocab = tmp_path / "vocab.bpe"
    vocab.write_text("#version: 0.2\nw 1\njunk\n")
    with pytest.raises(FinetuneError, match=r"vocab.bpe, line 3: not a BPE merge \(two pieces\)"):
        Tokenizer(tokenizer_spec("gpt2", gpt2_encoder_json=str(encoder), gpt2_vocab_bpe=str(vocab)))


@pytest.mark.fairseq
@pytest.mark.parametrize("junk", ["empty", "bytes", "tensor", "no_model"])
def test_a_junk_checkpoint_is_a_one_line_error_naming_it(tmp_path, junk):
    import torch

    from se_fairseq.cli.finetune import cli_main
    from se_fairseq.finetune.checkpoint import read_checkpoint

    path = tmp_path / "ckpt" / "checkpoint.pt"
    path.parent.mkdir()
    if junk == "empty":
        path.write_bytes(b"")
    elif junk == "bytes":
        path.write_bytes(os.urandom(4096))
    elif junk == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        torch.save({"args": None, "weights": {}}, path)
    with pytest.raises(FinetuneError) as err:
        read_checkpoint(str(path))
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} ") and "\n" not in message, message
    assert "cannot be read as a fairseq checkpoint" in message or "is not a fairseq" in message
    with pytest.raises(SystemExit) as exit_:
        cli_main(
            [
                "--checkpoint",
                f"c={path}",
                "--task",
                generic_task(str(tmp_path / "t")),
                "--out",
                str(tmp_path / "out"),
                "--bpe",
                "none",
            ]
        )
    assert str(exit_.value.code) == f"se-finetune: error: {message}"


def test_text_outside_the_dictionary_is_a_mismatch(vanilla_checkpoint, tmp_path):
    folder = tmp_path / "words"
    write(str(folder / "train.tsv"), [["sentence", "label"], ["w1 w2", "a"], ["w3", "b"]])
    write(str(folder / "dev.tsv"), [["sentence", "label"], ["hello there", "a"], ["w1 w2", "b"]])
    with pytest.raises(
        FinetuneError, match=r"dictionary mismatch: \d+ % of the tokens of .*dev.tsv"
    ):
        finetune(
            {"v": vanilla_checkpoint},
            [str(folder)],
            str(tmp_path / "out"),
            bpe="none",
            log=lambda *a: None,
        )


def test_binarization_equals_fairseq_preprocess(vanilla_checkpoint, tmp_path):
    """input0/input1/label as preprocess_GLUE_tasks.sh makes them with fairseq-preprocess
    (fairseq_cli.preprocess.main, in-process)."""
    from se_fairseq.finetune import prepare_data

    task_dir = make_mrpc(str(tmp_path / "MRPC"))
    infos, datas, manifests, dirs = prepare_data(
        {"v": vanilla_checkpoint},
        [task_dir],
        str(tmp_path / "out"),
        {"bpe": "none"},
        log=lambda *a: None,
    )
    ours = dirs["v", "MRPC"]
    task = datas[0]
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, attr in (("train", "train"), ("dev", "dev")):
        for i in range(2):
            (raw / f"{split}.input{i}").write_text("\n".join(getattr(task, attr).texts[i]) + "\n")
        (raw / f"{split}.label").write_text("\n".join(getattr(task, attr).labels) + "\n")
    from fairseq import options
    from fairseq_cli import preprocess

    ref = tmp_path / "ref"
    for lang, extra in (
        ("input0", ["--srcdict", infos[0].dict_path]),
        ("input1", ["--srcdict", infos[0].dict_path]),
        ("label", []),
    ):
        preprocess.main(
            options.get_preprocessing_parser().parse_args(
                [
                    "--only-source",
                    "--trainpref",
                    str(raw / f"train.{lang}"),
                    "--validpref",
                    str(raw / f"dev.{lang}"),
                    "--destdir",
                    str(ref / lang),
                    "--workers",
                    "1",
                    *extra,
                ]
            )
        )
        for name in ("train.bin", "train.idx", "valid.bin", "valid.idx", "dict.txt"):
            assert (
                open(os.path.join(ours, lang, name), "rb").read()
                == open(ref / lang / name, "rb").read()
            ), f"{lang}/{name}"


# -- real sentence_prediction runs --------------------------------------------------------


def hub_predictions(run_dir, data_dir, task):
    """Dev predictions through fairseq's hub interface (RobertaHubInterface.predict), example by
    example from the TSV text: an independent path from the worker's batched one over the
    binarized split."""
    import torch
    from fairseq import checkpoint_utils
    from fairseq.models.roberta import RobertaHubInterface
    from omegaconf import open_dict

    models, cfg, fs_task = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(run_dir, "checkpoint_best.pt")], arg_overrides={"data": data_dir}
    )
    with open_dict(cfg):
        cfg.bpe = None  # fairseq-train records its default GPT-2 URLs; the text here is symbols
    roberta = RobertaHubInterface(cfg, fs_task, models[0]).eval()
    d = fs_task.source_dictionary
    preds, outputs = [], []
    for i in range(len(task.dev)):
        ids = [d.bos()] + [d.index(w) for w in task.dev.texts[0][i].split()] + [d.eos()]
        if task.num_inputs == 2:
            ids += [d.eos()] + [d.index(w) for w in task.dev.texts[1][i].split()] + [d.eos()]
        with torch.no_grad():
            out = roberta.predict(
                "sentence_classification_head", torch.tensor(ids), return_logits=True
            )
        outputs.append(out[0].tolist())
        if task.kind == "regression":
            preds.append(float(out[0, 0]) * task.label_scale)
        else:
            ld = fs_task.label_dictionary
            preds.append(ld[int(out.argmax()) + ld.nspecial])
    return preds, outputs


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.subprocess
def test_finetune_classification_pair_and_regression_through_sentence_prediction(
    vanilla_checkpoint, tmp_path, capsys
):
    from se_fairseq.cli.finetune import cli_main

    tasks = [
        make_cola(str(tmp_path / "CoLA")),
        make_mrpc(str(tmp_path / "MRPC")),
        make_stsb(str(tmp_path / "STS-B")),
    ]
    out = tmp_path / "out"
    cli_main(
        [
            "--checkpoint",
            f"tiny={vanilla_checkpoint}",
            *sum((["--task", t] for t in tasks), []),
            "--out",
            str(out),
            "--seeds",
            "1",
            "--bpe",
            "none",
            "--epochs",
            "1",
            "--lr",
            "1e-3",
            "--batch-size",
            "16",
            "--jobs",
            "3",
            "--devices",
            "cpu",
            "--keep-checkpoints",
            "best",
            "--fairseq-args",
            "--num-workers 0",
        ]
    )
    printed = capsys.readouterr().out
    assert "| tiny |" in printed and "CoLA (mcc)" in printed
    doc = json.load(open(out / "results.json"))
    for name in ("CoLA", "MRPC", "STS-B"):
        run_dir = out / "runs" / "tiny" / name / "seed1"
        done = json.load(open(run_dir / "done.json"))
        log = open(run_dir / "train.log").read()
        assert "task: SentencePredictionTask" in log or "sentence_prediction" in log
        assert done["updates_of_eval_checkpoint"] > 0
        task = read_task(os.path.join(str(tmp_path), name))
        rows = [line.rstrip("\n").split("\t") for line in open(run_dir / "dev_predictions.tsv")][1:]
        preds = [r[0] for r in rows]
        assert [r[1] for r in rows] == task.dev.labels  # targets as read from the TSV
        data_dir = json.load(open(run_dir / "spec.json"))["data_dir"]
        hub, hub_outputs = hub_predictions(str(run_dir), data_dir, task)
        outputs = [[float(v) for v in r[2].split(",")] for r in rows]
        np.testing.assert_allclose(outputs, hub_outputs, rtol=1e-4, atol=1e-5)
        if task.kind == "regression":
            x, y = (
                np.array([float(p) for p in preds]),
                np.array([float(t) for t in task.dev.labels]),
            )
            np.testing.assert_allclose(x, hub, rtol=1e-4, atol=1e-5)
            assert done["metrics"]["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
        else:
            assert preds == hub
            y, p = np.array(task.dev.labels), np.array(preds)
            if name == "CoLA":
                tp, tn = ((p == "1") & (y == "1")).sum(), ((p == "0") & (y == "0")).sum()
                fp, fn = ((p == "1") & (y == "0")).sum(), ((p == "0") & (y == "1")).sum()
                denom = math.sqrt(max(1, (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
                assert done["metrics"]["mcc"] == pytest.approx((tp * tn - fp * fn) / denom)
            else:
                tp = ((p == "1") & (y == "1")).sum()
                f1 = (
                    2
                    * tp
                    / max(
                        1,
                        2 * tp + ((p == "1") & (y == "0")).sum() + ((p == "0") & (y == "1")).sum(),
                    )
                )
                assert done["metrics"]["f1"] == pytest.approx(f1)
            assert done["metrics"]["accuracy"] == pytest.approx((p == y).mean())
        assert doc["results"]["tiny"][name]["mean"] == pytest.approx(done["value"])
        assert (run_dir / "checkpoint_best.pt").exists() and not (
            run_dir / "checkpoint_last.pt"
        ).exists()
    # the recipe's settings reached fairseq: polynomial schedule, 6 % warmup of epochs x batches
    settings = doc["settings"]["tiny/CoLA"]
    assert settings["total_updates"] == 1 * math.ceil(64 / 16) and settings["warmup_updates"] == 0


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_run_resumes_and_finished_runs_are_not_redone(vanilla_checkpoint, tmp_path):
    task = make_cola(str(tmp_path / "CoLA"), n_train=96)
    out = str(tmp_path / "out")
    kwargs = dict(
        seeds=[1],
        bpe="none",
        jobs=1,
        devices=[],
        log=lambda *a: None,
        overrides=Overrides(epochs=4, batch_size=8, lr=1e-3, fairseq_args=["--num-workers", "0"]),
    )
    from se_fairseq.finetune import prepare_data
    from se_fairseq.finetune.plan import plan_runs
    from se_fairseq.finetune.runner import prepare, worker_command

    infos, datas, manifests, dirs = prepare_data(
        {"tiny": vanilla_checkpoint}, [task], out, {"bpe": "none"}, log=lambda *a: None
    )
    run = plan_runs(infos, datas, manifests, dirs, [1], out, kwargs["overrides"])[0]
    prepare(run, run.fingerprint())
    last = os.path.join(run.run_dir, "checkpoint_last.pt")
    with open(os.path.join(run.run_dir, "train.log"), "w") as log:
        proc = subprocess.Popen(
            worker_command([run.run_dir]),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
        )
        deadline = time.time() + 120
        while not os.path.exists(last) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert os.path.exists(last) and not os.path.exists(os.path.join(run.run_dir, "done.json"))
    doc = finetune({"tiny": vanilla_checkpoint}, [task], out, **kwargs)
    log = open(os.path.join(run.run_dir, "train.log")).read()
    assert "loading pretrained model from" in log  # the first launch
    assert (
        "Loaded checkpoint" in log and "checkpoint_last.pt" in log.split("loading pretrained")[-1]
    )
    done = json.load(open(os.path.join(run.run_dir, "done.json")))
    assert doc["results"]["tiny"]["CoLA"]["n"] == 1
    # the resumed run trained to the same end as an uninterrupted one: 4 epochs of 12 batches
    assert done["eval_checkpoint"] == "checkpoint_best.pt"
    final = [line for line in log.splitlines() if "done training" in line]
    assert len(final) == 1
    assert "num_updates 48" in [line for line in log.splitlines() if "valid on" in line][-1]
    mtime = os.path.getmtime(os.path.join(run.run_dir, "done.json"))
    logs = []
    finetune({"tiny": vanilla_checkpoint}, [task], out, **dict(kwargs, log=logs.append))
    assert os.path.getmtime(os.path.join(run.run_dir, "done.json")) == mtime
    assert any("1 already done, 0 to run" in line for line in logs)


def test_schedule_and_checkpoint_options_reach_the_plan(monkeypatch, tmp_path):
    """--total-updates, --warmup-fraction and --eval-checkpoint through se-finetune's own
    parser: the overrides it builds, and the schedule the plan derives from them (warmup =
    round(fraction x total), the recipe's fraction and epochs when not given)."""
    import se_fairseq.finetune as ft
    from se_fairseq.cli.finetune import cli_main
    from se_fairseq.finetune.plan import recipe_settings
    from se_fairseq.finetune.tasks import GLUE_RECIPES

    seen = {}

    class Captured(Exception):
        pass

    def fake_finetune(checkpoints, tasks, out, **kwargs):
        seen.update(kwargs)
        raise Captured

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    base = ["--checkpoint", "c.pt", "--task", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(Captured):
        cli_main(
            base
            + ["--total-updates", "500", "--warmup-fraction", "0.2", "--eval-checkpoint", "last"]
        )
    o = seen["overrides"]
    assert (o.total_updates, o.warmup_fraction, o.eval_checkpoint) == (500, 0.2, "last")
    task = type("T", (), {"recipe": GLUE_RECIPES["CoLA"], "kind": "classification"})()
    per_epoch = lambda epoch: math.ceil(1000 / 16)  # noqa: E731  (batches fairseq would build)
    s = recipe_settings(task, o, per_epoch)
    assert (s["total_updates"], s["warmup_updates"]) == (500, 100)
    with pytest.raises(Captured):
        cli_main(base)
    o = seen["overrides"]
    assert (o.total_updates, o.warmup_fraction, o.eval_checkpoint) == (None, None, "best")
    s = recipe_settings(task, o, per_epoch)
    recipe = GLUE_RECIPES["CoLA"]
    total = recipe.epochs * math.ceil(1000 / recipe.batch_size)
    assert (s["total_updates"], s["warmup_updates"]) == (
        total,
        round(recipe.warmup_fraction * total),
    )


# -- the schedule counts the batches fairseq builds ----------------------------------------


def make_pairs(folder, n_train=64, n_dev=8, seed=4, long_rows=2):
    """A generic pair task with sentences of varied length and a few pairs longer than the
    model's 64 positions (truncated by the plan's --shorten-method truncate)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [("sentence1", "sentence2", "label")]
        for i in range(n):
            lo_hi = (30, 40) if split == "train" and i < long_rows else (1, 12)
            rows.append((sentence(rng, *lo_hi), sentence(rng, *lo_hi), "ab"[i % 2]))
        write(os.path.join(folder, f"{split}.tsv"), rows)
    return folder


def plan_for(checkpoint, task_dir, out, overrides, seeds=(1,)):
    from se_fairseq.finetune import prepare_data
    from se_fairseq.finetune.plan import plan_runs

    infos, datas, manifests, dirs = prepare_data(
        {"c": checkpoint}, [task_dir], str(out), {"bpe": "none"}, log=lambda *a: None
    )
    return datas[0], plan_runs(infos, datas, manifests, dirs, list(seeds), str(out), overrides)


@pytest.mark.parametrize(
    "max_tokens, batch_size, extra",
    [
        (48, 16, []),
        (100, 4, ["--update-freq", "3"]),
        (4400, 16, []),
        (30, 8, ["--seed", "9"]),
        (48, 16, ["--update-freq", "2", "--skip-remainder-batch"]),
    ],
)
def test_the_schedule_counts_the_batches_fairseq_builds(
    untrained_checkpoint, tmp_path, max_tokens, batch_size, extra
):
    """Total updates = epochs x the batches of fairseq's batch_by_size over the train sizes
    sentence_prediction builds (<s> A </s> </s> B </s>, truncated to 64 positions; longer than
    --max-tokens skipped), in the task's seeded order, grouped by --update-freq; and equal to
    the length of the iterator fairseq's own task builds from the run's arguments."""
    from fairseq import options, tasks, utils
    from fairseq.data import data_utils, iterators

    task, runs = plan_for(
        untrained_checkpoint,
        make_pairs(str(tmp_path / "pairs")),
        tmp_path / "out",
        Overrides(epochs=3, batch_size=batch_size, max_tokens=max_tokens, fairseq_args=extra),
        seeds=[2, 9] if not extra else [2],
    )
    for run in runs:
        seed = 9 if "--seed" in extra else run.seed
        freq = int(extra[extra.index("--update-freq") + 1]) if "--update-freq" in extra else 1
        # independently: sizes from the text (one symbol per word), as sentence_prediction sees them
        sizes = np.array(
            [
                min(64, len(a.split()) + 2 + len(b.split()) + 2)
                for a, b in zip(task.train.texts[0], task.train.texts[1])
            ]
        )
        with data_utils.numpy_seed(seed):
            order = np.argsort(np.random.permutation(len(sizes)), kind="stable")
        order = order[sizes[order] <= min(64, max_tokens)]
        batches = data_utils.batch_by_size(
            order, lambda i: sizes[i], max_tokens=max_tokens, max_sentences=batch_size
        )
        expected = 3 * math.ceil(len(batches) / freq)
        if "--skip-remainder-batch" in extra:  # the epoch's last batch dropped, groups floored
            expected = 3 * ((len(batches) - 1) // freq)
        assert run.settings["total_updates"] == expected, (run.settings, len(batches))
        args = run.fairseq_args
        assert args[args.index("--total-num-update") + 1] == str(expected)
        if max_tokens < 100:  # the token limit binds: fewer examples per batch than --batch-size
            assert expected > 3 * math.ceil(len(task.train) / batch_size)
        # fairseq's own task and iterator, from the run's arguments
        parsed = options.parse_args_and_arch(options.get_training_parser(), args)
        fs_task = tasks.setup_task(parsed)
        fs_task.load_dataset("train")
        itr = fs_task.get_batch_iterator(
            dataset=fs_task.dataset("train"),
            max_tokens=parsed.max_tokens,
            max_sentences=parsed.batch_size,
            max_positions=utils.resolve_max_positions(
                fs_task.max_positions(), parsed.max_positions, parsed.max_tokens
            ),
            ignore_invalid_inputs=True,
            required_batch_size_multiple=parsed.required_batch_size_multiple,
            seed=parsed.seed,
            skip_remainder_batch=parsed.skip_remainder_batch,
        )
        assert len(itr) == len(batches)
        grouped = iterators.GroupedIterator(  # as fairseq_cli.train groups an epoch
            itr.next_epoch_itr(shuffle=True),
            parsed.update_freq[0],
            skip_remainder_batch=parsed.skip_remainder_batch,
        )
        assert 3 * len(grouped) == expected


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_planned_schedule_is_what_fairseq_train_does(vanilla_checkpoint, tmp_path):
    """A real run through the harness with a small --max-tokens and --update-freq 2: the
    plan's total updates are the updates fairseq-train made (its last num_updates), and the
    learning rate decays to 0 exactly there."""
    out = tmp_path / "out"
    task_dir = make_pairs(str(tmp_path / "pairs"), n_train=48)
    doc = finetune(
        {"c": vanilla_checkpoint},
        [task_dir],
        str(out),
        seeds=[1],
        bpe="none",
        jobs=1,
        devices=[],
        log=lambda *a: None,
        overrides=Overrides(
            epochs=2,
            batch_size=16,
            max_tokens=48,
            lr=1e-4,
            fairseq_args=["--num-workers", "0", "--update-freq", "2", "--log-interval", "1"],
        ),
    )
    planned = doc["settings"]["c/pairs"]["total_updates"]
    assert planned > 2 * math.ceil(48 / 16 / 2)  # more than full batches would give
    log = open(out / "runs" / "c" / "pairs" / "seed1" / "train.log").read()
    updates = [int(x) for x in __import__("re").findall(r"num_updates (\d+)", log)]
    assert updates and updates[-1] == planned, (planned, updates[-5:])
