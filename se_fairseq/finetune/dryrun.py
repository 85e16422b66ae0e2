"""``se-finetune --dry-run``: the runs a sweep would make, their updates, an estimate of its
GPU hours and of the disk it peaks at; nothing is binarized or trained.

Updates per run: epochs x ceil(train examples / batch size), the recipe's batch sizes
(full batches: what fairseq builds where ``--max-tokens`` does not bind, as on GLUE with
4400 tokens and 512 positions; exactly the batches the Trainer's DataLoader makes for a
Hugging Face checkpoint, whose BERT ones take BERT's recipe). The real fairseq runs count
fairseq's own batches
(:func:`se_fairseq.finetune.plan.updates_per_epoch`), which needs the binarized data. For
GLUE tasks the table also shows the recipe's own ``--total-num-update`` (fairseq's RoBERTa
GLUE README), which is *not* this rule applied to GLUE's train files: RTE's 2,036 is 30 %
above 10 x ceil(2,490 / 16) = 1,560, MNLI's 123,873 1 % above 122,720.

GPU hours (an assumption, stated with the table): tokens processed = updates x batch size x
mean tokens per example, the mean estimated from the train file's whitespace words x
``PIECES_PER_WORD`` (GPT-2 BPE on English) plus the special tokens, over
``TOKENS_PER_SECOND`` training tokens per second for a roberta.base-sized model (125 M
parameters) on one V100 in fp16, scaled by the checkpoint's parameter count; validation
and start-up not counted.

Disk: a running run holds checkpoint_last.pt and checkpoint_best.pt with the Adam state
(weights + two moments, fp32: 12 bytes a parameter, each); a finished one what
``--keep-checkpoints`` keeps (best: the weights alone, 4 bytes a parameter; none: 0; all:
both files as written). The peak is at the end of the sweep: ``jobs`` runs running and the
others finished.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, TypedDict, Union

from se_fairseq.finetune.log import Log, print_line
from se_fairseq.finetune.plan import Overrides
from se_fairseq.finetune.tasks import TaskData

#: training tokens per second, roberta.base (125 M parameters), one V100, fp16: an
#: assumption (forward + backward at about 6 x 85 M non-embedding FLOPs a token, ~35 % of
#: the V100's 125 TFLOP/s fp16 peak minus padding), not a measurement
TOKENS_PER_SECOND = 30000.0
BASE_PARAMETERS = 125e6
PIECES_PER_WORD = 1.3


@dataclass(frozen=True)
class PlannedCheckpoint:
    """A checkpoint as the dry run sizes it."""

    name: str
    parameters: int
    #: ``bert``: fine-tuned with BERT's recipe (:func:`se_fairseq.finetune.plan.bert_recipe`);
    #: None: RoBERTa's GLUE recipe of the task
    family: Optional[str] = None


class DryRunRow(TypedDict):
    """One checkpoint on one task: its runs, updates and GPU hours."""

    checkpoint: str
    task: str
    columns: list[str]
    runs: int
    train_examples: int
    batch_size: int
    epochs: int
    updates_per_run: int
    recipe_total_updates: Optional[int]
    gpu_hours: float


class DryRun(TypedDict):
    rows: list[DryRunRow]
    peak_disk_bytes: float
    text: str


def parameter_count(checkpoint_path: str) -> int:
    """Parameters of a fairseq checkpoint's model (loaded with the safe loader)."""
    return parameters_and_family(checkpoint_path)[0]


def parameters_and_family(path: str) -> tuple[int, Optional[str]]:
    """(parameters, model family) of a checkpoint: a Hugging Face directory's config
    model_type; ``bert`` for a fairseq hf_bert checkpoint (fine-tuned through
    transformers with BERT's recipe), None for the other fairseq ones."""
    from se_fairseq.finetune.hf_model import is_hf_directory, parameter_count, read_hf_checkpoint

    if is_hf_directory(path):
        return parameter_count(path), read_hf_checkpoint(path).model_type
    from se_fairseq.checkpoint_safety import safe_load

    state = safe_load(path)
    params = int(sum(v.numel() for v in state["model"].values() if hasattr(v, "numel")))
    cfg = state.get("cfg") or {}
    model = cfg.get("model") if hasattr(cfg, "get") else None
    arch = getattr(model, "arch", None) or getattr(model, "_name", None)
    if arch is None and isinstance(model, dict):
        arch = model.get("arch") or model.get("_name")
    if arch is None and state.get("args") is not None:
        arch = getattr(state["args"], "arch", None)
    return params, "bert" if str(arch).startswith("hf_bert") else None


