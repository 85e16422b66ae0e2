"""Write report.md and report.png from a quickstart run folder.

    python report.py WORK_DIR

Reads WORK_DIR/results.json and results.tokens.npz (evaluate.py), WORK_DIR/compute.json and
the runs' fairseq-train logs (equal_compute.py: each run's compute in token passes and the
random-masking run at each method's compute), WORK_DIR/downstream/results.json (se-finetune),
the corpus (WORK_DIR/text, WORK_DIR/data-bin), WORK_DIR/commands.txt, WORK_DIR/timings.txt and
WORK_DIR/settings.txt. Every finding is computed from the numbers.
"""

import argparse
import json
import logging
import math
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import equal_compute  # noqa: E402  (the quickstart's own helper, beside this script)

BANDS = ("frequent", "middle", "rare")
RUNS = [
    ("random", "(a) random masking, MLM loss"),
    ("se", "(b) SE: top-k + TLS"),
    ("rarity", "(c) rarity control: rarest top-k + TLS"),
    ("online", "(d) online SE: top-k + TLS"),
    ("mixed", "(e) SE top-k, 50 % of the budget random + TLS"),
    ("excess", "(f) excess loss vs the vanilla, online + TLS"),
    ("schedule", "(g) SE top-k, random share 1 -> 0 + TLS"),
]
LABELS = {
    "unigram": "unigram (train frequencies)",
    "vanilla": "vanilla (start point)",
    **dict(RUNS),
}
SHORT = {
    "vanilla": "vanilla",
    "random": "(a) random",
    "se": "(b) SE",
    "rarity": "(c) rarity",
    "online": "(d) online SE",
    "mixed": "(e) SE+50% random",
    "excess": "(f) excess loss",
    "schedule": "(g) share 1->0",
}
CONTROL = re.compile(r"random_u(\d+)")


def model_label(name):
    """The long name of a model row (a random-masking control: its update count)."""
    m = CONTROL.fullmatch(name)
    return f"random masking, {m.group(1)} updates" if m else LABELS[name]


def model_short(name):
    m = CONTROL.fullmatch(name)
    return f"random, {m.group(1)} upd." if m else SHORT[name]


GROUPS = [
    ("all", "all tokens"),
    ("frequent", "frequent third"),
    ("middle", "middle third"),
    ("rare", "rare third"),
    ("hard", "vanilla's hardest 15 %"),
]
START_GOAL = 1.5  # bits below unigram: the quickstart's design goal for the vanilla
NOISE = 2.0  # a difference counts when it exceeds NOISE paired standard errors
FLOOR = 0.005  # ... and this many bits


def group_tokens(tokens, name, group):
    """Per-token losses (bits) of one model on one token group."""
    if group == "hard":
        return tokens[f"{name}.hard"]
    values = tokens[f"{name}.random"]
    if group == "all":
        return values
    return values[tokens["random_band"] == BANDS.index(group)]


def paired(tokens, a, b, group):
    """Mean loss difference b - a (bits) on the same tokens, and its standard error."""
    d = group_tokens(tokens, b, group) - group_tokens(tokens, a, group)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def loss(results, name, group):
    r = results[name]
    if group == "all":
        return r["random"]["loss"]
    if group == "hard":
        return r["hard"]["loss"]
    return r["bands"][group]["loss"]


def compare(tokens, a, b, group, better="lower"):
    d, se = paired(tokens, a, b, group)
    if abs(d) <= max(NOISE * se, FLOOR):
        verdict = "no clear difference"
    else:
        verdict = "lower" if d < 0 else "higher"
    return d, se, verdict


# -- compute -------------------------------------------------------------------------


def load_compute(work):
    """equal_compute.measured(work), or None for a run folder without compute.json."""
    if not os.path.exists(os.path.join(work, "compute.json")):
        return None
    return equal_compute.measured(work)


def control_of(comp, name):
    """The random-masking run with `name`'s compute (None: no plan, or not evaluated)."""
    if comp is None or name not in comp["methods"]:
        return None
    return comp["methods"][name]["control"]


def spent(comp, name):
    """Token passes of a run's continued pretraining (the vanilla: 0, the shared start)."""
    if name == "vanilla":
        return 0
    if comp is None or name not in comp["runs"]:
        return None
    return comp["runs"][name]["total"]


def mpasses(x):
    return "n/a" if x is None else f"{x / 1e6:.2f} M"


def both_spent(comp, a, b):
    """'b spent X, a Y token passes' for a comparison b minus a."""
    return f"{model_short(b)} {mpasses(spent(comp, b))}, {model_short(a)} {mpasses(spent(comp, a))}"


# -- findings ------------------------------------------------------------------------


def pair_text(tokens, a, b, groups=("all", "hard")):
    names = dict(GROUPS)
    parts = []
    for g in groups:
        d, se, verdict = compare(tokens, a, b, g)
        parts.append(f"{names[g]} {d:+.3f} ± {se:.3f} ({verdict})")
    return ", ".join(parts)


