"""Self-questioning with any ``AutoModelForMaskedLM``: per-token scores of a tokenized
``datasets.Dataset``, the column ``DataCollatorForSelfEvolution`` selects from.

    >>> from se_fairseq.hf import score_dataset
    >>> scored = score_dataset(model, tokenizer, dataset, metric="correctness", output_dir="out")

One eval-mode forward (no dropout, ``torch.inference_mode``) over the unmasked examples;
each token gets the score se-score gives it (se_fairseq.core.scores' formulas:
correctness = -log p(true token), confidence = the entropy of the prediction), in
float32 with the softmax in float32 whatever the forward's dtype. Special tokens (the
tokenizer's ``all_special_ids`` and any ``special_tokens_mask``) and padding
(``attention_mask`` 0) get NaN, which the collator never selects.

The job is the core's (``se_fairseq.core.job``); this module supplies the examples and
the model's forward. The examples are cut into chunks of consecutive examples (at least
``chunk_tokens`` tokens each); within a chunk they are batched longest first, padded per
batch, and put back in order. With ``output_dir`` each finished chunk is saved at once
under ``<output_dir>.partial/`` beside a manifest of what is scored, so a killed run
continues where it stopped; the dataset is saved to ``output_dir`` (with its provenance
record, se_scores.json) only when complete. A folder of earlier scores loses only their
files: anything else in it stays. Under torchrun (torch.distributed initialised) rank r
scores chunks r, r + W, ... and rank 0 assembles.
"""

import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional, Union

import numpy as np

from se_fairseq.core.constants import SCORES_COLUMN
from se_fairseq.core.files import atomic_write_json
from se_fairseq.core.job import (
    DEFAULT_CHUNK_TOKENS,
    ChunkedJob,
    ScoringError,
    length_sorted_batches,
    plan_chunks,
    progress_bar,
    replace_own_files,
    summarize,
    world,
    writing,
)
from se_fairseq.hf import provenance as prov

logger = logging.getLogger(__name__)

DTYPES = ("fp32", "fp16", "bf16")
# Padded tokens per batch when neither batch_size nor max_tokens is given: the forward's
# (batch x length x vocab) logits then hold at most this many values.
DEFAULT_LOGITS_ELEMENTS = 1 << 28
OPTIONAL_INPUTS = ("attention_mask", "token_type_ids")


def score_dataset(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    *,
    metric: str = "correctness",
    batch_size: Optional[int] = None,
    max_tokens: Optional[int] = None,
    column: str = SCORES_COLUMN,
    output_dir: Optional[str] = None,
    dtype: Union[str, Any] = "fp32",
    device: Optional[Any] = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: Optional[bool] = None,
    stop_after_chunks: int = 0,
    chunk_callback: Optional[Callable[[int], Any]] = None,
    reference_model: Any = None,
) -> Any:
    """``dataset`` with a float32 column ``column``: one score per input id (module doc).

    - ``metric``: correctness, confidence, or excess (Rho-1: correctness minus
      ``reference_model``'s, a frozen masked-LM of the same vocabulary, e.g. the starting
      checkpoint; only excess takes a reference).

    - ``batch_size`` (examples) / ``max_tokens`` (padded tokens) per batch; neither: as many
      tokens as keep the logits under 2^28 values.
    - ``dtype``: "fp32", "fp16" (CUDA) or "bf16" (or the torch dtype): the forward's
      autocast dtype; the softmax is fp32 either way.
    - ``device``: where to run (the model is moved there); None: where the model is.
    - ``output_dir``: save the scored dataset there (``save_to_disk``, with se_scores.json),
      resumably; the return value is then the saved dataset, memory-mapped. Needed under
      torchrun, where every rank returns it.
    - ``progress``: a tqdm bar over tokens on rank 0; None: only when stderr is a terminal.
    - ``stop_after_chunks``: score at most that many chunks in this call, then return None
      if chunks are left (rerun to resume). ``chunk_callback(i)`` is called after chunk
      ``i`` is saved.
    """
    job = HFScoringJob(
        model,
        tokenizer,
        dataset,
        metric=metric,
        batch_size=batch_size,
        max_tokens=max_tokens,
        column=column,
        output_dir=output_dir,
        dtype=dtype,
        device=device,
        chunk_tokens=chunk_tokens,
        reference_model=reference_model,
    )
    return job.score(progress, stop_after_chunks, chunk_callback)


