"""What a run's dev predictions say beside its metric: how many examples each class got.

A classifier that gives every dev example the same class scores what that class alone
scores (its share for accuracy, 0 for MCC): its metric says nothing about what it learned,
and runs like it differ by nothing but chance. The worker records the counts in done.json
(``prediction_counts``, per dev set); the results and the log warn about such runs.
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Optional

from se_fairseq.finetune.metrics import Label


def prediction_counts(predictions: Iterable[Label]) -> dict[str, int]:
    """Dev examples per predicted class, classes in sorted order."""
    counts = Counter(str(p) for p in predictions)
    return {label: counts[label] for label in sorted(counts)}


def single_class(counts: Optional[Mapping[str, int]]) -> Optional[str]:
    """The class every dev example was given, if there was only one; None otherwise (and
    for runs without counts: regression, or finished by an earlier version)."""
    if counts and len(counts) == 1:
        return next(iter(counts))
    return None


def single_class_note(counts: Optional[Mapping[str, int]]) -> str:
    """A short note for a run's log line, empty unless it predicted one class."""
    label = single_class(counts)
    return f"; every dev prediction is {label!r}" if label is not None else ""
