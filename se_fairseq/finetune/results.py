"""Results over seeds: mean and sd per (checkpoint, task), paired differences against a
baseline checkpoint, the average over tasks, and the smallest difference the run could
detect.

Paired: seed s of a checkpoint is compared with seed s of the baseline (same seed, same
data order and head initialisation), d_s = metric - baseline metric. The difference is
mean(d) with standard error sd(d) / sqrt(n). It is *detected* when a paired t-test
rejects zero at 5 % (|mean| > t(0.975, n-1) * se). The detectable difference is the
true difference this design would detect with 80 % power at that level, from the exact
power of the two-sided test: the statistic follows a noncentral t with n-1 degrees of
freedom and noncentrality delta / se, and delta solves P(|T| > t(0.975, n-1)) = 0.80
(scipy's ``nct``); with 3 seeds that is 5.65 standard errors, with 5 seeds 3.76.
When every seed gives the same difference (no spread: both models predicted the majority
class on every seed, say), sd(d) is 0, the t-test is undefined and nothing can be
resolved: such a difference is never *detected* and its detectable difference is NaN
(n/a), not 0. The average over tasks (the paper's "average score") is taken per seed, then treated
like one more task.
"""

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import NotRequired, Optional, TypedDict

import numpy as np

from se_fairseq.core.files import atomic_write_text
from se_fairseq.finetune.predictions import single_class
from se_fairseq.finetune.records import DoneRecord, Failure, RunSettings

AVERAGE = "average"
ALPHA, POWER = 0.05, 0.80
#: paired differences (metric fractions) that all lie within this of each other have no
#: spread: floating point can leave 1e-17 between differences that are equal
NO_SPREAD = 1e-12


class PairedDifference(TypedDict):
    """A checkpoint minus the baseline on one results column, paired over seeds."""

    n: int
    mean: float
    se: float
    detected: bool
    detectable: float
    #: every seed gave the same difference: nothing can be resolved (detectable NaN)
    no_spread: bool


class SingleClassRuns(TypedDict):
    """Seeds of a checkpoint that predicted one class for every example of a dev set."""

    checkpoint: str
    task: str
    seeds: dict[str, str]  # seed -> the one class it predicted


class ResultsEntry(TypedDict):
    """One checkpoint on one results column."""

    seeds: dict[str, float]
    n: int
    mean: float
    sd: float
    metric: str
    all_metrics_mean: NotRequired[dict[str, float]]
    vs_baseline: NotRequired[PairedDifference]


class ResultsDocument(TypedDict):
    """results.json."""

    checkpoints: list[str]
    tasks: list[str]
    baseline: Optional[str]
    metric_of_task: dict[str, str]
    results: dict[str, dict[str, ResultsEntry]]
    method: dict[str, str]
    runs: list[DoneRecord]
    failures: list[Failure]
    #: per checkpoint and results column, the runs that predicted a single class
    single_class: list[SingleClassRuns]
    #: per CHECKPOINT/TASK, the first seed's run settings (set by ``finetune``)
    settings: NotRequired[dict[str, RunSettings]]


