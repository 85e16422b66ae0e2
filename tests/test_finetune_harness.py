"""se-finetune harness, issue 25's second part: MNLI's two dev sets, the worker pool as a
process group with owned claims, per-run checkpoint pruning."""

import json
import os
from pathlib import Path

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


# -- the worker pool: a process group that dies with the parent, claims with owners ----

SLEEPING_WORKER = r"""
import os, sys, time
from se_fairseq.finetune.worker import claim
for run_dir in sys.argv[1:]:
    if not claim(run_dir):  # the real worker's claim, naming this process
        continue
    open(os.path.join(run_dir, "worker.pid"), "w").write(str(os.getpid()))
    time.sleep(120)
"""

FAST_WORKER = r"""
import json, os, sys
from se_fairseq.finetune.worker import claim
for run_dir in sys.argv[1:]:
    if not claim(run_dir):
        continue
    spec = json.load(open(os.path.join(run_dir, "spec.json")))
    json.dump({"checkpoint": spec["checkpoint"], "task": spec["task"], "seed": spec["seed"],
               "metric": "accuracy", "value": 0.5, "metrics": {"accuracy": 0.5},
               "fingerprint": spec["fingerprint"]}, open(os.path.join(run_dir, "done.tmp"), "w"))
    # renamed into place as the real worker does: the pool reads done.json once it exists
    os.replace(os.path.join(run_dir, "done.tmp"), os.path.join(run_dir, "done.json"))
"""

PARENT = r"""
import sys
from se_fairseq.finetune.plan import RunSpec
from se_fairseq.finetune.runner import run_all

run = RunSpec(checkpoint="c", checkpoint_path="c.pt", task="t", seed=1, run_dir=sys.argv[1],
              data_dir="d", kind="classification", metric="accuracy", labels=["0", "1"],
              label_scale=None, eval_checkpoint="best", precision="auto", fairseq_args=[],
              settings={})
run_all([run], devices=[], poll=0.05,
        command=lambda run_dirs: [sys.executable, sys.argv[2], *run_dirs])
"""


