"""Where the harness's ``[finetune]`` lines go: any callable taking one line; by default
:func:`print_line`."""

from collections.abc import Callable
from typing import Any

#: where the harness's lines go
Log = Callable[[str], Any]


def print_line(line: str) -> None:
    """Print ``line`` and flush: redirected to a file or a pipe, stdout is block-buffered,
    and a run's start and done lines would otherwise arrive only when the process ends."""
    print(line, flush=True)
