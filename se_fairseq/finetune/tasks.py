"""Task folders: GLUE's raw TSV layout or a generic one, read into texts and labels.

GLUE: each task's files are read by their header, the columns found by name. Two
headers are known per task: GLUE's own files (as its download script writes them; the
columns fairseq's examples/roberta/preprocess_GLUE_tasks.sh reads by position) and the
files Hugging Face ``datasets`` exports (``to_csv(sep="\t")``: the dataset's feature
names, then ``idx``):

    task    dev file         GLUE's header (columns used)       Hugging Face's
    CoLA    dev.tsv          none: sentence 4th, label 2nd      sentence label
    SST-2   dev.tsv          sentence label                     sentence label
    MRPC    dev.tsv          #1 String, #2 String, Quality      sentence1 sentence2 label
    QQP     dev.tsv          question1 question2 is_duplicate   question1 question2 label
    STS-B   dev.tsv          sentence1 sentence2 score          sentence1 sentence2 label
    MNLI    dev_matched.tsv  sentence1 sentence2 gold_label     premise hypothesis label
            dev_mismatched.tsv
    QNLI    dev.tsv          question sentence label            question sentence label
    RTE     dev.tsv          sentence1 sentence2 label          sentence1 sentence2 label

STS-B is regression (labels / 5), the others classification.

MNLI has two dev sets, each a column of the results (``MNLI-m`` and ``MNLI-mm``, both in
the average over tasks, as GLUE's score counts them): ``dev_matched.tsv`` (the one
fairseq-train validates on, so the best checkpoint is picked by it, as in RoBERTa's
recipe) and ``dev_mismatched.tsv`` (Hugging Face's split names
``validation_matched.tsv``/``validation_mismatched.tsv`` are read too); a folder with
only one of them reports that one. A folder named MNLI-m, MNLI-mm, mnli_matched or
mnli_mismatched is read as MNLI, under the task name MNLI.

A header that holds neither set is an error naming the file, the columns found and
the columns expected. Position is used only for CoLA without a header (as GLUE
distributes it). A byte-order mark before the first line is dropped.

Rows are split on tabs only, never on quotes (MRPC's and SST-2's sentences hold
unbalanced quote characters). QQP rows with another number of fields than the header
are dropped, as fairseq's script drops those without 6; any other short row is an error
naming the file, the line and the column.

Generic layout (the user's own tasks): ``train.tsv`` and ``dev.tsv`` with a header
row naming a ``label`` column and one text column (``sentence`` or ``text``) or two
(``sentence1`` and ``sentence2``). An optional ``task.json`` sets ``"kind"``
(``classification``, the default, or ``regression``), ``"metric"`` (see
:mod:`se_fairseq.finetune.metrics`), ``"label_scale"`` (regression labels are divided by
it) and ``"positive"`` (the class whose F1 the ``f1`` metric reports for two labels other
than 0/1; default ``1`` where the labels are 0/1, else the alphabetically last label).

Classification labels are single tokens: a label holding whitespace is refused, naming
the file, the line and the label (fairseq's label dictionary would split it in two).
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from se_fairseq.finetune.errors import FinetuneError

#: the columns of one header a task's files may have: (text column names, label column name)
Header = tuple[tuple[str, ...], str]
#: a results column (or a GLUE test file name) and its split's file names tried in order
NamedFiles = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class GlueLayout:
    #: the headers a task's files may have: (text column names, label column name)
    headers: tuple[Header, ...]
    #: header-less files (CoLA as GLUE distributes it): (text columns, label column), 0-based
    positions: Optional[tuple[tuple[int, ...], int]] = None
    #: the dev sets: (column suffix, file names tried in order); GLUE's MNLI has two
    dev_files: NamedFiles = (("", ("dev.tsv",)),)
    #: the test sets (no labels), as dev_files: read for --predict-test where present
    test_files: NamedFiles = (("", ("test.tsv",)),)
    drop_short_rows: bool = False  # rows with another field count are dropped (QQP)
    label_scale: Optional[float] = None  # regression labels are divided by this (STS-B: 5)


@dataclass(frozen=True)
class Recipe:
    """RoBERTa's GLUE recipe (fairseq examples/roberta/README.glue.md) for one task."""

    lr: float
    batch_size: int
    warmup_fraction: float  # warmup-updates / total-num-update in the recipe's table
    epochs: int = 10
    kind: str = "classification"
    metric: str = "accuracy"
    #: the recipe's own --total-num-update (10 epochs of the full GLUE train set)
    recipe_total_updates: Optional[int] = None