def mean_tokens(task: TaskData) -> float:
    words = sum(len(t.split()) for column in task.train.texts for t in column)
    return words * PIECES_PER_WORD / max(1, len(task.train)) + 1 + len(task.train.texts)


def plan_table(
    checkpoints: Sequence[PlannedCheckpoint],
    tasks: Sequence[TaskData],
    seeds: Sequence[int],
    overrides: Overrides,
    keep: str = "best",
    jobs: int = 1,
) -> tuple[list[DryRunRow], float]:
    """Rows for the dry run, and the peak disk in bytes."""
    from se_fairseq.finetune.plan import bert_recipe

    rows: list[DryRunRow] = []
    kept_bytes = 0.0
    running_bytes: list[float] = []
    for checkpoint in checkpoints:
        params = checkpoint.parameters
        for task in tasks:
            recipe = bert_recipe(task) if checkpoint.family == "bert" else task.recipe
            batch = overrides.batch_size or recipe.batch_size
            epochs = overrides.epochs or recipe.epochs
            updates = overrides.total_updates or epochs * math.ceil(len(task.train) / batch)
            if overrides.max_update:
                updates = min(updates, overrides.max_update)
            tokens = updates * batch * mean_tokens(task)
            hours = tokens / (TOKENS_PER_SECOND * BASE_PARAMETERS / params) / 3600
            per_run_kept = {"best": 4 * params, "none": 0, "all": 2 * 12 * params}[keep]
            kept_bytes += per_run_kept * len(seeds)
            running_bytes += [2 * 12 * params - per_run_kept] * len(seeds)
            rows.append(
                {
                    "checkpoint": checkpoint.name,
                    "task": task.name,
                    "columns": task.columns,
                    "runs": len(seeds),
                    "train_examples": len(task.train),
                    "batch_size": batch,
                    "epochs": epochs,
                    "updates_per_run": updates,
                    "recipe_total_updates": recipe.recipe_total_updates,
                    "gpu_hours": hours * len(seeds),
                }
            )
    peak = kept_bytes + sum(sorted(running_bytes, reverse=True)[: max(1, jobs)])
    return rows, peak


def render(rows: Sequence[DryRunRow], peak: float, keep: str, jobs: int) -> str:
    head = (
        "| checkpoint | task | runs | train rows | batch | updates/run | recipe's total | "
        "GPU hours |"
    )
    lines = [head, "| --- " * 8 + "|"]
    for r in rows:
        recipe = f"{r['recipe_total_updates']:,}" if r["recipe_total_updates"] else "-"
        lines.append(
            f"| {r['checkpoint']} | {r['task']} | {r['runs']} | {r['train_examples']:,} | "
            f"{r['batch_size']} | {r['updates_per_run']:,} | {recipe} | {r['gpu_hours']:.1f} |"
        )
    total_runs = sum(r["runs"] for r in rows)
    hours = sum(r["gpu_hours"] for r in rows)
    lines += [
        "",
        f"{total_runs} runs, {sum(r['runs'] * r['updates_per_run'] for r in rows):,} updates, "
        f"about {hours:.0f} GPU hours (assumed {TOKENS_PER_SECOND:,.0f} training tokens/s for "
        "a roberta.base-sized model on one V100 in fp16, scaled by parameters; tokens "
        f"estimated as {PIECES_PER_WORD} BPE pieces a word)",
        f"disk at its peak: {peak / 1e9:.1f} GB of checkpoints (--keep-checkpoints {keep}, "
        f"{jobs} at a time; a running run holds last and best with the Adam state)",
        "nothing was trained (--dry-run)",
    ]
    return "\n".join(lines) + "\n"


def dry_run(
    checkpoints: Mapping[str, Union[str, tuple[str, Optional[str]]]],
    task_folders: Sequence[Union[str, tuple[Optional[str], str]]],
    seeds: Sequence[int],
    overrides: Overrides,
    keep: str = "best",
    jobs: Optional[int] = None,
    log: Log = print_line,
) -> DryRun:
    """Print (through ``log``) and return the dry run's table for checkpoints
    ({name: path or (path, dict)}) x task folders x seeds."""
    from se_fairseq.finetune.tasks import read_task

    tasks = []
    for folder in task_folders:
        name, folder = folder if isinstance(folder, tuple) else (None, folder)
        tasks.append(read_task(folder, name))
    infos = [
        PlannedCheckpoint(
            name, *parameters_and_family(value[0] if isinstance(value, tuple) else value)
        )
        for name, value in checkpoints.items()
    ]
    jobs = jobs or 1
    rows, peak = plan_table(infos, tasks, list(seeds), overrides, keep, jobs)
    text = render(rows, peak, keep, jobs)
    log(text)
    return {"rows": rows, "peak_disk_bytes": peak, "text": text}
