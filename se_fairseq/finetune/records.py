"""The JSON records the harness writes and reads back, as types: a data folder's manifest,
a run's settings, a finished run's done.json, a failure, a claim's owner.

They are plain dicts at run time (what ``json`` reads and writes); the types only say
which keys each holds.
"""

from typing import NotRequired, Optional, Required, TypedDict, Union


class DevSet(TypedDict):
    """One dev set of a task: results column, fairseq split, targets file."""

    name: str
    split: str
    targets: str


class TestSet(TypedDict):
    """One GLUE test set: server file name (without .tsv), fairseq split, index file."""

    name: str
    split: str
    index: str


class Manifest(TypedDict, total=False):
    """manifest.json of a data folder (binarized for fairseq, or text for transformers)."""

    task: str
    layout: str
    kind: str
    files: dict[str, str]  # task file name -> sha256
    tokenizer: str
    tokenizer_id: str
    dictionary_sha256: str
    label_scale: Optional[float]
    format: Union[int, str]
    labels: Optional[list[str]]  # class i of the head is labels[i]; None for regression
    num_classes: int
    sizes: dict[str, int]
    tokens: dict[str, dict[str, int]]
    num_inputs: int
    dev_sets: list[DevSet]
    test_sets: list[TestSet]


class RunSettings(TypedDict, total=False):
    """A run's schedule and batch settings (``RunSpec.settings``): fairseq runs hold the
    first group, Hugging Face runs also the second."""

    lr: float
    batch_size: int
    epochs: int
    updates_per_epoch: int
    total_updates: int
    warmup_updates: int
    max_update: Optional[int]
    best_metric: str
    max_tokens: Optional[int]
    # Hugging Face runs
    recipe: str
    weight_decay: float
    adam_betas: list[float]
    adam_eps: float
    max_length: int
    model_type: str


class ScoredDevSet(TypedDict):
    """One dev set's scores in done.json (``dev_sets``, for tasks with several)."""

    metrics: dict[str, float]
    value: float
    dev_examples: int
    predictions: str
    #: dev examples per predicted class (classification)
    prediction_counts: NotRequired[dict[str, int]]


class DoneRecord(TypedDict, total=False):
    """done.json of a finished run (results read the required keys only)."""

    key: str
    checkpoint: Required[str]
    task: Required[str]
    seed: Required[int]
    metric: Required[str]
    metrics: Required[dict[str, float]]
    value: Required[float]
    dev_examples: int
    eval_checkpoint: str
    updates_of_eval_checkpoint: Optional[int]
    fingerprint: str
    seconds_last_invocation: float
    #: dev examples per predicted class on the first dev set (classification)
    prediction_counts: dict[str, int]
    dev_sets: dict[str, ScoredDevSet]
    test_predictions: list[str]
    resumed_from: str
    #: set by the results for a column of a run with several dev sets: the run's own task
    run_task: str


class Failure(TypedDict):
    """A run that did not finish, as run_all reports it and results.md lists it."""

    key: str
    checkpoint: str
    task: str
    seed: int
    run_dir: str
    log: str
    reason: str


class ClaimOwner(TypedDict):
    """The claim file of a run: the worker process that runs it."""

    pid: int
    start_time: Optional[int]
    host: NotRequired[str]
