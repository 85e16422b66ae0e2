"""The self-questioning stage as a job: chunked, resumable, sharded, whatever the framework.

The items to score (blocks of a binarized split, examples of a dataset) are cut into
chunks of consecutive items (``plan_chunks``). Each finished chunk is saved at once, as a
plain ``.npy``, under ``<out>.partial/`` beside ``manifest.json``, a record of what is
scored and how (written by rank 0, checked by every rank), so a stopped or killed job
continues where it left off, and the result appears only when every chunk is there. Under
torch.distributed rank r of W scores chunks r, r + W, ...; rank 0 assembles.

An adapter subclasses ``ChunkedJob`` and supplies its items and its forward: ``manifest``,
``chunk_tokens`` (the values a chunk holds) and ``chunk_scores`` (one chunk's scores);
``run`` does the rest. Nothing the job did not write is ever deleted: the partial folder
loses only its chunks and manifest, and a folder that holds anything else is left in place.
"""

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import numpy as np

from se_fairseq.core.files import atomic_save_npy, atomic_write_json

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_TOKENS = 1 << 18
MANIFEST = "manifest.json"
_CHUNK_NAME = re.compile(r"chunk-\d{6}\.npy")
_TEMP_NAME = re.compile(r"(chunk-\d{6}\.npy|manifest\.json)\.tmp-\d+")


class ScoringError(RuntimeError):
    """A scoring job that cannot run as asked (the message says why and what to do)."""


# -- the plan -----------------------------------------------------------------------------


def plan_chunks(lengths: Sequence[int], chunk_tokens: int) -> list[tuple[int, int]]:
    """Cut items into runs of consecutive items of at least ``chunk_tokens`` tokens (the
    last one may be shorter): a list of (first, last) item ranges."""
    sizes = np.asarray(lengths, dtype=np.int64)
    chunks, first, tokens = [], 0, 0
    for i, n in enumerate(sizes):
        tokens += int(n)
        if tokens >= chunk_tokens:
            chunks.append((first, i + 1))
            first, tokens = i + 1, 0
    if first < len(sizes):
        chunks.append((first, len(sizes)))
    return chunks


