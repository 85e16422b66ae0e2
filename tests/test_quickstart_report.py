"""The quickstart report's downstream findings, on a results document made here: the
verdicts follow a paired t-test computed independently with scipy, and seeds with equal
accuracy read as the same, not as "detectable 0.0"."""

import importlib.util
import json
import math
import os
import re
import subprocess

import numpy as np
import pytest
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_report():
    """examples/quickstart/report.py as a module (it imports equal_compute beside it)."""
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
    row = next(line for line in diffs.splitlines() if "minus (c) rarity" in line)
    assert "+0.00 ± 0.00 (equal on every seed)" in row and "(0.00)" not in row


def test_downstream_difference_without_spread_is_stated_not_sized():
    """Every seed gives the same nonzero paired difference: se-finetune's statistics have no
    spread (detectable NaN); the report says so instead of printing nan or a verdict."""
    report = load_report()
    random_module = [0.40, 0.42, 0.41]
    seeds = add_average(
        {
            "random": {"module": random_module, "source": [0.60, 0.66, 0.62]},
            # +0.5 points on every seed of module (exactly representable steps)
            "se": {"module": [v + 0.005 for v in random_module], "source": [0.61, 0.64, 0.65]},
        }
    )
    down = document(seeds)
    p = report.down_compare(down, "random", "se", "module")
    assert p["no_spread"] and math.isnan(p["detectable"])
    assert report.down_verdict(p) == report.NO_SPREAD
    text = report.downstream_findings(down)
    se_line = next(line for line in text.splitlines() if "Did SE beat random" in line)
    assert "module +0.50 points on every seed: no spread" in se_line
    assert "nan" not in text.lower()
    assert "module +0.50 ± " not in se_line  # not read as an untested "no difference"
    _, diffs = report.downstream_tables(down)
    row = next(line for line in diffs.splitlines() if line.startswith("| (b) SE"))
    assert report.NO_SPREAD_CELL in row and "nan" not in row.lower()
    spread = next(line for line in text.splitlines() if "Seed-to-seed spread" in line)
    assert "nan" not in spread.lower()


