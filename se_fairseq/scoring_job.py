"""Score a whole split: the self-questioning stage as a resumable, shardable job.

    >>> from se_fairseq.scoring_job import score_corpus
    >>> result = score_corpus("data-bin", "checkpoints/model.pt", metric="correctness")
    >>> result.array_path, result.summary["mean"]

The model reads every block of the split unmasked (eval mode, no gradient) and
scores every token. The job itself (chunks of consecutive blocks saved under
``<prefix>.partial/`` beside a manifest of the options, resume, shards, the score
file appearing only when complete) is the core's (``se_fairseq.core.job``); this
module supplies the blocks of a binarized split and the forward of a fairseq
checkpoint. With ``world_size`` > 1 each rank scores every world_size-th chunk
and rank 0 assembles. Blocks longer than the model's positions are skipped, as
fairseq-train skips them.
"""

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from se_fairseq.core.files import file_sha256
from se_fairseq.core.job import (
    DEFAULT_CHUNK_TOKENS,
    ChunkedJob,
    ScoringError,
    format_summary,
    length_sorted_batches,
    plan_chunks,
    summarize,
    writing,
)
from se_fairseq.data import score_file

logger = logging.getLogger(__name__)

BREAK_MODES = ("none", "complete", "complete_doc", "eos")
DEFAULT_MAX_TOKENS = 16384

__all__ = [
    "BREAK_MODES",
    "DEFAULT_CHUNK_TOKENS",
    "DEFAULT_MAX_TOKENS",
    "ScoringError",
    "ScoringJob",
    "ScoringResult",
    "auto_max_tokens",
    "file_sha256",
    "format_summary",
    "load_scoring_model",
    "plan_chunks",
    "score_corpus",
    "summarize",
]


@dataclass
class ScoringResult:
    complete: bool  # False: chunks are left, run the job again
    chunks_total: int
    chunks_left: int
    partial_dir: str
    array_path: Optional[str] = None
    meta_path: Optional[str] = None
    summary: Optional[dict] = None


