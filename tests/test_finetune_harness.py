"""se-finetune harness, issue 25's second part: MNLI's two dev sets, the worker pool as a
process group with owned claims, per-run checkpoint pruning."""

import json
import os

import pytest

from se_fairseq.finetune import Overrides
from se_fairseq.finetune import results as ft_results
from se_fairseq.finetune.tasks import read_task

# GLUE's own MNLI headers (as its download script writes the files)
MNLI_HEADER = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
    "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label"
).split()
MNLI_DEV_HEADER = MNLI_HEADER[:11] + ["label2", "label3", "label4", "label5", "gold_label"]
MNLI_LABELS = ("entailment", "neutral", "contradiction")


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines("\t".join(str(c) for c in row) + "\n" for row in rows)


def mnli_row(header, i, label, test=False):
    row = [str(i)] * len(header)
    row[header.index("sentence1")] = f"w{i % 7} w{(i + 1) % 7}"
    row[header.index("sentence2")] = f"w{(i + 2) % 7}"
    if not test:
        row[-1] = label
    return row


def make_mnli(folder, n_train=12, n_dev=(6, 9)):
    """GLUE's MNLI layout: train.tsv, dev_matched.tsv and dev_mismatched.tsv (of other
    sizes), test_matched.tsv and test_mismatched.tsv (no label column)."""
    write(
        os.path.join(folder, "train.tsv"),
        [MNLI_HEADER] + [mnli_row(MNLI_HEADER, i, MNLI_LABELS[i % 3]) for i in range(n_train)],
    )
    for name, n in zip(("dev_matched", "dev_mismatched"), n_dev):
        rows = [mnli_row(MNLI_DEV_HEADER, i, MNLI_LABELS[i % 3]) for i in range(n)]
        write(os.path.join(folder, f"{name}.tsv"), [MNLI_DEV_HEADER] + rows)
    test_header = MNLI_HEADER[:10]
    for name, n in zip(("test_matched", "test_mismatched"), (5, 4)):
        rows = [mnli_row(test_header, i, None, test=True) for i in range(n)]
        write(os.path.join(folder, f"{name}.tsv"), [test_header] + rows)
    return folder


# -- MNLI matched and mismatched -------------------------------------------------------


@pytest.mark.parametrize("folder_name", ["MNLI", "MNLI-mm", "MNLI-m", "mnli_mismatched"])
def test_an_mnli_folder_reads_both_dev_sets(tmp_path, folder_name):
    task = read_task(make_mnli(str(tmp_path / folder_name)))
    assert task.layout == "glue" and task.name == "MNLI"
    assert task.columns == ["MNLI-m", "MNLI-mm"]
    assert [len(split) for _, split in task.dev_sets] == [6, 9]
    assert task.dev is task.dev_sets[0][1]
    assert task.dev_sets[1][1].path.endswith("dev_mismatched.tsv")


def test_mnli_reports_matched_and_mismatched_both_in_the_average(
    untrained_checkpoint, tmp_path, monkeypatch
):
    """From the folder through binarization (valid, valid1), the plan and the worker to
    done.json and the results table: two columns, MNLI-m and MNLI-mm, both averaged."""
    from se_fairseq.finetune import prepare_data, worker
    from se_fairseq.finetune.plan import plan_runs
    from se_fairseq.finetune.runner import prepare

    out = str(tmp_path / "out")
    infos, datas, manifests, dirs = prepare_data(
        {"c": untrained_checkpoint},
        [make_mnli(str(tmp_path / "MNLI"))],
        out,
        {"bpe": "none"},
        log=lambda *a: None,
    )
    data_dir = dirs["c", "MNLI"]
    for sub in ("input0", "input1", "label"):
        assert os.path.exists(os.path.join(data_dir, sub, "valid1.bin"))
    assert json.load(open(os.path.join(data_dir, "dev_targets.valid1.json"))) == [
        MNLI_LABELS[i % 3] for i in range(9)
    ]
    run = plan_runs(infos, datas, manifests, dirs, [1], out, Overrides())[0]
    assert [d["name"] for d in run.dev_sets] == ["MNLI-m", "MNLI-mm"]
    prepare(run, run.fingerprint())
    labels = json.load(open(os.path.join(data_dir, "dev_targets.json")))
    splits_predicted = []

    def fake_predict(spec, path, split="valid"):
        splits_predicted.append(split)
        n = len(labels) if split == "valid" else 9
        right = n if split == "valid" else 3  # matched all right, mismatched 3 of 9
        targets = [MNLI_LABELS[i % 3] for i in range(n)]
        return (
            targets[:right]
            + ["neutral" if t != "neutral" else "entailment" for t in targets[right:]],
            [[0.0] * 3] * n,
            7,
        )

    monkeypatch.setattr(
        worker, "train", lambda spec: open(os.path.join(run.run_dir, "checkpoint_best.pt"), "w")
    )
    monkeypatch.setattr(worker, "predict", fake_predict)
    worker.main(run.run_dir)
    assert splits_predicted == ["valid", "valid1"]
    done = json.load(open(os.path.join(run.run_dir, "done.json")))
    assert done["value"] == 1.0
    assert done["dev_sets"]["MNLI-mm"]["value"] == pytest.approx(3 / 9)
    assert os.path.exists(os.path.join(run.run_dir, "dev_predictions.valid1.tsv"))
    doc = ft_results.summarize([done], ["c"], datas[0].columns)
    assert doc["tasks"] == ["MNLI-m", "MNLI-mm"]
    assert doc["results"]["c"]["MNLI-m"]["mean"] == 1.0
    assert doc["results"]["c"]["MNLI-mm"]["mean"] == pytest.approx(3 / 9)
    assert doc["results"]["c"]["average"]["mean"] == pytest.approx((1 + 3 / 9) / 2)
    assert "MNLI-mm (accuracy)" in ft_results.markdown(doc)