def synthetic_run(rng=None):
    """results.json, per-token losses, compute record and se-finetune document shaped as a
    quickstart run makes them, with made-up numbers."""
    rng = rng or np.random.default_rng(0)
    report = load_report()
    n = 300
    band = np.repeat([0, 1, 2], n // 3)
    models = ["unigram", "vanilla"] + [name for name, _ in report.RUNS] + ["random_u130"]
    tokens = {"random_band": band}
    results = {}
    for i, name in enumerate(models):
        tokens[f"{name}.random"] = rng.normal(6 + 0.1 * i, 1, n)
        tokens[f"{name}.hard"] = rng.normal(10, 1, 45)
        results[name] = {
            "random": {"loss": float(tokens[f"{name}.random"].mean()), "accuracy": 10.0},
            "hard": {"loss": float(tokens[f"{name}.hard"].mean()), "accuracy": 1.0},
            "bands": {b: {"loss": 6.0} for b in report.BANDS},
        }
    shares = {
        name: {"rate": 0.15, "frequent": 0.3, "middle": 0.3, "rare": 0.4}
        for name in ("random", "se", "rarity", "mixed")
    }
    data = {"results": results, "mask_shares": shares, "meta": {}}
    methods = {
        name: {
            "control": "random_u130",
            "updates": 100,
            "total": 1300,
            "training": 1000,
            "scoring": 300,
        }
        for name, _ in report.RUNS
        if name != "random"
    }
    runs = {name: dict(m) for name, m in methods.items()}
    runs["random"] = {"updates": 100, "total": 1000}
    runs["random_u130"] = {"updates": 130, "total": 1300}
    comp = {"random": {"name": "random", "updates": 100}, "methods": methods, "runs": runs}
    seeds = add_average(
        {
            name: {
                "module": list(rng.uniform(0.4, 0.5, 3)),
                "source": list(rng.uniform(0.6, 0.7, 3)),
            }
            for name in ("vanilla", "random", "se", "rarity", "online", "random_u130")
        }
    )
    return data, tokens, comp, document(seeds)


def overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.slow  # matplotlib draws the figure twice (about 4 s)
def test_plot_is_two_by_two_and_nothing_hides_a_bar_or_a_label(tmp_path):
    report = load_report()
    data, tokens, comp, down = synthetic_run()
    names = ["vanilla"] + [n for n, _ in report.RUNS]
    fig = report.plot(data, tokens, names, str(tmp_path / "report.png"), down, comp)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert len(axes) == 4
        corners = {(round(ax.get_position().x0, 2), round(ax.get_position().y0, 2)) for ax in axes}
        assert len({x for x, _ in corners}) == 2 and len({y for _, y in corners}) == 2  # 2 x 2
        width, height = fig.get_size_inches()
        assert width / height < 1.6  # not a strip
        ax_a, ax_b, ax_c, ax_d = axes  # in the order drawn: start point, methods, masks, downstream
        pos = [ax.get_position() for ax in axes]
        assert pos[0].x0 == pos[2].x0 < pos[1].x0 == pos[3].x0
        assert pos[0].y0 == pos[1].y0 > pos[2].y0 == pos[3].y0
        # no legend covers a bar of its panel (the masks panel's legend once hid a bar)
        for ax in axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box = legend.get_window_extent(renderer)
            for patch in ax.patches:
                bar = patch.get_window_extent(renderer)
                if bar.width > 0 and bar.height > 0:
                    assert not overlaps(box, bar), (ax.get_title(), patch)
        # no two tick labels touch (the token groups' labels did)
        for ax in axes:
            labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
            for i, a in enumerate(labels):
                for b in labels[i + 1 :]:
                    assert not overlaps(a.expanded(1.02, 1.0), b), ax.get_title()
        # the downstream panel shows the vanilla beside the continued models, and says so
        down_title = ax_d.get_title()
        assert "vanilla" in down_title and "each continued model" not in down_title
        assert "vanilla" in [t.get_text() for t in ax_d.get_legend().get_texts()]
    finally:
        report.pyplot().close(fig)
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_the_start_point_target_is_the_quickstarts_own_goal():
    """A reader has no issue to look up: the 1.5-bit target is stated as the quickstart's
    design goal."""
    report = load_report()
    data, tokens, _, _ = synthetic_run()
    results = {k: data["results"][k] for k in ("unigram", "vanilla")}
    results["unigram"]["random"]["loss"] = results["vanilla"]["random"]["loss"] + 2.0
    text = report.findings(dict(data, results=results), tokens, ["vanilla"])
    assert "issue" not in text
    assert "the quickstart is designed to start at least 1.5 bits below it" in text
    assert ": met)" in text


def load_script(name):
    path = os.path.join(ROOT, "examples", "quickstart", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"quickstart_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fairseq_log(path, epochs, score_file=None):
    """A fairseq-train log as se_mlm writes one: the score file line, then per epoch a
    train_inner line and the epoch summary, each with tok_passes and the run's total."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ["2026-12-07 | INFO | fairseq_cli.train | {'task': ...}"]
    if score_file:
        lines.append(
            f"2026-12-07 | INFO | se_fairseq.tasks.se_mlm | loaded 9 blocks from d/train with "
            f"correctness scores from {score_file}.npy (--se-select topk)"
        )
    for i, (passes, total, updates) in enumerate(epochs, 1):
        lines.append(
            f"2026-12-07 | INFO | train_inner | epoch {i:03d}:  20 / 155 loss=3.1, "
            f"tok_passes=999, tok_passes_total={total - 1}, num_updates={updates - 1}"
        )
        lines.append(
            f"2026-12-07 | INFO | train | epoch {i:03d} | loss 3.1 | tok_passes {passes} | "
            f"tok_passes_total {total} | wpb 2048 | num_updates {updates} | lr 0.0001"
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def score_meta(prefix, metric, tokens):
    with open(prefix + ".json", "w") as f:
        json.dump({"metric": metric, "summary": {"tokens": tokens}}, f)


def test_equal_compute_gives_each_method_random_masking_with_its_token_passes(tmp_path):
    """The plan divides each method's total (training + its score file's scoring pass, as
    fairseq-train counts it) by random masking's compute per update, rounded; the controls'
    folders and the update counts to continue random masking to follow from it."""
    ec = load_script("equal_compute")
    work = tmp_path
    scores, rarity, excess = (
        str(work / n) for n in ("train.se_scores", "train.rarity", "train.ex")
    )
    score_meta(scores, "correctness", 307_993)
    score_meta(rarity, "rarity", 300_000)
    score_meta(excess, "excess", 1_000)
    per_update = 6_144  # 2,048 tokens x 3
    fairseq_log(work / "random" / "train.log", [(100 * per_update, 100 * per_update, 100)])
    se_training = 100 * 2_048 * 4
    fairseq_log(
        work / "se" / "train.log",
        [(se_training, se_training + 307_993, 100)],
        score_file=scores,
    )
    fairseq_log(work / "rarity" / "train.log", [(se_training, se_training, 100)], rarity)
    # an online method over two epochs: the epochs' tok_passes add up to its training
    fairseq_log(work / "online" / "train.log", [(500_000, 500_000, 60), (400_000, 900_000, 100)])
    fairseq_log(work / "ex" / "train.log", [(se_training, se_training + 2_000, 100)], excess)
    doc = ec.plan(str(work), "random", ["se", "rarity", "online", "ex"])
    methods = doc["methods"]
    assert doc["random"]["per_update"] == per_update
    assert methods["se"]["scoring"] == 307_993 and methods["se"]["training"] == se_training
    assert methods["se"]["random_updates"] == round((se_training + 307_993) / per_update) == 183
    assert methods["rarity"]["scoring"] == 0 and methods["rarity"]["random_updates"] == 133
    assert methods["online"]["training"] == 900_000 and methods["online"]["random_updates"] == 146
    assert methods["ex"]["scoring"] == 2_000  # excess loss: two forwards per scored token
    assert methods["se"]["control"] == "random_u183"
    assert ec.legs(doc) == [133, 134, 146, 183]
    assert json.load(open(work / "compute.json"))["methods"]["se"]["random_updates"] == 183

    # the controls' compute is what their logs say, at the planned update counts
    fairseq_log(work / "random_u183" / "train.log", [(1, 183 * per_update - 100, 183)])
    measured = ec.measured(str(work))
    assert measured["runs"]["random_u183"] == {"updates": 183, "total": 183 * per_update - 100}
    assert "random_u133" not in measured["runs"]  # not run (yet)
    fairseq_log(work / "random_u133" / "train.log", [(1, 1, 132)])
    with pytest.raises(SystemExit, match="132 updates, planned 133"):
        ec.measured(str(work))

    # a total that is not training + the score file's scoring pass stops the plan
    fairseq_log(work / "se" / "train.log", [(se_training, se_training, 100)], score_file=scores)
    with pytest.raises(SystemExit, match="is not the run's tok_passes_total"):
        ec.plan(str(work), "random", ["se"])


def test_equal_compute_reads_totals_as_fairseq_prints_them(tmp_path):
    """fairseq prints a logged number with "{:g}" (six significant digits): a million and
    more comes as 1.1271e+06, which the plan reads as such and accepts to that precision."""
    ec = load_script("equal_compute")
    scores = str(tmp_path / "train.se_scores")
    score_meta(scores, "correctness", 307_993)
    per_update, training = 6_144, 819_108
    fairseq_log(tmp_path / "random" / "train.log", [(100 * per_update, 100 * per_update, 100)])
    printed = f"{training + 307_993:g}"
    assert printed == "1.1271e+06"
    path = tmp_path / "se" / "train.log"
    fairseq_log(path, [(training, 0, 100)], score_file=scores)
    path.write_text(
        path.read_text().replace("tok_passes_total 0 |", f"tok_passes_total {printed} |")
    )
    se = ec.plan(str(tmp_path), "random", ["se"])["methods"]["se"]
    assert se["total"] == 1_127_100 and se["random_updates"] == 183


RUN_FUNCTION = re.compile(r"^run\(\) \{.*?^\}", re.S | re.M)


@pytest.mark.subprocess
def test_quickstarts_run_records_each_command_so_that_bash_reruns_it(tmp_path):
    """quickstart.sh's run(): the recorded line is valid shell and gives back every argument
    (quotes, parentheses, spaces, $), with the run folder as $WORK and the root dropped."""
    script = open(os.path.join(ROOT, "examples", "quickstart.sh")).read()
    run_function = RUN_FUNCTION.search(script).group(0)
    work = tmp_path / "run dir"  # a space in the run folder too
    work.mkdir()
    args = [
        f"{work}/data-bin",
        "--adam-betas",
        "(0.9,0.98)",
        "--fairseq-args",
        "--num-workers 0",
        "--mask-share",
        f"rarity=--task se_mlm --se-scores {work}/data-bin/train.rarity",
        "it's",
        'say "$HOME" `x`',
        f"{ROOT}/examples/quickstart/make_text.py",
        f"{work}x/not-the-run",
        "",
    ]
    driver = f'{run_function}\nWORK="$1" ROOT="$2"; shift 2\nrun true "$@"\n'
    subprocess.run(["bash", "-c", driver, "bash", str(work), ROOT, *args], check=True, cwd=ROOT)
    line = (work / "commands.txt").read_text().splitlines()[0]
    assert "$WORK/data-bin" in line and ROOT not in line
    subprocess.run(["bash", "-n"], input=line, text=True, check=True)
    elsewhere = "/elsewhere"
    replayed = subprocess.run(
        ["bash", "-c", f'WORK={elsewhere}\nprintf "%s\\0" {line}'],
        stdout=subprocess.PIPE,
        check=True,
    ).stdout.decode()
    expected = ["true"] + [
        a.replace(str(work) + "/", elsewhere + "/").replace(ROOT + "/", "") for a in args
    ]
    assert replayed.split("\0")[:-1] == expected
