"""Write report.md and report.png from a quickstart run folder.

    python report.py WORK_DIR

Reads WORK_DIR/results.json and results.tokens.npz (evaluate.py), WORK_DIR/commands.txt,
WORK_DIR/timings.txt and WORK_DIR/settings.txt. Every finding is computed from the numbers.
"""

import argparse
import json
import os

import numpy as np

BANDS = ("frequent", "middle", "rare")
RUNS = [
    ("random", "(a) random masking, MLM loss"),
    ("se", "(b) SE: top-k + TLS"),
    ("se_mlm", "(c) SE top-k, plain MLM loss"),
    ("rarity", "(d) rarity control: rarest top-k + TLS"),
    ("online", "(e) online SE: top-k + TLS"),
    ("threshold", "(f) SE threshold rule (reference code) + TLS"),
    ("mixed", "(g) SE top-k, 50 % of the budget random + TLS"),
]
LABELS = {
    "unigram": "unigram (train frequencies)",
    "vanilla": "vanilla (start point)",
    **dict(RUNS),
}
SHORT = {
    "random": "(a) random",
    "se": "(b) SE",
    "se_mlm": "(c) SE, MLM loss",
    "rarity": "(d) rarity",
    "online": "(e) online SE",
    "threshold": "(f) threshold",
    "mixed": "(g) SE+50% random",
}
GROUPS = [
    ("all", "all tokens"),
    ("frequent", "frequent third"),
    ("middle", "middle third"),
    ("rare", "rare third"),
    ("hard", "vanilla's hardest 15 %"),
]
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


def last_valid(log, key):
    """The last value of `key` on fairseq-train's validation lines of a log, or None."""
    import re

    value = None
    if os.path.exists(log):
        for line in open(log):
            if "valid on 'valid' subset" in line:
                m = re.search(rf"\| {key} ([-\d.]+)", line)
                value = float(m.group(1)) if m else value
    return value