def t_quantile(q: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def detectable_in_se(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true paired difference, in standard errors, that a two-sided paired t-test at
    ``alpha`` over ``n`` pairs detects with probability ``power`` (exact noncentral t)."""
    from scipy import optimize, stats

    dof = n - 1
    crit = t_quantile(1 - alpha / 2, dof)

    def miss(delta: float) -> float:
        lower = stats.nct.cdf(-crit, dof, delta)  # NaN far out in the tail: it is 0 there
        return float(stats.nct.sf(crit, dof, delta)) + (0.0 if np.isnan(lower) else lower) - power

    hi = crit + t_quantile(power, dof)  # the usual approximation, a little below the root
    while miss(hi) < 0:
        hi *= 1.5
    return float(optimize.brentq(miss, 0.0, hi, xtol=1e-10))


def paired(values: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDifference:
    """Paired difference over the seeds both have: n, mean, se, detected, detectable and
    no_spread (every seed's difference the same: se 0, never detected, detectable NaN)."""
    seeds = sorted(set(values) & set(baseline))
    d = np.array([values[s] - baseline[s] for s in seeds], dtype=float)
    n = len(d)
    out: PairedDifference = {
        "n": n,
        "mean": float(d.mean()) if n else float("nan"),
        "se": float("nan"),
        "detected": False,
        "detectable": float("nan"),
        "no_spread": False,
    }
    if n >= 2 and float(np.ptp(d)) <= NO_SPREAD:
        out["se"] = 0.0
        out["no_spread"] = True
    elif n >= 2:
        se = float(d.std(ddof=1) / math.sqrt(n))
        crit = t_quantile(1 - ALPHA / 2, n - 1)
        out["se"] = se
        out["detected"] = bool(abs(out["mean"]) > crit * se)
        out["detectable"] = detectable_in_se(n) * se
    return out


def per_column(records: Sequence[DoneRecord]) -> list[DoneRecord]:
    """One record per results column: a run scored on several dev sets (MNLI: matched and
    mismatched, done.json's ``dev_sets``) gives one per set, named by its column."""
    out: list[DoneRecord] = []
    for r in records:
        dev_sets = r.get("dev_sets")
        if not dev_sets:
            out.append(r)
            continue
        for column, scored in dev_sets.items():
            one: DoneRecord = {**r}
            del one["dev_sets"]
            one["task"] = column
            one["run_task"] = r["task"]
            one["metrics"] = scored["metrics"]
            one["value"] = scored["value"]
            one["dev_examples"] = scored["dev_examples"]
            one.pop("prediction_counts", None)
            if "prediction_counts" in scored:
                one["prediction_counts"] = scored["prediction_counts"]
            out.append(one)
    return out


def summarize(
    records: Sequence[DoneRecord],
    checkpoints: Sequence[str],
    tasks: Sequence[str],
    baseline: Optional[str] = None,
    metric_of_task: Optional[Mapping[str, str]] = None,
    failures: Sequence[Failure] = (),
) -> ResultsDocument:
    """records: done.json dicts of the finished runs; tasks: the results columns (a task
    with several dev sets has one per set, see :func:`per_column`); failures: the runs that
    did not finish (dicts with key, log, reason). Returns the results document (JSON-ready)."""
    records = per_column(records)
    values: dict[tuple[str, str], dict[int, float]] = {}  # (checkpoint, task) -> {seed: value}
    extra: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in records:
        values.setdefault((r["checkpoint"], r["task"]), {})[r["seed"]] = r["value"]
        extra.setdefault((r["checkpoint"], r["task"]), []).append(r["metrics"])
    metrics_of = dict(metric_of_task or {})
    for r in records:
        metrics_of[r["task"]] = r["metric"]
    for c in checkpoints:  # the average over tasks, per seed present in every task
        per_task = [values.get((c, t), {}) for t in tasks]
        seeds = set.intersection(*(set(v) for v in per_task)) if per_task else set()
        values[(c, AVERAGE)] = {s: float(np.mean([v[s] for v in per_task])) for s in sorted(seeds)}
    table: dict[str, dict[str, ResultsEntry]] = {}
    for c in checkpoints:
        table[c] = {}
        for t in list(tasks) + [AVERAGE]:
            v = values.get((c, t), {})
            arr = np.array([v[s] for s in sorted(v)], dtype=float)
            entry: ResultsEntry = {
                "seeds": {str(s): v[s] for s in sorted(v)},
                "n": len(arr),
                "mean": float(arr.mean()) if len(arr) else float("nan"),
                "sd": float(arr.std(ddof=1)) if len(arr) > 1 else float("nan"),
                "metric": metrics_of.get(t, "mean of the tasks' metrics"),
            }
            if t != AVERAGE and extra.get((c, t)):
                entry["all_metrics_mean"] = {
                    m: float(np.nanmean([e[m] for e in extra[(c, t)]])) for m in extra[(c, t)][0]
                }
            if baseline is not None and c != baseline:
                entry["vs_baseline"] = paired(v, values.get((baseline, t), {}))
            table[c][t] = entry
    return {
        "checkpoints": list(checkpoints),
        "tasks": list(tasks),
        "baseline": baseline,
        "metric_of_task": metrics_of,
        "results": table,
        "method": {
            "paired_test": "two-sided paired t-test at 5 % over common seeds",
            "detectable": "the difference a two-sided paired t-test at 5 % detects with 80 % "
            "power (exact noncentral t), in units of the paired standard error x that error",
            "no_spread": "every common seed gave the same paired difference: its standard "
            "error is 0, the t-test is undefined and the run resolves no difference "
            "(detected false, detectable NaN: n/a)",
            "single_class": "runs whose model gave every example of a dev set the same "
            "class: their metric is that class's alone, not evidence the task was learned",
        },
        "runs": sorted(records, key=lambda r: (r["checkpoint"], r["task"], r["seed"])),
        "failures": sorted(failures, key=lambda f: f["key"]),
        "single_class": single_class_runs(records),
    }


def single_class_runs(records: Sequence[DoneRecord]) -> list[SingleClassRuns]:
    """Per checkpoint and results column (records as :func:`per_column` gives them), the
    seeds whose model predicted one class for every dev example."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for r in sorted(records, key=lambda r: (r["checkpoint"], r["task"], r["seed"])):
        label = single_class(r.get("prediction_counts"))
        if label is not None:
            found.setdefault((r["checkpoint"], r["task"]), {})[str(r["seed"])] = label
    return [{"checkpoint": c, "task": t, "seeds": seeds} for (c, t), seeds in found.items()]


def single_class_warning(runs: SingleClassRuns) -> str:
    """One line: which seeds of a checkpoint predicted which one class on a column."""
    by_label: dict[str, list[str]] = {}
    for seed, label in runs["seeds"].items():
        by_label.setdefault(label, []).append(seed)
    which = "; ".join(
        f"{label!r} on seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"
        for label, seeds in by_label.items()
    )
    return (
        f"{runs['checkpoint']} on {runs['task']}: every dev example got the same class "
        f"({which}); the metric of such a run is that class's alone"
    )


#: the detectable-difference cell of a paired difference without spread
NO_SPREAD_CELL = "n/a: no spread, the same difference on every seed"


def _fmt(x: Optional[float], scale: float = 100.0, digits: int = 2, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x * scale:+.{digits}f}" if sign else f"{x * scale:.{digits}f}"


def markdown(doc: ResultsDocument) -> str:
    """Two tables: mean ± sd per checkpoint and task; paired difference vs the baseline."""
    tasks = doc["tasks"] + [AVERAGE]
    head = (
        "| checkpoint | "
        + " | ".join(f"{t} ({doc['metric_of_task'].get(t, 'avg')})" for t in tasks)
        + " |"
    )
    sep = "| --- " * (len(tasks) + 1) + "|"
    lines = ["Dev metric x 100, mean ± sd over seeds (n seeds in brackets):", "", head, sep]
    for c in doc["checkpoints"]:
        cells = []
        for t in tasks:
            e = doc["results"][c][t]
            cells.append(f"{_fmt(e['mean'])} ± {_fmt(e['sd'])} ({e['n']})")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    base = doc.get("baseline")
    if base:
        lines += [
            "",
            f"Difference against **{base}**, paired over seeds: mean ± standard error "
            "(**bold**: a paired t-test rejects no difference at 5 %); in brackets the "
            "smallest difference this run could detect (80 % power):",
            "",
            head,
            sep,
        ]
        no_spread = False
        for c in doc["checkpoints"]:
            if c == base:
                continue
            cells = []
            for t in tasks:
                p = doc["results"][c][t]["vs_baseline"]
                cell = f"{_fmt(p['mean'], sign=True)} ± {_fmt(p['se'])}"
                if p["no_spread"]:
                    no_spread = True
                    cells.append(f"{cell} ({NO_SPREAD_CELL})")
                    continue
                cells.append(
                    (f"**{cell}**" if p["detected"] else cell) + f" ({_fmt(p['detectable'])})"
                )
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        if no_spread:
            lines += [
                "",
                f"{NO_SPREAD_CELL}: every seed gave the same difference, so the seeds show no "
                "spread (for example both models predicted one class on every seed): the "
                "t-test is undefined and this run can resolve no difference there.",
            ]
    single = doc.get("single_class") or []
    if single:
        lines += [
            "",
            "**Warning: single-class predictions.** These runs gave every dev example the "
            "same class (their metric is that class's alone, not evidence the task was "
            "learned):",
            "",
        ]
        lines += [f"- {single_class_warning(s)}" for s in single]
    failures = doc.get("failures") or []
    if failures:
        lines += [
            "",
            f"**{len(failures)} runs failed** and are not in the tables (rerun the same command "
            "to retry them; finished runs are kept):",
            "",
            "| run | log | reason |",
            "| --- | --- | --- |",
        ]
        for f in failures:
            reason = str(f.get("reason", "")).replace("|", "\\|")
            lines.append(f"| {f['key']} | {f['log']} | {reason} |")
    return "\n".join(lines) + "\n"


def write(doc: ResultsDocument, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    for name, text in (("results.json", json.dumps(doc, indent=1)), ("results.md", markdown(doc))):
        atomic_write_text(os.path.join(out_dir, name), text)
    return os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")