def one_run(run_dir):
    from se_fairseq.finetune.plan import RunSpec

    return RunSpec(
        checkpoint="c",
        checkpoint_path="c.pt",
        task="t",
        seed=1,
        run_dir=str(run_dir),
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


def alive(pid):
    """True while pid runs (a zombie, killed and not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (ProcessLookupError, FileNotFoundError):
        return False


def start_parent(tmp_path):
    import subprocess
    import sys
    import time

    (tmp_path / "parent.py").write_text(PARENT)
    (tmp_path / "sleeper.py").write_text(SLEEPING_WORKER)
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py"), str(run_dir), str(tmp_path / "sleeper.py")],
        env=env,
    )
    deadline = time.time() + 60
    while not (run_dir / "worker.pid").exists() or not (run_dir / "worker.pid").read_text():
        assert parent.poll() is None and time.time() < deadline, "the worker never started"
        time.sleep(0.05)
    return parent, int((run_dir / "worker.pid").read_text()), run_dir


def wait_gone(pid, seconds=15):
    import time

    deadline = time.time() + seconds
    while alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.mark.subprocess
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_workers_die_with_a_killed_parent_and_the_dead_claim_is_taken_over(tmp_path, how):
    import signal
    import sys

    from se_fairseq.finetune.runner import run_all

    parent, worker_pid, run_dir = start_parent(tmp_path)
    try:
        os.kill(parent.pid, getattr(signal, how))
        code = parent.wait(timeout=30)
        assert wait_gone(worker_pid), f"the worker outlived its parent killed with {how}"
        if how == "SIGTERM":
            assert code == 128 + signal.SIGTERM
    finally:
        parent.kill()
        if alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
    owner = json.load(open(run_dir / "claim"))
    assert owner["pid"] == worker_pid
    # a rerun takes over the claim of the dead worker and runs the run
    (tmp_path / "fast.py").write_text(FAST_WORKER)
    logs = []
    done, failures = run_all(
        [one_run(run_dir)],
        devices=[],
        poll=0.05,
        log=logs.append,
        command=lambda run_dirs: [sys.executable, str(tmp_path / "fast.py"), *run_dirs],
    )
    assert failures == [] and list(done) == ["c/t/seed1"]


def test_a_claim_of_a_live_process_is_respected(tmp_path):
    """A run another live se-finetune runs (its claim names a live pid) is neither started
    again nor its claim deleted; it is listed as not finished."""
    from se_fairseq.finetune.runner import run_all
    from se_fairseq.finetune.worker import claim, claim_owner

    run = one_run(tmp_path / "run")
    os.makedirs(run.run_dir)
    assert claim(run.run_dir)  # this (live) process owns it
    logs = []
    done, failures = run_all(
        [run],
        devices=[],
        log=logs.append,
        command=lambda run_dirs: pytest.fail("a run claimed by a live process was started"),
    )
    assert done == {} and [f["key"] for f in failures] == ["c/t/seed1"]
    assert "running in another process" in failures[0]["reason"]
    assert claim_owner(run.run_dir)["pid"] == os.getpid()
    assert any("skipped c/t/seed1: running in process" in line for line in logs)


@pytest.mark.subprocess
def test_a_claim_of_a_dead_or_reused_pid_is_not_alive(tmp_path):
    import subprocess
    import sys

    from se_fairseq.finetune.worker import owner_alive, process_start_time

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not owner_alive({"pid": gone.pid, "start_time": None})
    me = os.getpid()
    assert owner_alive({"pid": me, "start_time": process_start_time(me)})
    if process_start_time(me) is not None:  # Linux: a reused pid is told by its start time
        assert not owner_alive({"pid": me, "start_time": process_start_time(me) - 1})
    assert not owner_alive(None)


# -- spec.json: the run as the worker and a rerun read it --------------------------------

#: spec.json of a run as every version so far wrote it (RUN_DIR: the run folder); a rerun
#: reads it back to resume, so its layout and the fingerprint in it must not move
SPEC_JSON = """{
 "checkpoint": "c",
 "checkpoint_path": "/ckpt/c.pt",
 "task": "RTE",
 "seed": 2,
 "run_dir": "RUN_DIR",
 "data_dir": "/out/data/RTE-abc",
 "kind": "classification",
 "metric": "accuracy",
 "labels": [
  "entailment",
  "not_entailment"
 ],
 "label_scale": null,
 "eval_checkpoint": "best",
 "precision": "auto",
 "fairseq_args": [
  "/out/data/RTE-abc",
  "--seed",
  "2"
 ],
 "settings": {
  "lr": 2e-05,
  "batch_size": 16
 },
 "positive_label": null,
 "dev_sets": null,
 "keep_checkpoints": "best",
 "test_sets": null,
 "engine": null,
 "fingerprint": "89c57739cadf92b7"
}"""


def rte_run(run_dir):
    from se_fairseq.finetune.plan import RunSpec

    return RunSpec(
        checkpoint="c",
        checkpoint_path="/ckpt/c.pt",
        task="RTE",
        seed=2,
        run_dir=str(run_dir),
        data_dir="/out/data/RTE-abc",
        kind="classification",
        metric="accuracy",
        labels=["entailment", "not_entailment"],
        label_scale=None,
        eval_checkpoint="best",
        precision="auto",
        fairseq_args=["/out/data/RTE-abc", "--seed", "2"],
        settings={"lr": 2e-05, "batch_size": 16},
        keep_checkpoints="best",
    )


def test_spec_json_is_written_as_earlier_runs_were_and_read_back_as_the_run(tmp_path):
    from se_fairseq.finetune.runner import prepare
    from se_fairseq.finetune.worker import read_spec

    run = rte_run(tmp_path / "seed2")
    assert run.fingerprint() == "89c57739cadf92b7"
    assert prepare(run, run.fingerprint()) is False
    written = open(os.path.join(run.run_dir, "spec.json")).read()
    assert written == SPEC_JSON.replace("RUN_DIR", run.run_dir)
    assert read_spec(run.run_dir) == (run, "89c57739cadf92b7")


def test_a_spec_json_without_the_later_optional_fields_is_resumed(tmp_path):
    """A run folder of an earlier version, whose spec.json lacks the fields that are None
    unless set (keep_checkpoints, dev_sets, engine): the worker reads it with their
    defaults, and a rerun takes it as the same run (not refused, not done) and writes
    today's fields into it."""
    from se_fairseq.finetune.plan import RunSpec
    from se_fairseq.finetune.runner import prepare
    from se_fairseq.finetune.worker import read_spec, spec_json

    run = rte_run(tmp_path / "seed2")
    os.makedirs(run.run_dir)
    old = json.loads(SPEC_JSON.replace("RUN_DIR", run.run_dir))
    for later in ("keep_checkpoints", "dev_sets", "engine"):
        del old[later]
    with open(os.path.join(run.run_dir, "spec.json"), "w") as f:
        json.dump(old, f, indent=1)
    read, fingerprint = read_spec(run.run_dir)
    assert (read.keep_checkpoints, read.dev_sets, read.engine) == (None, None, None)
    assert read.fingerprint() == fingerprint == run.fingerprint()
    assert prepare(run, run.fingerprint()) is False
    assert json.load(open(os.path.join(run.run_dir, "spec.json"))) == spec_json(run, fingerprint)
    assert RunSpec.from_json(run.to_json()) == run


def test_a_run_spec_with_an_unknown_field_is_refused(tmp_path):
    from se_fairseq.finetune import FinetuneError
    from se_fairseq.finetune.plan import RunSpec

    data = dict(rte_run(tmp_path).to_json(), colour="blue", fingerprint="x")
    with pytest.raises(FinetuneError, match=r"unknown fields \['colour'\]"):
        RunSpec.from_json(data)


# -- disk: each run keeps only what --keep-checkpoints asks, as it ends -------------------


@pytest.mark.parametrize("keep", ["best", "none", "all"])
def test_a_finished_run_keeps_only_what_keep_checkpoints_asks(
    untrained_checkpoint, tmp_path, monkeypatch, keep
):
    """worker.main itself (not the end of the invocation) prunes the run: keep best leaves
    checkpoint_best.pt alone, without its optimizer state, loading with the safe loader."""
    import torch

    from se_fairseq.checkpoint_safety import safe_load
    from se_fairseq.finetune import prepare_data, worker
    from se_fairseq.finetune.plan import plan_runs
    from se_fairseq.finetune.runner import prepare

    folder = tmp_path / "mytask"
    rows = [("sentence", "label")] + [(f"w{i} w{i + 1}", "ab"[i % 2]) for i in range(8)]
    write(str(folder / "train.tsv"), rows)
    write(str(folder / "dev.tsv"), rows)
    out = str(tmp_path / "out")
    infos, datas, manifests, dirs = prepare_data(
        {"c": untrained_checkpoint}, [str(folder)], out, {"bpe": "none"}, log=lambda *a: None
    )
    run = plan_runs(infos, datas, manifests, dirs, [1], out, Overrides())[0]
    fingerprint = run.fingerprint()
    run.keep_checkpoints = keep
    assert run.fingerprint() == fingerprint  # what a run keeps does not decide its result
    prepare(run, fingerprint)
    state = safe_load(untrained_checkpoint)
    weights = {k: v.clone() for k, v in state["model"].items()}
    state["last_optimizer_state"] = {
        "state": {i: {"exp_avg": torch.ones(4), "exp_avg_sq": torch.ones(4)} for i in range(3)}
    }

    def fake_train(spec):
        for name in ("checkpoint_best.pt", "checkpoint_last.pt", "crash.pt"):
            torch.save(state, os.path.join(run.run_dir, name))

    monkeypatch.setattr(worker, "train", fake_train)
    monkeypatch.setattr(worker, "predict", lambda spec, path: (["a", "b"] * 4, [[0.0, 0.0]] * 8, 1))
    worker.main(run.run_dir)
    checkpoints = sorted(
        f for f in os.listdir(run.run_dir) if f.endswith((".pt", ".tmp")) or ".tmp-" in f
    )
    expected = {
        "best": ["checkpoint_best.pt"],
        "none": [],
        "all": ["checkpoint_best.pt", "checkpoint_last.pt", "crash.pt"],
    }
    assert checkpoints == expected[keep]
    assert os.path.exists(os.path.join(run.run_dir, "done.json"))
    if keep != "none":
        best = safe_load(os.path.join(run.run_dir, "checkpoint_best.pt"))
        assert ("last_optimizer_state" in best) == (keep == "all")
        assert best["model"].keys() == weights.keys()
        assert all(torch.equal(best["model"][k], v) for k, v in weights.items())
        assert best["optimizer_history"] == state["optimizer_history"]
    if keep == "best":  # fairseq's own loader still reads it
        from fairseq import checkpoint_utils

        loaded = checkpoint_utils.load_checkpoint_to_cpu(
            os.path.join(run.run_dir, "checkpoint_best.pt")
        )
        assert "model" in loaded


# -- --predict-test: GLUE server files ---------------------------------------------------

RTE_HEADER = ("index", "sentence1", "sentence2", "label")


def make_rte(folder, n=8, hf_numbers=False):
    """GLUE's RTE layout (labels entailment/not_entailment, or Hugging Face's 0/1), with a
    test.tsv of 5 rows (index, sentence1, sentence2; no label) whose indices start at 100."""
    names = ("0", "1") if hf_numbers else ("entailment", "not_entailment")
    rows = [RTE_HEADER] + [(i, f"w{i % 5} w{i % 3}", f"w{i % 4}", names[i % 2]) for i in range(n)]
    write(os.path.join(folder, "train.tsv"), rows)
    write(os.path.join(folder, "dev.tsv"), rows)
    write(
        os.path.join(folder, "test.tsv"),
        [RTE_HEADER[:3]] + [(100 + i, f"w{i}", f"w{i + 1}") for i in range(5)],
    )
    return folder


def test_pruning_removes_half_written_checkpoints_of_either_naming(tmp_path):
    from se_fairseq.finetune.worker import prune_run

    names = ["checkpoint_best.pt", "checkpoint_last.pt", "checkpoint_best.pt.tmp"]
    names += ["checkpoint_best.pt.tmp-4242", "train.log", "notes.pt.txt"]
    for name in names:
        (tmp_path / name).write_text("x")
    prune_run(str(tmp_path), "best")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_best.pt", "notes.pt.txt", "train.log"]


def test_a_built_folder_replaces_only_its_own_earlier_build(tmp_path):
    """The data folders are built under this process's scratch name and renamed into place:
    an earlier build (its marker present) is replaced, a folder the harness did not write is
    refused and left as it was, and a failed build leaves no scratch folder behind."""
    from se_fairseq.finetune import FinetuneError
    from se_fairseq.finetune.folders import built_folder

    target = tmp_path / "data" / "task-abc"
    with built_folder(str(target), "manifest.json") as scratch:
        assert os.path.isdir(scratch) and not os.path.exists(target)
        (Path(scratch) / "manifest.json").write_text("1")
    assert (target / "manifest.json").read_text() == "1"
    with built_folder(str(target), "manifest.json") as scratch:
        (Path(scratch) / "manifest.json").write_text("2")
    assert sorted(os.listdir(target)) == ["manifest.json"]
    assert (target / "manifest.json").read_text() == "2"
    with pytest.raises(RuntimeError, match="half way"):
        with built_folder(str(target), "manifest.json") as scratch:
            (Path(scratch) / "manifest.json").write_text("3")
            raise RuntimeError("half way")
    assert (target / "manifest.json").read_text() == "2"
    assert sorted(os.listdir(tmp_path / "data")) == ["task-abc"]
    mine = tmp_path / "data" / "users"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FinetuneError, match="not written by se-finetune"):
        with built_folder(str(mine), "manifest.json"):
            pytest.fail("a folder the harness did not write was about to be replaced")
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path / "data")) == ["task-abc", "users"]


