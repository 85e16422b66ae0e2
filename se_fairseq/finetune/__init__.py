"""The fine-tuning harness: checkpoints x task folders x seeds through fairseq's own
``sentence_prediction``, resumable, with each task's own dev metric and paired
differences against a baseline checkpoint (``se-finetune`` is a thin shell over
:func:`finetune`).

    from se_fairseq.finetune import finetune
    doc = finetune({"random": "random/checkpoint_last.pt", "se": "se/checkpoint_last.pt"},
                   ["glue/RTE", "glue/MRPC"], "finetune-out", seeds=[1, 2, 3], baseline="random",
                   bpe="gpt2", gpt2_encoder_json="encoder.json", gpt2_vocab_bpe="vocab.bpe")

Modules: ``tasks`` (read GLUE/generic folders), ``checkpoint`` (arch, dictionary),
``encode`` (BPE), ``binarize`` (fairseq's GLUE preprocessing), ``plan`` (recipe ->
fairseq-train arguments), ``worker`` (one run), ``runner`` (the pool), ``metrics``,
``results`` (tables and paired statistics), ``dryrun`` (``--dry-run``: runs, updates, GPU
hours, peak disk).
"""

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Optional, Union

from se_fairseq.finetune.errors import FinetuneError
from se_fairseq.finetune.log import Log, print_line
from se_fairseq.finetune.plan import Overrides

if TYPE_CHECKING:
    from se_fairseq.finetune.checkpoint import CheckpointInfo
    from se_fairseq.finetune.hf_model import HFCheckpointInfo
    from se_fairseq.finetune.plan import RunSpec
    from se_fairseq.finetune.records import Manifest
    from se_fairseq.finetune.results import ResultsDocument
    from se_fairseq.finetune.tasks import TaskData

#: a checkpoint as given: a path (fairseq file or Hugging Face directory) or (path, dict.txt)
CheckpointPath = Union[str, tuple[str, Optional[str]]]
#: a task folder as given: a path, or (name, path)
TaskFolder = Union[str, tuple[Optional[str], str]]

__all__ = ["FinetuneError", "Overrides", "finetune", "prepare_data"]


def read_checkpoints(
    checkpoints: Mapping[str, CheckpointPath], out_dir: str, log: Log = print_line
) -> list[Union["CheckpointInfo", "HFCheckpointInfo"]]:
    """CheckpointInfo per fairseq checkpoint file, HFCheckpointInfo per Hugging Face
    directory; a fairseq BERT checkpoint (``hf_bert``) is converted back into a
    save_pretrained directory under OUT_DIR/data/ and fine-tuned as one (BERT's own pair
    format, token types and WordPiece tokenizer)."""
    from se_fairseq.finetune.checkpoint import read_checkpoint
    from se_fairseq.finetune.hf_model import (
        convert_fairseq_bert,
        is_hf_directory,
        read_hf_checkpoint,
    )
    from se_fairseq.finetune.plan import check_name

    infos: list[Union[CheckpointInfo, HFCheckpointInfo]] = []
    for name, value in checkpoints.items():
        path, dict_path = value if isinstance(value, tuple) else (value, None)
        name = check_name(name, "checkpoint")
        if is_hf_directory(path):
            if dict_path is not None:
                raise FinetuneError(
                    f"checkpoint {name}: {path} is a Hugging Face directory; a dictionary "
                    f"({dict_path}) is for fairseq checkpoints only"
                )
            infos.append(read_hf_checkpoint(path, name))
            continue
        info = read_checkpoint(path, name, dict_path)
        infos.append(convert_fairseq_bert(info, out_dir, log) if info.is_bert else info)
    return infos


