"""Self-Evolution learning with Hugging Face transformers (docs/huggingface.md).

``DataCollatorForSelfEvolution`` drops in where transformers'
``DataCollatorForLanguageModeling`` is used and selects with the project's operator
from the per-token scores each example carries (column ``se_scores``).

The names load lazily: importing ``se_fairseq`` (or this package) imports neither
torch nor transformers until one of them is used.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from se_fairseq.hf.collator import (
        DataCollatorForSelfEvolution,
        ExampleIndexDataset,
        SelfEvolutionEpochCallback,
        with_example_index,
    )

__all__ = [
    "DataCollatorForSelfEvolution",
    "ExampleIndexDataset",
    "SelfEvolutionEpochCallback",
    "with_example_index",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from se_fairseq.hf import collator

        return getattr(collator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
