"""What a planned run feeds its model for one example: the pieces and token types, read
back through the run's own engine (to show and to test the pair format).

- a Hugging Face run (``engine`` hf): the run's tokenizer on the run's text, as
  :func:`se_fairseq.finetune.hf_worker.encode` gives it to the Trainer;
- a fairseq run: the example of the split as fairseq's ``sentence_prediction`` task
  builds it from the run's fairseq-train arguments (``--init-token``,
  ``--separator-token``), symbols from its dictionary; token type 0 everywhere (the task
  passes no segments).
"""

import json
import os
from collections.abc import Mapping
from typing import Any, TypedDict, Union

from se_fairseq.finetune.log import Log
from se_fairseq.finetune.plan import RunSpec


class ExampleInput(TypedDict):
    pieces: list[str]
    token_types: list[int]


def example_input(
    run: Union[RunSpec, Mapping[str, Any]], index: int = 0, split: str = "train"
) -> ExampleInput:
    """{"pieces": [...], "token_types": [...]} of example ``index`` of ``split``; ``run``
    is a RunSpec or its spec.json dict."""
    if not isinstance(run, RunSpec):
        run = RunSpec.from_json(run)
    if run.engine == "hf":
        return _hf_example(run, index, split)
    return _fairseq_example(run, index, split)


def _hf_example(run: RunSpec, index: int, split: str) -> ExampleInput:
    from transformers import AutoTokenizer

    from se_fairseq.finetune.hf_worker import encode, load_examples

    tokenizer: Any = AutoTokenizer.from_pretrained(run.checkpoint_path, local_files_only=True)
    texts = [[column[index]] for column in load_examples(run)[split]["texts"]]
    encoded = encode(tokenizer, texts, run.settings["max_length"])
    ids = encoded["input_ids"][0]
    types = encoded["token_type_ids"][0] if "token_type_ids" in encoded else [0] * len(ids)
    return {"pieces": tokenizer.convert_ids_to_tokens(ids), "token_types": list(types)}


def _fairseq_example(run: RunSpec, index: int, split: str) -> ExampleInput:
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = [a for a in run.fairseq_args] + ["--cpu"]
    parsed = options.parse_args_and_arch(options.get_training_parser(), args)
    task = tasks.setup_task(convert_namespace_to_omegaconf(parsed).task)
    task.load_dataset(split)
    item = task.dataset(split)[index]
    tokens = item["net_input.src_tokens"].tolist()
    return {
        "pieces": [task.source_dictionary[i] for i in tokens],
        "token_types": [0] * len(tokens),
    }


def print_example(
    run: Union[RunSpec, Mapping[str, Any]], index: int = 0, split: str = "train", out: Log = print
) -> ExampleInput:
    """One line of pieces and one of token types, aligned."""
    shown = example_input(run, index, split)
    widths = [max(len(p), len(str(t))) for p, t in zip(shown["pieces"], shown["token_types"])]
    out(" ".join(p.ljust(w) for p, w in zip(shown["pieces"], widths)))
    out(" ".join(str(t).ljust(w) for t, w in zip(shown["token_types"], widths)))
    return shown


def read_spec(run_dir: str) -> dict[str, Any]:
    """RUN_DIR/spec.json as written (for the run itself: ``worker.read_spec``)."""
    with open(os.path.join(run_dir, "spec.json")) as f:
        return json.load(f)