def findings(data, tokens, names, work):
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
        f"{results['unigram']['random']['loss']:.3f} bits; the issue's target is 1.5 bits: "
        f"{'met' if gap >= 1.5 else 'not met'}). By band, unigram minus vanilla: {band_gaps} bits."
    )
    if "random" not in results:
        return "\n".join(lines)

    runs = [n for n, _ in RUNS if n in results and n != "random"]
    best = {}
    for group, label in GROUPS:
        ds = {n: compare(tokens, "random", n, group) for n in runs}
        better = [n for n in runs if ds[n][2] == "lower"]
        best[label] = min(better, key=lambda n: ds[n][0]) if better else None
    helped = [f"{label}: {SHORT[n]}" for label, n in best.items() if n]
    all_tokens = {n: compare(tokens, "random", n, "all") for n in runs}
    better = [SHORT[n] for n in runs if all_tokens[n][2] == "lower"]
    worse = [n for n in runs if all_tokens[n][2] == "higher"]
    verdict = (
        f"better than random masking on all test tokens: {', '.join(better)}"
        if better
        else "no method was better than random masking on all test tokens"
    )
    if worse:
        lo, hi = min(all_tokens[n][0] for n in worse), max(all_tokens[n][0] for n in worse)
        verdict += f"; {len(worse)} of {len(runs)} were worse, by {lo:+.2f} to {hi:+.2f} bits"
    lines.append(
        "- **Does SE help, against random masking with the same updates?** (table below) "
        + verdict
        + ". "
        + (
            "Largest clear gain per token group: " + "; ".join(helped)
            if helped
            else "No method was clearly better on any token group"
        )
        + "."
    )
    if "se" in results and "rarity" in results:
        parts = []
        for group, label in GROUPS:
            d, se, verdict = compare(tokens, "rarity", "se", group)
            parts.append(
                f"{label} {d:+.3f} ± {se:.3f}"
                + (" (no clear difference)" if verdict.startswith("no") else "")
            )
        wins = [
            label for group, label in GROUPS if compare(tokens, "rarity", "se", group)[2] == "lower"
        ]
        losses = [
            label
            for group, label in GROUPS
            if compare(tokens, "rarity", "se", group)[2] == "higher"
        ]
        if wins and not losses:
            head = f"SE beat the rarity control on {', '.join(wins)} and lost nowhere"
        elif wins:
            head = (
                f"SE beat the rarity control on {', '.join(wins)} but did worse on "
                f"{', '.join(losses)}"
            )
        elif losses:
            head = f"SE did not beat the rarity control; it did worse on {', '.join(losses)}"
        else:
            head = "SE did not beat the rarity control (no group with a clear difference)"
        overlap = meta["test_masks"]["overlap"]
        lines.append(
            f"- **Is SE just rare-token masking?** {head}. (b) minus (d): "
            + "; ".join(parts)
            + f". On test, {overlap:.0%} of the tokens SE would mask are also among the rarest 15 %"
            + (
                f"; SE's train masks are {100 * shares['se']['rare']:.0f} % rare-third tokens, the rarity "
                f"control's {100 * shares['rarity']['rare']:.0f} %."
                if "se" in shares and "rarity" in shares
                else "."
            )
        )
    if "se" in results and "se_mlm" in results:
        d, se, verdict = compare(tokens, "se_mlm", "se", "all")
        dh, seh, verdicth = compare(tokens, "se_mlm", "se", "hard")
        ref = last_valid(os.path.join(work, "se", "train.log"), "ref_accuracy")
        lines.append(
            f"- **What TLS adds** ((b) minus (c), same masks): all tokens {d:+.3f} ± {se:.3f} "
            f"({verdict}), hardest 15 % {dh:+.3f} ± {seh:.3f} ({verdicth})."
            + (
                f" Its reference distribution comes from the unmasked input, where the model sees the "
                f"token: it ranked the true token first for {ref:.0f} % of (b)'s masked validation "
                "tokens, so at alpha 0.1 the soft target is close to the one-hot one."
                if ref is not None
                else ""
            )
        )
    if "se" in results and "online" in results:
        d, se, verdict = compare(tokens, "se", "online", "all")
        dh, seh, verdicth = compare(tokens, "se", "online", "hard")
        lines.append(
            f"- **Online vs offline SE** ((e) minus (b)): all tokens {d:+.3f} ± {se:.3f} ({verdict}), "
            f"hardest 15 % {dh:+.3f} ± {seh:.3f} ({verdicth})."
        )
    if "threshold" in shares:
        lines.append(
            f"- **The reference code's threshold rule** masked {shares['threshold']['rate']:.0%} of the "
            f"train tokens (top-k masks {shares.get('se', {}).get('rate', float('nan')):.0%})."
        )
    if "mixed" in results and "se" in results:
        d, se, verdict = compare(tokens, "se", "mixed", "frequent")
        da, sea, _ = compare(tokens, "se", "mixed", "all")
        dh, seh, _ = compare(tokens, "se", "mixed", "hard")
        lines.append(
            f"- **Half the budget to random positions** ((g) minus (b)): frequent tokens "
            f"{d:+.3f} ± {se:.3f}, all tokens {da:+.3f} ± {sea:.3f}, hardest 15 % {dh:+.3f} ± {seh:.3f}."
        )
    return "\n".join(lines)