@pytest.mark.parametrize("hf_numbers", [False, True])
def test_predict_test_writes_glue_server_files(
    untrained_checkpoint, tmp_path, monkeypatch, hf_numbers
):
    """RTE (server names entailment/not_entailment, also from Hugging Face's 0/1) and MNLI
    (MNLI-m.tsv and MNLI-mm.tsv): index and prediction rows, through the worker's path."""
    from se_fairseq.finetune import _collect_test_predictions, prepare_data, worker
    from se_fairseq.finetune.plan import plan_runs
    from se_fairseq.finetune.runner import prepare

    out = str(tmp_path / "out")
    rte = make_rte(str(tmp_path / "RTE"), hf_numbers=hf_numbers)
    mnli = make_mnli(str(tmp_path / "MNLI"))
    infos, datas, manifests, dirs = prepare_data(
        {"c": untrained_checkpoint}, [rte, mnli], out, {"bpe": "none"}, log=lambda *a: None
    )
    assert [t["name"] for t in manifests["c", "MNLI"]["test_sets"]] == ["MNLI-m", "MNLI-mm"]
    for sub in ("input0", "input1"):
        assert os.path.exists(os.path.join(dirs["c", "MNLI"], sub, "test1.bin"))
    runs = plan_runs(infos, datas, manifests, dirs, [3], out, Overrides())
    predicted = []

    def fake_predict(spec, path, split="valid"):
        predicted.append((spec.task, split))
        sizes = {"RTE": {"valid": 8, "test": 5}, "MNLI": {"valid": 6, "valid1": 9}}
        n = dict(sizes[spec.task], **({"test": 5, "test1": 4} if spec.task == "MNLI" else {}))
        labels = spec.labels
        return [labels[i % len(labels)] for i in range(n[split])], [[0.0]] * n[split], 1

    monkeypatch.setattr(worker, "predict", fake_predict)
    for run in runs:
        run.test_sets = manifests[run.checkpoint, run.task]["test_sets"]
        prepare(run, run.fingerprint())
        monkeypatch.setattr(
            worker, "train", lambda spec, d=run.run_dir: open(f"{d}/checkpoint_best.pt", "w")
        )
        worker.main(run.run_dir)
        _collect_test_predictions(run, out)
    assert ("RTE", "test") in predicted and ("MNLI", "test1") in predicted
    folder = os.path.join(out, "test_predictions", "c", "seed3")
    assert sorted(os.listdir(folder)) == ["MNLI-m.tsv", "MNLI-mm.tsv", "RTE.tsv"]
    rte_rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(folder, "RTE.tsv"))]
    assert rte_rows[0] == ["index", "prediction"]
    assert [r[0] for r in rte_rows[1:]] == ["100", "101", "102", "103", "104"]
    assert {r[1] for r in rte_rows[1:]} == {"entailment", "not_entailment"}
    mm = [line.rstrip("\n").split("\t") for line in open(os.path.join(folder, "MNLI-mm.tsv"))]
    assert len(mm) == 5 and {r[1] for r in mm[1:]} <= set(MNLI_LABELS)