def prepare_data(
    checkpoints: Mapping[str, CheckpointPath],
    tasks: Sequence[TaskFolder],
    out_dir: str,
    tokenizer_options: Mapping[str, Optional[str]],
    log: Log = print_line,
) -> tuple[
    list[Union["CheckpointInfo", "HFCheckpointInfo"]],
    list["TaskData"],
    dict[tuple[str, str], "Manifest"],
    dict[tuple[str, str], str],
]:
    """Read checkpoints and task folders and binarize each task once per (dictionary,
    tokenizer); for Hugging Face checkpoints write each task's text once. Returns (infos,
    task datas, manifests, data dirs)."""
    from se_fairseq.finetune.binarize import binarize_task
    from se_fairseq.finetune.encode import Tokenizer, tokenizer_spec
    from se_fairseq.finetune.hf_model import text_folder, write_text_task
    from se_fairseq.finetune.plan import check_name
    from se_fairseq.finetune.tasks import read_task

    infos = read_checkpoints(checkpoints, os.path.abspath(out_dir), log=log)
    datas = []
    for folder in tasks:
        name, folder = folder if isinstance(folder, tuple) else (None, folder)
        data = read_task(folder, name)
        check_name(data.name, "task")
        datas.append(data)
    names = [d.name for d in datas]
    if len(set(names)) != len(names):
        raise FinetuneError(f"two task folders have the same name: {names}; name them NAME=PATH")
    manifests: dict[tuple[str, str], Manifest] = {}
    data_dirs: dict[tuple[str, str], str] = {}
    tokenizers: dict[tuple[str, str], Tokenizer] = {}
    for info in infos:
        if info.engine == "hf":
            for data in datas:
                folder = text_folder(out_dir, data)
                manifests[info.name, data.name] = write_text_task(data, folder, log=log)
                data_dirs[info.name, data.name] = folder
            continue
        spec = tokenizer_spec(checkpoint_bpe=info.bpe, **tokenizer_options)
        key = (info.dict_sha256[:12], spec.identity())
        if key not in tokenizers:
            tokenizers[key] = Tokenizer(spec)
        for data in datas:
            folder = os.path.join(out_dir, "data", f"{data.name}-{key[0]}-{key[1]}")
            if folder not in [d for d in data_dirs.values()]:
                manifest = binarize_task(data, tokenizers[key], info.dict_path, folder, log=log)
            else:
                import json

                manifest = json.load(open(os.path.join(folder, "manifest.json")))
            manifests[info.name, data.name] = manifest
            data_dirs[info.name, data.name] = folder
            for note in data.notes:
                log(f"[finetune] {data.name}: {note}")
    return infos, datas, manifests, data_dirs


def _collect_test_predictions(run: "RunSpec", out_dir: str) -> None:
    """Copy a run's GLUE server files to OUT_DIR/test_predictions/CKPT/seedN/."""
    import shutil

    from se_fairseq.core.files import atomic_path
    from se_fairseq.finetune.worker import TEST_PREDICTIONS

    folder = os.path.join(run.run_dir, TEST_PREDICTIONS)
    if not os.path.isdir(folder):
        return
    target = os.path.join(out_dir, TEST_PREDICTIONS, run.checkpoint, f"seed{run.seed}")
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tsv"):
            with atomic_path(os.path.join(target, name)) as tmp:
                shutil.copyfile(os.path.join(folder, name), tmp)


