"""The run plan: one fairseq-train command per (checkpoint, task, seed), with RoBERTa's
GLUE recipe as defaults (fairseq examples/roberta/README.glue.md):

    fairseq-train TASK-bin --finetune-from-model CKPT --task sentence_prediction
        --criterion sentence_prediction --arch <the checkpoint's> <its model options>
        --max-positions <the checkpoint's> --init-token 0 --separator-token 2
        --num-classes N [--regression-target] --batch-size B --max-tokens 4400
        --required-batch-size-multiple 1 --dropout 0.1 --attention-dropout 0.1
        --weight-decay 0.1 --optimizer adam --adam-betas "(0.9, 0.98)" --adam-eps 1e-06
        --clip-norm 0.0 --lr-scheduler polynomial_decay --lr LR
        --total-num-update T --warmup-updates W --max-epoch 10
        --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric   (regression: loss)

``T`` = the updates fairseq-train will make in those epochs (the recipe's table is that
for the full GLUE sets), ``W`` = the recipe's warmup share of ``T`` (6 %, QQP 25 %). The
updates are counted as fairseq builds them (:func:`updates_per_epoch`): the train
split's sizes as ``sentence_prediction`` loads it (``<s>`` before text 1, ``</s>`` before
text 2, truncated to ``--max-positions``), examples longer than the batch limits
skipped, in the task's seeded order, batched by ``data_utils.batch_by_size`` with
``--max-tokens`` and ``--batch-size``, grouped by ``--update-freq``; options given in
``--fairseq-args`` count.
``--finetune-from-model`` (not ``--restore-file``) makes each run resumable: fairseq
starts from the pretrained weights only while the run folder has no checkpoint_last.pt.
Differences from the recipe: ``--shorten-method truncate`` (a no-op for examples that fit
the model's positions; the recipe's 512 fit GLUE), and ``--no-epoch-checkpoints``.

A Hugging Face directory, and a fairseq BERT checkpoint converted back to one, is planned
as a transformers Trainer run instead (``hf_worker``): the same run folders and recipe
values (BERT's recipe for BERT), ``T`` = epochs x ceil(train rows / batch size).
"""

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Optional, Union, overload

from se_fairseq.finetune.errors import FinetuneError
from se_fairseq.finetune.records import DevSet, Manifest, RunSettings, TestSet

if TYPE_CHECKING:
    import numpy as np

    from se_fairseq.finetune.checkpoint import CheckpointInfo
    from se_fairseq.finetune.hf_model import HFCheckpointInfo
    from se_fairseq.finetune.tasks import Recipe, TaskData

#: the updates fairseq-train makes in epoch 1, 2, ... (:func:`updates_per_epoch`)
PerEpoch = Callable[[int], int]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
#: RunSpec fields that enter the fingerprint only when not None
OPTIONAL_FIELDS = ("dev_sets", "engine")
#: RoBERTa's GLUE recipe's optimizer (fairseq examples/roberta/README.glue.md)
ROBERTA_OPTIMIZER: dict[str, Any] = {
    "adam_betas": (0.9, 0.98),
    "adam_eps": 1e-6,
    "weight_decay": 0.1,
}
#: BERT's (Devlin et al. 2019, section 4.1 and appendix A.3; its run_classifier.py): Adam
#: (0.9, 0.999), eps 1e-6, weight decay 0.01, 10 % warmup, linear decay
BERT_OPTIMIZER: dict[str, Any] = {
    "adam_betas": (0.9, 0.999),
    "adam_eps": 1e-6,
    "weight_decay": 0.01,
}


@dataclass
class Overrides:
    """Per-run settings that replace the recipe's (None = the recipe's)."""

    lr: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    total_updates: Optional[int] = None
    warmup_fraction: Optional[float] = None
    max_update: Optional[int] = None
    max_tokens: Optional[int] = 4400
    dropout: float = 0.1
    attention_dropout: float = 0.1
    weight_decay: Optional[float] = None  # None: the recipe's (RoBERTa 0.1, BERT 0.01)
    best_metric: Optional[str] = None  # fairseq --best-checkpoint-metric
    eval_checkpoint: str = "best"  # which checkpoint predicts dev: best or last
    precision: str = "auto"  # auto (fp16 on GPU, as the recipe), fp32, fp16, bf16
    fairseq_args: list[str] = field(default_factory=list)  # appended last: they win


