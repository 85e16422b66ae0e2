"""Self-Evolution learning with Hugging Face transformers (docs/huggingface.md).

``DataCollatorForSelfEvolution`` drops in where transformers'
``DataCollatorForLanguageModeling`` is used and selects with the project's operator
from the per-token scores each example carries (column ``se_scores``).
``tokenize_text_files`` makes the examples run_mlm.py makes of text files,
``score_dataset`` gives them the scores of a masked-LM (self-questioning) and
``load_scored_dataset`` reads a saved scored dataset back, checked.
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
    from se_fairseq.hf.provenance import ScoredDatasetError, load_scored_dataset
    from se_fairseq.hf.scoring import score_dataset
    from se_fairseq.hf.text import tokenize_text_files
    from se_fairseq.hf.trainer import SelfEvolutionTrainer

# each public name -> the module that defines it
_MODULE_OF = {
    "DataCollatorForSelfEvolution": "collator",
    "ExampleIndexDataset": "collator",
    "SelfEvolutionEpochCallback": "collator",
    "tokenize_text_files": "text",
    "score_dataset": "scoring",
    "load_scored_dataset": "provenance",
    "ScoredDatasetError": "provenance",
    "UnmaskedPadding": "collator",
    "with_example_index": "collator",
    "SelfEvolutionArguments": "arguments",
    "SelfEvolutionTrainer": "trainer",
    "token_ls_loss": "loss",
}

__all__ = [
    "DataCollatorForSelfEvolution",
    "ExampleIndexDataset",
    "ScoredDatasetError",
    "load_scored_dataset",
    "score_dataset",
    "tokenize_text_files",
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
