"""The quickstart's downstream tasks (examples/quickstart/make_tasks.py): natural labels,
checked against the raw standard-library source (not through the script's ast walk), and
dev text that was never pretrained on."""

import csv
import importlib.util
import os
import re
import sys
import sysconfig
from collections import Counter

import pytest

QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "examples", "quickstart")
STDLIB = sysconfig.get_paths()["stdlib"]


def load_script(name):
    sys.path.insert(0, QUICKSTART)
    spec = importlib.util.spec_from_file_location(name, os.path.join(QUICKSTART, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [module.__name__] + argv)
    module.main()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart-tasks")
    with pytest.MonkeyPatch.context() as mp:
        run_main(load_script("make_text"), [str(out / "text")], mp)
        run_main(load_script("make_tasks"), [str(out / "text"), str(out / "tasks")], mp)
    return out


def rows(path):
    with open(path, newline="") as f:
        table = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return table[0], table[1:]


def stdlib_sources():
    for root, dirs, files in os.walk(STDLIB):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                try:
                    with open(path, encoding="utf-8") as f:
                        yield path, f.read()
                except UnicodeDecodeError:
                    continue


@pytest.fixture(scope="module")
def sources():
    return dict(stdlib_sources())


def test_module_labels_are_the_package_whose_source_holds_the_sentence(tasks, sources):
    header, dev = rows(tasks / "tasks" / "module" / "dev.tsv")
    _, train = rows(tasks / "tasks" / "module" / "train.tsv")
    assert header == ["sentence", "label"]
    flat = {p: re.sub(r"\s+", " ", text) for p, text in sources.items()}
    checked = dev + train[:300]
    found = sum(
        any(p.startswith(os.path.join(STDLIB, label) + os.sep) and s in t for p, t in flat.items())
        for s, label in checked
    )
    # a sentence whose paragraph lost a code line in between is not verbatim in the source
    assert found >= 0.95 * len(checked), (found, len(checked))
    labels = Counter(label for _, label in dev)
    assert len(labels) == 10 and max(labels.values()) < 0.25 * len(dev)


SOURCE_FILES = {  # the source task's names, as the stdlib lays them out (read independently)
    "decimal": "_pydecimal.py",
    "http": "http/",
    "inspect": "inspect.py",
    "mailbox": "mailbox.py",
    # a package from Python 3.13 on
    "pathlib": "pathlib.py" if os.path.exists(os.path.join(STDLIB, "pathlib.py")) else "pathlib/",
    "pydoc": "pydoc.py",
    "subprocess": "subprocess.py",
    "tarfile": "tarfile.py",
    "threading": "threading.py",
    "typing": "typing.py",
}


def test_source_labels_say_whether_the_sentence_is_from_the_named_module(tasks, sources):
    header, dev = rows(tasks / "tasks" / "source" / "dev.tsv")
    assert header == ["sentence1", "sentence2", "label"]
    counts = Counter(label for *_, label in dev)
    assert set(counts) == {"0", "1"} and max(counts.values()) <= 0.52 * len(dev)
    flat = {p: re.sub(r"\s+", " ", text) for p, text in sources.items()}

    def holds(name, sentence):
        where = os.path.join(STDLIB, SOURCE_FILES[name])
        return any(
            (p.startswith(where) if where.endswith("/") else p == where) and sentence in t
            for p, t in flat.items()
        )

    agree = sum(holds(name, s) == (label == "1") for name, s, label in dev)
    assert agree >= 0.95 * len(dev), (agree, len(dev))
    assert {name for name, *_ in dev} == set(SOURCE_FILES)


def test_dev_text_was_never_pretrained_on(tasks):
    pretraining = (tasks / "text" / "train.txt").read_text()
    heldout = (tasks / "text" / "valid.txt").read_text() + (tasks / "text" / "test.txt").read_text()
    for task in ("module", "source"):
        _, dev = rows(tasks / "tasks" / task / "dev.tsv")
        assert len(dev) > 150
        assert not any(row[-2] in pretraining for row in dev)  # the sentence
        # and come from the held-out paragraphs themselves
        assert sum(row[-2] in heldout for row in dev) >= 0.95 * len(dev)