@dataclass
class RunSpec:
    checkpoint: str  # checkpoint name
    checkpoint_path: str
    task: str
    seed: int
    run_dir: str
    data_dir: str
    kind: str
    metric: str
    labels: Optional[list[str]]
    label_scale: Optional[float]
    eval_checkpoint: str
    precision: str
    fairseq_args: list[str]
    settings: RunSettings
    positive_label: Optional[str] = None  # the F1 positive class (task.json "positive")
    #: more than one dev set (MNLI): the manifest's [{name, split, targets}], else None
    dev_sets: Optional[list[DevSet]] = None
    #: --keep-checkpoints (all, best, none): what the run keeps once done; not a setting of
    #: the result, so never in the fingerprint
    keep_checkpoints: Optional[str] = None
    #: --predict-test: the manifest's test sets to predict once done (GLUE server files);
    #: not a setting of the dev result, so never in the fingerprint
    test_sets: Optional[list[TestSet]] = None
    #: "hf": a Hugging Face checkpoint, trained with transformers' Trainer
    #: (:mod:`se_fairseq.finetune.hf_worker`); None: fairseq-train
    engine: Optional[str] = None

    @property
    def key(self) -> str:
        return f"{self.checkpoint}/{self.task}/seed{self.seed}"

    def to_json(self) -> dict[str, Any]:
        """The fields in declaration order, as spec.json holds them."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunSpec":
        """The run a spec.json (or :meth:`to_json`) describes. Its ``fingerprint`` is the
        harness's check, not a field; fields added after the file was written take their
        defaults (None), as the runs of an earlier version need."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names) - {"fingerprint"})
        if unknown:
            raise FinetuneError(f"a run spec with unknown fields {unknown}")
        return cls(**{name: data[name] for name in names if name in data})

    def fingerprint(self) -> str:
        """What decides the run's result: a finished run with another fingerprint is stale.
        No absolute path enters it, so that an --out folder (or the checkpoint) can move: the
        run folder is left out, the data folder counts by its name (the task, the dictionary's
        hash and the tokenizer's), the checkpoint by its name and file name."""
        places = {
            self.run_dir: "<run>",
            self.data_dir: f"<data>/{os.path.basename(os.path.normpath(self.data_dir))}",
            self.checkpoint_path: f"<checkpoint>/{os.path.basename(self.checkpoint_path)}",
        }
        keep = {k: v for k, v in asdict(self).items() if k not in ("run_dir", "keep_checkpoints")}
        for k in OPTIONAL_FIELDS:  # fields added later count only when set: the runs
            if keep.get(k) is None:  # of an earlier version keep their fingerprint
                keep.pop(k, None)
        keep["data_dir"] = places[self.data_dir]
        keep["checkpoint_path"] = places[self.checkpoint_path]
        keep["fairseq_args"] = [places.get(a, a) for a in self.fairseq_args]
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def check_name(name: str, what: str) -> str:
    if not NAME.match(name):
        raise FinetuneError(f"{what} name {name!r}: use letters, digits and . _ + - only")
    return name


@overload
def _last_option(args: Sequence[str], names: Sequence[str]) -> Optional[str]: ...
@overload
def _last_option(args: Sequence[str], names: Sequence[str], default: str) -> str: ...
def _last_option(
    args: Sequence[str], names: Sequence[str], default: Optional[str] = None
) -> Optional[str]:
    """The value of the last of ``names`` in an argv list (``--x V`` or ``--x=V``)."""
    value = default
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1 :]
    return value


def _train_sizes(data_dir: str, num_inputs: int) -> "np.ndarray":
    """Per-example sizes of the binarized train split as sentence_prediction builds its
    source (each input's tokens with its </s>, plus the prepended <s> and separator)."""
    import numpy as np
    from fairseq.data import data_utils

    sizes = None
    for i in range(num_inputs):
        prefix = os.path.join(data_dir, f"input{i}", "train")
        dataset = data_utils.load_indexed_dataset(prefix, None)
        if dataset is None:
            raise FinetuneError(f"{prefix}.bin/.idx: no binarized train split")
        part = np.asarray(dataset.sizes, dtype=np.int64) + 1  # + <s> (input0) or separator
        sizes = part if sizes is None else sizes + part
    assert sizes is not None
    return sizes