GLUE_LAYOUTS = {
    "CoLA": GlueLayout(((("sentence",), "label"),), positions=((3,), 1)),
    "SST-2": GlueLayout(((("sentence",), "label"),)),
    "MRPC": GlueLayout(
        ((("#1 String", "#2 String"), "Quality"), (("sentence1", "sentence2"), "label"))
    ),
    "QQP": GlueLayout(
        ((("question1", "question2"), "is_duplicate"), (("question1", "question2"), "label")),
        drop_short_rows=True,
    ),
    "STS-B": GlueLayout(
        ((("sentence1", "sentence2"), "score"), (("sentence1", "sentence2"), "label")),
        label_scale=5.0,
    ),
    "MNLI": GlueLayout(
        ((("sentence1", "sentence2"), "gold_label"), (("premise", "hypothesis"), "label")),
        dev_files=(
            ("-m", ("dev_matched.tsv", "validation_matched.tsv")),
            ("-mm", ("dev_mismatched.tsv", "validation_mismatched.tsv")),
        ),
        test_files=(("-m", ("test_matched.tsv",)), ("-mm", ("test_mismatched.tsv",))),
    ),
    "QNLI": GlueLayout(((("question", "sentence"), "label"),)),
    "RTE": GlueLayout(((("sentence1", "sentence2"), "label"),)),
}

#: other folder names of GLUE tasks (lower case, no dashes or underscores): MNLI's two dev
#: sets as GLUE names them (MNLI-m, MNLI-mm) and as Hugging Face's glue configs do
GLUE_ALIASES = {
    "mnlim": "MNLI",
    "mnlimm": "MNLI",
    "mnlimatched": "MNLI",
    "mnlimismatched": "MNLI",
}

GLUE_RECIPES = {
    "MNLI": Recipe(1e-5, 32, 7432 / 123873, recipe_total_updates=123873),
    "QNLI": Recipe(1e-5, 32, 1986 / 33112, recipe_total_updates=33112),
    "QQP": Recipe(1e-5, 32, 28318 / 113272, metric="f1", recipe_total_updates=113272),
    "RTE": Recipe(2e-5, 16, 122 / 2036, recipe_total_updates=2036),
    "SST-2": Recipe(1e-5, 32, 1256 / 20935, recipe_total_updates=20935),
    "MRPC": Recipe(1e-5, 16, 137 / 2296, metric="f1", recipe_total_updates=2296),
    "CoLA": Recipe(1e-5, 16, 320 / 5336, metric="mcc", recipe_total_updates=5336),
    "STS-B": Recipe(
        2e-5, 16, 214 / 3598, kind="regression", metric="pearson", recipe_total_updates=3598
    ),
}
#: a generic task: the recipe's most common settings (SST-2, QNLI, MNLI)
GENERIC_RECIPE = Recipe(1e-5, 32, 0.06)

GENERIC_TEXT_COLUMNS = (("sentence1", "sentence2"), ("sentence",), ("text",))
KINDS = ("classification", "regression")


