"""Compute of each continued-pretraining run, and the random-masking run at equal compute.

    python equal_compute.py plan WORK --random random METHOD...    # prints the update counts
    python equal_compute.py controls WORK METHOD...                # prints their controls' folders

Compute is counted in token passes (se_fairseq/core/compute.py: a forward 1 per token, its
backward 2, every extra forward without gradient 1). For each run, from its folder
WORK/NAME/train.log (fairseq-train's log):

- *total*: the last ``tok_passes_total``, the run's count as fairseq-train logs it, which
  includes the scoring pass of the score file the run trains on;
- *scoring*: that pass, from the score file the log says it loaded (``with METRIC scores
  from PATH``): se-score's scored tokens x its forwards (1; 2 for excess loss; 0 for rarity,
  a count), read from the file's summary, charged in full to every run that trains on it;
- *training*: the ``tok_passes`` of its epochs (forward, backward and the extra forwards of
  each step). The plan stops if training + scoring is not the total (to the six significant
  digits fairseq prints a number with).

``plan`` gives each method a random-masking control with the method's total compute: the
random run's compute per update (its total over its updates) divides the method's total,
rounded to the nearest update. It writes WORK/compute.json and prints the update counts that
need a checkpoint beyond the random run's own, in order: the quickstart continues the random
run to each (fairseq-train resumed from the previous one's checkpoint_last.pt: optimizer, data
position and meters restored, so the checkpoints lie on one trajectory) into
WORK/random_u<UPDATES>. Their compute is measured from their logs (:func:`measured`).
"""

import argparse
import json
import os
import re

# fairseq prints a logged number with "{:g}": six significant digits, 1.1271e+06 from a million
FLOAT = r"([-+\d.]+(?:[eE][-+]?\d+)?)"
PRINTED = 1e-5  # the relative precision of such a number


def control_name(random_name, random_updates, updates):
    return random_name if updates == random_updates else f"{random_name}_u{updates}"


def read_log(path):
    """What a fairseq-train log says of a run's compute: updates, total, training (the
    epochs' tok_passes) and the score file it loaded (None without one)."""
    updates = total = None
    training = 0.0
    score_file = None
    with open(path) as f:
        for line in f:
            m = re.search(r"with (\w+) scores from (\S+)\.npy", line)
            if m:
                score_file = m.group(2)
            m = re.search(rf"tok_passes_total[ =]{FLOAT}", line)
            if m:
                total = float(m.group(1))
            if "| train |" in line:  # an epoch's summary line
                m = re.search(rf"\| tok_passes {FLOAT}", line)
                training += float(m.group(1)) if m else 0.0
                m = re.search(r"\| num_updates (\d+)", line)
                updates = int(m.group(1)) if m else updates
    if total is None or updates is None:
        raise SystemExit(f"{path}: no tok_passes_total / num_updates (did fairseq-train finish?)")
    return {
        "updates": updates,
        "total": round(total),
        "training": int(training),
        "score_file": score_file,
    }


def scoring_passes(prefix):
    """se-score's compute behind a score file (PREFIX.json): scored tokens x forwards."""
    from se_fairseq.core.compute import scoring_passes as passes

    with open(prefix + ".json") as f:
        meta = json.load(f)
    if meta["metric"] == "rarity":
        return 0  # a count over the corpus, no model
    tokens = int(meta["summary"]["tokens"])
    return tokens * passes(reference_model=meta["metric"] == "excess")


def method_compute(work, name):
    run = read_log(os.path.join(work, name, "train.log"))
    run["scoring"] = scoring_passes(run["score_file"]) if run["score_file"] else 0
    counted = run["training"] + run["scoring"]
    if abs(counted - run["total"]) > PRINTED * run["total"] + 1:
        raise SystemExit(
            f"{name}: training {run['training']} + scoring {run['scoring']} token passes is not "
            f"the run's tok_passes_total {run['total']}"
        )
    return run


def plan(work, random_name, methods):
    random = method_compute(work, random_name)
    per_update = random["total"] / random["updates"]
    out = {
        "unit": "token passes (forward 1, backward 2, each extra forward 1, per token)",
        "random": dict(random, name=random_name, per_update=per_update),
        "methods": {},
    }
    for name in methods:
        run = method_compute(work, name)
        # every method's step costs at least random masking's (3 per token) on the same batches
        updates = max(random["updates"], round(run["total"] / per_update))
        run["random_updates"] = updates
        run["control"] = control_name(random_name, random["updates"], updates)
        out["methods"][name] = run
    with open(os.path.join(work, "compute.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


def legs(doc):
    """Update counts of the random run's continuations, in order."""
    start = doc["random"]["updates"]
    return sorted({m["random_updates"] for m in doc["methods"].values()} - {start})


def measured(work):
    """compute.json with each control's measured compute: runs[name] = updates and total
    token passes of every run (the methods, the random run and its continuations)."""
    with open(os.path.join(work, "compute.json")) as f:
        doc = json.load(f)
    random = doc["random"]
    runs = {random["name"]: {"updates": random["updates"], "total": random["total"]}}
    for name, m in doc["methods"].items():
        runs[name] = {
            "updates": m["updates"],
            "total": m["total"],
            "training": m["training"],
            "scoring": m["scoring"],
        }
    for updates in legs(doc):
        name = control_name(random["name"], random["updates"], updates)
        path = os.path.join(work, name, "train.log")
        if os.path.exists(path):
            leg = read_log(path)
            if leg["updates"] != updates:
                raise SystemExit(f"{path}: {leg['updates']} updates, planned {updates}")
            runs[name] = {"updates": updates, "total": leg["total"]}
    doc["runs"] = runs
    return doc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="write WORK/compute.json, print the controls' update counts")
    p.add_argument("work")
    p.add_argument("--random", default="random", help="the random-masking run's folder name")
    p.add_argument("methods", nargs="+")
    c = sub.add_parser("controls", help="print the control folders of these methods")
    c.add_argument("work")
    c.add_argument("methods", nargs="+")
    args = parser.parse_args()
    if args.command == "plan":
        doc = plan(args.work, args.random, args.methods)
        print(" ".join(str(u) for u in legs(doc)))
        return
    with open(os.path.join(args.work, "compute.json")) as f:
        doc = json.load(f)
    names = []
    for name in args.methods:
        control = doc["methods"][name]["control"]
        if control != doc["random"]["name"] and control not in names:
            names.append(control)
    print(" ".join(names))


if __name__ == "__main__":
    main()
