"""One fine-tuning run of a Hugging Face checkpoint: ``AutoTokenizer`` and
``AutoModelForSequenceClassification`` from the save_pretrained directory, trained with
transformers' ``Trainer`` (the engine :func:`se_fairseq.finetune.worker.main` uses for a
run whose ``engine`` is ``hf``).

- Inputs: each example's text columns go to the tokenizer as one call,
  ``tokenizer(text_a, text_b)``, so every family gets its own pair format and token
  types (BERT ``[CLS] A [SEP] B [SEP]`` with B as type 1, RoBERTa ``<s> A </s></s> B
  </s>``, ...), truncated (longest first) to the model's length.
- Head: ``num_labels`` = the task's classes (class i = the i-th train label in sorted
  order), 1 for regression (labels divided by the task's scale, predictions multiplied
  back, as the fairseq path does). The head is initialised after ``set_seed(seed)``.
- Schedule (the plan's ``settings``): AdamW with the recipe's betas, epsilon and weight
  decay, linear warmup then linear decay to 0 over the run (fairseq's polynomial_decay,
  power 1), no gradient clipping (the recipe's ``--clip-norm 0``). The dev set is scored
  after every epoch; the best epoch by the plan's ``best_metric`` (accuracy;
  regression: loss) is the one that predicts dev (``--eval-checkpoint last``: the last).
- Resumable: the Trainer saves ``checkpoint-N/`` (weights, optimizer, scheduler, RNG
  states) in the run folder after every epoch; a killed run resumes from the last one.
  Once done, ``--keep-checkpoints best`` keeps the scored model as ``best/``
  (save_pretrained, no optimizer state), ``none`` nothing, ``all`` also the Trainer's
  checkpoints.
"""

import json
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any, Optional, TypedDict

from se_fairseq.finetune.metrics import Label
from se_fairseq.finetune.plan import RunSpec

BEST = "best"
TRAINER_CHECKPOINT = re.compile(r"^checkpoint-\d+$")


def encode(tokenizer: Any, texts: Sequence[Sequence[str]], max_length: int) -> Any:
    """A split's text columns (one list per column) as the tokenizer encodes them: the
    pair as ``tokenizer(text_a, text_b)``, truncated to ``max_length``."""
    return tokenizer(*texts, truncation=True, max_length=max_length)


def load_examples(run: RunSpec) -> dict[str, Any]:
    with open(os.path.join(run.data_dir, "examples.json")) as f:
        return json.load(f)


class TextDataset:
    """A split as the Trainer takes it: a list of encoded examples with their labels."""

    def __init__(self, encoded: Any, labels: Optional[Sequence[Label]] = None) -> None:
        self.rows = [
            {k: encoded[k][i] for k in encoded.keys()} for i in range(len(encoded["input_ids"]))
        ]
        if labels is not None:
            for row, label in zip(self.rows, labels):
                row["labels"] = label

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def targets_of(run: RunSpec, labels: Sequence[str]) -> list[Any]:
    """Labels as the head is trained on them: class numbers, or scaled floats."""
    if run.kind == "regression":
        scale = run.label_scale or 1.0
        return [float(v) / scale for v in labels]
    index = {name: i for i, name in enumerate(run.labels or [])}
    return [index[v] for v in labels]


def outputs_to_predictions(run: RunSpec, logits: Any) -> list[Label]:
    import numpy as np

    logits = np.asarray(logits, dtype=float)
    if run.kind == "regression":
        scale = run.label_scale or 1.0
        return [float(r[0]) * scale for r in logits.reshape(len(logits), -1)]
    labels = run.labels or []
    return [labels[int(i)] for i in logits.argmax(-1)]


def last_checkpoint(run_dir: str) -> Optional[str]:
    names = [n for n in os.listdir(run_dir) if TRAINER_CHECKPOINT.match(n)] if run_dir else []
    if not names:
        return None
    return os.path.join(run_dir, max(names, key=lambda n: int(n.split("-")[1])))


class PrecisionOptions(TypedDict, total=False):
    """TrainingArguments' device and precision options."""

    use_cpu: bool
    fp16: bool
    bf16: bool


def precision_options(precision: str) -> PrecisionOptions:
    import torch

    if not torch.cuda.is_available():
        if precision == "fp16":
            raise SystemExit("precision fp16 needs a GPU (none is visible to this run)")
        return dict(use_cpu=True, bf16=precision == "bf16")
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return dict(fp16=precision == "fp16", bf16=precision == "bf16")