def runs_of(mask):
    """[start, end) of every run of True in a boolean array."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def load_scoring_model(
    path, data, *, what="checkpoint", hint="score data binarized with the checkpoint's own dict.txt"
):
    """The checkpoint's model and task, loaded as fairseq_cli/validate.py loads them, after
    checking that its dictionary is the one ``data`` was binarized with. ``what`` names the
    checkpoint in a refusal (a reference checkpoint...), ``hint`` ends the refusal of another
    dictionary."""
    from fairseq import checkpoint_utils
    from fairseq.data import Dictionary

    if not os.path.exists(path):
        raise ScoringError(f"{what} {path} not found")
    state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides={"data": data})
    dict_path = os.path.join(data, "dict.txt")
    data_vocab = len(Dictionary.load(dict_path)) + 1  # + <mask>, as masked_lm adds it
    embed = [
        v for k, v in state["model"].items() if k.endswith("sentence_encoder.embed_tokens.weight")
    ]
    if not embed:
        raise ScoringError(
            f"{what} {path} holds no RoBERTa- or BERT-style (hf_bert) encoder embeddings"
        )
    if embed[0].shape[0] != data_vocab:
        raise ScoringError(
            f"the dictionary of {what} {path} has {embed[0].shape[0]} entries "
            f"but {dict_path} gives {data_vocab} (incl. <mask>); {hint}"
        )
    # state passed in: the checkpoint is read once; its data path is already overridden
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], state=state)
    return models[0], cfg, task


def auto_max_tokens(model, device, block_tokens, share=0.6):
    """Tokens per batch for ``max_tokens="auto"``: on a CUDA device, ``share`` of its free
    memory (after the model is on it) divided by what one token of a batch holds at the
    peak of an inference forward (one layer's activations at once: 6 x dim + 2 x ffn
    values, and one row of every head's attention over a ``block_tokens`` block, in the
    model's dtype), less the LM head's fixed-size fp32 chunks (logits, softmax and its
    pieces: 3 x LOGITS_BUDGET), rounded down to whole blocks; between one block and
    2^20 tokens. On the CPU, DEFAULT_MAX_TOKENS (memory is rarely the limit there, and
    larger batches do not run faster)."""
    import torch

    from se_fairseq.core.scores import LOGITS_BUDGET

    if torch.device(device).type != "cuda":
        return DEFAULT_MAX_TOKENS
    encoder = model.encoder.sentence_encoder
    try:
        layer = encoder.layers[0]
        dim = encoder.embed_tokens.embedding_dim
        ffn = layer.fc1.out_features
        heads = layer.self_attn.num_heads
    except AttributeError:  # another encoder layout: the fixed default
        return DEFAULT_MAX_TOKENS
    itemsize = next(model.parameters()).element_size()
    per_token = itemsize * (6 * dim + 2 * ffn + 2 * heads * block_tokens)
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    budget = share * free - 3 * 4 * LOGITS_BUDGET
    tokens = int(budget // per_token) // block_tokens * block_tokens
    return max(block_tokens, min(tokens, 1 << 20))


class ScoringJob(ChunkedJob):
    """One rank's view of the job over a binarized split: its blocks, their forward
    through a fairseq checkpoint, and the score file rank 0 assembles. The chunks,
    manifest, resume and shards are ``ChunkedJob``'s."""

    chunk_dtype = score_file.SCORE_DTYPE  # chunks are saved as the score file holds them

    def __init__(
        self,
        data,
        path,
        *,
        split="train",
        metric="correctness",
        tokens_per_sample=None,
        sample_break_mode=None,
        max_tokens=None,
        batch_size=None,
        device="cpu",
        precision="fp32",
        out=None,
        chunk_tokens=DEFAULT_CHUNK_TOKENS,
        rank=0,
        world_size=1,
        reference=None,
    ):
        import torch

        from se_fairseq.core.scores import EXCESS, METRICS

        if metric not in (*METRICS, EXCESS):
            raise ScoringError(f"unknown metric {metric!r}; choose from {(*METRICS, EXCESS)}")
        if metric == EXCESS and reference is None:
            raise ScoringError(
                "metric 'excess' scores the checkpoint against a frozen reference model: "
                "give its checkpoint (reference=PATH, se-score --reference)"
            )
        if reference is not None and metric != EXCESS:
            raise ScoringError(
                f"a reference checkpoint ({reference}) is the reference model of metric "
                f"'excess', not of {metric!r}"
            )
        if precision not in ("fp32", "fp16", "bf16"):
            raise ScoringError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        self.data, self.split, self.metric = data, split, metric
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ScoringError("fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        self.precision = precision
        if max_tokens == "auto" and batch_size:
            raise ScoringError("max_tokens 'auto' and batch_size exclude each other")
        self.max_tokens = max_tokens or (None if batch_size else DEFAULT_MAX_TOKENS)
        self.batch_size = batch_size
        self.split_path = os.path.join(data, split)
        self.prefix = score_file.prefix_of(out or score_file.default_prefix(self.split_path))
        self.fingerprint = score_file.corpus_fingerprint(self.split_path)
        self.timer = None  # a core.scores.StageTimer when score_corpus is asked for stage_times
        self.model, self.checkpoint, cfg, self.task = self._load_model(path)
        self.task_cfg = cfg.task
        self.reference = self.reference_checkpoint = None
        if reference is not None:
            self.reference, self.reference_checkpoint, _, _ = self._load_model(
                reference, what="reference checkpoint"
            )
        self._load_blocks(tokens_per_sample, sample_break_mode)
        if self.max_tokens == "auto":
            self.max_tokens = auto_max_tokens(self.model, self.device, self.max_positions)
            logger.info(f"--max-tokens auto: {self.max_tokens} tokens per batch")
        lengths = self.slices[:, 1] - self.slices[:, 0]
        self.setup_job(
            plan_chunks(lengths, chunk_tokens), self.prefix + ".partial", rank, world_size
        )

    # -- model ---------------------------------------------------------------
    def _load_model(self, path, what="checkpoint"):
        """(model on the device in eval mode, its provenance record, cfg, task)."""
        from concurrent.futures import ThreadPoolExecutor

        import torch

        with ThreadPoolExecutor(1) as pool:  # hash the checkpoint while it loads
            sha256 = pool.submit(file_sha256, path) if os.path.exists(path) else None
            model, cfg, task = load_scoring_model(path, self.data, what=what)
            digest = sha256.result() if sha256 is not None else None
        if self.precision == "fp16":
            model = model.half()
        elif self.precision == "bf16":
            model = model.to(torch.bfloat16)
        record = {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": digest}
        return model.to(self.device).eval(), record, cfg, task

    # -- data ----------------------------------------------------------------
    def _load_blocks(self, tokens_per_sample, break_mode):
        from fairseq.data import PrependTokenDataset, TokenBlockDataset, data_utils

        d = self.task.source_dictionary
        self.pad = d.pad()
        tokens_per_sample = int(tokens_per_sample or self.task_cfg.get("tokens_per_sample", 512))
        break_mode = break_mode or str(self.task_cfg.get("sample_break_mode", "none"))
        if break_mode not in BREAK_MODES:
            raise ScoringError(
                f"unknown sample break mode {break_mode!r}; choose from {BREAK_MODES}"
            )
        self.blocking = {
            "tokens_per_sample": tokens_per_sample,
            "sample_break_mode": break_mode,
            "prepend_bos": True,
        }
        tokens = data_utils.load_indexed_dataset(self.split_path, d)
        if tokens is None:
            raise ScoringError(f"no dataset at {self.split_path}")
        self.blocks = TokenBlockDataset(
            tokens,
            tokens.sizes,
            tokens_per_sample - 1,
            pad=d.pad(),
            eos=d.eos(),
            break_mode=break_mode,
        )
        self.items = PrependTokenDataset(self.blocks, d.bos())
        self.slices = np.asarray(self.blocks.slice_indices, dtype=np.int64)
        # fairseq-train drops training blocks longer than the positions of the model
        # (--sample-break-mode complete/eos makes them from long sentences): skip them too.
        self.max_positions = min(tokens_per_sample, int(self.model.max_positions()))
        if self.reference is not None:
            self.max_positions = min(self.max_positions, int(self.reference.max_positions()))
        self.too_long = self.slices[:, 1] - self.slices[:, 0] + 1 > self.max_positions
        if len(self.slices) == 0:
            raise ScoringError(f"{self.split_path} holds no tokens: nothing to score")
        if self.too_long.all():
            shortest = int((self.slices[:, 1] - self.slices[:, 0]).min()) + 1
            raise ScoringError(
                f"every one of the {len(self.slices)} blocks of {self.split_path} is longer "
                f"than the {self.max_positions} positions of the model with <s> (the shortest "
                f"has {shortest}; --tokens-per-sample {tokens_per_sample}, --sample-break-mode "
                f"{break_mode}): nothing to score, and fairseq-train would skip every block "
                "too. Use --sample-break-mode none (fixed-size blocks)"
            )
        if self.too_long.any():
            logger.warning(
                f"{int(self.too_long.sum())} of {len(self.slices)} blocks ({self.skipped_tokens()} "
                f"tokens) are longer than {self.max_positions} positions with <s> "
                f"(--sample-break-mode {break_mode}); fairseq-train skips them, so se-score "
                "does too: their tokens are recorded as unscored in the score file (score 0 in "
                "the array) and se_mlm never masks them by score"
            )

    def skipped_tokens(self, first=0, last=None):
        skipped = np.flatnonzero(self.too_long[first:last]) + first
        return int((self.slices[skipped, 1] - self.slices[skipped, 0]).sum())

    def chunk_tokens(self, i):
        first, last = self.chunks[i]
        return int(self.slices[last - 1, 1] - self.slices[first, 0])

    # -- manifest ------------------------------------------------------------
    def manifest(self):
        manifest = {
            "corpus": self.fingerprint,
            "checkpoint": self.checkpoint,
            "metric": self.metric,
            "blocking": self.blocking,
            "chunks": [list(c) for c in self.chunks],
            "precision": self.precision,
        }
        if self.reference_checkpoint is not None:
            manifest["reference_checkpoint"] = self.reference_checkpoint
        return manifest

    def check_output(self):
        """The score file's two names hold nothing but an earlier score file: the job
        replaces its own files, never a file it did not write."""
        array_path, meta_path = score_file.paths(self.prefix)
        if os.path.exists(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    found = json.load(f)
            except (OSError, ValueError):
                found = None
            if not isinstance(found, dict) or found.get("format") != score_file.FORMAT:
                raise ScoringError(
                    f"{meta_path}: exists and is not a score file, which the score file would "
                    "replace; move it or choose another --out"
                )
        elif os.path.exists(array_path):
            raise ScoringError(
                f"{array_path}: exists and is not a score file (no {os.path.basename(meta_path)} "
                "beside it), which the score file would replace; move it or choose another --out"
            )

    # -- scoring -------------------------------------------------------------
    def batches(self, first, last):
        """Blocks of [first, last) that fit the model, longest first, by tokens or count."""
        sizes = self.slices[first:last, 1] - self.slices[first:last, 0] + 1
        skip = self.too_long[first:last]
        for batch in length_sorted_batches(sizes, self.max_tokens, self.batch_size, skip):
            yield [first + j for j in batch]

    def chunk_scores(self, i, progress=None):
        """fp32 scores of every token of chunk ``i`` (0 in blocks too long to score); with a
        reference model, the checkpoint's correctness minus the reference's."""
        import torch
        from fairseq.data import data_utils

        timer = self.timer
        first, last = self.chunks[i]
        base = int(self.slices[first, 0])
        out = np.zeros(self.chunk_tokens(i), dtype=np.float32)
        for batch in self.batches(first, last):
            src = data_utils.collate_tokens([self.items[b] for b in batch], self.pad)
            src = src.to(self.device)
            if timer is not None:
                timer.lap("load")
            with torch.inference_mode():
                scores = self._scores(src, timer).cpu()
            for row, b in enumerate(batch):
                start, end = int(self.slices[b, 0]), int(self.slices[b, 1])
                out[start - base : end - base] = scores[row, 1 : 1 + end - start].numpy()
            if timer is not None:
                timer.lap("write")
            if progress is not None:
                progress.update(int(sum(self.slices[b, 1] - self.slices[b, 0] for b in batch)))
        if progress is not None:  # skipped blocks count as done
            progress.update(self.skipped_tokens(first, last))
        return out

    def _scores(self, src, timer):
        """(batch x length) fp32 scores of a batch of blocks, under inference mode."""
        from se_fairseq.scoring import score_features

        metric = "correctness" if self.reference is not None else self.metric
        features, _ = self.model(src, features_only=True)
        if timer is not None:
            timer.lap("forward")
        scores = score_features(self.model, features, src, self.pad, metric, timer=timer)[0]
        if self.reference is None:
            return scores
        features, _ = self.reference(src, features_only=True)
        if timer is not None:
            timer.lap("forward")
        reference = score_features(self.reference, features, src, self.pad, metric, timer=timer)
        return scores - reference[0]

    def assemble(self):
        """Rank 0: join the chunks into the score file, then drop the partial folder."""
        scores = np.zeros(self.fingerprint["num_tokens"], dtype=np.float16)
        covered = np.zeros(len(scores), dtype=bool)
        for i, (first, last) in enumerate(self.chunks):
            base, end = int(self.slices[first, 0]), int(self.slices[last - 1, 1])
            scores[base:end] = self.load_chunk(i)
            for b in range(first, last):
                if not self.too_long[b]:
                    covered[self.slices[b, 0] : self.slices[b, 1]] = True
        summary = summarize(scores[covered].astype(np.float32))
        summary["tokens_not_scored"] = int((~covered).sum())
        summary["blocks_skipped_too_long"] = int(self.too_long.sum())
        summary["tokens_in_skipped_blocks"] = self.skipped_tokens()
        summary["max_positions"] = self.max_positions
        with writing(self.prefix, "cannot write the score file"):
            paths = score_file.write(
                self.prefix,
                scores,
                metric=self.metric,
                checkpoint=self.checkpoint,
                blocking=self.blocking,
                fingerprint=self.fingerprint,
                extra=self._provenance(summary),
                unscored_ranges=runs_of(~covered),
            )
        self.remove_partial_dir()
        return paths, summary

    def _provenance(self, summary):
        extra = {"summary": summary}
        if self.reference_checkpoint is not None:
            extra["reference_checkpoint"] = self.reference_checkpoint
        return extra


def score_corpus(
    data: str,
    path: Optional[str],
    *,
    split: str = "train",
    metric: str = "correctness",
    rank: int = 0,
    world_size: int = 1,
    stop_after_chunks: int = 0,
    progress: Optional[Callable[[int], Any]] = None,
    stage_times: Optional[dict] = None,
    reference: Optional[str] = None,
    **options: Any,
) -> ScoringResult:
    """Score ``data/<split>`` with checkpoint ``path``; write the score file beside the split
    (or at ``out``). Resumes a run stopped or killed with the same options.

    ``metric`` "excess" (Rho-1's excess loss) needs ``reference``, a checkpoint over the same
    dictionary: each token's score is then the checkpoint's correctness minus the
    reference's, and the score file records both checkpoints (``checkpoint`` and
    ``reference_checkpoint``); a rerun with another reference does not resume this one.

    ``options``: tokens_per_sample, sample_break_mode, max_tokens, batch_size, device,
    precision ("fp32", "fp16", "bf16"), out, chunk_tokens. With ``world_size`` > 1 every
    rank calls this with torch.distributed initialised. ``progress(total)`` may give a
    tqdm-like object with ``update(n)`` (used as a context manager). ``stop_after_chunks``:
    score at most that many chunks, then return (``complete`` False). ``stage_times``: a dict
    that receives the seconds spent per stage (setup, load, forward, lm_head, score, write,
    assemble; timed only when given).
    """
    from se_fairseq.core.scores import StageTimer

    timer = StageTimer(stage_times, options.get("device")) if stage_times is not None else None
    job = ScoringJob(
        data,
        path,
        split=split,
        metric=metric,
        rank=rank,
        world_size=world_size,
        reference=reference,
        **options,
    )
    if timer is not None:
        timer.lap("setup")
        job.timer = timer
    if rank == 0:
        logger.info(
            f"scoring {split} of {data}: {job.fingerprint['num_tokens']} tokens in "
            f"{len(job.blocks)} blocks ({job.blocking}), {len(job.chunks)} chunks, "
            f"metric {metric}"
            + (f" against reference {reference}" if reference is not None else "")
            + f", {world_size} rank(s), device {job.device}"
        )
    complete = job.run(progress, stop_after_chunks)
    assert job.partial_dir is not None
    result = ScoringResult(
        complete=complete,
        chunks_total=len(job.chunks),
        chunks_left=len(job.missing_chunks()),
        partial_dir=job.partial_dir,
    )
    if timer is not None:
        timer.lap("other")
    if complete and rank == 0:
        (result.array_path, result.meta_path), result.summary = job.assemble()
        if timer is not None:
            timer.lap("assemble")
    job.barrier()
    return result