def versus_random(tokens, runs, baseline_of, what):
    """One finding: each run against its random-masking baseline (same updates or compute)."""
    all_tokens = {n: compare(tokens, baseline_of(n), n, "all") for n in runs}
    better = [model_short(n) for n in runs if all_tokens[n][2] == "lower"]
    worse = [n for n in runs if all_tokens[n][2] == "higher"]
    verdict = (
        f"better than random masking on all test tokens: {', '.join(better)}"
        if better
        else "no method was better than random masking on all test tokens"
    )
    if worse:
        lo, hi = min(all_tokens[n][0] for n in worse), max(all_tokens[n][0] for n in worse)
        verdict += f"; {len(worse)} of {len(runs)} were worse, by {lo:+.2f} to {hi:+.2f} bits"
    best = {}
    for group, name in GROUPS:
        ds = {n: compare(tokens, baseline_of(n), n, group) for n in runs}
        lower = [n for n in runs if ds[n][2] == "lower"]
        best[name] = min(lower, key=lambda n: ds[n][0]) if lower else None
    helped = [f"{name}: {model_short(n)}" for name, n in best.items() if n]
    return (
        f"- **Does SE help, against random masking {what}?** "
        + verdict
        + ". "
        + (
            "Largest clear gain per token group: " + "; ".join(helped)
            if helped
            else "No method was clearly better on any token group"
        )
        + "."
    )


def findings(data, tokens, names, comp=None):
    meta, results, shares = data["meta"], data["results"], data["mask_shares"]
    lines = []
    gap = results["unigram"]["random"]["loss"] - results["vanilla"]["random"]["loss"]
    band_gaps = ", ".join(
        f"{b} {results['unigram']['bands'][b]['loss'] - results['vanilla']['bands'][b]['loss']:+.2f}"
        for b in BANDS
    )
    where = f"{gap:.2f} bits below" if gap >= 0 else f"{-gap:.2f} bits above (worse than)"
    lines.append(
        f"- **Vanilla vs unigram.** The vanilla model is **{where} the unigram baseline** "
        f"on all test tokens ({results['vanilla']['random']['loss']:.3f} vs "
        f"{results['unigram']['random']['loss']:.3f} bits; the quickstart is designed to start "
        f"at least {START_GOAL:g} bits below it, so that the vanilla's scores rank tokens by more "
        f"than their frequency: {'met' if gap >= START_GOAL else 'not met'}). By band, unigram "
        f"minus vanilla: {band_gaps} bits."
    )
    if "random" not in results:
        return "\n".join(lines)

    runs = [n for n, _ in RUNS if n in results and n != "random"]
    same = versus_random(tokens, runs, lambda n: "random", "with the same updates")
    if comp is not None:
        lo = min(spent(comp, n) for n in runs) / spent(comp, "random")
        hi = max(spent(comp, n) for n in runs) / spent(comp, "random")
        same += (
            f" Random masking spent {mpasses(spent(comp, 'random'))} token passes, the methods "
            f"{lo:.2f}x to {hi:.2f}x that (table below)."
        )
    lines.append(same)
    matched = [n for n in runs if control_of(comp, n) in results]
    if matched:
        ratios = [spent(comp, control_of(comp, n)) / spent(comp, n) for n in matched]
        lines.append(
            versus_random(tokens, matched, lambda n: control_of(comp, n), "at the same compute")
            + " Each method against random masking continued to its compute ("
            + ", ".join(
                f"{model_short(n)}: {comp['runs'][control_of(comp, n)]['updates']} updates"
                for n in matched
            )
            + f"; random's compute {min(ratios):.3f}x to {max(ratios):.3f}x the method's)."
        )
    if "se" in results and "rarity" in results:
        parts = []
        for group, name in GROUPS:
            d, se, verdict = compare(tokens, "rarity", "se", group)
            parts.append(
                f"{name} {d:+.3f} ± {se:.3f}"
                + (" (no clear difference)" if verdict.startswith("no") else "")
            )
        wins = [n for g, n in GROUPS if compare(tokens, "rarity", "se", g)[2] == "lower"]
        losses = [n for g, n in GROUPS if compare(tokens, "rarity", "se", g)[2] == "higher"]
        if wins and not losses:
            head = f"SE beat the rarity control on {', '.join(wins)} and lost nowhere"
        elif wins:
            head = f"SE beat the rarity control on {', '.join(wins)} but did worse on {', '.join(losses)}"
        elif losses:
            head = f"SE did not beat the rarity control; it did worse on {', '.join(losses)}"
        else:
            head = "SE did not beat the rarity control (no group with a clear difference)"
        overlap = meta["test_masks"]["overlap"]
        lines.append(
            f"- **Is SE just rare-token masking?** {head}. (b) minus (c), same updates"
            + (f" ({both_spent(comp, 'rarity', 'se')})" if comp else "")
            + ": "
            + "; ".join(parts)
            + f". On test, {overlap:.0%} of the tokens SE would mask are also among the rarest 15 %"
            + (
                f"; SE's train masks are {100 * shares['se']['rare']:.0f} % rare-third tokens, the rarity "
                f"control's {100 * shares['rarity']['rare']:.0f} %."
                if "se" in shares and "rarity" in shares
                else "."
            )
        )
    if "se" in results and "online" in results:
        lines.append(
            "- **Online vs offline SE** ((d) minus (b), same updates"
            + (f"; {both_spent(comp, 'se', 'online')}" if comp else "")
            + f"): {pair_text(tokens, 'se', 'online')}."
        )
    if "excess" in results and "online" in results:
        lines.append(
            "- **Excess loss vs SE's correctness, both online** ((f) minus (d), same updates"
            + (f"; {both_spent(comp, 'online', 'excess')}" if comp else "")
            + f"): {pair_text(tokens, 'online', 'excess', ('all', 'rare', 'hard'))}. The excess "
            "score is the live model's loss minus the vanilla's, so it ranks tokens by what "
            "continued training has made worse or better, not by how hard they are."
        )
    if "mixed" in results and "se" in results:
        d, se, _ = compare(tokens, "se", "mixed", "frequent")
        lines.append(
            "- **Half the budget to random positions** ((e) minus (b), same updates and compute): "
            f"frequent tokens {d:+.3f} ± {se:.3f}, {pair_text(tokens, 'se', 'mixed')}."
        )
    if "schedule" in results and "se" in results:
        lines.append(
            "- **The random share scheduled from 1 to 0** ((g) minus (b), same updates and "
            f"compute): {pair_text(tokens, 'se', 'schedule', ('all', 'frequent', 'rare', 'hard'))}"
            + (
                f"; (g) minus (e), the fixed half share: {pair_text(tokens, 'mixed', 'schedule')}"
                if "mixed" in results
                else ""
            )
            + "."
        )
    return "\n".join(lines)