def updates_per_epoch(data_dir: str, args: Sequence[str], num_inputs: int) -> PerEpoch:
    """Updates per epoch (epoch 1, 2, ... as a function) that fairseq-train makes from the
    arguments ``args``: the train batches fairseq builds (trainer.get_train_iterator ->
    task.get_batch_iterator -> data_utils.batch_by_size), grouped by --update-freq as
    fairseq_cli.train's GroupedIterator groups them (the last group may be short)."""
    import numpy as np
    from fairseq.data import data_utils

    sizes = _train_sizes(data_dir, num_inputs)
    positions = _last_option(args, ["--max-positions"])
    if _last_option(args, ["--shorten-method"], "none") == "truncate" and positions:
        sizes = np.minimum(sizes, int(positions))  # TruncateDataset
    max_tokens_arg = _last_option(args, ["--max-tokens"])
    max_tokens = int(max_tokens_arg) if max_tokens_arg is not None else None
    batch_size_arg = _last_option(args, ["--batch-size", "--max-sentences"])
    batch_size = int(batch_size_arg) if batch_size_arg is not None else None
    multiple = int(_last_option(args, ["--required-batch-size-multiple"], "8"))
    seed = int(_last_option(args, ["--seed"], "1"))
    # the task's order: SortDataset(sort_order=[a permutation seeded by --seed])
    with data_utils.numpy_seed(seed):
        shuffle = np.random.permutation(len(sizes))
    indices = np.lexsort([shuffle])
    # trainer: max_positions = min(task's, model's, max_tokens); longer examples are skipped
    limits = [v for v in (int(positions) if positions else None, max_tokens) if v is not None]
    if limits:
        indices = indices[sizes[indices] <= min(limits)]
    batches = data_utils.batch_by_size(
        indices,
        num_tokens_fn=lambda i: sizes[i],
        num_tokens_vec=sizes[indices],
        max_tokens=max_tokens,
        max_sentences=batch_size,
        required_batch_size_multiple=multiple,
    )
    n = len(batches)
    freqs = [int(f) for f in str(_last_option(args, ["--update-freq"], "1")).split(",")]
    skip_remainder = "--skip-remainder-batch" in args

    def per_epoch(epoch: int) -> int:
        freq = freqs[epoch - 1] if epoch <= len(freqs) else freqs[-1]
        if skip_remainder:  # EpochBatchIterator drops the last batch, GroupedIterator floors
            return max(0, n - 1) // freq
        return math.ceil(n / freq)

    return per_epoch


def recipe_settings(
    task: "TaskData", overrides: Overrides, per_epoch: PerEpoch, epochs: Optional[int] = None
) -> RunSettings:
    """The schedule and batch settings of a run; ``per_epoch(epoch)`` is the updates fairseq
    makes in that epoch (:func:`updates_per_epoch`)."""
    recipe = task.recipe
    batch_size = overrides.batch_size or recipe.batch_size
    epochs = epochs or overrides.epochs or recipe.epochs
    planned = sum(per_epoch(e) for e in range(1, epochs + 1))
    total = overrides.total_updates or (
        min(overrides.max_update, planned) if overrides.max_update else planned
    )
    fraction = (
        recipe.warmup_fraction if overrides.warmup_fraction is None else overrides.warmup_fraction
    )
    warmup = int(round(fraction * total))
    best = overrides.best_metric or ("loss" if task.kind == "regression" else "accuracy")
    return {
        "lr": overrides.lr or recipe.lr,
        "batch_size": batch_size,
        "epochs": epochs,
        "updates_per_epoch": per_epoch(1),
        "total_updates": total,
        "warmup_updates": warmup,
        "max_update": overrides.max_update,
        "best_metric": best,
        "max_tokens": overrides.max_tokens,
    }


