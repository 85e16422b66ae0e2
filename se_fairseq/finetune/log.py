"""Where the harness's ``[finetune]`` lines go: any callable taking one line."""

from collections.abc import Callable
from typing import Any

#: where the harness's lines go (``print`` by default)
Log = Callable[[str], Any]