def delta_table(tokens, results, baseline_of, comp=None):
    """Markdown table: each continuation minus its random-masking baseline, per token group,
    with the compute each side spent."""
    runs = [n for n, _ in RUNS if n in results and n != "random" and baseline_of(n) in results]
    head = (
        "| method | random masking: updates | token passes: method / random | "
        + " | ".join(name for _, name in GROUPS)
        + " |\n"
        + "| --- " * (len(GROUPS) + 3)
        + "|"
    )
    rows = []
    for n in runs:
        base = baseline_of(n)
        cells = []
        for group, _ in GROUPS:
            d, se, verdict = compare(tokens, base, n, group)
            cell = f"{d:+.3f} ± {se:.3f}"
            cells.append(f"**{cell}**" if verdict != "no clear difference" else cell)
        if comp is not None and spent(comp, base):
            updates = str(comp["runs"][base]["updates"])
            ratio = f"{mpasses(spent(comp, n))} / {mpasses(spent(comp, base))} ({spent(comp, n) / spent(comp, base):.2f}x)"
        else:
            updates, ratio = "as the method", "n/a"
        rows.append(f"| {LABELS[n]} | {updates} | {ratio} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows)


# -- downstream ------------------------------------------------------------------------

DOWNSTREAM = [
    ("vanilla", "vanilla (start point)"),
    ("random", "(a) random masking"),
    ("se", "(b) SE: top-k + TLS"),
    ("rarity", "(c) rarity control"),
    ("online", "(d) online SE"),
]
TASK_LABELS = {
    "module": "module: which of 10 packages?",
    "source": "source: from this module?",
    "average": "average over tasks",
}


def down_label(name):
    return dict(DOWNSTREAM).get(name) or model_label(name)


def down_names(down):
    """The fine-tuned models in report order: the vanilla, the methods, then the controls."""
    known = [n for n, _ in DOWNSTREAM if n in down["results"]]
    controls = sorted(
        (n for n in down["results"] if CONTROL.fullmatch(n)),
        key=lambda n: int(CONTROL.fullmatch(n).group(1)),
    )
    return known + controls


def load_downstream(work):
    """se-finetune's results document of the run (None when the stage did not run)."""
    path = os.path.join(work, "downstream", "results.json")
    return json.load(open(path)) if os.path.exists(path) else None


def seed_values(down, name, task):
    return {int(s): v for s, v in down["results"][name][task]["seeds"].items()}


def down_compare(down, a, b, task):
    """b minus a on a task, paired over seeds (points x 100): se-finetune's paired statistics."""
    from se_fairseq.finetune.results import paired

    p = paired(seed_values(down, b, task), seed_values(down, a, task))
    return {k: (100 * v if k in ("mean", "se", "detectable") else v) for k, v in p.items()}


SAME = "the same on every seed"  # no difference on any seed: nothing to test or size
NO_SPREAD = "the same difference on every seed"  # a constant nonzero difference: no test
NO_SPREAD_CELL = "n/a: no spread, the same difference on every seed"


def no_spread(p):
    return bool(p.get("no_spread")) or (p["n"] > 1 and p["se"] == 0)


def down_verdict(p):
    if no_spread(p):
        return SAME if p["mean"] == 0 else NO_SPREAD
    if p["detected"]:
        return "better" if p["mean"] > 0 else "worse"
    return "no difference we could detect"


def majority_shares(work, tasks):
    """Per task, the dev share of its most frequent label (what always guessing it scores,
    x 100) and that label, read from the task folders with se-finetune's own reader; None
    when the folders are not there."""
    from collections import Counter

    from se_fairseq.finetune.tasks import read_task

    out = {}
    for t in tasks:
        folder = os.path.join(work, "tasks", t)
        if not os.path.isdir(folder):
            return None
        labels = read_task(folder).dev.labels
        name, count = Counter(labels).most_common(1)[0]
        out[t] = (100.0 * count / len(labels), name)
    return out


def se_vs_rarity(down):
    """Whether SE and the rarity control were both fine-tuned, so that the report compares them."""
    return {"se", "rarity"} <= set(down["results"])


def down_comparisons(down, comp=None):
    """(a, b, what) for every downstream difference the report states: each fine-tuned model
    against (a) random masking with the same updates, each method against random masking at
    its compute where that control was fine-tuned, and SE against the rarity control."""
    names = down_names(down)
    out = []
    for n in names:
        if n != "random" and not CONTROL.fullmatch(n):
            out.append(("random", n, "same updates" if n != "vanilla" else "no continuation"))
    for n in names:
        control = control_of(comp, n)
        if control and control != "random" and control in down["results"]:
            out.append((control, n, "same compute"))
    if se_vs_rarity(down):
        out.append(("rarity", "se", "same updates"))
    return out


def detectable_cell(p):
    if no_spread(p):
        return (
            f"{p['mean']:+.2f} ± 0.00 (equal on every seed)"
            if p["mean"] == 0
            else (f"{p['mean']:+.2f} ± 0.00 ({NO_SPREAD_CELL})")
        )
    cell = f"{p['mean']:+.2f} ± {p['se']:.2f}"
    return (f"**{cell}**" if p["detected"] else cell) + f" ({p['detectable']:.2f})"


def downstream_tables(down, majority=None, comp=None):
    tasks = down["tasks"] + ["average"]
    names = down_names(down)
    head = (
        "| model | "
        + " | ".join(TASK_LABELS.get(t, t) for t in tasks)
        + " |\n"
        + "| --- " * (len(tasks) + 1)
        + "|"
    )
    rows = []
    if majority:
        cells = [f"{majority[t][0]:.2f} (always `{majority[t][1]}`)" for t in down["tasks"]]
        cells.append(f"{sum(majority[t][0] for t in down['tasks']) / len(down['tasks']):.2f}")
        rows.append("| majority class of dev (no model) | " + " | ".join(cells) + " |")
    for n in names:
        cells = []
        for t in tasks:
            e = down["results"][n][t]
            vals = " / ".join(f"{100 * v:.1f}" for _, v in sorted(seed_values(down, n, t).items()))
            cells.append(f"{100 * e['mean']:.2f} ± {100 * e['sd']:.2f} ({vals})")
        rows.append(f"| {down_label(n)} | " + " | ".join(cells) + " |")
    diff_rows = []
    for a, b, what in down_comparisons(down, comp):
        cells = [detectable_cell(down_compare(down, a, b, t)) for t in tasks]
        cost = f"; {both_spent(comp, a, b)}" if comp is not None else ""
        diff_rows.append(
            f"| {down_label(b)} minus {down_label(a)} ({what}{cost}) | " + " | ".join(cells) + " |"
        )
    return head + "\n" + "\n".join(rows), head.replace(
        "| model |", "| comparison (compute: token passes of continued pretraining) |"
    ) + "\n" + "\n".join(diff_rows)


def down_line(down, a, b, question, tasks, n):
    parts = []
    verdict_of = {}
    for t in tasks:
        p = down_compare(down, a, b, t)
        verdict_of[t] = verdict = down_verdict(p)
        if verdict == SAME:
            parts.append(f"{t}: {verdict} (each seed's dev accuracy equal)")
        elif verdict == NO_SPREAD:
            parts.append(
                f"{t} {p['mean']:+.2f} points on every seed: no spread, so no test and no "
                "detectable size (n/a)"
            )
        else:
            parts.append(
                f"{t} {p['mean']:+.2f} ± {p['se']:.2f} points: {verdict} "
                f"(detectable {p['detectable']:.1f})"
            )
    tested = [t for t in tasks if verdict_of[t] not in (SAME, NO_SPREAD)]
    verdicts = {verdict_of[t] for t in tested}
    if not tested:
        head = "nothing to test: every seed gave the same difference on every task"
    elif verdicts <= {"no difference we could detect"}:
        head = "no difference we could detect on " + (
            "any task" if len(tested) == len(tasks) else ", ".join(tested)
        )
    elif "better" in verdicts and "worse" not in verdicts:
        head = "yes, on " + ", ".join(t for t in tasks if verdict_of[t] == "better")
    elif "worse" in verdicts and "better" not in verdicts:
        head = "no: worse on " + ", ".join(t for t in tasks if verdict_of[t] == "worse")
    else:
        head = "mixed"
    return (
        f"- **{question}** {head}. {down_label(b)} minus {down_label(a)}, paired over {n} "
        "seeds: " + "; ".join(parts) + "."
    )


def downstream_findings(down, majority=None, comp=None):
    tasks = down["tasks"] + ["average"]
    n = min(e["n"] for r in down["results"].values() for e in r.values())
    lines = []
    if majority:
        parts = []
        for t in down["tasks"]:
            means = [100 * down["results"][m][t]["mean"] for m in down["results"]]
            parts.append(
                f"{t}: majority class {majority[t][0]:.1f} %, the fine-tuned models "
                f"{min(means) - majority[t][0]:+.1f} to {max(means) - majority[t][0]:+.1f} points from it"
            )
        lines.append(
            "- **How much the tasks were learned**, against always guessing the most "
            "frequent dev label: " + "; ".join(parts) + ". Differences between models "
            "are read against that headroom."
        )
    questions = {
        "se": "Did SE beat random masking downstream",
        "online": "Did online SE beat random masking downstream",
        "rarity": "Did the rarity control beat random masking downstream",
    }
    for name, question in questions.items():
        if name not in down["results"] or "random" not in down["results"]:
            continue
        cost = f" ({both_spent(comp, 'random', name)})" if comp is not None else ""
        lines.append(down_line(down, "random", name, f"{question}, same updates?{cost}", tasks, n))
        control = control_of(comp, name)
        if control and control != "random" and control in down["results"]:
            cost = f" ({both_spent(comp, control, name)})"
            lines.append(
                down_line(down, control, name, f"{question}, same compute?{cost}", tasks, n)
            )
    if se_vs_rarity(down):
        lines.append(
            down_line(down, "rarity", "se", "Did SE beat the rarity control downstream?", tasks, n)
        )
    spreads = []
    pairs = [(a, b) for a, b, _ in down_comparisons(down, comp) if a != "rarity"]
    for t in down["tasks"]:
        sds = [100 * down["results"][m][t]["sd"] for m in down["results"]]
        det = [down_compare(down, a, b, t)["detectable"] for a, b in pairs]
        det = [d for d in det if not math.isnan(d)]
        size = f"{min(det):.1f} to {max(det):.1f} points" if det else "n/a (no spread)"
        spreads.append(
            f"{t}: sd over seeds {min(sds):.2f} to {max(sds):.2f} points, smallest "
            f"detectable paired difference against random masking {size}"
        )
    lines.append(
        f"- **Seed-to-seed spread and what this run can resolve** ({n} seeds per model and "
        "task; detectable = the paired difference a two-sided 5 % t-test would find with "
        "80 % power): " + "; ".join(spreads) + "."
    )
    return "\n".join(lines)


# -- corpus ----------------------------------------------------------------------------


def corpus_figures(work):
    """Per split: paragraphs and words of the text (make_text.py's counts: whitespace words
    of its lines) and tokens of the binarized split (SentencePiece pieces and one </s> per
    paragraph, as fairseq-preprocess counts them); None where the files are not there."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    out = {}
    for split in ("train", "valid", "test"):
        text = os.path.join(work, "text", f"{split}.txt")
        idx = os.path.join(work, "data-bin", f"{split}.idx")
        if not (os.path.exists(text) and os.path.exists(idx)):
            return None
        with open(text) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        index = MMapIndexedDataset.Index(idx)
        out[split] = {
            "paragraphs": len(lines),
            "words": sum(len(line.split()) for line in lines),
            "tokens": int(np.asarray(index.sizes, dtype=np.int64).sum()),
        }
        del index
    return out


# -- plot ------------------------------------------------------------------------------


def pyplot():
    """matplotlib on its file backend, imported only to draw (its first import scans fonts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars_with_markers(ax, xs, names, bars, markers, colors):
    """Grouped bars (one per name) with ±error bars, and a black diamond with its own error
    bar on each bar where `markers` has a value: bars[name] / markers[name] = [(d, err)]."""
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        x = xs + (i - (len(names) - 1) / 2) * width
        ds = bars[name]
        ax.bar(
            x,
            [d for d, _ in ds],
            width,
            yerr=[e for _, e in ds],
            capsize=2,
            label=model_short(name),
            color=colors[name],
            error_kw={"elinewidth": 0.8, "ecolor": "#555555"},
        )
        if markers.get(name):
            ms = markers[name]
            ax.errorbar(
                x,
                [d for d, _ in ms],
                yerr=[e for _, e in ms],
                fmt="D",
                color="black",
                markersize=3.5,
                elinewidth=0.8,
                capsize=1.5,
            )
    ax.axhline(0, color="black", lw=1)


def plot_downstream(ax, down, comp=None):
    from matplotlib.lines import Line2D
    from scipy import stats

    tasks = down["tasks"] + ["average"]
    names = [n for n in down_names(down) if n != "random" and not CONTROL.fullmatch(n)]
    xs = np.arange(len(tasks))
    plt = pyplot()
    palette = {
        "vanilla": "#4c72b0",
        "se": plt.cm.tab10(1),
        "rarity": plt.cm.tab10(3),
        "online": plt.cm.tab10(4),
    }
    colors = {n: palette.get(n, "#999999") for n in names}

    def crit(p):
        return stats.t.ppf(0.975, p["n"] - 1) * p["se"] if p["n"] > 1 and p["se"] == p["se"] else 0

    bars, markers = {}, {}
    for n in names:
        bars[n] = [
            (p["mean"], crit(p)) for p in (down_compare(down, "random", n, t) for t in tasks)
        ]
        control = control_of(comp, n)
        if control and control != "random" and control in down["results"]:
            markers[n] = [
                (p["mean"], crit(p)) for p in (down_compare(down, control, n, t) for t in tasks)
            ]
    bars_with_markers(ax, xs, names, bars, markers, colors)
    ax.set_xticks(xs, tasks, fontsize=9)
    ax.set_ylabel("dev accuracy minus random masking (points)\n> 0: better than random masking")
    ax.set_title(
        "Fine-tuned: each model (the vanilla and the continued ones) vs random masking\n"
        "bars: vs (a), same updates; ◆: vs random at the method's compute (95 % t intervals)",
        fontsize=10,
    )
    handles, labels = ax.get_legend_handles_labels()
    if markers:
        handles.append(Line2D([], [], marker="D", color="black", ls="", markersize=4))
        labels.append("same compute")
    ax.legend(handles, labels, fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))


def plot(data, tokens, names, png, down=None, comp=None):
    from matplotlib.lines import Line2D

    plt = pyplot()
    results, shares = data["results"], data["mask_shares"]
    runs = [n for n, _ in RUNS if n in results and n != "random"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 11.5))
    (ax_a, ax_b), (ax_c, ax_d) = axes
    if down:
        plot_downstream(ax_d, down, comp)
    else:
        ax_d.axis("off")
        ax_d.text(0.5, 0.5, "no downstream stage in this run", ha="center", va="center")

    # A: the start point against the unigram baseline
    xs = np.arange(len(GROUPS))
    for i, (name, color) in enumerate((("unigram", "#bbbbbb"), ("vanilla", "#4c72b0"))):
        vals = [loss(results, name, g) for g, _ in GROUPS]
        ax_a.bar(xs + (i - 0.5) * 0.38, vals, 0.38, label=LABELS[name], color=color)
        for x, v in zip(xs, vals):
            ax_a.text(x + (i - 0.5) * 0.38, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    gap = results["unigram"]["random"]["loss"] - results["vanilla"]["random"]["loss"]
    group_ticks = [
        name.replace(" third", "\nthird").replace("vanilla's ", "vanilla's\n") for _, name in GROUPS
    ]
    ax_a.set_xticks(xs, group_ticks, fontsize=9)
    ax_a.set_ylabel("test MLM loss (bits/token)")
    ax_a.set_title(
        f"Start point: vanilla {abs(gap):.2f} bits {'below' if gap >= 0 else 'above'} unigram",
        fontsize=10,
    )
    ax_a.legend(fontsize=8, loc="upper left")
    ax_a.set_ylim(0, max(loss(results, "unigram", g) for g, _ in GROUPS) * 1.2)

    # B: every continuation against random masking, by token group, with paired error bars
    colors = dict(zip(runs, plt.cm.tab10(np.arange(len(runs)) + 1)))
    bars = {
        n: [(d, NOISE * se) for d, se in (paired(tokens, "random", n, g) for g, _ in GROUPS)]
        for n in runs
    }
    markers = {}
    for n in runs:
        control = control_of(comp, n)
        if control and control != "random" and control in results:
            markers[n] = [
                (d, NOISE * se) for d, se in (paired(tokens, control, n, g) for g, _ in GROUPS)
            ]
    bars_with_markers(ax_b, xs, runs, bars, markers, colors)
    ax_b.set_xticks(xs, group_ticks, fontsize=9)
    ax_b.set_ylabel("test loss minus random masking (bits)\n< 0: better than random masking")
    ax_b.set_title(
        "Continued pretraining: each method vs random masking\n"
        f"bars: vs (a), same updates; ◆: vs random at the method's compute (±{NOISE:g} paired s.e.)",
        fontsize=10,
    )
    handles, labels = ax_b.get_legend_handles_labels()
    if markers:
        handles.append(Line2D([], [], marker="D", color="black", ls="", markersize=4))
        labels.append("same compute")
    ax_b.legend(handles, labels, fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))

    # C: what each method masks
    order = [n for n in ["random"] + runs if n in shares]
    bottoms = np.zeros(len(order))
    band_colors = {"frequent": "#55a868", "middle": "#dd8452", "rare": "#c44e52"}
    for b in BANDS:
        vals = np.array([100 * shares[n][b] for n in order])
        ax_c.barh(range(len(order)), vals, left=bottoms, color=band_colors[b], label=f"{b} third")
        bottoms += vals
    ax_c.set_yticks(
        range(len(order)),
        [f"{model_short(n)} ({100 * shares[n]['rate']:.0f} % masked)" for n in order],
        fontsize=9,
    )
    ax_c.invert_yaxis()
    ax_c.set_xlim(0, 100)
    ax_c.set_xlabel("share of the masked train tokens (%)")
    ax_c.set_title(
        "What each method masks, by frequency band (first epoch;\n"
        "online methods and the scheduled share choose in the train step: not shown)",
        fontsize=10,
    )
    ax_c.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return fig


