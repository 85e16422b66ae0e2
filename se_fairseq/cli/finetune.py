"""``se-finetune``: fine-tune checkpoints on GLUE-layout task folders, N seeds each, through
fairseq's ``sentence_prediction`` (Hugging Face directories and fairseq BERT checkpoints:
transformers' Trainer); dev metrics, mean ± sd and paired differences.

    se-finetune --checkpoint random=random/checkpoint_last.pt \\
        --checkpoint se=se/checkpoint_last.pt --task glue/RTE --task glue/MRPC \\
        --seeds 1,2,3 --baseline random --out finetune-out \\
        --bpe gpt2 --gpt2-encoder-json encoder.json --gpt2-vocab-bpe vocab.bpe

Rerunning the same command continues: finished runs are kept, a killed run resumes from
its checkpoint_last.pt (Trainer runs: its last checkpoint-N/).
"""

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    from se_fairseq.finetune import CheckpointPath


def _pair(text: str, what: str) -> tuple[Optional[str], str]:
    if "=" in text:
        name, value = text.split("=", 1)
        return name, value
    return None, text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="se-finetune",
        description="Fine-tune fairseq checkpoints (fairseq's sentence_prediction) and Hugging "
        "Face directories (transformers' Trainer) on GLUE-layout task folders (N seeds each) "
        "with RoBERTa's GLUE recipe (BERT checkpoints: BERT's); report each task's dev "
        "metric, mean ± sd over seeds and paired differences against a baseline.",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="[NAME=]CKPT[:DICT]",
        help="a fairseq checkpoint, or a Hugging Face save_pretrained directory (config.json, "
        "weights, tokenizer files: fine-tuned with transformers' Trainer), repeat for several; "
        "NAME defaults to the checkpoint's folder's name (a directory's own name), DICT to the "
        "dict.txt beside it or in its training data folder (fairseq only). A fairseq BERT "
        "checkpoint (se-convert's hf_bert) is converted back and fine-tuned through transformers",
    )
    p.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="[NAME=]FOLDER",
        help="a task folder in GLUE's raw TSV layout (named CoLA, SST-2, MRPC, QQP, STS-B, "
        "MNLI, QNLI or RTE) or the generic layout (train.tsv/dev.tsv with a header: "
        "sentence or sentence1+sentence2, label; optional task.json)",
    )
    p.add_argument(
        "--out", required=True, help="output folder (data, runs, results.json, results.md)"
    )
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--baseline", default=None, help="checkpoint NAME the others are compared with")
    t = p.add_argument_group(
        "tokenization of fairseq checkpoints (default: the checkpoint's own cfg.bpe; nothing is "
        "downloaded; Hugging Face checkpoints use their own tokenizer)"
    )
    t.add_argument(
        "--bpe",
        choices=("gpt2", "sentencepiece", "none"),
        default=None,
        help="how the task text is encoded before binarizing (default: the checkpoint's cfg.bpe; "
        "none = the text is already in the dictionary's pieces)",
    )
    t.add_argument("--gpt2-encoder-json", default=None, help="GPT-2 BPE encoder.json (local path)")
    t.add_argument("--gpt2-vocab-bpe", default=None, help="GPT-2 BPE vocab.bpe (local path)")
    t.add_argument("--sentencepiece-model", default=None, help="SentencePiece .model (local path)")
    r = p.add_argument_group("recipe overrides (default: RoBERTa's GLUE recipe for the task)")
    r.add_argument("--lr", type=float, default=None, help="peak learning rate")
    r.add_argument("--batch-size", type=int, default=None, help="sentences per batch")
    r.add_argument("--epochs", type=int, default=None, help="--max-epoch (default 10)")
    r.add_argument(
        "--total-updates",
        type=int,
        default=None,
        help="--total-num-update of the polynomial schedule (default: the updates fairseq "
        "makes in --epochs, its batches by --max-tokens and --batch-size over --update-freq)",
    )
    r.add_argument(
        "--warmup-fraction",
        type=float,
        default=None,
        help="warmup updates as a share of the total (default: the recipe's, 0.06; QQP 0.25)",
    )
    r.add_argument("--max-update", type=int, default=None, help="stop after this many updates")
    r.add_argument(
        "--max-tokens",
        type=int,
        default=4400,
        help="tokens per batch (default 4400; fairseq checkpoints only)",
    )
    r.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="fairseq's --dropout (default 0.1; fairseq checkpoints only: a Hugging Face "
        "model keeps its config's dropout)",
    )
    r.add_argument(
        "--attention-dropout",
        type=float,
        default=0.1,
        help="fairseq's --attention-dropout (default 0.1; fairseq checkpoints only)",
    )
    r.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="Adam's weight decay (default: the recipe's, 0.1; BERT checkpoints 0.01)",
    )
    r.add_argument(
        "--best-checkpoint-metric",
        default=None,
        help="fairseq's --best-checkpoint-metric (default accuracy; loss for regression)",
    )
    r.add_argument(
        "--eval-checkpoint",
        choices=("best", "last"),
        default="best",
        help="the checkpoint whose dev predictions are scored (default best, as the recipe)",
    )
    r.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="auto: fp16 with the recipe's loss-scale settings on a GPU, fp32 on the CPU",
    )
    r.add_argument(
        "--fairseq-args",
        default="",
        help="more fairseq-train options, appended last (they win), e.g. '--num-workers 0' "
        "(fairseq checkpoints only)",
    )
    d = p.add_argument_group("where runs go")
    d.add_argument(
        "--devices",
        default=None,
        help="GPU ids to spread runs over, e.g. 0,1 (default: CUDA_VISIBLE_DEVICES, else every "
        "GPU; 'cpu' for none)",
    )
    d.add_argument(
        "--jobs", type=int, default=None, help="runs at once (default: one per GPU, else 1)"
    )
    d.add_argument(
        "--keep-checkpoints",
        choices=("all", "best", "none"),
        default="best",
        help="checkpoints each run keeps once it is done, pruned as it ends: all, best "
        "(default: fairseq's checkpoint_best.pt rewritten without its optimizer state; "
        "transformers' best/ save_pretrained folder) or none",
    )
    d.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs it would make (checkpoints x tasks x seeds), their updates, the "
        "estimated GPU hours and the disk it will peak at; read the task folders, train nothing",
    )
    d.add_argument(
        "--predict-test",
        action="store_true",
        help="each run that finishes also predicts its GLUE folder's test files (test.tsv; "
        "MNLI test_matched/test_mismatched.tsv) with the scored checkpoint, as GLUE server "
        "files <TASK>.tsv (index, prediction; the server's label names) in "
        "OUT/test_predictions/CKPT/seedN/",
    )
    return p


