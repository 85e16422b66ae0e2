"""One core, two adapters: what each part of the package may import.

- The core (``se_fairseq.core``, the operator ``se_fairseq.ops``) imports neither fairseq
  nor transformers, nor any adapter.
- The transformers adapter (``se_fairseq.hf``; and the flows of ``se-score --hf``,
  ``run_se_mlm.py``, ``se-finetune`` on save_pretrained folders) never imports fairseq nor a
  fairseq-side module of the package.
- The fairseq adapter never imports transformers nor ``se_fairseq.hf``.

Two kinds of check: every import statement of every module, read from its source (lazy
imports inside functions included); and each side's flow run in a fresh interpreter whose
import system refuses the forbidden packages and modules (an import blocker), so that an
import made at run time, through any chain of modules, fails the test.
"""

import ast
import pathlib
import sys

import pytest
from support.blocked_imports import assert_flow_ran, run_blocked

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "se_fairseq"

FAIRSEQ = ("fairseq", "fairseq_cli", "omegaconf", "hydra")
TRANSFORMERS = ("transformers", "datasets", "accelerate", "safetensors", "tokenizers")
CORE = ("se_fairseq.core", "se_fairseq.ops", "se_fairseq._C", "se_fairseq.extras")
# the fairseq adapter: fairseq's folder names and the modules that work on fairseq models,
# data and registries
FAIRSEQ_SIDE = (
    "se_fairseq.tasks",
    "se_fairseq.criterions",
    "se_fairseq.data",
    "se_fairseq.models",
    "se_fairseq.scoring",
    "se_fairseq.scoring_job",
    "se_fairseq.rarity",
    "se_fairseq.checkpoint_safety",
    "se_fairseq.plugin",
    "se_fairseq.fairseq_compat",
    "se_fairseq.user_dir",
    "se_fairseq.pipeline_bench",
)
HF_SIDE = ("se_fairseq.hf",)


def _within(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path):
    """Every module an ``import`` statement of the file names (relative ones resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            # ``from se_fairseq import hf`` imports the subpackage
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules_in(*prefixes):
    paths = sorted(PACKAGE.rglob("*.py"))
    return [p for p in paths if _within(_module_name(p), prefixes)]


# (part of the package, its modules, what they must not import)
RULES = {
    "core": (CORE, (*FAIRSEQ, *TRANSFORMERS, *FAIRSEQ_SIDE, *HF_SIDE)),
    "transformers adapter": (HF_SIDE, (*FAIRSEQ, *FAIRSEQ_SIDE)),
    "fairseq adapter": (FAIRSEQ_SIDE, (*TRANSFORMERS, *HF_SIDE)),
}


def forbidden_imports(part):
    owned, forbidden = RULES[part]
    bad = []
    for path in modules_in(*owned):
        for name in sorted(imports_of(path)):
            if _within(name, forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize("part", sorted(RULES))
def test_no_module_of_a_part_imports_what_it_must_not(part):
    assert modules_in(*RULES[part][0]), f"no module of the {part} found"
    assert forbidden_imports(part) == []


def test_the_static_check_sees_a_lazy_import(tmp_path, monkeypatch):
    """The reader finds an import inside a function and a relative one."""
    core = tmp_path / "se_fairseq" / "core"
    core.mkdir(parents=True)
    (core / "sneaky.py").write_text(
        "def f():\n    import transformers\n    from ..tasks import se_mlm\n", encoding="utf-8"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "se_fairseq")
    assert forbidden_imports("core") == [
        "se_fairseq/core/sneaky.py imports se_fairseq.tasks",
        "se_fairseq/core/sneaky.py imports se_fairseq.tasks.se_mlm",
        "se_fairseq/core/sneaky.py imports transformers",
    ]


# -- the flows, each in an interpreter that refuses the forbidden imports -----------------

CORE_FLOW = """
import torch
from se_fairseq.core import options
from se_fairseq.core.masking import SelfEvolutionMasker, row_seeds
from se_fairseq.core.online import reference_forward, select_online
from se_fairseq.core.tls import token_label_smoothed_loss

masker = SelfEvolutionMasker.for_vocabulary(
    12, 11, [0, 1, 2], pad=-100, mask_prob=0.3, mode="topk", seed=1
)
tokens = torch.tensor([[0, 5, 6, 7, 8, 9, 2], [0, 4, 3, 10, 2, 1, 1]])
seeds = torch.from_numpy(row_seeds(1, 1, [0, 1]))
embed = torch.nn.Embedding(12, 6)
proj = torch.nn.Linear(6, 12)
with reference_forward(embed) as inner:
    step = select_online(
        inner(tokens), tokens, tokens.ne(1), seeds, masker, "correctness",
        lambda rows: (proj(rows), None), 12, want_ref=True,
    )
selected = step.target.ne(-100)
assert selected.sum() > 0 and step.ref_probs.shape == (int(selected.sum()), 12)
lprobs = torch.log_softmax(proj(embed(step.source))[selected], -1)
loss, nll = token_label_smoothed_loss(lprobs, step.target[selected], 0.1, step.ref_probs)
assert torch.isfinite(loss)
try:
    spelling = options.Spelling({"mask_prob": "p", "select": "s"})
    options.check_masking(spelling, mask_prob=2.0, select="topk")