def fairseq_train_args(
    info: "CheckpointInfo",
    task: "TaskData",
    manifest: Manifest,
    data_dir: str,
    run_dir: str,
    seed: int,
    overrides: Overrides,
) -> tuple[list[str], RunSettings]:
    recipe = task.recipe
    s: RunSettings = {  # what the arguments need before the schedule is counted from them
        "lr": overrides.lr or recipe.lr,
        "batch_size": overrides.batch_size or recipe.batch_size,
        "epochs": overrides.epochs or recipe.epochs,
        "total_updates": 0,
        "warmup_updates": 0,
        "best_metric": overrides.best_metric
        or ("loss" if task.kind == "regression" else "accuracy"),
        "max_tokens": overrides.max_tokens,
        "max_update": overrides.max_update,
    }
    dictionary_bos, dictionary_eos = 0, 2  # fairseq Dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3
    args = [
        data_dir,
        "--task",
        "sentence_prediction",
        "--criterion",
        "sentence_prediction",
        "--finetune-from-model",
        info.path,
        "--arch",
        info.arch,
        *info.model_args,
        "--max-positions",
        str(info.max_positions),
        "--shorten-method",
        "truncate",
        "--init-token",
        str(dictionary_bos),
        "--separator-token",
        str(dictionary_eos),
        "--num-classes",
        str(manifest["num_classes"]),
        "--batch-size",
        str(s["batch_size"]),
        "--required-batch-size-multiple",
        "1",
        "--dropout",
        repr(overrides.dropout),
        "--attention-dropout",
        repr(overrides.attention_dropout),
        "--weight-decay",
        repr(
            ROBERTA_OPTIMIZER["weight_decay"]
            if overrides.weight_decay is None
            else overrides.weight_decay
        ),
        "--optimizer",
        "adam",
        "--adam-betas",
        "(0.9, 0.98)",
        "--adam-eps",
        "1e-06",
        "--clip-norm",
        "0.0",
        "--lr-scheduler",
        "polynomial_decay",
        "--lr",
        repr(s["lr"]),
        "--total-num-update",
        str(s["total_updates"]),
        "--warmup-updates",
        str(s["warmup_updates"]),
        "--max-epoch",
        str(s["epochs"]),
        "--best-checkpoint-metric",
        s["best_metric"],
        "--seed",
        str(seed),
        "--save-dir",
        run_dir,
        "--no-epoch-checkpoints",
        "--log-format",
        "simple",
        "--log-interval",
        "10",
    ]
    if s["max_tokens"]:
        args += ["--max-tokens", str(s["max_tokens"])]
    if s["max_update"]:
        args += ["--max-update", str(s["max_update"])]
    if task.kind == "regression":
        args += ["--regression-target", "--report-pearson-and-spearman"]
    elif task.metric == "mcc":
        args += ["--report-mcc"]
    elif task.metric == "f1":
        args += ["--report-acc-and-f1"]
    if s["best_metric"] not in ("loss", "nll_loss"):
        args += ["--maximize-best-checkpoint-metric"]
    args += list(overrides.fairseq_args)
    per_epoch = updates_per_epoch(data_dir, args, task.num_inputs)
    epochs = int(_last_option(args, ["--max-epoch"], str(s["epochs"])))
    s = recipe_settings(task, overrides, per_epoch, epochs)
    args[args.index("--total-num-update") + 1] = str(s["total_updates"])
    args[args.index("--warmup-updates") + 1] = str(s["warmup_updates"])
    return args, s


def bert_recipe(task: "TaskData") -> "Recipe":
    """BERT's GLUE recipe (Devlin et al. 2019, 4.1): batch 32, 3 epochs, lr chosen from
    {5e-5, 4e-5, 3e-5, 2e-5} on dev; the harness takes 2e-5 (one documented default,
    ``--lr`` for the others), 10 % warmup; the task's own kind and metric."""
    from se_fairseq.finetune.tasks import Recipe

    return Recipe(2e-5, 32, 0.1, epochs=3, kind=task.kind, metric=task.metric)


