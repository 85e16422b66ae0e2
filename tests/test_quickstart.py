"""The main job, reduced: examples/quickstart.sh end to end at CI scale, every step and control,
random masking at each method's compute, and a report whose figures come from the run and
whose commands rerun."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"random", "se", "rarity", "online", "mixed", "excess", "schedule"}
STEP_PASSES = {  # token passes per token of a training step, from the definitions
    "se": 4,  # forward, backward (2), TLS's reference forward
    "rarity": 4,
    "online": 4,  # one reference forward gives the scores and p_ref
    "mixed": 4,
    "excess": 5,  # + the frozen vanilla's forward
    "schedule": 4,
}
SCORED = {"se", "mixed", "schedule"}  # train on the vanilla's score file


def last(pattern, path):
    values = re.findall(pattern, open(path).read())
    assert values, (pattern, path)
    return values[-1]


@pytest.mark.fairseq  # fairseq-train, se-score and se-finetune on fairseq checkpoints
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
    # importing fairseq once set the root logger to DEBUG: matplotlib's font scan got printed
    assert "DEBUG:" not in result.stdout
    for step in (
        "1. real text",
        "2. SentencePiece",
        "3. vanilla model",
        "4. scores",
        "(a) random",
        "(b) SE",
        "(c) rarity control",
        "(d) online SE",
        "(e) SE top-k, half the budget random",
        "(f) excess loss against the vanilla",
        "(g) SE top-k, random share scheduled 1 to 0",
        "random masking at each method's compute",
        "6. evaluation",
        "7. downstream",
        "8. report",
    ):
        assert step in result.stdout, step
    # compute: each method's token passes as fairseq-train counted them, and random masking
    # continued to each method's total
    train_tokens = int(
        last(r"train\.spm: \d+ sents, (\d+) tokens", work / "data-bin" / "preprocess.log")
    )
    random_total = int(last(r"tok_passes_total (\d+)", work / "random" / "train.log"))
    updates = int(last(r"\| num_updates (\d+)", work / "random" / "train.log"))
    per_update = random_total / updates
    words_per_batch = float(last(r"\| wpb ([\d.]+)", work / "random" / "train.log"))
    assert abs(random_total - 3 * words_per_batch * updates) <= 0.001 * random_total  # 3 per token
    compute = json.load(open(work / "compute.json"))
    controls = set()
    for name in RUNS - {"random"}:
        total = int(last(r"tok_passes_total (\d+)", work / name / "train.log"))
        scoring = train_tokens if name in SCORED else 0
        assert total == scoring + STEP_PASSES[name] * random_total // 3, name
        planned = compute["methods"][name]
        assert planned["total"] == total and planned["scoring"] == scoring
        assert planned["random_updates"] == round(total / per_update) > updates
        control = work / f"random_u{planned['random_updates']}"
        assert (
            int(last(r"\| num_updates (\d+)", control / "train.log")) == planned["random_updates"]
        )
        assert (
            abs(int(last(r"tok_passes_total (\d+)", control / "train.log")) - total) <= per_update
        )
        assert (control / "checkpoint_last.pt").exists()
        controls.add(control.name)
    # one trajectory: each continuation resumed the previous checkpoint, not the vanilla
    for control in sorted(controls, key=lambda c: int(c.split("_u")[1])):
        log = (work / control / "train.log").read_text()
        assert "vanilla/checkpoint_last.pt" not in log and "'reset_optimizer': False" in log
    data = json.load(open(work / "results.json"))
    results = data["results"]
    assert set(results) == {"unigram", "vanilla"} | RUNS | controls
    for r in results.values():
        for suite in ("random", "hard"):
            assert 0 < r[suite]["loss"] < 20 and r[suite]["tokens"] > 0
        assert set(r["bands"]) == {"frequent", "middle", "rare"}
        assert sum(b["tokens"] for b in r["bands"].values()) == r["random"]["tokens"]
    # every test token is evaluated once under random masking
    assert results["vanilla"]["random"]["tokens"] == data["meta"]["tokens"]
    # what each method masks: SE and rarity concentrate on rare tokens, random does not
    shares = data["mask_shares"]
    assert set(shares) == RUNS - {"online", "excess", "schedule"}
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
        "| (c) rarity control",
        "the unigram baseline",
        "Is SE just rare-token masking?",
        "Does SE help, against random masking with the same updates?",
        "Does SE help, against random masking at the same compute?",
        "| (f) excess loss vs the vanilla, online + TLS |",
        "| (g) SE top-k, random share 1 -> 0 + TLS |",
        "## Compute: what each run spent",
        'se-score "$WORK/data-bin" --metric rarity',
    ):
        assert text in report, text
    assert "issue" not in report
    for name in controls:
        assert f"| random masking, {name.split('_u')[1]} updates |" in report
    # the corpus figures come from this run: make_text.py's words and fairseq-preprocess's tokens
    printed = re.search(r"\[text\] .*", result.stdout).group(0)
    for split in ("train", "valid", "test"):
        paragraphs, words = re.search(rf"{split} (\d+) paragraphs / (\d+) words", printed).groups()
        tokens = last(
            rf"{split}\.spm: \d+ sents, (\d+) tokens", work / "data-bin" / "preprocess.log"
        )
        row = f"| {split} | {int(paragraphs):,} | {int(words):,} | {int(tokens):,} |"
        assert row in report, row
    # the plot: four panels laid out 2 x 2, not a strip
    import matplotlib.image

    height, width = matplotlib.image.imread(work / "report.png").shape[:2]
    assert width / height < 1.6 and (work / "report.png").stat().st_size > 20_000
    # the Commands block is a shell script: it parses, and a recorded command reruns as it ran
    block = report.split("## Commands", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    subprocess.run(["bash", "-n"], input=block, text=True, check=True)
    line = next(c for c in block.splitlines() if "--metric rarity --split train" in c)
    again = work.parent / "again"
    shutil.copytree(work / "data-bin", again / "data-bin")
    os.remove(again / "data-bin" / "train.rarity.npy")
    subprocess.run(
        ["bash", "-c", line], cwd=ROOT, env=dict(os.environ, WORK=str(again)), check=True
    )
    np.testing.assert_array_equal(
        np.load(again / "data-bin" / "train.rarity.npy"),
        np.load(work / "data-bin" / "train.rarity.npy"),
    )
    # downstream: se-finetune on the two labelled tasks, paired against (a)
    down = json.load(open(work / "downstream" / "results.json"))
    # fine-tuned: the vanilla, (a), (b) and random masking at (b)'s compute
    assert down["checkpoints"] == ["vanilla", "random", "se", compute["methods"]["se"]["control"]]
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
    se_updates = compute["methods"]["se"]["random_updates"]
    for text in (
        "## Downstream: fine-tuned on two labelled tasks",
        "Did SE beat random masking downstream, same updates?",
        "Seed-to-seed spread",
        "| (b) SE: top-k + TLS minus (a) random masking (same updates;",
        f"| (b) SE: top-k + TLS minus random masking, {se_updates} updates (same compute;",
        "Did SE beat random masking downstream, same compute?",
    ):
        assert text in report, text
    assert "rarity control downstream" not in report  # the rarity control is not fine-tuned
    assert "SE against the rarity control" not in report