def length_sorted_batches(
    sizes: Sequence[int],
    max_tokens: Optional[int] = None,
    batch_size: Optional[int] = None,
    skip: Optional[Sequence[bool]] = None,
) -> Iterator[list[int]]:
    """Positions into ``sizes`` in batches, longest first (stable), of at most
    ``batch_size`` items and ``max_tokens`` padded tokens (longest x count; a single item
    longer than that is a batch alone). ``skip``: items left out."""
    lengths = np.asarray(sizes, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    if skip is not None:
        order = order[~np.asarray(skip, dtype=bool)[order]]
    batch: list[int] = []
    longest = 0
    for j in order:
        n = int(lengths[j])
        full = (batch_size and len(batch) >= batch_size) or (
            max_tokens and batch and max(longest, n) * (len(batch) + 1) > max_tokens
        )
        if full:
            yield batch
            batch, longest = [], 0
        batch.append(int(j))
        longest = max(longest, n)
    if batch:
        yield batch


# -- the summary --------------------------------------------------------------------------


def summarize(values: np.ndarray) -> dict:
    """Mean, spread, quantiles and a 10-bin histogram of the scores."""
    if len(values) == 0:
        return {"tokens": 0}
    qs = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    counts, edges = np.histogram(values, bins=10)
    return {
        "tokens": int(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": {f"{int(q * 100)}%": float(np.quantile(values, q)) for q in qs},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def format_summary(metric: str, summary: dict) -> str:
    if summary["tokens"] == 0:
        return "no tokens scored"
    quantiles = sorted(summary["quantiles"].items(), key=lambda kv: float(kv[0].rstrip("%")))
    lines = [
        f"{metric}: {summary['tokens']} tokens, mean {summary['mean']:.3f}, "
        f"std {summary['std']:.3f}, min {summary['min']:.3f}, max {summary['max']:.3f}",
        "quantiles: " + "  ".join(f"{k} {v:.3f}" for k, v in quantiles),
    ]
    edges, counts = summary["histogram"]["edges"], summary["histogram"]["counts"]
    top = max(counts) or 1
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        lines.append(
            f"  [{lo:7.3f}, {hi:7.3f})  {'#' * max(1 if c else 0, round(40 * c / top)):<40} {c}"
        )
    if summary.get("blocks_skipped_too_long"):
        lines.append(
            f"skipped {summary['blocks_skipped_too_long']} blocks longer than "
            f"{summary['max_positions']} positions ({summary['tokens_in_skipped_blocks']} "
            "tokens), as fairseq-train does"
        )
    return "\n".join(lines)


# -- ranks and files ----------------------------------------------------------------------


def world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def writing(path: str, what: str = "cannot write") -> Iterator[None]:
    """An ``OSError`` raised inside (a read-only folder, a full disk...) becomes one
    ScoringError naming ``path``."""
    try:
        yield
    except OSError as err:
        raise ScoringError(f"{path}: {what}: {err.strerror or err}") from err


def replace_own_files(new_dir: str, out_dir: str, previous: Iterable[str], last: str) -> None:
    """Move every file of ``new_dir`` into ``out_dir`` (``last`` last), then remove the
    files named in ``previous`` (the job's files of an earlier run) that the new set does
    not have, and the emptied ``new_dir``. Anything else in ``out_dir`` stays."""
    names = sorted(os.listdir(new_dir), key=lambda name: (name == last, name))
    for name in names:
        if os.path.isdir(os.path.join(new_dir, name)):
            raise ScoringError(f"{new_dir}/{name}: a folder where files were expected")
    for name in names:
        os.replace(os.path.join(new_dir, name), os.path.join(out_dir, name))
    for name in sorted(set(previous) - set(names)):
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    os.rmdir(new_dir)


# -- the job ------------------------------------------------------------------------------


class ChunkedJob:
    """One rank's view of a chunked, resumable, sharded scoring job.

    The adapter's ``__init__`` calls ``setup_job`` once its items are known, and supplies
    ``manifest()``, ``chunk_tokens(i)`` and ``chunk_scores(i, bar)``. With
    ``partial_dir`` None the chunks stay in memory (no resume, one process).
    ``chunk_dtype``: how a chunk is stored; ``nan_is_unscored``: whether NaN marks a
    position that holds no score (else NaN is an error, as inf always is)."""

    chunks: list[tuple[int, int]]
    partial_dir: Optional[str]
    rank: int = 0
    world_size: int = 1
    chunk_dtype: Any = np.float32
    nan_is_unscored: bool = False
    fp32_hint: str = "try fp32"
    # the refusal of another run's partial folder: what it holds, and how to resume
    partial_name: str = "partial results"
    resume_hint: str = "rerun with the same options to resume"
    timer: Any = None  # a core.scores.StageTimer, or None

    def setup_job(
        self,
        chunks: list[tuple[int, int]],
        partial_dir: Optional[str],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.chunks, self.partial_dir = chunks, partial_dir
        self.rank, self.world_size = rank, world_size
        self.in_memory: dict[int, np.ndarray] = {}
        self._wrote_manifest = False

    # -- what the adapter supplies ---------------------------------------------------
    def manifest(self) -> dict:
        raise NotImplementedError

    def chunk_tokens(self, i: int) -> int:
        """The number of scores chunk ``i`` holds."""
        raise NotImplementedError

    def chunk_scores(self, i: int, bar: Any = None) -> np.ndarray:
        """float32 scores of chunk ``i`` (``chunk_tokens(i)`` of them); ``bar.update(n)``
        as tokens are scored."""
        raise NotImplementedError

    def check_output(self) -> None:
        """Rank 0, before anything is written: refuse an output that is not the job's."""

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """Around the chunks this rank scores (e.g. the model in eval mode)."""
        yield

    def barrier(self) -> None:
        barrier(self.world_size)

    # -- the partial folder ----------------------------------------------------------
    def chunk_path(self, i: int) -> str:
        assert self.partial_dir is not None
        return os.path.join(self.partial_dir, f"chunk-{i:06d}.npy")

    def manifest_path(self) -> str:
        assert self.partial_dir is not None
        return os.path.join(self.partial_dir, MANIFEST)

    def saved_chunks(self) -> list[str]:
        """The chunk files in the partial folder (of whatever run)."""
        if self.partial_dir is None or not os.path.isdir(self.partial_dir):
            return []
        return sorted(n for n in os.listdir(self.partial_dir) if _CHUNK_NAME.fullmatch(n))

    def prepare_partial_dir(self) -> None:
        """Rank 0 writes the manifest, or checks an earlier run's; the other ranks check
        it. The manifest of an earlier run that saved no chunk is replaced (a run that
        failed before its first chunk left it: nothing of it is worth keeping)."""
        assert self.partial_dir is not None
        path, wanted = self.manifest_path(), self.manifest()
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    found = json.load(f)
            except (OSError, ValueError) as err:
                found = {"unreadable": str(err)}
            if found == wanted:
                return
            if self.rank != 0 or self.saved_chunks():
                if "unreadable" in found:
                    raise ScoringError(
                        f"{path}: damaged ({found['unreadable']}); delete {self.partial_dir} "
                        "to start over"
                    )
                keys = set(wanted) | set(found)
                differ = sorted(k for k in keys if found.get(k) != wanted.get(k))
                raise ScoringError(
                    f"{self.partial_dir} holds {self.partial_name} of another run (different "
                    f"{', '.join(differ)}); {self.resume_hint}, or delete that folder to start "
                    "over"
                )
            logger.info(f"{self.partial_dir}: replacing the manifest of a run that saved no chunk")
        elif self.rank != 0:
            raise ScoringError(
                f"rank {self.rank}: no manifest in {self.partial_dir}; the partial folder must "
                "be on storage that all ranks see"
            )
        with writing(self.partial_dir, "cannot write the partial results there"):
            os.makedirs(self.partial_dir, exist_ok=True)
            atomic_write_json(path, wanted)
        self._wrote_manifest = True

    def remove_partial_dir(self) -> None:
        """Remove the chunks and the manifest (and temporary files a killed run left of
        them), then the folder if that emptied it; any other file stays."""
        if self.partial_dir is None or not os.path.isdir(self.partial_dir):
            return
        for name in os.listdir(self.partial_dir):
            if name == MANIFEST or _CHUNK_NAME.fullmatch(name) or _TEMP_NAME.fullmatch(name):
                os.remove(os.path.join(self.partial_dir, name))
        left = sorted(os.listdir(self.partial_dir))
        if left:
            logger.warning(
                f"left {self.partial_dir} in place: it holds files the scoring did not write "
                f"({', '.join(left[:5])}{', ...' if len(left) > 5 else ''})"
            )
        else:
            os.rmdir(self.partial_dir)

    # -- chunks ----------------------------------------------------------------------
    def done(self, i: int) -> bool:
        if self.partial_dir is None:
            return i in self.in_memory
        return os.path.exists(self.chunk_path(i))

    def pending_chunks(self) -> list[int]:
        """This rank's chunks (r, r + W, ...) that no earlier run has saved."""
        return [i for i in range(self.rank, len(self.chunks), self.world_size) if not self.done(i)]

    def missing_chunks(self) -> list[int]:
        return [i for i in range(len(self.chunks)) if not self.done(i)]

    def score_chunk(self, i: int, progress: Any = None) -> None:
        """Score chunk ``i`` and save it (``chunk_dtype``) under the partial folder."""
        scores = self.chunk_scores(i, progress)
        infinite = np.isinf(scores).any()
        if infinite or (not self.nan_is_unscored and np.isnan(scores).any()):
            kind = "infinite" if infinite else "NaN"
            raise ScoringError(f"{kind} scores in chunk {i}; {self.fp32_hint}")
        scores = scores.astype(self.chunk_dtype)
        if self.partial_dir is None:
            self.in_memory[i] = scores
        else:
            with writing(self.chunk_path(i)):
                atomic_save_npy(self.chunk_path(i), scores)
        if self.timer is not None:
            self.timer.lap("write")

    def load_chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` as saved, checked: a file that is not the chunk's array is an error
        that names it."""
        if self.partial_dir is None:
            return self.in_memory[i]
        path = self.chunk_path(i)
        try:
            scores = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ScoringError(
                f"{path}: damaged ({why}); delete it and rerun to score that chunk again"
            ) from None
        wanted = (self.chunk_tokens(i),)
        if scores.shape != wanted or scores.dtype != np.dtype(self.chunk_dtype):
            raise ScoringError(
                f"{path}: damaged (a {scores.dtype} array of shape {scores.shape}, not "
                f"{np.dtype(self.chunk_dtype)} of {wanted}); delete it and rerun to score that "
                "chunk again"
            )
        return scores

    # -- the run ---------------------------------------------------------------------
    def run(
        self,
        progress: Optional[Callable[[int], Any]] = None,
        stop_after_chunks: int = 0,
        callback: Optional[Callable[[int], Any]] = None,
    ) -> bool:
        """Score this rank's pending chunks (at most ``stop_after_chunks`` when it is
        not 0); True when every chunk of every rank is done. ``progress(total)`` gives a
        tqdm-like bar over tokens (``update``, ``close``); ``callback(i)`` runs after
        chunk ``i`` is saved. A single process that fails before saving any chunk removes
        the manifest it wrote, so a corrected rerun starts afresh."""
        try:
            self._run(progress, stop_after_chunks, callback)
        except BaseException:
            if self._wrote_manifest and self.world_size == 1 and not self.saved_chunks():
                self.remove_partial_dir()
            raise
        self.barrier()
        return not self.missing_chunks()

    def _run(self, progress, stop_after_chunks, callback) -> None:
        if self.partial_dir is not None:
            if self.rank == 0:
                self.check_output()
                self.prepare_partial_dir()
            self.barrier()
            if self.rank != 0:
                self.prepare_partial_dir()  # checks the manifest rank 0 wrote
        pending = self.pending_chunks()
        done_before = len(range(self.rank, len(self.chunks), self.world_size)) - len(pending)
        if done_before and self.rank == 0:
            logger.info(f"resuming: {done_before} chunk(s) of rank {self.rank} already scored")
        if stop_after_chunks:
            pending = pending[:stop_after_chunks]
        todo = sum(self.chunk_tokens(i) for i in pending)
        start = time.perf_counter()
        bar = progress(todo) if progress is not None else None
        try:
            with self.scoring():
                for i in pending:
                    self.score_chunk(i, bar)
                    if callback is not None:
                        callback(i)
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - start
        speed = f", {todo / elapsed:.0f} tokens/s" if todo and elapsed > 0 else ""
        logger.info(
            f"rank {self.rank}: scored {len(pending)} of {len(self.chunks)} chunks ({todo} "
            f"tokens in {elapsed:.1f}s{speed})"
        )


def progress_bar(desc: str, enabled: bool) -> Callable[[int], Any]:
    """A ``progress`` for ``ChunkedJob.run``: a tqdm bar over tokens on stderr, or none."""

    def make(total: int) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=total,
            unit="tok",
            unit_scale=True,
            desc=desc,
            disable=not enabled,
            file=sys.stderr,
            smoothing=0.1,
        )

    return make


__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "ChunkedJob",
    "ScoringError",
    "barrier",
    "format_summary",
    "length_sorted_batches",
    "plan_chunks",
    "progress_bar",
    "replace_own_files",
    "summarize",
    "world",
    "writing",
]