def _autocast_dtype(dtype: Any, device_type: str) -> Any:
    import torch

    names = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    by_dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    name = by_dtype.get(dtype, dtype)
    if name not in names:
        raise ScoringError(f"dtype must be one of {DTYPES} (or that torch dtype), not {dtype!r}")
    if name == "fp16" and device_type != "cuda":
        raise ScoringError("dtype fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    return name, names[name]


def _list_column(table: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat int64 values) of a list column of an arrow table slice."""
    lists = table[name].combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0], lists.flatten().to_numpy(zero_copy_only=False).astype(np.int64)


class HFScoringJob(ChunkedJob):
    """One rank's view of the job over a ``datasets.Dataset``: its examples, the model's
    forward, and the scored dataset rank 0 saves. The chunks, manifest, resume and shards
    are ``ChunkedJob``'s."""

    chunk_dtype = np.float32
    nan_is_unscored = True  # special tokens and padding
    fp32_hint = "try dtype fp32"
    partial_name = "partial scores"
    resume_hint = "rerun with the same model, tokenizer, dataset and options to resume"

    def __init__(
        self,
        model,
        tokenizer,
        dataset,
        *,
        metric,
        batch_size,
        max_tokens,
        column,
        output_dir,
        dtype,
        device,
        chunk_tokens,
        reference_model=None,
    ):
        import datasets
        import torch

        from se_fairseq.core.options import LIVE_METRICS
        from se_fairseq.core.scores import EXCESS

        if metric not in LIVE_METRICS:
            raise ScoringError(f"unknown metric {metric!r}; choose from {LIVE_METRICS}")
        if (metric == EXCESS) != (reference_model is not None):
            raise ScoringError(
                "metric excess scores against a reference model (reference_model=, se-score "
                "--hf's --reference), and only it takes one"
            )
        if not isinstance(dataset, datasets.Dataset):
            raise ScoringError(
                f"dataset must be one datasets.Dataset (one split), not {type(dataset).__name__}"
            )
        if prov.IDS_COLUMN not in dataset.column_names:
            raise ScoringError(
                f"the dataset has no column 'input_ids' (it has {dataset.column_names}); "
                "tokenize it first, e.g. with se_fairseq.hf.tokenize_text_files"
            )
        if getattr(tokenizer, "mask_token", None) is None:
            raise ScoringError(
                f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__!r} has no mask "
                "token: it cannot serve masked-LM training (set tokenizer.mask_token)"
            )
        self.vocab = prov.model_vocab_size(model)
        if self.vocab is None:
            raise ScoringError(
                f"{type(model).__name__} has no masked-LM head (get_output_embeddings() is "
                "None): load the model with AutoModelForMaskedLM"
            )
        if len(tokenizer) > self.vocab:
            raise ScoringError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's MLM head scores "
                f"{self.vocab}: they are not of one vocabulary"
            )
        for name, value in (("batch_size", batch_size), ("max_tokens", max_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ScoringError(f"{name} must be a positive integer, not {value!r}")
        if chunk_tokens < 1:
            raise ScoringError(f"chunk_tokens must be a positive integer, not {chunk_tokens}")
        if len(dataset) == 0:
            raise ScoringError("the dataset holds no examples: nothing to score")
        rank, world_size = world()
        if world_size > 1 and output_dir is None:
            raise ScoringError("scoring under torch.distributed needs output_dir (shared storage)")
        self.model, self.tokenizer, self.dataset = model, tokenizer, dataset
        self.metric, self.column = metric, column
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.dtype_name, self.autocast_dtype = _autocast_dtype(dtype, self.device.type)
        self.ids, self.lengths, largest = prov.scan_ids(dataset)
        if largest >= self.vocab:
            raise ScoringError(
                f"column 'input_ids' holds id {largest}, outside the model's vocabulary of "
                f"{self.vocab}: the text was tokenized with another vocabulary"
            )
        if max_tokens is None and batch_size is None:
            max_tokens = max(1, DEFAULT_LOGITS_ELEMENTS // self.vocab)
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.special_ids = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        self.pad_id = _pad_id(model, tokenizer)
        accepted = inspect.signature(model.forward).parameters
        self.inputs = [c for c in OPTIONAL_INPUTS if c in dataset.column_names and c in accepted]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.output_dir = os.path.abspath(output_dir) if output_dir is not None else None
        partial_dir = self.output_dir + ".partial" if self.output_dir else None
        self.setup_job(plan_chunks(self.lengths, chunk_tokens), partial_dir, rank, world_size)
        self.model_info = prov.model_record(model)
        self.tokenizer_info = prov.tokenizer_record(tokenizer)
        self.head: Any = None  # the model's LM head (se_fairseq.hf.heads), at the first batch
        self.reference_model = reference_model
        self.reference_info = None
        self.reference_head: Any = None
        if reference_model is not None:
            if prov.model_vocab_size(reference_model) != self.vocab:
                raise ScoringError(
                    f"the reference model's output vocabulary has "
                    f"{prov.model_vocab_size(reference_model)} entries, the model's "
                    f"{self.vocab}: excess loss compares two models on the same tokens, so "
                    "they must share one vocabulary (and tokenizer)"
                )
            self.reference_info = prov.model_record(reference_model)

    # -- manifest --------------------------------------------------------------
    def record(self) -> dict:
        record = prov.provenance(
            metric=self.metric,
            column=self.column,
            model=self.model_info,
            tokenizer=self.tokenizer_info,
            ids=self.ids,
        )
        if self.reference_info is not None:
            record["reference_model"] = self.reference_info
        return record

    def manifest(self) -> dict:
        return {
            **self.record(),
            "dtype": self.dtype_name,
            "chunks": [list(c) for c in self.chunks],
        }

    def check_output(self) -> None:
        """``output_dir`` is new, empty, or holds earlier scores (whose files alone the
        job replaces)."""
        out = self.output_dir
        assert out is not None
        if os.path.isfile(out):
            raise ScoringError(f"output_dir {out} is a file")
        if os.path.isdir(out) and os.listdir(out):
            if not os.path.isfile(os.path.join(out, prov.PROVENANCE_FILE)):
                raise ScoringError(
                    f"output_dir {out} exists and holds no scored dataset "
                    f"({prov.PROVENANCE_FILE}); name a new folder "
                    "(only the files of earlier scores are replaced in one)"
                )

    # -- scoring -----------------------------------------------------------------
    def batches(self, first: int, last: int) -> Iterator[list[int]]:
        """Examples of [first, last) (positions from ``first``), longest first, by count
        or padded tokens; empty ones left out."""
        lengths = self.lengths[first:last]
        yield from length_sorted_batches(lengths, self.max_tokens, self.batch_size, lengths == 0)

    def chunk_scores(self, i: int, bar: Any = None) -> np.ndarray:
        """float32 scores of every token of chunk ``i``, NaN where nothing is scored."""
        first, last = self.chunks[i]
        table = self.dataset.with_format("arrow")[first:last]
        offsets, ids = _list_column(table, prov.IDS_COLUMN)
        columns = {name: _list_column(table, name)[1] for name in self.inputs}
        unscored = np.isin(ids, self.special_ids)
        if "special_tokens_mask" in table.column_names:
            unscored |= _list_column(table, "special_tokens_mask")[1] != 0
        if "attention_mask" in table.column_names:
            unscored |= _list_column(table, "attention_mask")[1] == 0
        out = np.full(len(ids), np.nan, dtype=np.float32)
        for batch in self.batches(first, last):
            spans = [(int(offsets[j]), int(offsets[j + 1])) for j in batch]
            flat = np.concatenate([np.arange(s, e) for s, e in spans])
            scores = self.batch_scores(ids, columns, spans, unscored)
            keep = ~unscored[flat]
            out[flat[keep]] = scores
            if bar is not None:
                bar.update(len(flat))
        return out

    def batch_scores(self, ids, columns, spans, unscored) -> np.ndarray:
        """Scores of the scored tokens of one batch, in the order of ``spans``: the LM head
        split at its projection (``se_fairseq.hf.heads``) projects the scored positions in
        chunks of the logits budget, so no (tokens x vocab) tensor larger than a chunk
        exists (a head that cannot be split runs densely)."""
        import torch

        from se_fairseq.core.scores import score_rows
        from se_fairseq.hf.heads import head_of

        width = max(e - s for s, e in spans)
        tensors = {"input_ids": torch.full((len(spans), width), self.pad_id, dtype=torch.long)}
        for name in columns:
            tensors[name] = torch.zeros((len(spans), width), dtype=torch.long)
        scored = torch.zeros((len(spans), width), dtype=torch.bool)
        for row, (s, e) in enumerate(spans):
            tensors["input_ids"][row, : e - s] = torch.from_numpy(ids[s:e])
            for name, values in columns.items():
                tensors[name][row, : e - s] = torch.from_numpy(values[s:e])
            scored[row, : e - s] = torch.from_numpy(~unscored[s:e])
        if "attention_mask" not in tensors:
            tensors["attention_mask"] = torch.zeros((len(spans), width), dtype=torch.long)
            for row, (s, e) in enumerate(spans):
                tensors["attention_mask"][row, : e - s] = 1
        batch = {k: v.to(self.device) for k, v in tensors.items()}
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            try:
                if self.head is None:
                    self.head = head_of(self.model, batch)
                features = self.head.features(self.model, batch)
            except (IndexError, RuntimeError) as err:
                limit = getattr(self.model.config, "max_position_embeddings", None)
                raise ScoringError(
                    f"the forward of {len(spans)} examples of up to {width} tokens failed "
                    f"(max_position_embeddings: {limit}; is an example longer than the model "
                    f"takes?): {err}"
                ) from err
            vocab = self.head.vocab(features)
            if features.dim() != 3 or vocab != self.vocab:
                raise ScoringError(
                    f"{type(self.model).__name__} gives logits of shape "
                    f"{(*features.shape[:-1], vocab)}, not (batch, length, {self.vocab}): not a "
                    "masked-LM head"
                )
            where = scored.to(self.device)
            targets = batch["input_ids"][where]
            live = "correctness" if self.reference_model is not None else self.metric
            scores, _ = score_rows(self.head.head, features[where], targets, live, vocab)
            if self.reference_model is not None:
                if self.reference_head is None:
                    self.reference_model.to(self.device).eval()
                    self.reference_head = head_of(self.reference_model, batch)
                ref = self.reference_head.features(self.reference_model, batch)
                ref_vocab = self.reference_head.vocab(ref)
                scores = (
                    scores
                    - score_rows(
                        self.reference_head.head, ref[where], targets, "correctness", ref_vocab
                    )[0]
                )
        return scores.cpu().numpy()

    def chunk_tokens(self, i: int) -> int:
        first, last = self.chunks[i]
        return int(self.offsets[last] - self.offsets[first])

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """The model on its device in eval mode, no autograd; its train mode back after."""
        import torch

        was_training = self.model.training
        self.model.to(self.device).eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    # -- assembly ----------------------------------------------------------------
    def scored_dataset(self) -> tuple[Any, dict, np.ndarray]:
        """The dataset with its scores column, their summary, and the flat scores."""
        import pyarrow as pa

        chunks = [self.load_chunk(i) for i in range(len(self.chunks))]
        values = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        values = values.astype(np.float32, copy=False)
        large = len(values) >= 2**31
        offsets = pa.array(self.offsets, type=pa.int64() if large else pa.int32())
        lists_of = pa.LargeListArray if large else pa.ListArray
        scores = lists_of.from_arrays(offsets, pa.array(values, type=pa.float32()))
        dataset = self.dataset
        if self.column in dataset.column_names:
            logger.info(f"replacing the column {self.column!r} the dataset already has")
            dataset = dataset.remove_columns(self.column)
        dataset = dataset.add_column(self.column, scores)
        summary = summarize(values[~np.isnan(values)])
        summary["tokens_not_scored"] = int(np.isnan(values).sum())
        return dataset, summary, values

    def save(self, dataset: Any, summary: dict, values: np.ndarray) -> None:
        """Rank 0: the dataset and its record into ``output_dir``, through a new folder
        beside it; in a folder of earlier scores only their files are replaced."""
        out = self.output_dir
        assert out is not None
        record = {
            **self.record(),
            "dtype": self.dtype_name,
            "summary": summary,
            "scores": prov.scores_fingerprint(values),
        }
        dataset.info.description = json.dumps(record, sort_keys=True)
        parent, name = os.path.split(out)
        with writing(parent, "cannot write the scored dataset there"):
            tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        try:
            with writing(out, "cannot write the scored dataset"):
                dataset.save_to_disk(tmp)
                atomic_write_json(os.path.join(tmp, prov.PROVENANCE_FILE), record)
                if os.path.isdir(out) and os.listdir(out):
                    previous = prov.dataset_files(out)
                    replace_own_files(tmp, out, previous, last=prov.PROVENANCE_FILE)
                else:
                    os.replace(tmp, out)  # new, or empty: the folder itself
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)  # its own scratch folder, of this run
        self.remove_partial_dir()

    # -- the whole run -------------------------------------------------------------
    def score(self, progress=None, stop_after_chunks=0, callback=None) -> Any:
        show = sys.stderr.isatty() if progress is None else progress
        bar = progress_bar(f"se-score --hf {self.metric}", True) if show else None
        if not self.run(bar if self.rank == 0 else None, stop_after_chunks, callback):
            left = len(self.missing_chunks())
            logger.info(f"{left} of {len(self.chunks)} chunks left in {self.partial_dir}")
            return None
        if self.output_dir is None:
            return self.scored_dataset()[0]
        if self.rank == 0:
            self.save(*self.scored_dataset())
        self.barrier()
        import datasets

        return datasets.load_from_disk(self.output_dir)


def _model_device(model: Any) -> Any:
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _pad_id(model: Any, tokenizer: Any) -> int:
    """The id that pads a batch: the model's pad id (RoBERTa-style position ids count from
    it), else the tokenizer's, else 0 (padding is masked out of attention either way)."""
    for value in (getattr(model.config, "pad_token_id", None), tokenizer.pad_token_id):
        if value is not None:
            return int(value)
    return 0