def test_server_label_names():
    from se_fairseq.finetune.worker import server_label

    assert server_label("RTE", "1") == "not_entailment"
    assert server_label("QNLI", "entailment") == "entailment"
    assert server_label("MNLI-mm", "2") == "contradiction"
    assert server_label("MRPC", "1") == "1" and server_label("CoLA", "0") == "0"


@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_test_through_a_real_run(vanilla_checkpoint, tmp_path):
    """A real tiny RTE run with --predict-test: RTE.tsv from the real worker's prediction of
    the binarized test split, one row per test row, the server's label names."""
    from se_fairseq.finetune import finetune

    out = str(tmp_path / "out")
    finetune(
        {"tiny": vanilla_checkpoint},
        [make_rte(str(tmp_path / "RTE"), n=16)],
        out,
        seeds=[1],
        bpe="none",
        jobs=1,
        devices=[],
        predict_test=True,
        log=lambda *a: None,
        overrides=Overrides(epochs=1, batch_size=8, fairseq_args=["--num-workers", "0"]),
    )
    path = os.path.join(out, "test_predictions", "tiny", "seed1", "RTE.tsv")
    rows = [line.rstrip("\n").split("\t") for line in open(path)]
    assert rows[0] == ["index", "prediction"] and len(rows) == 6
    assert {r[1] for r in rows[1:]} <= {"entailment", "not_entailment"}
    assert os.path.exists(os.path.join(out, "runs", "tiny", "RTE", "seed1", "test_predictions"))


