"""Fence off everything in the scratch copy of tasks/se_mlm_config.py (tasks/se_mlm.py
before the split) but its option checks with mutmut's ``# pragma: no mutate start/end``
lines: the score of that module is about _check_config, resolved_replacement and
build_masker (the excepthook and the checks of the data against the run, like dataset
loading and the online step, are tested end to end by slower tests)."""

import ast
import sys

KEEP = {"_check_config", "resolved_replacement", "build_masker"}


def fence(path):
    source = open(path).read()
    lines = source.splitlines()
    starts, ends = {}, {}
    # functions of the module and methods of its classes; a function nested in a fenced one
    # is inside that fence already (mutmut refuses a fence opened inside another)
    tree = ast.parse(source)
    nodes = list(tree.body)
    nodes += [item for node in tree.body if isinstance(node, ast.ClassDef) for item in node.body]
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in KEEP:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            indent = " " * node.col_offset
            starts[first] = indent
            ends[node.end_lineno] = indent
    out = []
    for number, line in enumerate(lines, start=1):
        if number in starts:
            out.append(f"{starts[number]}# pragma: no mutate start")
        out.append(line)
        if number in ends:
            out.append(f"{ends[number]}# pragma: no mutate end")
    open(path, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    fence(sys.argv[1])
