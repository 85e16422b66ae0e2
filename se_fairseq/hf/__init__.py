"""Self-Evolution learning with Hugging Face transformers (docs/huggingface.md).

``DataCollatorForSelfEvolution`` drops in where transformers'
``DataCollatorForLanguageModeling`` is used and selects with the project's operator
from the per-token scores each example carries (column ``se_scores``).
``SelfEvolutionTrainer`` is the Trainer with online SE and the TLS loss
(``token_ls_loss``), set by ``SelfEvolutionArguments``.

The names load lazily: importing ``se_fairseq`` (or this package) imports neither
torch nor transformers until one of them is used.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from se_fairseq.hf.arguments import SelfEvolutionArguments
    from se_fairseq.hf.collator import (
        DataCollatorForSelfEvolution,
        ExampleIndexDataset,
        SelfEvolutionEpochCallback,
        UnmaskedPadding,
        with_example_index,
    )
    from se_fairseq.hf.loss import token_ls_loss
    from se_fairseq.hf.trainer import SelfEvolutionTrainer

# each public name -> the module that defines it
_MODULE_OF = {
    "DataCollatorForSelfEvolution": "collator",
    "ExampleIndexDataset": "collator",
    "SelfEvolutionEpochCallback": "collator",
    "UnmaskedPadding": "collator",
    "with_example_index": "collator",
    "SelfEvolutionArguments": "arguments",
    "SelfEvolutionTrainer": "trainer",
    "token_ls_loss": "loss",
}

__all__ = [
    "DataCollatorForSelfEvolution",
    "ExampleIndexDataset",
    "SelfEvolutionArguments",
    "SelfEvolutionEpochCallback",
    "SelfEvolutionTrainer",
    "UnmaskedPadding",
    "token_ls_loss",
    "with_example_index",
]


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(import_module(f"se_fairseq.hf.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
