"""Fine-tuning runs in a worker process: fairseq-train, then dev predictions and metrics.

    python -m se_fairseq.finetune.worker RUN_DIR [RUN_DIR ...]

A worker takes the runs in order, skipping those that are finished or that another worker
of the pool has claimed (``RUN_DIR/claim``, created atomically, naming the worker's pid and
start time: a later invocation takes over only a claim whose owner is dead), so that
several workers
share one list and torch and fairseq are imported once per worker, not once per run.
RUN_DIR/spec.json (written by the harness) holds the fairseq-train arguments. Training
goes through fairseq's own ``fairseq_cli.train.cli_main``, its output to RUN_DIR/train.log;
rerun after a kill, fairseq resumes from RUN_DIR/checkpoint_last.pt
(``--finetune-from-model`` only applies to a first launch). Then the best (or last)
checkpoint is loaded with ``load_model_ensemble_and_task``, its classification head
predicts every dev example, and the metrics are computed against the dev labels as read
from the task folder. RUN_DIR/done.json, written atomically, marks the run finished;
then the run keeps only what ``--keep-checkpoints`` asks (:func:`prune_run`; a kept
checkpoint_best.pt without its optimizer state, dropped just before done.json);
a run that raises leaves RUN_DIR/failed.txt (the traceback) and the worker goes on.
"""

import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Optional, Protocol, cast

from se_fairseq.core.files import atomic_open, atomic_path, atomic_write_text
from se_fairseq.finetune.metrics import Label
from se_fairseq.finetune.plan import RunSpec
from se_fairseq.finetune.predictions import prediction_counts
from se_fairseq.finetune.records import ClaimOwner, DevSet, DoneRecord, ScoredDevSet

#: what an engine predicts for a split: predictions in file order, the head's outputs
#: per example, and the update count of the checkpoint that predicted them
Prediction = tuple[list[Label], list[list[float]], Optional[int]]

DONE = "done.json"
SPEC = "spec.json"
CLAIM = "claim"
FAILED = "failed.txt"
LOG = "train.log"
PREDICTIONS = "dev_predictions.tsv"
#: a fairseq checkpoint of a run, or one left half-written (``.pt.tmp``: earlier versions;
#: ``.pt.tmp-PID``: core.files.temp_path)
CHECKPOINT_FILE = re.compile(r"\.pt(\.tmp(-\d+)?)?$")


TEST_PREDICTIONS = "test_predictions"
#: the GLUE server's label names where Hugging Face's exports number the classes
SERVER_LABELS = {
    "RTE": ("entailment", "not_entailment"),
    "QNLI": ("entailment", "not_entailment"),
    "MNLI-m": ("entailment", "neutral", "contradiction"),
    "MNLI-mm": ("entailment", "neutral", "contradiction"),
}


class Engine(Protocol):
    """What trains a run and predicts with it: fairseq-train (:class:`FairseqEngine`) or
    transformers' Trainer (:class:`se_fairseq.finetune.hf_worker.HFEngine`)."""

    eval_checkpoint: str  # the name of the checkpoint that predicts, recorded in done.json

    def train(self) -> None: ...

    def predict(self, split: str = "valid") -> Prediction: ...

    def before_done(self, keep: Optional[str]) -> None: ...


def server_label(name: str, label: str) -> str:
    """A predicted label as the GLUE server reads it for test set ``name``: GLUE's own label
    strings stay, class numbers (Hugging Face's) become the server's names (RTE, QNLI:
    entailment/not_entailment; MNLI: entailment/neutral/contradiction); 0/1 elsewhere."""
    names = SERVER_LABELS.get(name)
    if names and label not in names and label.isdigit() and int(label) < len(names):
        return names[int(label)]
    return label