@dataclass
class Split:
    path: str
    texts: list[list[str]]  # one list per text column
    labels: list[str]
    lines: list[int]  # the line of the file each example comes from

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    name: str
    folder: str
    layout: str  # "glue" or "generic"
    kind: str
    metric: str
    recipe: Recipe
    train: Split
    dev: Split
    label_scale: Optional[float] = None
    notes: list[str] = field(default_factory=list)
    positive: Optional[str] = None  # the F1 positive class (task.json "positive")
    #: the dev sets, each a results column: [(column name, Split)]; the first is ``dev``
    #: (the one fairseq-train validates on and picks the best checkpoint by)
    dev_sets: list[tuple[str, Split]] = field(default_factory=list)
    #: GLUE test sets found in the folder: [(GLUE server file name without .tsv, Split)];
    #: a test Split's ``labels`` are the rows' ``index`` values (what the server expects)
    test_sets: list[tuple[str, Split]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.dev_sets:
            self.dev_sets = [(self.name, self.dev)]

    @property
    def columns(self) -> list[str]:
        return [column for column, _ in self.dev_sets]

    @property
    def num_inputs(self) -> int:
        return len(self.train.texts)


def glue_name(folder: str) -> Optional[str]:
    """The GLUE task a folder holds, from its name (case and dashes ignored), or None."""
    key = os.path.basename(os.path.normpath(folder)).lower().replace("-", "").replace("_", "")
    for name in GLUE_LAYOUTS:
        if key == name.lower().replace("-", ""):
            return name
    return GLUE_ALIASES.get(key)


def _read_rows(path: str) -> list[list[str]]:
    if not os.path.exists(path):
        raise FinetuneError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise FinetuneError(f"{path}: not UTF-8 text ({err})") from err
    lines = text.removeprefix("\ufeff").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r").split("\t") for line in lines]


def _cell(path: str, lineno: int, row: list[str], column: int, what: str) -> str:
    if column >= len(row):
        raise FinetuneError(
            f"{path}, line {lineno}: no column {column + 1} ({what}); the row has {len(row)} "
            f"tab-separated fields"
        )
    value = row[column].strip()
    if what.startswith("text") and not value:
        raise FinetuneError(f"{path}, line {lineno}, column {column + 1} ({what}): empty text")
    return value


def _check_labels(split: Split, kind: str) -> None:
    if kind != "regression":
        for lineno, value in zip(split.lines, split.labels):
            if any(c.isspace() for c in value):
                raise FinetuneError(
                    f"{split.path}, line {lineno}: label {value!r} holds whitespace; a "
                    "classification label must be one token (fairseq's label dictionary "
                    "splits on spaces): write it without spaces, e.g. "
                    f"{'_'.join(value.split())!r}"
                )
        return
    for lineno, value in zip(split.lines, split.labels):
        try:
            float(value)
        except ValueError:
            raise FinetuneError(
                f"{split.path}, line {lineno}: regression label {value!r} is not a number"
            ) from None


def _header_columns(
    header: list[str], alternatives: tuple[Header, ...]
) -> Optional[tuple[Sequence[int], int, tuple[str, ...]]]:
    """(text columns, label column, names) of the first alternative the header holds, or None."""
    for texts, label in alternatives:
        if all(n in header for n in (*texts, label)):
            return [header.index(n) for n in texts], header.index(label), (*texts, label)
    return None


def read_glue_split(path: str, layout: GlueLayout, task_name: str) -> tuple[Split, int]:
    rows = _read_rows(path)
    if not rows:
        raise FinetuneError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    found = _header_columns(header, layout.headers)
    if found is not None:
        text_columns, label_column, names = found
        what = [f"text {i + 1} ({n!r})" for i, n in enumerate(names[:-1])]
        label_what = f"label ({names[-1]!r})"
        rows, first, fields = rows[1:], 2, len(rows[0])
    elif layout.positions is not None:
        text_columns, label_column = layout.positions
        what = [f"text {i + 1}" for i in range(len(text_columns))]
        label_what, first, fields = "label", 1, None
    else:
        expected = " or ".join(
            "[" + ", ".join(repr(n) for n in (*texts, label)) + "]"
            for texts, label in layout.headers
        )
        raise FinetuneError(
            f"{path}: the header row {header} does not hold {task_name}'s columns: expected "
            f"{expected} (GLUE's own file or a Hugging Face datasets export)"
        )
    texts: list[list[str]] = [[] for _ in text_columns]
    labels, lines, dropped = [], [], 0
    for lineno, row in enumerate(rows, start=first):
        if not any(cell.strip() for cell in row):
            continue
        if layout.drop_short_rows and fields is not None and len(row) != fields:
            dropped += 1
            continue
        for i, column in enumerate(text_columns):
            texts[i].append(_cell(path, lineno, row, column, what[i]))
        labels.append(_cell(path, lineno, row, label_column, label_what))
        lines.append(lineno)
    if not labels:
        raise FinetuneError(f"{path}: no examples")
    return Split(path, texts, labels, lines), dropped


def read_glue_test(path: str, layout: GlueLayout, task_name: str) -> Split:
    """A GLUE test file: the task's text columns found by the header's names (as in
    train), the ``index`` (or ``id``, ``idx``) column as the labels (else the row
    number from 0)."""
    rows = _read_rows(path)
    if not rows:
        raise FinetuneError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    for texts, _ in layout.headers:
        if all(n in header for n in texts):
            columns = [header.index(n) for n in texts]
            break
    else:
        raise FinetuneError(
            f"{path}: the header row {header} does not hold {task_name}'s text columns "
            f"{[list(t) for t, _ in layout.headers]}"
        )
    index = next((header.index(n) for n in ("index", "id", "idx") if n in header), None)
    split = Split(path, [[] for _ in columns], [], [])
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        for i, column in enumerate(columns):
            split.texts[i].append(_cell(path, lineno, row, column, f"text {i + 1}"))
        split.labels.append(
            _cell(path, lineno, row, index, "index") if index is not None else str(lineno - 2)
        )
        split.lines.append(lineno)
    if not split.labels:
        raise FinetuneError(f"{path}: no examples")
    return split


def read_generic_split(path: str) -> Split:
    rows = _read_rows(path)
    if not rows:
        raise FinetuneError(f"{path}: empty file (expected a header row)")
    header = [h.strip() for h in rows[0]]
    if "label" not in header:
        raise FinetuneError(f"{path}: the header row {header} has no 'label' column")
    for names in GENERIC_TEXT_COLUMNS:
        if all(n in header for n in names):
            break
    else:
        raise FinetuneError(
            f"{path}: the header row {header} names no text column: expected 'sentence' or "
            "'text' (one text) or 'sentence1' and 'sentence2' (a pair)"
        )
    columns = [header.index(n) for n in names]
    label_column = header.index("label")
    texts: list[list[str]] = [[] for _ in columns]
    labels: list[str] = []
    lines: list[int] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        for i, column in enumerate(columns):
            texts[i].append(_cell(path, lineno, row, column, f"text {i + 1} ({names[i]!r})"))
        labels.append(_cell(path, lineno, row, label_column, "label"))
        lines.append(lineno)
    if not labels:
        raise FinetuneError(f"{path}: no examples")
    return Split(path, texts, labels, lines)


def read_task(folder: str, name: Optional[str] = None) -> TaskData:
    """Read a task folder (GLUE or generic layout) into a :class:`TaskData`."""
    if not os.path.isdir(folder):
        raise FinetuneError(f"task folder {folder} not found")
    # a task.json makes any folder a generic one
    glue = None if os.path.exists(os.path.join(folder, "task.json")) else glue_name(folder)
    if name is None:
        name = os.path.basename(os.path.normpath(folder))
        if glue is not None and len(GLUE_LAYOUTS[glue].dev_files) > 1:
            name = glue  # MNLI-mm/ holds MNLI: its columns are MNLI-m and MNLI-mm
    if glue is not None:
        layout = GLUE_LAYOUTS[glue]
        recipe = GLUE_RECIPES[glue]
        train, dropped_train = read_glue_split(os.path.join(folder, "train.tsv"), layout, glue)
        dev_sets, dropped_dev = [], 0
        for suffix, files in layout.dev_files:
            found = [f for f in files if os.path.exists(os.path.join(folder, f))]
            if found:
                split, dropped = read_glue_split(os.path.join(folder, found[0]), layout, glue)
                dev_sets.append((name + suffix if len(layout.dev_files) > 1 else name, split))
                dropped_dev += dropped
        if not dev_sets:
            expected = " or ".join(f for _, files in layout.dev_files for f in files[:1])
            raise FinetuneError(f"{folder}: no dev file: expected {expected} ({glue})")
        dev = dev_sets[0][1]
        test_sets = []
        for suffix, files in layout.test_files:
            found = [f for f in files if os.path.exists(os.path.join(folder, f))]
            if found:
                test = read_glue_test(os.path.join(folder, found[0]), layout, glue)
                test_sets.append((glue + suffix, test))
        notes = []
        if dropped_train or dropped_dev:
            notes.append(
                "dropped rows with another number of fields than the header, as fairseq's "
                f"GLUE script does: {dropped_train} in train, {dropped_dev} in dev"
            )
        task = TaskData(
            name,
            folder,
            "glue",
            recipe.kind,
            recipe.metric,
            recipe,
            train,
            dev,
            label_scale=layout.label_scale,
            notes=notes,
            dev_sets=dev_sets,
            test_sets=test_sets,
        )
    else:
        spec: dict[str, Any] = {}  # task.json
        spec_path = os.path.join(folder, "task.json")
        if os.path.exists(spec_path):
            try:
                spec = json.load(open(spec_path))
            except ValueError as err:
                raise FinetuneError(f"{spec_path}: not valid JSON ({err})") from err
            if not isinstance(spec, dict):
                raise FinetuneError(f"{spec_path}: expected a JSON object, got {spec!r}")
            unknown = set(spec) - {"kind", "metric", "label_scale", "positive"}
            if unknown:
                raise FinetuneError(
                    f"{spec_path}: unknown keys {sorted(unknown)} "
                    "(known: kind, metric, label_scale, positive)"
                )
        kind = spec.get("kind", "classification")
        if kind not in KINDS:
            raise FinetuneError(f"{spec_path}: kind must be one of {KINDS}, got {kind!r}")
        from se_fairseq.finetune.metrics import METRICS, check_metric

        metric = spec.get("metric", "pearson" if kind == "regression" else "accuracy")
        try:
            check_metric(metric, kind)
        except ValueError as err:
            raise FinetuneError(f"{spec_path}: {err}") from None
        assert metric in METRICS
        train = read_generic_split(os.path.join(folder, "train.tsv"))
        dev = read_generic_split(os.path.join(folder, "dev.tsv"))
        if len(train.texts) != len(dev.texts):
            raise FinetuneError(
                f"{folder}: train.tsv has {len(train.texts)} text columns but "
                f"dev.tsv has {len(dev.texts)}"
            )
        recipe = Recipe(
            GENERIC_RECIPE.lr,
            GENERIC_RECIPE.batch_size,
            GENERIC_RECIPE.warmup_fraction,
            kind=kind,
            metric=metric,
        )
        task = TaskData(
            name,
            folder,
            "generic",
            kind,
            metric,
            recipe,
            train,
            dev,
            label_scale=spec.get("label_scale"),
        )
        if "positive" in spec:
            positive = spec["positive"]
            if kind != "classification" or not isinstance(positive, (str, int)):
                raise FinetuneError(
                    f"{spec_path}: 'positive' names the positive class of a classification "
                    f"task (a label string), got {positive!r} for a {kind} task"
                )
            task.positive = str(positive)
    _check_labels(task.train, task.kind)
    for _, dev_split in task.dev_sets:
        _check_labels(dev_split, task.kind)
    if task.kind == "classification":
        for _, dev_split in task.dev_sets:
            unseen = sorted(set(dev_split.labels) - set(task.train.labels))
            if unseen:
                raise FinetuneError(
                    f"{dev_split.path}: labels {unseen[:5]} never occur in "
                    f"{task.train.path} (label column)"
                )
        if task.positive is not None and task.positive not in task.train.labels:
            raise FinetuneError(
                f"{os.path.join(folder, 'task.json')}: the positive class {task.positive!r} is "
                f"not a label of {task.train.path} (labels: {sorted(set(task.train.labels))[:10]})"
            )
        if len(set(task.train.labels)) < 2:
            raise FinetuneError(
                f"{task.train.path}: the label column holds a single value "
                f"{task.train.labels[0]!r}; classification needs two or more"
            )
    return task