class HFEngine:
    """train() then predict(split) -> (predictions, head outputs, updates)."""

    def __init__(self, run: RunSpec, run_dir: str) -> None:
        self.run, self.run_dir = run, run_dir
        self.trainer: Any = None  # transformers' Trainer, once train() built it
        self.tokenizer: Any = None
        self.examples: dict[str, Any] = {}
        self.updates: Optional[int] = None
        self.resumed_from: Optional[str] = None  # the Trainer checkpoint a killed run resumed from
        self.eval_checkpoint = BEST if run.eval_checkpoint == "best" else "last"

    def _metrics(self, eval_prediction: Any) -> dict[str, float]:
        from se_fairseq.finetune import metrics

        run = self.run
        predictions = outputs_to_predictions(run, eval_prediction.predictions)
        labels = eval_prediction.label_ids
        targets: list[Label]
        if run.kind == "regression":
            targets = [float(v) * (run.label_scale or 1.0) for v in labels.reshape(-1)]
        else:
            targets = [(run.labels or [])[int(i)] for i in labels]
        values = metrics.evaluate(run.kind, run.metric, predictions, targets, run.positive_label)
        if run.kind == "classification" and "accuracy" not in values:
            values["accuracy"] = metrics.compute("accuracy", predictions, targets)
        return values

    def train(self) -> None:
        import transformers
        from transformers import (
            AutoModelForSequenceClassification,
            DataCollatorWithPadding,
            Trainer,
            TrainingArguments,
        )

        run, s = self.run, self.run.settings
        transformers.set_seed(run.seed)  # the head's initialisation
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            run.checkpoint_path, local_files_only=True
        )
        self.examples = load_examples(run)
        regression = run.kind == "regression"
        model = AutoModelForSequenceClassification.from_pretrained(
            run.checkpoint_path,
            local_files_only=True,
            num_labels=1 if regression else len(run.labels or []),
            problem_type="regression" if regression else "single_label_classification",
        )
        train = self.dataset("train")
        best = s["best_metric"]
        args = TrainingArguments(
            output_dir=self.run_dir,
            seed=run.seed,
            data_seed=run.seed,
            learning_rate=s["lr"],
            per_device_train_batch_size=s["batch_size"],
            per_device_eval_batch_size=64,
            num_train_epochs=s["epochs"],
            max_steps=s["total_updates"],
            lr_scheduler_type="linear",
            warmup_steps=s["warmup_updates"],
            weight_decay=s["weight_decay"],
            adam_beta1=s["adam_betas"][0],
            adam_beta2=s["adam_betas"][1],
            adam_epsilon=s["adam_eps"],
            max_grad_norm=0.0,
            eval_strategy="epoch",
            save_strategy="epoch",
            save_total_limit=2,  # the best and the last (what a killed run resumes from)
            load_best_model_at_end=run.eval_checkpoint == "best",
            metric_for_best_model=best,
            greater_is_better=best not in ("loss", "nll_loss"),
            logging_steps=10,
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            **precision_options(run.precision),
        )
        self.trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=self.dataset("valid"),
            data_collator=DataCollatorWithPadding(self.tokenizer),
            compute_metrics=self._metrics,
        )
        resume = last_checkpoint(self.run_dir)
        self.resumed_from = os.path.basename(resume) if resume else None
        self.trainer.train(resume_from_checkpoint=resume)
        state = self.trainer.state
        chosen = state.best_model_checkpoint if args.load_best_model_at_end else None
        self.updates = int(chosen.rsplit("-", 1)[1]) if chosen else state.global_step

    def dataset(self, split: str, with_labels: bool = True) -> TextDataset:
        data = self.examples[split]
        encoded = encode(self.tokenizer, data["texts"], self.run.settings["max_length"])
        labels = targets_of(self.run, data["labels"]) if with_labels else None
        return TextDataset(encoded, labels)

    def predict(self, split: str = "valid") -> tuple[list[Label], list[list[float]], Optional[int]]:
        assert self.trainer is not None
        output = self.trainer.predict(self.dataset(split, with_labels=False))
        logits = output.predictions.reshape(len(output.predictions), -1)
        predictions = outputs_to_predictions(self.run, logits)
        return predictions, [[float(v) for v in row] for row in logits], self.updates

    def before_done(self, keep: Optional[str]) -> None:
        """What the run keeps: the scored model as best/ (keep best or all)."""
        if keep in (None, "best", "all"):  # save_pretrained: no pickled training_args.bin
            best = os.path.join(self.run_dir, BEST)
            self.trainer.model.save_pretrained(best)
            self.tokenizer.save_pretrained(best)


def prune(run_dir: str, keep: Optional[str]) -> None:
    """The Trainer's checkpoint-N folders go unless ``keep`` is all; best/ goes with none."""
    if keep in (None, "all") or not os.path.isdir(run_dir):
        return
    for name in sorted(os.listdir(run_dir)):
        if TRAINER_CHECKPOINT.match(name) or (keep == "none" and name == BEST):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