# -- progress per run ------------------------------------------------------------------


def fairseq_log_lines(caplog):
    """Lines as fairseq-train writes them with --log-format simple, made by fairseq's own
    progress bar (train_inner every log interval, then the validation summary)."""
    import logging
    from collections import OrderedDict

    from fairseq.logging import progress_bar

    with caplog.at_level(logging.INFO, logger="fairseq.logging.progress_bar"):
        bar = progress_bar.progress_bar(
            list(range(16)), log_format="simple", log_interval=1, epoch=3, prefix="epoch 003"
        )
        for _ in bar:
            pass
        bar.log(OrderedDict(loss=0.69, nll_loss=0.69, num_updates=42, lr=1e-5), tag="train_inner")
        valid = progress_bar.progress_bar(
            [], log_format="simple", epoch=3, prefix="valid on 'valid' subset"
        )
        valid.print(
            OrderedDict(loss=0.61, accuracy=71.25, num_updates=48, best_accuracy=73.5),
            tag="valid",
        )
    return "\n".join(f"2026-12-03 10:00:00 | INFO | x | {r.getMessage()}" for r in caplog.records)


@pytest.mark.fairseq
def test_the_progress_parser_reads_fairseqs_own_log_lines(caplog):
    from se_fairseq.finetune.runner import parse_progress, progress_line

    text = fairseq_log_lines(caplog)
    assert "num_updates=42" in text and "valid on 'valid' subset" in text
    state = parse_progress(text, "accuracy")
    assert state == {
        "updates": 48,
        "epoch": 3,
        "dev_metric": "accuracy",
        "dev": 71.25,
        "best": 73.5,
    }
    inner_only = parse_progress(text.split("valid on")[0].rsplit("\n", 1)[0], "accuracy")
    assert inner_only == {"updates": 42, "epoch": 3}
    run = one_run("unused")
    run.settings = {"total_updates": 2036}
    assert progress_line(run, state) == "update 48/2036, epoch 3, dev accuracy 71.25 (best 73.5)"
    assert parse_progress("", "accuracy") == {}