def write_test_predictions(
    run: RunSpec, run_dir: str, predict_split: Callable[[str], Prediction]
) -> list[str]:
    """--predict-test: RUN_DIR/test_predictions/<NAME>.tsv per GLUE test set (``index`` and
    ``prediction`` columns, the server's label names; STS-B's scores as floats);
    ``predict_split(split)`` is the engine's prediction of a split."""
    folder = os.path.join(run_dir, TEST_PREDICTIONS)
    os.makedirs(folder, exist_ok=True)
    written = []
    for test in run.test_sets or ():
        predictions, _, _ = predict_split(test["split"])
        index = json.load(open(os.path.join(run.data_dir, test["index"])))
        if len(index) != len(predictions):
            raise RuntimeError(
                f"{test['split']}: {len(predictions)} predictions, {len(index)} rows"
            )
        path = os.path.join(folder, f"{test['name']}.tsv")
        with atomic_open(path) as f:
            f.write("index\tprediction\n")
            for i, p in zip(index, predictions):
                value = (
                    f"{p:.3f}" if run.kind == "regression" else server_label(test["name"], str(p))
                )
                f.write(f"{i}\t{value}\n")
        written.append(os.path.relpath(path, run_dir))
    return written


def write_json_atomic(path: str, obj: Any) -> None:
    """``obj`` as JSON indented by one space (the layout of spec.json and done.json)."""
    atomic_write_text(path, json.dumps(obj, indent=1))


def device_args(precision: str) -> list[str]:
    """--cpu without a visible GPU; the recipe's fp16 settings on one."""
    import torch

    if not torch.cuda.is_available():
        if precision == "fp16":
            raise SystemExit("precision fp16 needs a GPU (none is visible to this run)")
        return ["--cpu"] + (["--bf16"] if precision == "bf16" else [])
    if precision in ("auto", "fp16"):
        return [
            "--fp16",
            "--fp16-init-scale",
            "4",
            "--threshold-loss-scale",
            "1",
            "--fp16-scale-window",
            "128",
        ]
    return ["--bf16"] if precision == "bf16" else []


def train(run: RunSpec) -> None:
    from fairseq import checkpoint_utils
    from fairseq_cli import train as fairseq_train

    # fairseq keeps the best validation score on the function between calls: a run must not
    # inherit the previous run's (a resumed run gets its own back from checkpoint_last.pt)
    if hasattr(checkpoint_utils.save_checkpoint, "best"):
        del checkpoint_utils.save_checkpoint.best
    argv = list(run.fairseq_args) + device_args(run.precision)
    sys.argv = ["fairseq-train"] + argv
    fairseq_train.cli_main()


def predict(
    run: RunSpec, checkpoint_path: str, split: str = "valid", batch_size: int = 64
) -> Prediction:
    """Predictions for fairseq split ``split`` (valid: the first dev set) in file order
    (label strings, or floats for regression), the head's outputs and the checkpoint's
    update count."""
    import torch
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(
        checkpoint_path, arg_overrides={"data": run.data_dir}
    )
    num_updates = state["optimizer_history"][-1].get("num_updates")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint_path], state=state
    )
    model = models[0].eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(
        dataset=dataset,
        max_sentences=batch_size,
        max_positions=task.max_positions(),
        ignore_invalid_inputs=False,
    ).next_epoch_itr(shuffle=False)
    head = cfg.criterion.classification_head_name
    outputs = {}
    with torch.no_grad():
        for sample in itr:
            net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
            logits, _ = model(**net_input, features_only=True, classification_head_name=head)
            logits = logits.float().cpu()
            for i, row in zip(sample["id"].tolist(), logits):
                outputs[i] = row
    if len(outputs) != len(dataset):
        raise RuntimeError(f"predicted {len(outputs)} of {len(dataset)} dev examples")
    rows = [outputs[i] for i in range(len(dataset))]
    logits = [[float(v) for v in r] for r in rows]
    if run.kind == "regression":
        scale = run.label_scale or 1.0
        return [float(row[0]) * scale for row in rows], logits, num_updates
    labels = run.labels or []
    return [labels[int(row.argmax())] for row in rows], logits, num_updates