def parse_checkpoint(text: str) -> tuple[str, tuple[str, Optional[str]]]:
    name, value = _pair(text, "checkpoint")
    dict_path = None
    if ":" in value:
        head, tail = value.rsplit(":", 1)
        if tail.endswith(".txt"):
            value, dict_path = head, tail
    import os

    if os.path.isdir(value):  # a Hugging Face directory: its own name
        name = name or os.path.basename(os.path.normpath(os.path.abspath(value)))
    name = name or os.path.basename(os.path.dirname(os.path.abspath(value)))
    return name, (value, dict_path)


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    from se_fairseq.finetune import FinetuneError, Overrides, finetune

    args = build_parser().parse_args(argv)
    checkpoints: dict[str, CheckpointPath] = {}
    for text in args.checkpoint:
        name, value = parse_checkpoint(text)
        if name in checkpoints:
            sys.exit(f"se-finetune: error: two checkpoints named {name!r}; name them NAME=CKPT")
        checkpoints[name] = value
    tasks: list[Union[str, tuple[Optional[str], str]]] = [
        (n, f) if n else f for n, f in (_pair(t, "task") for t in args.task)
    ]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        sys.exit(
            f"se-finetune: error: --seeds must be comma-separated integers, got {args.seeds!r}"
        )
    overrides = Overrides(
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        total_updates=args.total_updates,
        warmup_fraction=args.warmup_fraction,
        max_update=args.max_update,
        max_tokens=args.max_tokens,
        dropout=args.dropout,
        attention_dropout=args.attention_dropout,
        weight_decay=args.weight_decay,
        best_metric=args.best_checkpoint_metric,
        eval_checkpoint=args.eval_checkpoint,
        precision=args.precision,
        fairseq_args=shlex.split(args.fairseq_args),
    )
    devices = [] if args.devices == "cpu" else args.devices
    if args.dry_run:
        from se_fairseq.finetune.dryrun import dry_run

        try:
            dry_run(checkpoints, tasks, seeds, overrides, args.keep_checkpoints, args.jobs)
        except FinetuneError as err:
            sys.exit(f"se-finetune: error: {err}")
        return
    try:
        doc = finetune(
            checkpoints,
            tasks,
            args.out,
            seeds=seeds,
            baseline=args.baseline,
            overrides=overrides,
            devices=devices,
            jobs=args.jobs,
            bpe=args.bpe,
            gpt2_encoder_json=args.gpt2_encoder_json,
            gpt2_vocab_bpe=args.gpt2_vocab_bpe,
            sentencepiece_model=args.sentencepiece_model,
            keep_checkpoints=args.keep_checkpoints,
            predict_test=args.predict_test,
        )
    except FinetuneError as err:
        sys.exit(f"se-finetune: error: {err}")
    from se_fairseq.finetune.results import markdown

    print(markdown(doc))
    if doc.get("failures"):
        sys.exit(
            f"se-finetune: {len(doc['failures'])} runs failed (listed above and in results.md); "
            "rerun the same command to retry them"
        )


if __name__ == "__main__":
    cli_main()