PROGRESS_WORKER = FAST_WORKER.replace(
    "    spec = json.load(",
    """    open(os.path.join(run_dir, "train.log"), "w").write(
        "x | INFO | train_inner | epoch 001:     10 / 16 loss=0.7, num_updates=10, lr=1e-05\\n"
        "x | INFO | valid | epoch 001 | valid on 'valid' subset | loss 0.6 | accuracy 62.5 | "
        "num_updates 16 | best_accuracy 62.5\\n")
    import time; time.sleep(1.0)
    spec = json.load(""",
)


@pytest.mark.subprocess
def test_a_running_run_shows_its_updates_and_dev_metric(tmp_path):
    import sys

    from se_fairseq.finetune.runner import run_all

    (tmp_path / "w.py").write_text(PROGRESS_WORKER)
    run = one_run(tmp_path / "run")
    run.settings = {"total_updates": 160}
    logs = []
    done, _ = run_all(
        [run],
        devices=[],
        poll=0.05,
        progress_every=0.2,
        log=logs.append,
        command=lambda run_dirs: [sys.executable, str(tmp_path / "w.py"), *run_dirs],
    )
    assert list(done) == ["c/t/seed1"]
    lines = [line for line in logs if "update 16/160" in line]
    assert lines and "dev accuracy 62.5 (best 62.5)" in lines[0], logs
    assert len(lines) == 1  # a line only when the log moved


# -- the harness's lines reach a redirected stdout as they happen (issue 39, 7b) ---------