class FairseqEngine:
    """train() through fairseq-train, then predict(split) with the scored checkpoint."""

    def __init__(self, run: RunSpec, run_dir: str) -> None:
        self.run, self.run_dir = run, run_dir
        self.eval_checkpoint = (
            "checkpoint_best.pt" if run.eval_checkpoint == "best" else "checkpoint_last.pt"
        )
        self.checkpoint_path = os.path.join(run_dir, self.eval_checkpoint)

    def train(self) -> None:
        train(self.run)
        if not os.path.exists(self.checkpoint_path):
            raise SystemExit(f"fairseq-train left no {self.checkpoint_path}")

    def predict(self, split: str = "valid") -> Prediction:
        if split == "valid":
            return predict(self.run, self.checkpoint_path)
        return predict(self.run, self.checkpoint_path, split)

    def before_done(self, keep: Optional[str]) -> None:
        best = os.path.join(self.run_dir, "checkpoint_best.pt")
        if keep == "best" and os.path.exists(best):  # nothing resumes from it: the run is done
            drop_optimizer_state(best)


def engine_of(run: RunSpec, run_dir: str) -> Engine:
    """The run's engine: fairseq-train, or transformers' Trainer for a Hugging Face
    checkpoint (``run.engine == "hf"``, :mod:`se_fairseq.finetune.hf_worker`)."""
    if run.engine == "hf":
        from se_fairseq.finetune.hf_worker import HFEngine

        return HFEngine(run, run_dir)
    return FairseqEngine(run, run_dir)


def spec_json(run: RunSpec, fingerprint: str) -> dict[str, Any]:
    """What RUN_DIR/spec.json holds: the run's fields, then the fingerprint the harness
    checked it with (the layout every version has written: a rerun reads its runs back)."""
    return dict(run.to_json(), fingerprint=fingerprint)


def read_spec(run_dir: str) -> tuple[RunSpec, str]:
    """RUN_DIR/spec.json as the run and its fingerprint."""
    with open(os.path.join(run_dir, SPEC)) as f:
        data = json.load(f)
    return RunSpec.from_json(data), data["fingerprint"]


def main(run_dir: str) -> None:
    from se_fairseq.finetune import metrics

    run, fingerprint = read_spec(run_dir)
    if os.path.exists(os.path.join(run_dir, DONE)):
        return
    start = time.time()
    engine = engine_of(run, run_dir)
    engine.train()
    sets: list[DevSet] = run.dev_sets or [
        {"name": run.task, "split": "valid", "targets": "dev_targets.json"}
    ]
    scored: dict[str, ScoredDevSet] = {}
    for i, dev in enumerate(sets):
        if i == 0:
            predictions, logits, state_updates = engine.predict()
        else:
            predictions, logits, _ = engine.predict(dev["split"])
        targets = json.load(open(os.path.join(run.data_dir, dev["targets"])))
        if run.kind == "regression":
            targets = [float(t) for t in targets]
        values = metrics.evaluate(run.kind, run.metric, predictions, targets, run.positive_label)
        out = PREDICTIONS if i == 0 else f"dev_predictions.{dev['split']}.tsv"
        with atomic_open(os.path.join(run_dir, out)) as f:
            f.write("prediction\ttarget\thead_output\n")
            f.writelines(
                f"{p}\t{t}\t{','.join(f'{v:.6g}' for v in o)}\n"
                for p, t, o in zip(predictions, targets, logits)
            )
        scored[dev["name"]] = {
            "metrics": values,
            "value": values[run.metric],
            "dev_examples": len(targets),
            "predictions": out,
        }
        if run.kind == "classification":
            scored[dev["name"]]["prediction_counts"] = prediction_counts(predictions)
    first = scored[sets[0]["name"]]
    test_files = write_test_predictions(run, run_dir, engine.predict)
    engine.before_done(run.keep_checkpoints)
    record: DoneRecord = {
        "key": run.key,
        "checkpoint": run.checkpoint,
        "task": run.task,
        "seed": run.seed,
        "metric": run.metric,
        "metrics": first["metrics"],
        "value": first["value"],
        "dev_examples": first["dev_examples"],
        "eval_checkpoint": engine.eval_checkpoint,
        "updates_of_eval_checkpoint": state_updates,
        "fingerprint": fingerprint,
        "seconds_last_invocation": round(time.time() - start, 1),
    }
    if "prediction_counts" in first:
        record["prediction_counts"] = first["prediction_counts"]
    if len(sets) > 1:
        record["dev_sets"] = scored
    if test_files:
        record["test_predictions"] = test_files
    if resumed_from := getattr(engine, "resumed_from", None):
        record["resumed_from"] = resumed_from
    write_json_atomic(os.path.join(run_dir, DONE), record)
    prune_run(run_dir, run.keep_checkpoints)  # as the run ends, not when the whole invocation does