def hf_recipe(info: "HFCheckpointInfo", task: "TaskData") -> tuple["Recipe", dict[str, Any]]:
    """(Recipe, optimizer) of a Hugging Face run: BERT's for a BERT checkpoint
    (config model_type bert, also a converted fairseq hf_bert one), else RoBERTa's GLUE
    recipe for the task, as the fairseq runs use."""
    if info.model_type == "bert":
        return bert_recipe(task), BERT_OPTIMIZER
    return task.recipe, ROBERTA_OPTIMIZER


def hf_settings(
    info: "HFCheckpointInfo", task: "TaskData", train_examples: int, overrides: Overrides
) -> RunSettings:
    """The Trainer's schedule: ``updates_per_epoch`` = ceil(train examples / batch size),
    exactly the batches its DataLoader makes; the run and its linear schedule both end at
    ``total_updates`` (``--total-updates``, else ``--max-update`` or the epochs' updates,
    whichever is fewer)."""
    recipe, optimizer = hf_recipe(info, task)
    batch_size = overrides.batch_size or recipe.batch_size
    epochs = overrides.epochs or recipe.epochs
    per_epoch = math.ceil(train_examples / batch_size)
    planned = epochs * per_epoch
    total = overrides.total_updates or (
        min(overrides.max_update, planned) if overrides.max_update else planned
    )
    fraction = (
        recipe.warmup_fraction if overrides.warmup_fraction is None else overrides.warmup_fraction
    )
    return {
        "recipe": "bert" if info.model_type == "bert" else "roberta-glue",
        "lr": overrides.lr or recipe.lr,
        "batch_size": batch_size,
        "epochs": epochs,
        "updates_per_epoch": per_epoch,
        "total_updates": total,
        "warmup_updates": int(round(fraction * total)),
        "max_update": overrides.max_update,
        "best_metric": overrides.best_metric
        or ("loss" if task.kind == "regression" else "accuracy"),
        "weight_decay": optimizer["weight_decay"]
        if overrides.weight_decay is None
        else overrides.weight_decay,
        "adam_betas": list(optimizer["adam_betas"]),
        "adam_eps": optimizer["adam_eps"],
        "max_length": info.max_length,
        "model_type": info.model_type,
    }


def plan_runs(
    checkpoints: Sequence[Union["CheckpointInfo", "HFCheckpointInfo"]],
    tasks: Sequence["TaskData"],
    manifests: dict[tuple[str, str], Manifest],
    data_dirs: dict[tuple[str, str], str],
    seeds: Sequence[int],
    out_dir: str,
    overrides: Overrides,
) -> list[RunSpec]:
    """RunSpecs for every (checkpoint, task, seed); ``checkpoints`` are CheckpointInfo,
    ``tasks`` TaskData, ``manifests``/``data_dirs`` keyed by (checkpoint name, task name)."""
    from se_fairseq.finetune.hf_model import HFCheckpointInfo

    runs = []
    for info in checkpoints:
        for task in tasks:
            manifest = manifests[info.name, task.name]
            for seed in seeds:
                run_dir = os.path.join(out_dir, "runs", info.name, task.name, f"seed{seed}")
                args: list[str]
                hf = isinstance(info, HFCheckpointInfo)
                if isinstance(info, HFCheckpointInfo):
                    args = []
                    settings = hf_settings(info, task, len(task.train), overrides)
                else:
                    args, settings = fairseq_train_args(
                        info,
                        task,
                        manifest,
                        data_dirs[info.name, task.name],
                        run_dir,
                        seed,
                        overrides,
                    )
                runs.append(
                    RunSpec(
                        checkpoint=info.name,
                        checkpoint_path=info.path,
                        task=task.name,
                        seed=seed,
                        run_dir=run_dir,
                        data_dir=data_dirs[info.name, task.name],
                        kind=task.kind,
                        metric=task.metric,
                        labels=manifest.get("labels"),
                        label_scale=task.label_scale,
                        eval_checkpoint=overrides.eval_checkpoint,
                        precision=overrides.precision,
                        fairseq_args=args,
                        settings=settings,
                        positive_label=task.positive,
                        dev_sets=manifest["dev_sets"]
                        if len(manifest.get("dev_sets") or ()) > 1
                        else None,
                        engine="hf" if hf else None,
                    )
                )
    return runs