#: a worker that finishes its run only once the parent's stdout (a file) shows the run's
#: start line, and fails it if that line has not arrived 15 s after the claim
START_LINE_WORKER = r"""
import json, os, sys, time
from se_fairseq.finetune.worker import claim
parent_stdout = sys.argv[1]
for run_dir in sys.argv[2:]:
    if not claim(run_dir):
        continue
    deadline = time.time() + 15
    while "[finetune] start  c/t/seed1" not in open(parent_stdout).read():
        if time.time() > deadline:
            open(os.path.join(run_dir, "failed.txt"), "w").write(
                "RuntimeError: no start line in the parent's stdout 15 s after the claim\n")
            sys.exit(0)
        time.sleep(0.05)
    spec = json.load(open(os.path.join(run_dir, "spec.json")))
    json.dump({"checkpoint": spec["checkpoint"], "task": spec["task"], "seed": spec["seed"],
               "metric": "accuracy", "value": 0.5, "metrics": {"accuracy": 0.5},
               "fingerprint": spec["fingerprint"]}, open(os.path.join(run_dir, "done.tmp"), "w"))
    # renamed into place as the real worker does: the pool reads done.json once it exists
    os.replace(os.path.join(run_dir, "done.tmp"), os.path.join(run_dir, "done.json"))
"""

#: run_all with its default log, its stdout a file (argv: run folder, worker script, stdout)
LOGGING_PARENT = PARENT.replace(
    """run_all([run], devices=[], poll=0.05,
        command=lambda run_dirs: [sys.executable, sys.argv[2], *run_dirs])""",
    """done, failures = run_all([run], devices=[], poll=0.05,
        command=lambda run_dirs: [sys.executable, sys.argv[2], sys.argv[3], *run_dirs])
sys.exit(1 if failures else 0)""",
)