def finetune(
    checkpoints: Mapping[str, CheckpointPath],
    tasks: Sequence[TaskFolder],
    out_dir: str,
    *,
    seeds: Sequence[int] = (1, 2, 3),
    baseline: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    devices: Union[str, Sequence[str], None] = None,
    jobs: Optional[int] = None,
    bpe: Optional[str] = None,
    gpt2_encoder_json: Optional[str] = None,
    gpt2_vocab_bpe: Optional[str] = None,
    sentencepiece_model: Optional[str] = None,
    keep_checkpoints: str = "best",
    predict_test: bool = False,
    log: Log = print_line,
) -> "ResultsDocument":
    """Fine-tune every checkpoint on every task with every seed; returns the results document
    (also written to OUT_DIR/results.json and results.md). Runs that fail are left out of the
    tables and listed in ``doc["failures"]`` (run, log, reason); a rerun retries them.

    checkpoints: {name: path or (path, dict.txt)}; tasks: folders or (name, folder) pairs.
    predict_test: each run that finishes also predicts its GLUE folder's test files, into
    RUN_DIR/test_predictions/<NAME>.tsv, collected as OUT_DIR/test_predictions/CKPT/seedN/
    (one GLUE server submission per checkpoint and seed).
    """
    from se_fairseq.finetune import results as results_mod
    from se_fairseq.finetune.plan import plan_runs
    from se_fairseq.finetune.runner import run_all

    if not checkpoints:
        raise FinetuneError("no checkpoint given")
    if not tasks:
        raise FinetuneError("no task folder given")
    if baseline is not None and baseline not in checkpoints:
        raise FinetuneError(
            f"baseline {baseline!r} is not one of the checkpoints {sorted(checkpoints)}"
        )
    if keep_checkpoints not in ("all", "best", "none"):
        raise FinetuneError(f"keep_checkpoints must be all, best or none, got {keep_checkpoints!r}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise FinetuneError(f"seeds must be distinct and at least one: {seeds}")
    overrides = overrides or Overrides()
    if overrides.eval_checkpoint not in ("best", "last"):
        raise FinetuneError(
            f"eval checkpoint must be best or last, got {overrides.eval_checkpoint!r}"
        )
    out_dir = os.path.abspath(out_dir)
    fairseq_only = {
        "--bpe": bpe,
        "--gpt2-encoder-json": gpt2_encoder_json,
        "--gpt2-vocab-bpe": gpt2_vocab_bpe,
        "--sentencepiece-model": sentencepiece_model,
        "--fairseq-args": overrides.fairseq_args,
    }
    given = [option for option, value in fairseq_only.items() if value]
    infos, datas, manifests, data_dirs = prepare_data(
        checkpoints,
        tasks,
        out_dir,
        dict(
            bpe=bpe,
            gpt2_encoder_json=gpt2_encoder_json,
            gpt2_vocab_bpe=gpt2_vocab_bpe,
            sentencepiece_model=sentencepiece_model,
        ),
        log=log,
    )
    if given and all(info.engine == "hf" for info in infos):
        raise FinetuneError(
            f"{', '.join(given)}: for fairseq checkpoints only, and every checkpoint here is "
            "fine-tuned through transformers (a Hugging Face directory, or a fairseq BERT "
            "checkpoint, which uses its own WordPiece tokenizer); leave them out"
        )
    runs = plan_runs(infos, datas, manifests, data_dirs, seeds, out_dir, overrides)
    for run in runs:
        run.keep_checkpoints = keep_checkpoints  # each worker prunes its run as it ends
        if predict_test:
            run.test_sets = manifests[run.checkpoint, run.task].get("test_sets") or None
    if predict_test and not any(run.test_sets for run in runs):
        raise FinetuneError(
            "--predict-test: no GLUE task folder holds a test file (test.tsv; MNLI "
            "test_matched.tsv, test_mismatched.tsv)"
        )
    records, failures = run_all(runs, devices=devices, jobs=jobs, log=log)
    from se_fairseq.finetune.worker import prune_run

    for run in runs:  # runs finished before (or killed between done.json and pruning)
        if run.key in records:  # unfinished ones keep checkpoint_last.pt to resume from
            prune_run(run.run_dir, keep_checkpoints)
            _collect_test_predictions(run, out_dir)
    doc = results_mod.summarize(
        list(records.values()),
        [i.name for i in infos],
        [column for d in datas for column in d.columns],
        baseline,
        metric_of_task={column: d.metric for d in datas for column in d.columns},
        failures=[
            {
                **f,
                "run_dir": os.path.relpath(f["run_dir"], out_dir),
                "log": os.path.relpath(f["log"], out_dir),
            }
            for f in failures
        ],
    )
    doc["settings"] = {f"{r.checkpoint}/{r.task}": r.settings for r in runs if r.seed == seeds[0]}
    json_path, md_path = results_mod.write(doc, out_dir)
    log(f"[finetune] results: {json_path}, {md_path}")
    for single in doc["single_class"]:
        log(f"[finetune] warning: {results_mod.single_class_warning(single)}")
    if failures:
        log(
            f"[finetune] the table holds the {len(records)} finished runs; "
            f"{len(failures)} failed (listed in {md_path}): "
            + ", ".join(f"{f['key']} ({os.path.relpath(f['log'], out_dir)})" for f in failures)
        )
    return doc