def process_start_time(pid: int) -> Optional[int]:
    """The start time of process ``pid`` (clock ticks since boot, /proc/PID/stat field 22),
    or None where /proc is not there (not Linux) or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) if len(fields) > 19 else None


def _claim_record() -> ClaimOwner:
    import socket

    pid = os.getpid()
    return {"pid": pid, "start_time": process_start_time(pid), "host": socket.gethostname()}


def claim_owner(run_dir: str) -> Optional[ClaimOwner]:
    """The claim's owner (pid, start_time, host), or None: no claim, or an empty or unreadable
    one (an earlier version's claims were empty files)."""
    try:
        with open(os.path.join(run_dir, CLAIM)) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
        return cast(ClaimOwner, owner)
    return None


def owner_alive(owner: Optional[ClaimOwner]) -> bool:
    """True while the process that made a claim still runs: its pid exists, is not a zombie
    and (where /proc tells) started when the claim says, so a reused pid is not taken for
    it. A claim of another host cannot be checked here and counts as alive."""
    import socket

    if owner is None:
        return False
    if owner.get("host") not in (None, socket.gethostname()):
        return True
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
    except (OSError, IndexError):
        pass
    start = owner.get("start_time")
    return start is None or process_start_time(pid) in (None, start)


def drop_optimizer_state(path: str) -> bool:
    """Rewrite a fairseq checkpoint without its optimizer state (``last_optimizer_state``,
    Adam's two moments: about twice the weights), atomically; True if it had one. Loaded
    with the project's safe loader, saved with ``torch.save`` (no new globals)."""
    import torch

    from se_fairseq.checkpoint_safety import safe_load

    state = safe_load(path)
    if state.get("last_optimizer_state") is None:
        return False
    del state["last_optimizer_state"]
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return True


def prune_run(run_dir: str, keep: Optional[str]) -> None:
    """What ``--keep-checkpoints`` keeps of a finished run: ``all`` every file; ``best``
    only checkpoint_best.pt (the optimizer state is dropped before the run is marked done,
    :func:`main`); ``none`` no checkpoint. Removes checkpoint_last.pt and any other ``.pt``
    fairseq left (crash.pt, epoch checkpoints)."""
    from se_fairseq.finetune import hf_worker

    hf_worker.prune(run_dir, keep)  # the Trainer's checkpoint-N folders of an HF run
    if keep in (None, "all"):
        return
    for name in sorted(os.listdir(run_dir)):
        if CHECKPOINT_FILE.search(name) and (keep == "none" or name != "checkpoint_best.pt"):
            os.remove(os.path.join(run_dir, name))


def claim(run_dir: str) -> bool:
    """True if this worker may run RUN_DIR: not finished, not claimed by another worker.
    The claim file (created atomically, by a hard link of a written file) names this
    process (pid, start time, host), so that a later invocation can tell whether its owner
    still runs."""
    if os.path.exists(os.path.join(run_dir, DONE)):
        return False
    tmp = os.path.join(run_dir, f"{CLAIM}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(_claim_record(), f)
    try:
        os.link(tmp, os.path.join(run_dir, CLAIM))
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)
    return True


class output_to:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so fairseq's logging
    and anything C-level too) to a file for the duration of a run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> "output_to":
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = os.dup(1), os.dup(2)
        self.file = open(self.path, "a")
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> Literal[False]:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.file.close()
        return False


def serve(run_dirs: Sequence[str]) -> None:
    import traceback

    for run_dir in run_dirs:
        if not claim(run_dir):
            continue
        with output_to(os.path.join(run_dir, LOG)):
            try:
                main(run_dir)
            except (Exception, SystemExit):  # fairseq exits on bad options: report, go on
                atomic_write_text(os.path.join(run_dir, FAILED), traceback.format_exc())
                traceback.print_exc()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m se_fairseq.finetune.worker RUN_DIR [RUN_DIR ...]")
    serve(sys.argv[1:])