# -- the report ------------------------------------------------------------------------


def commands_block(text):
    """The commands as a shell script: each line reruns from the repository root."""
    return (
        "# from the repository root, with the run folder in WORK and .venv/bin on PATH\n"
        ': "${WORK:?set WORK to the run folder, e.g. WORK=quickstart-run}"\n' + text
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work")
    args = parser.parse_args()
    # importing fairseq configures the root logger at DEBUG unless it already has a handler,
    # which printed matplotlib's font scan (about 230 lines) into the quickstart's output
    logging.basicConfig(level=logging.WARNING)
    data = json.load(open(os.path.join(args.work, "results.json")))
    tokens = dict(np.load(os.path.join(args.work, "results.tokens.npz")))
    results, meta, shares = data["results"], data["meta"], data["mask_shares"]
    comp = load_compute(args.work)
    controls = sorted(
        (n for n in results if CONTROL.fullmatch(n)),
        key=lambda n: int(CONTROL.fullmatch(n).group(1)),
    )
    names = ["vanilla"] + [n for n, _ in RUNS if n in results] + controls
    png = os.path.join(args.work, "report.png")
    down = load_downstream(args.work)
    majority = majority_shares(args.work, down["tasks"]) if down else None
    corpus = corpus_figures(args.work)
    pyplot().close(plot(data, tokens, names, png, down, comp))

    def compute_cells(name):
        if name == "unigram":
            return "", ""
        if name == "vanilla":
            return "0 (start)", "0"
        run = comp["runs"].get(name) if comp else None
        if run is None:
            return "", "n/a"
        if "scoring" in run:
            return str(run["updates"]), (
                f"{run['training'] / 1e6:.3f} + {run['scoring'] / 1e6:.3f} = {run['total'] / 1e6:.3f}"
            )
        return str(run["updates"]), f"{run['total'] / 1e6:.3f} + 0 = {run['total'] / 1e6:.3f}"

    def row(name):
        r = results[name]
        d_all = r["random"]["loss"] - results["vanilla"]["random"]["loss"]
        d_hard = r["hard"]["loss"] - results["vanilla"]["hard"]["loss"]
        delta = "" if name in ("unigram", "vanilla") else f" ({d_all:+.3f})"
        delta_h = "" if name in ("unigram", "vanilla") else f" ({d_hard:+.3f})"
        bands = " | ".join(f"{r['bands'][b]['loss']:.3f}" for b in BANDS)
        updates, passes = compute_cells(name)
        return (
            f"| {model_label(name)} | {updates} | {passes} | {r['random']['loss']:.3f}{delta} | "
            f"{r['random']['accuracy']:.2f} | {r['hard']['loss']:.3f}{delta_h} | "
            f"{r['hard']['accuracy']:.2f} | {bands} |"
        )

    table = "\n".join(row(n) for n in ["unigram"] + names)
    band_rows = "\n".join(
        f"| {i['band']} | {i['types']} | {i['test_tokens']} | {i['train_count_min']} to {i['train_count_max']} |"
        for i in meta["bands"]
    )
    share_rows = "\n".join(
        f"| {LABELS.get(n, n)} | {100 * s['rate']:.1f} | "
        + " | ".join(f"{100 * s[b]:.1f}" for b in BANDS)
        + " |"
        for n, s in shares.items()
    )
    tm = meta["test_masks"]
    test_share_rows = "\n".join(
        [
            "| all test tokens | "
            + " | ".join(f"{100 * meta['test_band_share'][b]:.1f}" for b in BANDS)
            + " |",
            "| SE: vanilla's hardest 15 % | "
            + " | ".join(f"{100 * tm['se'][b]:.1f}" for b in BANDS)
            + " |",
            "| rarity: rarest 15 % | "
            + " | ".join(f"{100 * tm['rarity'][b]:.1f}" for b in BANDS)
            + " |",
        ]
    )
    example_lines = "\n".join(
        f"{i + 1}. {e['text']}\n\n   *(SE {e['se']}, rarity {e['rarity']}, both {e['both']} of these tokens)*\n"
        for i, e in enumerate(data["examples"])
    )
    corpus_section = ""
    if corpus:
        corpus_rows = "\n".join(
            f"| {split} | {c['paragraphs']:,} | {c['words']:,} | {c['tokens']:,} |"
            for split, c in corpus.items()
        )
        corpus_section = f"""
## Corpus

CPython's own documentation (`examples/quickstart/make_text.py`; PSF licence), one paragraph
per line, split by a hash of the paragraph. Words: whitespace-separated words of the text;
tokens: SentencePiece pieces plus one `</s>` per paragraph, as `fairseq-preprocess` counted
them into `data-bin`:

| split | paragraphs | words | tokens |
| --- | --- | --- | --- |
{corpus_rows}
"""
    compute_section = ""
    if comp is not None:
        random = comp["random"]
        compute_section = f"""
## Compute: what each run spent

In token passes (`se_fairseq/core/compute.py`: a forward counts 1 per token, its backward 2,
every extra forward without gradient 1; FLOPs are about twice the parameters times this).
*Training*: the `tok_passes` fairseq-train logged over the run's epochs (per step: 3 per token;
+1 for TLS's or online SE's reference forward; +1 for excess loss's frozen reference model).
*Scoring*: the self-questioning pass of the score file the run trains on, from the file's
summary: se-score's scored tokens x 1 (x 2 for excess loss; rarity is a count, 0), charged in
full to every run that trains on it (the file is computed once and shared here). The total is
fairseq-train's `tok_passes_total` at the end of the run, which counts both. The vanilla's own
pretraining is the shared start and counted for none; nor is the scoring of the test split
(evaluation only).

*Random masking at the same compute*: (a) spent {mpasses(random["total"])} in
{random["updates"]} updates ({random["per_update"]:,.0f} per update); each method's total divided
by that, rounded to the nearest update, gives its control's update count
(`examples/quickstart/equal_compute.py`). fairseq-train saves only at multiples of
`--save-interval-updates`, so the controls lie on one random-masking trajectory continued from
(a) to each count in turn (fairseq-train resumed from the previous checkpoint: optimizer,
learning-rate schedule, data position and meters restored, as one uninterrupted run); their
compute is what their logs say.
"""
    downstream_section = ""
    if down:
        table_down, diff_down = downstream_tables(down, majority, comp)
        settings = next(iter(down["settings"].values()))
        fine_tuned = ", ".join(down_label(n) for n in down_names(down))
        vs_rarity = ", and SE against the rarity control" if se_vs_rarity(down) else ""
        downstream_section = f"""
## Downstream: fine-tuned on two labelled tasks

The question SE exists for: is the *fine-tuned* model better? `se-finetune` fine-tunes
{fine_tuned} with fairseq's `sentence_prediction` on two
tasks made from CPython's documentation with natural labels (`examples/quickstart/make_tasks.py`;
dev examples come from paragraphs that were never pretrained on): *module*, one text, which of
ten standard-library packages does this docstring sentence come from? and *source*, a pair, does
this docstring sentence come from this module (one of ten others)? Each with seeds
{", ".join(down["results"]["random"][down["tasks"][0]]["seeds"])}
({settings["epochs"]} epoch{"s" if settings["epochs"] != 1 else ""}, batches of {settings["batch_size"]}, lr {settings["lr"]:g}, best dev
checkpoint, as RoBERTa's GLUE recipe). Dev accuracy x 100, mean ± sd over seeds (per seed in brackets):

{table_down}

Paired over seeds: each model against (a) random masking with the same updates, each method
against random masking at its compute{vs_rarity}: mean ± standard error
(**bold**: a paired t-test at 5 % finds a difference); in brackets the smallest difference this
run could detect (80 % power; "{NO_SPREAD_CELL}": no test is possible):

{diff_down}
"""
    read = lambda f: (
        open(os.path.join(args.work, f)).read().strip()
        if os.path.exists(os.path.join(args.work, f))
        else ""
    )
    train_tokens = (
        f"{corpus['train']['tokens'] / 1e6:.2f} M" if corpus else "a few hundred thousand"
    )
    md = f"""# se-fairseq quickstart report

A small RoBERTa (the *vanilla* model) pretrained with fairseq `masked_lm`, then continued from
the same checkpoint with the same updates, seed, learning rate and replacement policy (every
selected token becomes `<mask>`) by each method below, and compared with random masking twice:
with the same updates, and at the same compute (random masking given more updates). Settings:
{read("settings.txt")}.
{corpus_section}
## Held-out test loss

Bits per masked token (lower is better) and top-1 accuracy on the **test** split
({meta["tokens"]} tokens in {meta["blocks"]} blocks). *All tokens*: every test token is masked once
({meta["random_folds"]} passes per block, each masking a random seventh of it). *Hardest 15 %*: per
block, the 15 % of tokens the vanilla model scores worst (its `se-score` correctness), masked
together. *Frequency bands*: the *all tokens* figures split by the token's train frequency into
thirds of the test tokens. In brackets: change vs the vanilla model. The unigram row is the train
split's token frequencies (add-1 smoothed) on the same tokens, its accuracy that of always
guessing `{meta["unigram_top_token"]}`. *Updates* and *token passes* (millions): the compute of
each run's continued pretraining, training + scoring = total (section *Compute*).

| model | updates | token passes (M): training + scoring = total | all: bits | all: acc % | hardest 15 %: bits | hardest: acc % | frequent: bits | middle: bits | rare: bits |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{table}
{compute_section}
![the result at a glance](report.png)

Top left: the start point against the unigram baseline. Top right: each continued model minus
random masking on the same test tokens (below zero = better than random masking): bars against
(a), with the same updates; black diamonds against random masking at that method's compute
(error bars ±{NOISE:g} paired standard errors). Bottom left: what each method masks in the train
split.{" Bottom right: downstream, each fine-tuned model (the vanilla and the continued ones) minus random masking (dev accuracy): bars against (a), diamonds against random masking at the method's compute." if down else ""}

## Findings

{findings(data, tokens, names, comp)}
{downstream_findings(down, majority, comp) if down else ""}

Each continued model minus random masking, bits per token on the same test tokens (± one
paired standard error; **bold**: the difference exceeds {NOISE:g} standard errors and {FLOOR} bits),
with the compute each side spent. **With the same updates** (against (a)):

{delta_table(tokens, results, lambda n: "random", comp) if "random" in results else ""}

**At the same compute** (against random masking continued to the method's token passes):

{delta_table(tokens, results, lambda n: control_of(comp, n), comp) if comp is not None else "(no compute record in this run)"}
{downstream_section}
Read this at its scale: a small model pretrained for minutes on {train_tokens} train tokens,
continued for the few updates in the settings above. The paper continues a fully trained RoBERTa
for 60k updates at a learning rate of 1e-5; `examples/roberta/README.md` has that recipe.

## What each method masks

Frequency bands (test tokens sorted by train frequency, cut into thirds of the test tokens,
whole token types per band):

| band | token types | test tokens | train count of a type |
| --- | --- | --- | --- |
{band_rows}

Masked train tokens of the first epoch by band, as `fairseq-train`'s task builds them. Online
SE (d) and excess loss (f) choose with the live model in each step, and (g) masks in the step
at a scheduled random share (all random at update 0, (b)'s choice at the end): they have no
fixed masks (at update 0, (d)'s are (b)'s).

| method | masked % of train tokens | frequent % | middle % | rare % |
| --- | --- | --- | --- | --- |
{share_rows}

On the test split (what the evaluation's *hardest 15 %* and the rarity control select):

| tokens | frequent % | middle % | rare % |
| --- | --- | --- | --- |
{test_share_rows}

Three test passages: **bold** = SE would mask it (among the vanilla's hardest 15 % of its
block), [brackets] = the rarity control would (among the rarest 15 %); ⏎ = paragraph end.

{example_lines}
## Timings

```
{read("timings.txt")}
```

## Commands

Each command as it ran, quoted for the shell; `$WORK` is the run folder.

```bash
{commands_block(read("commands.txt"))}
```
"""
    with open(os.path.join(args.work, "report.md"), "w") as f:
        f.write(md)
    print(f"[report] {os.path.join(args.work, 'report.md')} and {png}")


if __name__ == "__main__":
    main()