def delta_table(tokens, results):
    """Markdown table: each continuation minus (a) random masking, per token group."""
    runs = [n for n, _ in RUNS if n in results and n != "random"]
    head = (
        "| method | "
        + " | ".join(label for _, label in GROUPS)
        + " |\n"
        + "| --- " * (len(GROUPS) + 1)
        + "|"
    )
    rows = []
    for n in runs:
        cells = []
        for group, _ in GROUPS:
            d, se, verdict = compare(tokens, "random", n, group)
            cell = f"{d:+.3f} ± {se:.3f}"
            cells.append(f"**{cell}**" if verdict != "no clear difference" else cell)
        rows.append(f"| {LABELS[n]} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows)


DOWNSTREAM = [
    ("vanilla", "vanilla (start point)"),
    ("random", "(a) random masking"),
    ("se", "(b) SE: top-k + TLS"),
    ("rarity", "(d) rarity control"),
    ("online", "(e) online SE"),
]
TASK_LABELS = {
    "module": "module: which of 10 packages?",
    "source": "source: from this module?",
    "average": "average over tasks",
}


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


SAME = "the same on every seed"  # no spread of the differences: nothing to test or size


def down_verdict(p):
    if p["se"] == 0 and p["mean"] == 0:
        return SAME
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
        label, count = Counter(labels).most_common(1)[0]
        out[t] = (100.0 * count / len(labels), label)
    return out


def downstream_tables(down, majority=None):
    tasks = down["tasks"] + ["average"]
    names = [n for n, _ in DOWNSTREAM if n in down["results"]]
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
        rows.append(f"| {dict(DOWNSTREAM)[n]} | " + " | ".join(cells) + " |")
    diff_rows = []
    for a, b in [("random", n) for n in names if n != "random"] + [("rarity", "se")]:
        if a not in down["results"] or b not in down["results"]:
            continue
        cells = []
        for t in tasks:
            p = down_compare(down, a, b, t)
            cell = f"{p['mean']:+.2f} ± {p['se']:.2f}"
            if down_verdict(p) == SAME:
                cells.append(cell + " (equal on every seed)")
                continue
            cells.append((f"**{cell}**" if p["detected"] else cell) + f" ({p['detectable']:.2f})")
        diff_rows.append(
            f"| {dict(DOWNSTREAM)[b]} minus {dict(DOWNSTREAM)[a]} | " + " | ".join(cells) + " |"
        )
    return head + "\n" + "\n".join(rows), head.replace(
        "| model |", "| comparison |"
    ) + "\n" + "\n".join(diff_rows)


def downstream_findings(down, majority=None):
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
    for a, b, question in (
        ("random", "se", "Did SE beat random masking downstream?"),
        ("random", "online", "Did online SE beat random masking downstream?"),
        ("rarity", "se", "Did SE beat the rarity control downstream?"),
    ):
        if a not in down["results"] or b not in down["results"]:
            continue
        parts = []
        verdict_of = {}
        for t in tasks:
            p = down_compare(down, a, b, t)
            verdict_of[t] = verdict = down_verdict(p)
            if verdict == SAME:
                parts.append(f"{t}: {verdict} (each seed's dev accuracy equal)")
                continue
            parts.append(
                f"{t} {p['mean']:+.2f} ± {p['se']:.2f} points: {verdict} "
                f"(detectable {p['detectable']:.1f})"
            )
        verdicts = set(verdict_of.values()) - {SAME}
        if verdicts <= {"no difference we could detect"}:
            head = "no difference we could detect on any task"
        elif "better" in verdicts and "worse" not in verdicts:
            head = "yes, on " + ", ".join(t for t in tasks if verdict_of[t] == "better")
        elif "worse" in verdicts and "better" not in verdicts:
            head = "no: worse on " + ", ".join(t for t in tasks if verdict_of[t] == "worse")
        else:
            head = "mixed"
        lines.append(
            f"- **{question}** {head}. {dict(DOWNSTREAM)[b]} minus {dict(DOWNSTREAM)[a]}, "
            f"paired over {n} seeds: " + "; ".join(parts) + "."
        )
    spreads = []
    for t in down["tasks"]:
        sds = [100 * down["results"][m][t]["sd"] for m in down["results"]]
        det = [
            down_compare(down, "random", m, t)["detectable"]
            for m in down["results"]
            if m != "random"
        ]
        spreads.append(
            f"{t}: sd over seeds {min(sds):.2f} to {max(sds):.2f} points, smallest "
            f"detectable paired difference {min(det):.1f} to {max(det):.1f} points"
        )
    lines.append(
        f"- **Seed-to-seed spread and what this run can resolve** ({n} seeds per model and "
        "task; detectable = the paired difference a two-sided 5 % t-test would find with "
        "80 % power): " + "; ".join(spreads) + "."
    )
    return "\n".join(lines)


def pyplot():
    """matplotlib on its file backend, imported only to draw (its first import scans fonts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_downstream(ax, down):
    plt = pyplot()
    tasks = down["tasks"] + ["average"]
    names = [n for n, _ in DOWNSTREAM if n in down["results"] and n != "random"]
    xs = np.arange(len(tasks))
    width = 0.8 / max(1, len(names))
    colors = {
        "vanilla": "#4c72b0",
        "se": plt.cm.tab10(1),
        "rarity": plt.cm.tab10(3),
        "online": plt.cm.tab10(4),
    }
    from scipy import stats

    for i, name in enumerate(names):
        ps = [down_compare(down, "random", name, t) for t in tasks]
        crit = [stats.t.ppf(0.975, p["n"] - 1) * p["se"] if p["n"] > 1 else 0 for p in ps]
        ax.bar(
            xs + (i - (len(names) - 1) / 2) * width,
            [p["mean"] for p in ps],
            width,
            yerr=crit,
            capsize=2,
            label=SHORT.get(name, name),
            color=colors.get(name),
        )
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(xs, tasks, fontsize=9)
    ax.set_ylabel("dev accuracy minus (a) random masking (points)\n> 0: better than random masking")
    ax.set_title(
        "Fine-tuned: each model vs (a) random masking\n(paired over seeds; bars: 95 % t interval)",
        fontsize=10,
    )
    ax.legend(fontsize=8)


def plot(data, tokens, names, png, down=None):
    plt = pyplot()
    results, shares = data["results"], data["mask_shares"]
    runs = [n for n in names if n not in ("vanilla", "random")]
    panels = 4 if down else 3
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(6 * panels, 5.2),
        gridspec_kw={"width_ratios": [1.0, 1.7, 1.0, 1.1][:panels]},
    )
    ax_a, ax_b, ax_c = axes[:3]
    if down:
        plot_downstream(axes[3], down)

    # A: the start point against the unigram baseline
    xs = np.arange(len(GROUPS))
    for i, (name, color) in enumerate((("unigram", "#bbbbbb"), ("vanilla", "#4c72b0"))):
        vals = [loss(results, name, g) for g, _ in GROUPS]
        ax_a.bar(xs + (i - 0.5) * 0.38, vals, 0.38, label=LABELS[name], color=color)
        for x, v in zip(xs, vals):
            ax_a.text(x + (i - 0.5) * 0.38, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    gap = results["unigram"]["random"]["loss"] - results["vanilla"]["random"]["loss"]
    ax_a.set_xticks(
        xs,
        [label.replace(" third", "").replace("vanilla's ", "") for _, label in GROUPS],
        fontsize=8,
        rotation=20,
    )
    ax_a.set_ylabel("test MLM loss (bits/token)")
    ax_a.set_title(
        f"Start point: vanilla {abs(gap):.2f} bits {'below' if gap >= 0 else 'above'} unigram",
        fontsize=10,
    )
    ax_a.legend(fontsize=8, loc="upper left")
    ax_a.set_ylim(0, max(loss(results, "unigram", g) for g, _ in GROUPS) * 1.2)

    # B: every continuation against random masking, by token group, with paired error bars
    width = 0.8 / max(1, len(runs))
    colors = plt.cm.tab10(np.arange(len(runs)) + 1)
    for i, name in enumerate(runs):
        ds = [paired(tokens, "random", name, g) for g, _ in GROUPS]
        ax_b.bar(
            xs + (i - (len(runs) - 1) / 2) * width,
            [d for d, _ in ds],
            width,
            yerr=[NOISE * se for _, se in ds],
            capsize=2,
            label=SHORT[name],
            color=colors[i],
        )
    ax_b.axhline(0, color="black", lw=1)
    ax_b.set_xticks(xs, [label for _, label in GROUPS], fontsize=9)
    ax_b.set_ylabel("test loss minus (a) random masking (bits)\n< 0: better than random masking")
    ax_b.set_title(
        "Continued pretraining, same updates: each method vs random masking "
        f"(bars: ±{NOISE:g} paired s.e.)",
        fontsize=10,
    )
    ax_b.legend(fontsize=8, ncol=2)

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
        [f"{SHORT[n]} ({100 * shares[n]['rate']:.0f} % masked)" for n in order],
        fontsize=8,
    )
    ax_c.invert_yaxis()
    ax_c.set_xlim(0, 100)
    ax_c.set_xlabel("share of the masked train tokens (%)")
    ax_c.set_title("What each method masks, by frequency band", fontsize=10)
    ax_c.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work")
    args = parser.parse_args()
    data = json.load(open(os.path.join(args.work, "results.json")))
    tokens = dict(np.load(os.path.join(args.work, "results.tokens.npz")))
    results, meta, shares = data["results"], data["meta"], data["mask_shares"]
    names = ["vanilla"] + [n for n, _ in RUNS if n in results]
    png = os.path.join(args.work, "report.png")
    down = load_downstream(args.work)
    majority = majority_shares(args.work, down["tasks"]) if down else None
    plot(data, tokens, names, png, down)

    def row(name):
        r = results[name]
        d_all = r["random"]["loss"] - results["vanilla"]["random"]["loss"]
        d_hard = r["hard"]["loss"] - results["vanilla"]["hard"]["loss"]
        delta = "" if name in ("unigram", "vanilla") else f" ({d_all:+.3f})"
        delta_h = "" if name in ("unigram", "vanilla") else f" ({d_hard:+.3f})"
        bands = " | ".join(f"{r['bands'][b]['loss']:.3f}" for b in BANDS)
        return (
            f"| {LABELS[name]} | {r['random']['loss']:.3f}{delta} | {r['random']['accuracy']:.2f} | "
            f"{r['hard']['loss']:.3f}{delta_h} | {r['hard']['accuracy']:.2f} | {bands} |"
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
    downstream_section = ""
    if down:
        table_down, diff_down = downstream_tables(down, majority)
        settings = next(iter(down["settings"].values()))
        downstream_section = f"""
## Downstream: fine-tuned on two labelled tasks

The question SE exists for: is the *fine-tuned* model better? `se-finetune` fine-tunes the
vanilla and the continued models (a), (b), (d), (e) with fairseq's `sentence_prediction` on two
tasks made from CPython's documentation with natural labels (`examples/quickstart/make_tasks.py`;
dev examples come from paragraphs that were never pretrained on): *module*, one text, which of
ten standard-library packages does this docstring sentence come from? and *source*, a pair, does
this docstring sentence come from this module (one of ten others)? Each with seeds
{", ".join(down["results"]["random"][down["tasks"][0]]["seeds"])}
({settings["epochs"]} epoch{"s" if settings["epochs"] != 1 else ""}, batches of {settings["batch_size"]}, lr {settings["lr"]:g}, best dev
checkpoint, as RoBERTa's GLUE recipe). Dev accuracy x 100, mean ± sd over seeds (per seed in brackets):

{table_down}

Paired over seeds against (a) random masking, and SE against the rarity control: mean ±
standard error (**bold**: a paired t-test at 5 % finds a difference); in brackets the smallest
difference this run could detect (80 % power):

{diff_down}
"""
    read = lambda f: (
        open(os.path.join(args.work, f)).read().strip()
        if os.path.exists(os.path.join(args.work, f))
        else ""
    )
    md = f"""# se-fairseq quickstart report

A small RoBERTa (the *vanilla* model) pretrained with fairseq `masked_lm`, then continued from
the same checkpoint with the same updates, seed, learning rate and replacement policy (every
selected token becomes `<mask>`) by each method below. Settings: {read("settings.txt")}.

## Held-out test loss

Bits per masked token (lower is better) and top-1 accuracy on the **test** split
({meta["tokens"]} tokens in {meta["blocks"]} blocks). *All tokens*: every test token is masked once
({meta["random_folds"]} passes per block, each masking a random seventh of it). *Hardest 15 %*: per
block, the 15 % of tokens the vanilla model scores worst (its `se-score` correctness), masked
together. *Frequency bands*: the *all tokens* figures split by the token's train frequency into
thirds of the test tokens. In brackets: change vs the vanilla model. The unigram row is the train
split's token frequencies (add-1 smoothed) on the same tokens, its accuracy that of always
guessing `{meta["unigram_top_token"]}`.

| model | all: bits | all: acc % | hardest 15 %: bits | hardest: acc % | frequent: bits | middle: bits | rare: bits |
| --- | --- | --- | --- | --- | --- | --- | --- |
{table}

![the result at a glance](report.png)

Left: the start point against the unigram baseline. Middle: each continued model minus (a)
random masking on the same test tokens (below zero = better than random masking; error bars
±{NOISE:g} paired standard errors). Right: what each method masks in the train split.{" Far right: downstream, each continued model minus (a) random masking after fine-tuning (dev accuracy)." if down else ""}

## Findings

{findings(data, tokens, names, args.work)}
{downstream_findings(down, majority) if down else ""}

Each continued model minus (a) random masking, bits per token on the same test tokens (± one
paired standard error; **bold**: the difference exceeds {NOISE:g} standard errors and {FLOOR} bits):

{delta_table(tokens, results) if "random" in results else ""}

{downstream_section}
Read this at its scale: a small model pretrained for minutes on ~0.35 M tokens, continued for
the few updates in the settings above. The paper continues a fully trained RoBERTa for 60k updates at a
learning rate of 1e-5; `examples/roberta/README.md` has that recipe.

## What each method masks

Frequency bands (test tokens sorted by train frequency, cut into thirds of the test tokens,
whole token types per band):

| band | token types | test tokens | train count of a type |
| --- | --- | --- | --- |
{band_rows}

Masked train tokens of the first epoch by band, as `fairseq-train`'s task builds them (online
SE chooses with the live model, so it has no fixed masks; at update 0 they are (b)'s):

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

```bash
{read("commands.txt")}
```
"""
    with open(os.path.join(args.work, "report.md"), "w") as f:
        f.write(md)
    print(f"[report] {os.path.join(args.work, 'report.md')} and {png}")


if __name__ == "__main__":
    main()
