"""The quickstart report's downstream findings, on a results document made here: the
verdicts follow a paired t-test computed independently with scipy, and seeds with equal
accuracy read as the same, not as "detectable 0.0"."""

import importlib.util
import math
import os

import numpy as np
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_report():
    path = os.path.join(ROOT, "examples", "quickstart", "report.py")
    spec = importlib.util.spec_from_file_location("quickstart_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def document(seeds_of):
    """se-finetune's results.json shape: results[model][task] = mean, sd, n, seeds."""
    results = {}
    for model, tasks in seeds_of.items():
        results[model] = {}
        for task, values in tasks.items():
            v = np.array(values)
            results[model][task] = {
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)),
                "n": len(v),
                "seeds": {str(i + 1): x for i, x in enumerate(values)},
            }
    return {"tasks": ["module", "source"], "results": results}


def add_average(seeds_of):
    for tasks in seeds_of.values():
        tasks["average"] = [(a + b) / 2 for a, b in zip(tasks["module"], tasks["source"])]
    return seeds_of


def test_downstream_verdicts_follow_scipys_paired_t_test():
    report = load_report()
    random_module = [0.40, 0.42, 0.41]
    se_module = [0.50, 0.53, 0.51]  # +0.10 on every seed, little spread: detected
    random_source = [0.60, 0.66, 0.62]
    se_source = [0.61, 0.64, 0.65]
    seeds = add_average(
        {
            "random": {"module": random_module, "source": random_source},
            "se": {"module": se_module, "source": se_source},
            "rarity": {"module": [0.45, 0.47, 0.46], "source": se_source},  # = se on source
            "online": {"module": random_module, "source": random_source},
        }
    )
    down = document(seeds)
    for task, a, b in (("module", random_module, se_module), ("source", random_source, se_source)):
        p = report.down_compare(down, "random", "se", task)
        t = stats.ttest_rel(b, a)
        diff = np.subtract(b, a)
        assert math.isclose(p["mean"], 100 * diff.mean(), abs_tol=1e-9)
        assert math.isclose(p["se"], 100 * diff.std(ddof=1) / math.sqrt(3), rel_tol=1e-9)
        assert p["detected"] == bool(t.pvalue < 0.05)
    assert report.down_compare(down, "random", "se", "module")["detected"]
    assert not report.down_compare(down, "random", "se", "source")["detected"]

    text = report.downstream_findings(down)
    se_line = next(line for line in text.splitlines() if "Did SE beat random" in line)
    assert "yes, on module" in se_line and "source +0.67" in se_line
    rarity_line = next(line for line in text.splitlines() if "Did SE beat the rarity" in line)
    assert "source: the same on every seed" in rarity_line
    assert "detectable 0.0" not in rarity_line
    assert "yes, on module" in rarity_line  # +5 points on every seed
    _, diffs = report.downstream_tables(down)
    row = next(line for line in diffs.splitlines() if "minus (d) rarity" in line)
    assert "+0.00 ± 0.00 (equal on every seed)" in row and "(0.00)" not in row
