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
The average over tasks (the paper's "average score") is taken per seed, then treated
like one more task.
"""

import json
import math
import os

import numpy as np

AVERAGE = "average"
ALPHA, POWER = 0.05, 0.80


def t_quantile(q, dof):
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def detectable_in_se(n, alpha=ALPHA, power=POWER):
    """The true paired difference, in standard errors, that a two-sided paired t-test at
    ``alpha`` over ``n`` pairs detects with probability ``power`` (exact noncentral t)."""
    from scipy import optimize, stats

    dof = n - 1
    crit = t_quantile(1 - alpha / 2, dof)

    def miss(delta):
        lower = stats.nct.cdf(-crit, dof, delta)  # NaN far out in the tail: it is 0 there
        return float(stats.nct.sf(crit, dof, delta)) + (0.0 if np.isnan(lower) else lower) - power

    hi = crit + t_quantile(power, dof)  # the usual approximation, a little below the root
    while miss(hi) < 0:
        hi *= 1.5
    return float(optimize.brentq(miss, 0.0, hi, xtol=1e-10))


def paired(values, baseline):
    """Paired difference over the seeds both have: dict with mean, se, n, detected, detectable."""
    seeds = sorted(set(values) & set(baseline))
    d = np.array([values[s] - baseline[s] for s in seeds], dtype=float)
    n = len(d)
    out = {
        "n": n,
        "mean": float(d.mean()) if n else float("nan"),
        "se": float("nan"),
        "detected": False,
        "detectable": float("nan"),
    }
    if n >= 2:
        se = float(d.std(ddof=1) / math.sqrt(n))
        crit = t_quantile(1 - ALPHA / 2, n - 1)
        out.update(
            se=se,
            detected=bool(abs(out["mean"]) > crit * se),
            detectable=detectable_in_se(n) * se,
        )
    return out


def per_column(records):
    """One record per results column: a run scored on several dev sets (MNLI: matched and
    mismatched, done.json's ``dev_sets``) gives one per set, named by its column."""
    out = []
    for r in records:
        for column, scored in (r.get("dev_sets") or {r["task"]: None}).items():
            if scored is None:
                out.append(r)
            else:
                one = {k: v for k, v in r.items() if k != "dev_sets"}
                one.update(
                    task=column,
                    run_task=r["task"],
                    metrics=scored["metrics"],
                    value=scored["value"],
                    dev_examples=scored["dev_examples"],
                )
                out.append(one)
    return out


def summarize(records, checkpoints, tasks, baseline=None, metric_of_task=None, failures=()):
    """records: done.json dicts of the finished runs; tasks: the results columns (a task
    with several dev sets has one per set, see :func:`per_column`); failures: the runs that
    did not finish (dicts with key, log, reason). Returns the results document (JSON-ready)."""
    records = per_column(records)
    values = {}  # (checkpoint, task) -> {seed: value}
    extra = {}
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
    table = {}
    for c in checkpoints:
        table[c] = {}
        for t in list(tasks) + [AVERAGE]:
            v = values.get((c, t), {})
            arr = np.array([v[s] for s in sorted(v)], dtype=float)
            entry = {
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
        },
        "runs": sorted(records, key=lambda r: (r["checkpoint"], r["task"], r["seed"])),
        "failures": sorted(failures, key=lambda f: f["key"]),
    }


def _fmt(x, scale=100.0, digits=2, sign=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x * scale:+.{digits}f}" if sign else f"{x * scale:.{digits}f}"


def markdown(doc):
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
        for c in doc["checkpoints"]:
            if c == base:
                continue
            cells = []
            for t in tasks:
                p = doc["results"][c][t].get("vs_baseline")
                cell = f"{_fmt(p['mean'], sign=True)} ± {_fmt(p['se'])}"
                cells.append(
                    (f"**{cell}**" if p["detected"] else cell) + f" ({_fmt(p['detectable'])})"
                )
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
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


def write(doc, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name, text in (("results.json", json.dumps(doc, indent=1)), ("results.md", markdown(doc))):
        tmp = os.path.join(out_dir, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))
    return os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")
