"""The main job, reduced: examples/quickstart.sh end to end at CI scale, every step and control."""

import json
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"random", "se", "se_mlm", "rarity", "online", "threshold", "mixed"}


@pytest.mark.subprocess
@pytest.mark.slow
def test_quickstart_pipeline_end_to_end(tmp_path):
    work = tmp_path / "run"
    env = dict(os.environ, QUICKSTART_SCALE="ci", WORK=str(work))
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "examples", "quickstart.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    for step in (
        "1. real text",
        "2. SentencePiece",
        "3. vanilla model",
        "4. scores",
        "(a) random",
        "(b) SE",
        "(c) SE top-k, plain MLM loss",
        "(d) rarity control",
        "(e) online SE",
        "(f) threshold rule",
        "(g) SE top-k, half the budget random",
        "6. evaluation",
        "7. downstream",
        "8. report",
    ):
        assert step in result.stdout, step
    data = json.load(open(work / "results.json"))
    results = data["results"]
    assert set(results) == {"unigram", "vanilla"} | RUNS
    for r in results.values():
        for suite in ("random", "hard"):
            assert 0 < r[suite]["loss"] < 20 and r[suite]["tokens"] > 0
        assert set(r["bands"]) == {"frequent", "middle", "rare"}
        assert sum(b["tokens"] for b in r["bands"].values()) == r["random"]["tokens"]
    # every test token is evaluated once under random masking
    assert results["vanilla"]["random"]["tokens"] == data["meta"]["tokens"]
    # what each method masks: SE and rarity concentrate on rare tokens, random does not
    shares = data["mask_shares"]
    assert set(shares) == RUNS - {"online"}
    assert shares["rarity"]["rare"] > 0.9 and shares["random"]["rare"] < 0.6
    assert abs(shares["se"]["rate"] - 0.15) < 0.01 and abs(shares["mixed"]["rate"] - 0.15) < 0.01
    assert shares["mixed"]["frequent"] > shares["se"]["frequent"]
    assert len(data["examples"]) == 3 and all("**" in e["text"] for e in data["examples"])
    # the rarity control is a score file se-score wrote without a checkpoint
    meta = json.load(open(work / "data-bin" / "train.rarity.json"))
    assert meta["metric"] == "rarity" and meta["checkpoint"] is None
    assert os.path.exists(work / "data-bin" / "train.se_scores.npy")
    tokens = np.load(work / "results.tokens.npz")
    assert len(tokens["se.random"]) == len(tokens["random_band"]) == data["meta"]["tokens"]
    report = (work / "report.md").read_text()
    for text in (
        "| unigram (train frequencies) |",
        "| (b) SE: top-k + TLS |",
        "| (d) rarity control",
        "the unigram baseline",
        "Is SE just rare-token masking?",
        "se-score $WORK/data-bin --metric rarity",
    ):
        assert text in report, text
    assert (work / "report.png").stat().st_size > 20_000
    # downstream: se-finetune on the two labelled tasks, every model, paired against (a)
    down = json.load(open(work / "downstream" / "results.json"))
    assert down["checkpoints"] == ["vanilla", "random", "se", "rarity", "online"]
    assert down["tasks"] == ["module", "source"] and down["baseline"] == "random"
    for name in down["checkpoints"]:
        for task in down["tasks"] + ["average"]:
            entry = down["results"][name][task]
            assert entry["n"] == 2 and 0 <= entry["mean"] <= 1
            assert (name == "random") == ("vs_baseline" not in entry)
    # no dev sentence of a downstream task is pretraining text (source's first column is a
    # module name)
    pretraining = (work / "text" / "train.txt").read_text()
    for task in down["tasks"]:
        rows = (work / "tasks" / task / "dev.tsv").read_text().splitlines()[1:]
        assert rows and not any(row.split("\t")[-2] in pretraining for row in rows)
    for text in (
        "## Downstream: fine-tuned on two labelled tasks",
        "Did SE beat random masking downstream?",
        "Did SE beat the rarity control downstream?",
        "Seed-to-seed spread",
        "| (b) SE: top-k + TLS minus (a) random masking |",
    ):
        assert text in report, text
