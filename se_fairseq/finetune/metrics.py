"""Each task's own dev metric, computed by scikit-learn and scipy (as GLUE defines them).

Values are fractions (accuracy 0.91, not 91); reports multiply by 100.
"""

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

#: a dev prediction or target: a label string (classification) or a number (regression)
Label = Union[str, float]

#: metric -> kind of task it applies to
METRICS = {
    "accuracy": "classification",
    "f1": "classification",  # of the positive class: "1" (MRPC, QQP) or task.json's "positive"
    "mcc": "classification",  # Matthews correlation (CoLA)
    "pearson": "regression",
    "spearman": "regression",
}
#: what a report shows beside the main metric
COMPANIONS = {
    "f1": ("accuracy",),
    "pearson": ("spearman",),
    "spearman": ("pearson",),
    "mcc": ("accuracy",),
    "accuracy": (),
}


def check_metric(metric: str, kind: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}")
    if METRICS[metric] != kind:
        raise ValueError(f"metric {metric!r} is for {METRICS[metric]} tasks, not {kind}")


def compute(
    metric: str,
    predictions: Sequence[Label],
    targets: Sequence[Label],
    positive_label: Optional[str] = None,
) -> float:
    """One metric on dev predictions (labels as strings for classification, floats otherwise)."""
    from scipy import stats
    from sklearn import metrics

    if metric == "accuracy":
        return float(metrics.accuracy_score(targets, predictions))
    if metric == "f1":
        classes = sorted(set(targets) | set(predictions))
        if len(set(targets)) > 2:
            return float(metrics.f1_score(targets, predictions, average="macro"))
        positive = (
            positive_label
            if positive_label is not None
            else ("1" if "1" in classes else classes[-1])
        )
        return float(metrics.f1_score(targets, predictions, pos_label=positive, average="binary"))
    if metric == "mcc":
        return float(metrics.matthews_corrcoef(targets, predictions))
    x, y = np.asarray(predictions, dtype=float), np.asarray(targets, dtype=float)
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")  # undefined for a constant prediction; scipy would warn
    if metric == "pearson":
        return float(stats.pearsonr(x, y)[0])
    if metric == "spearman":
        return float(stats.spearmanr(x, y)[0])
    raise ValueError(f"unknown metric {metric!r}")


def evaluate(
    kind: str,
    main_metric: str,
    predictions: Sequence[Label],
    targets: Sequence[Label],
    positive_label: Optional[str] = None,
) -> dict[str, float]:
    """{metric: value} for the main metric and its companions; ``positive_label`` is the
    class F1 is of (default "1" if it is a label, else the alphabetically last)."""
    names = [main_metric] + [m for m in COMPANIONS.get(main_metric, ()) if m != main_metric]
    if kind == "regression":
        names = [n for n in names if METRICS[n] == "regression"]
    return {name: compute(name, predictions, targets, positive_label) for name in names}