@pytest.mark.subprocess
def test_the_start_line_reaches_a_redirected_stdout_while_the_run_goes_on(tmp_path):
    """se-finetune's stdout redirected to a file (as a batch job's is): each [finetune] line
    is in the file when it is logged, not when the process ends. The worker here finishes
    its run only after it has read the run's start line in that file."""
    import subprocess
    import sys

    assert "done, failures = run_all(" in LOGGING_PARENT
    (tmp_path / "parent.py").write_text(LOGGING_PARENT)
    (tmp_path / "worker.py").write_text(START_LINE_WORKER)
    stdout = tmp_path / "stdout.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("PYTHONUNBUFFERED", None)  # as a user's shell has it: stdout to a file is buffered
    with open(stdout, "w") as out:
        parent = subprocess.run(
            [
                sys.executable,
                str(tmp_path / "parent.py"),
                str(tmp_path / "run"),
                str(tmp_path / "worker.py"),
                str(stdout),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=120,
        )
    text = stdout.read_text()
    failed = tmp_path / "run" / "failed.txt"
    assert not failed.exists(), failed.read_text()
    assert parent.returncode == 0, text
    assert "[finetune] start  c/t/seed1" in text and "[finetune] [1/1] done c/t/seed1" in text


def test_every_entry_point_flushes_its_lines_by_default(monkeypatch):
    """The default log of each function that logs [finetune] lines flushes stdout after
    each line (print alone leaves them in the buffer of a redirected stdout)."""
    import inspect
    import io
    import sys

    from se_fairseq import finetune
    from se_fairseq.finetune import binarize, dryrun, hf_model, runner

    class Recorder(io.StringIO):
        flushed = ""

        def flush(self):
            self.flushed = self.getvalue()

    for function in (
        finetune.finetune,
        finetune.prepare_data,
        finetune.read_checkpoints,
        runner.run_all,
        dryrun.dry_run,
        binarize.binarize_task,
        hf_model.write_text_task,
        hf_model.convert_fairseq_bert,
    ):
        out = Recorder()
        monkeypatch.setattr(sys, "stdout", out)
        inspect.signature(function).parameters["log"].default("[finetune] a line")
        monkeypatch.undo()
        assert out.flushed == "[finetune] a line\n", function.__qualname__


# -- the paper-scale dry run -----------------------------------------------------------

GLUE_TRAIN_ROWS = {
    "MNLI": 392702,
    "QNLI": 104743,
    "QQP": 363846,
    "RTE": 2490,
    "SST-2": 67349,
    "MRPC": 3668,
    "CoLA": 8551,
    "STS-B": 5749,
}
RECIPE_TOTALS = {
    "MNLI": 123873,
    "QNLI": 33112,
    "QQP": 113272,
    "RTE": 2036,
    "SST-2": 20935,
    "MRPC": 2296,
    "CoLA": 5336,
    "STS-B": 3598,
}
#: each task's header and its label values (GLUE's own files)
GLUE_FIXTURE = {
    "MNLI": (MNLI_HEADER, MNLI_LABELS),
    "QNLI": (("index", "question", "sentence", "label"), ("entailment", "not_entailment")),
    "QQP": (("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), ("0", "1")),
    "RTE": (RTE_HEADER, ("entailment", "not_entailment")),
    "SST-2": (("sentence", "label"), ("0", "1")),
    "MRPC": (("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("0", "1")),
    "CoLA": (None, ("0", "1")),
    "STS-B": (
        tuple(
            "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()
        ),
        ("1.5", "4.0"),
    ),
}


def make_glue_sized(root, task):
    """A synthetic GLUE task folder with GLUE's train row count (and a small dev)."""
    header, labels = GLUE_FIXTURE[task]
    folder = os.path.join(root, task)
    os.makedirs(folder)
    for split, n in (
        ("train", GLUE_TRAIN_ROWS[task]),
        ("dev_matched" if task == "MNLI" else "dev", 8),
    ):
        if header is None:  # CoLA: no header; source, label, original label, sentence
            lines = [f"s\t{labels[i % 2]}\t\tw{i % 9} w{i % 7}\n" for i in range(n)]
        else:
            label_at = (
                header.index("label")
                if "label" in header
                else (0 if task == "MRPC" else len(header) - 1)
            )
            row = ["w1 w2"] * len(header)
            lines = []
            for i in range(n):
                row[label_at] = labels[i % len(labels)]
                lines.append("\t".join(row) + "\n")
            lines.insert(0, "\t".join(header) + "\n")
        with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
            f.writelines(lines)
    return folder


@pytest.mark.slow
def test_the_dry_run_of_glue_at_paper_scale(untrained_checkpoint, tmp_path, capsys):
    """8 GLUE tasks with GLUE's train row counts x 5 seeds: the runs, each run's updates
    (10 x ceil(rows / the recipe's batch size)) beside the recipe's own totals, GPU hours and
    the peak disk; nothing written outside the task folders."""
    import math

    from se_fairseq.cli.finetune import cli_main
    from se_fairseq.finetune.dryrun import dry_run, parameter_count
    from se_fairseq.finetune.tasks import GLUE_RECIPES

    folders = [make_glue_sized(str(tmp_path / "glue"), t) for t in GLUE_TRAIN_ROWS]
    doc = dry_run(
        {"c": untrained_checkpoint}, folders, [1, 2, 3, 4, 5], Overrides(), log=lambda *a: None
    )
    rows = {r["task"]: r for r in doc["rows"]}
    assert sorted(rows) == sorted(GLUE_TRAIN_ROWS)
    for task, n in GLUE_TRAIN_ROWS.items():
        r = rows[task]
        assert r["runs"] == 5 and r["train_examples"] == n
        assert r["updates_per_run"] == 10 * math.ceil(n / GLUE_RECIPES[task].batch_size)
        assert r["recipe_total_updates"] == RECIPE_TOTALS[task]
    assert rows["MNLI"]["columns"] == ["MNLI-m"]  # the fixture has dev_matched only
    params = parameter_count(untrained_checkpoint)
    # 39 runs finished keeping their best weights, 1 running with last + best and Adam
    assert doc["peak_disk_bytes"] == pytest.approx(39 * 4 * params + 2 * 12 * params)
    assert doc["text"].count("\n| c |") == 8 and "GPU hours" in doc["text"]
    cli_main(
        [
            "--checkpoint",
            f"c={untrained_checkpoint}",
            *sum((["--task", f] for f in folders), []),
            "--seeds",
            "1,2,3,4,5",
            "--out",
            str(tmp_path / "out"),
            "--bpe",
            "none",
            "--dry-run",
        ]
    )
    printed = capsys.readouterr().out
    assert "| c | RTE | 5 | 2,490 | 16 | 1,560 | 2,036 |" in printed
    assert "nothing was trained" in printed
    assert not os.path.exists(tmp_path / "out")