except options.OptionError as err:
    assert "p must lie in (0, 1)" in str(err)
else:
    raise AssertionError("no refusal")
"""


@pytest.mark.subprocess
def test_the_core_runs_without_fairseq_transformers_or_the_adapters(tmp_path):
    result = run_blocked(CORE_FLOW, (*FAIRSEQ, *TRANSFORMERS, *FAIRSEQ_SIDE, *HF_SIDE), tmp_path)
    assert_flow_ran(result)


HF_FLOW = """
import os
import runpy

import torch
from support.hf_tokenizers import hf_examples, tiny_bert_tokenizer
from transformers import BertConfig, BertForMaskedLM, TrainingArguments

from se_fairseq.hf import (
    DataCollatorForSelfEvolution,
    SelfEvolutionArguments,
    SelfEvolutionTrainer,
    load_scored_dataset,
    score_dataset,
    with_example_index,
)

tokenizer = tiny_bert_tokenizer()
config = BertConfig(
    vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
)
torch.manual_seed(0)
model = BertForMaskedLM(config)
model.save_pretrained("model")
tokenizer.save_pretrained("model")

# self-questioning, then offline SE through the collator
import datasets
examples = hf_examples(tokenizer, 16)
plain = datasets.Dataset.from_list([{"input_ids": e["input_ids"]} for e in examples])
scored = score_dataset(model, tokenizer, plain, output_dir="scored")
scored = load_scored_dataset("scored", tokenizer=tokenizer, model=model)
collator = DataCollatorForSelfEvolution(tokenizer, mlm_probability=0.3, seed=3)
batch = collator([dict(x, se_index=i) for i, x in enumerate(scored.select(range(4)))])
assert (batch["labels"] != -100).any()

# online SE + TLS in the Trainer
se_args = SelfEvolutionArguments(se_online=True)
collator = DataCollatorForSelfEvolution(tokenizer, mlm_probability=0.3, **se_args.collator_kwargs())
trainer = SelfEvolutionTrainer(
    model=model,
    args=TrainingArguments("out", max_steps=2, per_device_train_batch_size=4, report_to=[],
                           use_cpu=True, save_strategy="no"),
    train_dataset=with_example_index(plain),
    data_collator=collator,
    se_args=se_args,
)
trainer.train()

# the commands: se-score --hf, and run_se_mlm.py on its output
with open("train.txt", "w") as f:
    f.write("the city of the world\\nthe school was new\\n" * 8)
from se_fairseq.cli.score import main as se_score
assert se_score(["--hf", "model", "--train_file", "train.txt", "--line_by_line",
                 "--out", "scored-cli", "--no-progress-bar"]) == 0
import sys
sys.argv = ["run_se_mlm.py", "--model_name_or_path", "model", "--scored_dataset",
            "scored-cli", "--do_train", "--max_steps", "2", "--per_device_train_batch_size",
            "4", "--output_dir", "se-out", "--use_cpu", "--report_to", "none",
            "--save_strategy", "no"]
runpy.run_path(SCRIPT, run_name="__main__")
assert os.path.isfile("se-out/config.json")
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_transformers_path_runs_without_fairseq_or_its_adapter(tmp_path):
    script = str(ROOT / "examples" / "huggingface" / "run_se_mlm.py")
    flow = f"SCRIPT = {script!r}\n" + HF_FLOW
    result = run_blocked(flow, (*FAIRSEQ, *FAIRSEQ_SIDE), tmp_path)
    assert_flow_ran(result)


FAIRSEQ_FLOW = """
import torch
from support.fairseq_data import TINY_ROBERTA, NO_DROPOUT, save_untrained_checkpoint, setup_task

import fairseq  # registers the plugin, as fairseq-train does

task, cfg = setup_task(
    data, *TINY_ROBERTA, *NO_DROPOUT, "--cpu", "--seed", "5", "--task", "se_mlm",
    "--se-online", "--criterion", "token_ls", "--optimizer", "adam", "--lr", "1e-3",
)
model = task.build_model(cfg.model)
criterion = task.build_criterion(cfg.criterion)
task.load_dataset("train")
from fairseq import optim
optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
itr = task.get_batch_iterator(task.dataset("train"), max_sentences=8, seed=5, num_workers=0)
sample = next(iter(itr.next_epoch_itr(shuffle=False)))
loss, sample_size, _ = task.train_step(sample, model, criterion, optimizer, 0)
assert torch.isfinite(loss) and sample_size > 0

from se_fairseq.scoring_job import score_corpus
ckpt = save_untrained_checkpoint(data, "ckpt.pt", TINY_ROBERTA)
result = score_corpus(data, ckpt, out="scores")
assert result.complete
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_fairseq_path_runs_without_transformers_or_its_adapter(corpus, tmp_path):
    flow = f"data = {corpus!r}\n" + FAIRSEQ_FLOW
    result = run_blocked(flow, (*TRANSFORMERS, *HF_SIDE), tmp_path)
    assert_flow_ran(result)
