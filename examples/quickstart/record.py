"""One command line as shell text that reruns it: the quickstart's record of what it ran.

    python record.py WORK ROOT -- PROGRAM ARG...

Prints the command with each argument quoted for the shell (as ``shlex.join`` does), the
run folder written as ``$WORK`` and paths under the repository root made relative to it,
so that the line reruns from the repository root with ``WORK`` set to the run folder.
An argument holding the run folder goes in double quotes, where ``$WORK`` still expands.
"""

import re
import shlex
import sys

NAME_CHAR = re.compile(r"[A-Za-z0-9_]")


def _in_double_quotes(text):
    """text escaped for the inside of a double-quoted shell word."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


def quote(arg, work, root):
    """One argument as shell text: the run folder as $WORK, the repository root dropped."""
    pieces = re.split(re.escape(work) + r"(?![\w.-])", arg) if work else [arg]
    if root:
        pieces = [p.replace(root.rstrip("/") + "/", "") for p in pieces]
    if len(pieces) == 1:
        return shlex.quote(pieces[0])
    out = _in_double_quotes(pieces[0])
    for piece in pieces[1:]:
        ref = "${WORK}" if NAME_CHAR.match(piece[:1]) else "$WORK"
        out += ref + _in_double_quotes(piece)
    return f'"{out}"'


def command_line(argv, work, root):
    return " ".join(quote(a, work, root) for a in argv)


def main():
    args = sys.argv[1:]
    if len(args) < 3 or args[2] != "--":
        sys.exit(__doc__.splitlines()[2].strip())
    work, root, argv = args[0], args[1], args[3:]
    print(command_line(argv, work, root))


if __name__ == "__main__":
    main()
