"""Per-module mutation score from mutmut's result files (mutants/**/*.py.meta).

Killed share = killed / (killed + survived + timeout + suspicious), mutants that no
selected test reaches ("no tests") counted as survived; equivalent mutants listed in
EQUIVALENT (benchmarks/mutation/equivalent.txt: one mutant name and reason per line) are
left out and reported separately. Prints a table and the survivors; writes them as JSON
when given --json PATH, with every mutant's verdict (``status``).

``--merge EARLIER.json``: take the verdicts of an earlier summary for the mutants this run
did not run (mutmut forgets them when a rerun with new tests regenerates its result files):
benchmarks/mutation.sh passes it after MUTATION_RERUN.
"""

import argparse
import glob
import json
import os

from mutmut.stats import status_by_exit_code  # mutmut's own reading of a worker's exit code

KILLED = {"killed", "timeout", "segfault"}  # the tests noticed (a hang or crash counts)
SURVIVED = {"survived", "no tests", "suspicious"}  # not noticed ("no tests": none reach it)


def load_equivalent(path):
    out = {}
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


# tasks/se_mlm_config.py (tasks/se_mlm.py before the split, where build_masker was a method
# of the task): the option checks are what the score is about; anything else mutated in that
# module is reported on its own line
OPTION_CHECK_MODULES = ("tasks/se_mlm_config.py", "tasks/se_mlm.py")
OPTION_CHECKS = (
    "x__check_config__",
    "x_resolved_replacement__",
    "x_build_masker__",
    "ǁbuild_masker__",
)


def module_of(meta_path):
    rel = os.path.relpath(meta_path, "mutants")
    return rel[: -len(".meta")]


def group_of(module, mutant):
    if module.endswith(OPTION_CHECK_MODULES):
        checks = any(tag in mutant for tag in OPTION_CHECKS)
        return module + (" (option checks)" if checks else " (rest of the module)")
    return module


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument(
        "--merge",
        help="an earlier summary.json whose verdicts fill in the mutants not run this time",
    )
    p.add_argument(
        "--equivalent", default=os.path.join(os.path.dirname(__file__), "equivalent.txt")
    )
    args = p.parse_args()
    equivalent = load_equivalent(args.equivalent)
    earlier = json.load(open(args.merge)).get("status", {}) if args.merge else {}
    table, survivors, status = {}, {}, {}
    for meta in sorted(glob.glob("mutants/**/*.py.meta", recursive=True)):
        data = json.load(open(meta))
        for name, code in data.get("exit_code_by_key", {}).items():
            if code is None and name in earlier:
                code = earlier[name]
            status[name] = code
            module = group_of(module_of(meta), name)
            counts = table.setdefault(
                module, dict(killed=0, survived=0, timeout=0, equivalent=0, other=0)
            )
            if name in equivalent:
                counts["equivalent"] += 1
            elif code is None:
                counts["other"] += 1  # not run yet (an interrupted run)
            elif status_by_exit_code[code] in KILLED:
                counts["killed" if status_by_exit_code[code] == "killed" else "timeout"] += 1
            elif status_by_exit_code[code] in SURVIVED:
                counts["survived"] += 1
                survivors.setdefault(module, []).append(f"{name} ({status_by_exit_code[code]})")
            else:
                counts["other"] += 1  # skipped, interrupted
    for counts in table.values():
        scored = counts["killed"] + counts["timeout"] + counts["survived"]
        counts["total"] = scored + counts["equivalent"] + counts["other"]
        counts["killed_share"] = (counts["killed"] + counts["timeout"]) / scored if scored else None
    print(
        f"{'module':<50}{'mutants':>8}{'killed':>8}{'timeout':>8}{'survived':>9}"
        f"{'equiv.':>7}{'score':>8}"
    )
    totals = dict(killed=0, timeout=0, survived=0, equivalent=0, total=0)
    for module, c in sorted(table.items()):
        score = "-" if c["killed_share"] is None else f"{100 * c['killed_share']:.1f}%"
        print(
            f"{module:<50}{c['total']:>8}{c['killed']:>8}{c['timeout']:>8}{c['survived']:>9}"
            f"{c['equivalent']:>7}{score:>8}"
        )
        for k in totals:
            totals[k] += c[k]
    scored = totals["killed"] + totals["timeout"] + totals["survived"]
    print(
        f"{'all':<50}{totals['total']:>8}{totals['killed']:>8}{totals['timeout']:>8}"
        f"{totals['survived']:>9}{totals['equivalent']:>7}"
        f"{(100 * (totals['killed'] + totals['timeout']) / scored if scored else 0):>7.1f}%"
    )
    print("\nsurvivors:")
    for _module, names in survivors.items():
        for name in names:
            print(f"  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "modules": table,
                    "survivors": survivors,
                    "equivalent": equivalent,
                    "status": status,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
