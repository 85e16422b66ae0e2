"""``se-score``: the self-questioning stage as a command.

    se-score DATA --path CKPT [--split train] [--metric correctness|confidence]

The model reads every block of the split unmasked (eval mode, no gradient) and
scores every token; the scores go to a score file beside the split, where
``fairseq-train --task se_mlm`` finds them. The work is cut into chunks of
consecutive blocks; each finished chunk is saved at once under
``<out>.partial/``, so an interrupted run continues where it stopped, and the
score file itself appears only when complete (atomic rename). Under
``torchrun`` each rank scores every WORLD_SIZE-th chunk and rank 0 assembles
the file (the partial folder must be on storage all ranks see).
"""
import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

logger = logging.getLogger("se_fairseq.score")

BREAK_MODES = ("none", "complete", "complete_doc", "eos")


def build_parser():
    from se_fairseq.scoring import METRICS

    p = argparse.ArgumentParser(
        prog="se-score",
        description="Score every token of a binarized split with a fairseq RoBERTa checkpoint "
        "(the self-questioning stage of Self-Evolution learning).",
    )
    p.add_argument("data", help="fairseq data-bin folder (with dict.txt and <split>.bin/.idx)")
    p.add_argument("--path", default=None,
                   help="fairseq RoBERTa checkpoint (.pt); not used by --metric rarity")
    p.add_argument("--split", default="train", help="split to score (default: train)")
    p.add_argument("--metric", choices=(*METRICS, "rarity"), default="correctness",
                   help="correctness = -log p(true token); confidence = entropy of the prediction; "
                   "rarity = -log of the token's unigram probability in the train split (no model: "
                   "a control, see se_fairseq/rarity.py)")
    p.add_argument("--tokens-per-sample", type=int, default=None,
                   help="block length incl. <s> (default: the checkpoint's training value)")
    p.add_argument("--sample-break-mode", choices=BREAK_MODES, default=None,
                   help="blocking (default: the checkpoint's training value)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--max-tokens", type=int, default=None,
                      help="tokens per batch, padding included (default: 16384 when no --batch-size)")
    size.add_argument("--batch-size", type=int, default=None, help="blocks per batch")
    p.add_argument("--cpu", action="store_true", help="score on the CPU even if CUDA is available")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="fp16 forward (GPU); softmax in fp32")
    precision.add_argument("--bf16", action="store_true", help="bf16 forward; softmax in fp32")
    p.add_argument("--out", default=None,
                   help="score file prefix (default: DATA/<split>.se_scores, where se_mlm looks)")
    p.add_argument("--chunk-tokens", type=int, default=1 << 18,
                   help="tokens per resumable chunk (default: 262144)")
    p.add_argument("--stop-after-chunks", type=int, default=0,
                   help="score at most this many chunks in this run, then exit; a later run "
                   "resumes (for jobs split across time-limited allocations)")
    p.add_argument("--no-progress-bar", action="store_true", help="no progress bar")
    return p


def file_sha256(path, block=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(block), b""):
            digest.update(piece)
    return digest.hexdigest()


class ScoringJob:
    def __init__(self, args, rank=0, world_size=1):
        import torch

        from se_fairseq.data import score_file

        self.args, self.rank, self.world_size = args, rank, world_size
        self.split_path = os.path.join(args.data, args.split)
        self.prefix = args.out or score_file.default_prefix(self.split_path)
        for ext in (".npy", ".json"):
            if self.prefix.endswith(ext):
                self.prefix = self.prefix[: -len(ext)]
        self.partial_dir = self.prefix + ".partial"
        use_cuda = torch.cuda.is_available() and not args.cpu
        if args.fp16 and not use_cuda:
            raise SystemExit("se-score: --fp16 needs a CUDA device (use --bf16 or fp32 on CPU)")
        if use_cuda:
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            self.device = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.fingerprint = score_file.corpus_fingerprint(self.split_path)
        self._load_model()
        self._load_blocks()
        self._plan_chunks()

    # -- model ---------------------------------------------------------------
    def _load_model(self):
        import torch
        from fairseq import checkpoint_utils, tasks
        from fairseq.data import Dictionary
        from omegaconf import open_dict

        path = self.args.path
        if not os.path.exists(path):
            raise SystemExit(f"se-score: checkpoint {path} not found")
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        dict_path = os.path.join(self.args.data, "dict.txt")
        data_vocab = len(Dictionary.load(dict_path)) + 1  # + <mask>, as masked_lm adds it
        embed = [v for k, v in state["model"].items() if k.endswith("sentence_encoder.embed_tokens.weight")]
        if not embed:
            raise SystemExit(f"se-score: {path} holds no RoBERTa-style encoder embeddings")
        if embed[0].shape[0] != data_vocab:
            raise SystemExit(
                f"se-score: the dictionary of checkpoint {path} has {embed[0].shape[0]} entries "
                f"but {dict_path} gives {data_vocab} (incl. <mask>); score data binarized with "
                "the checkpoint's own dict.txt"
            )
        cfg = state["cfg"]
        with open_dict(cfg):
            cfg.task.data = self.args.data
        self.task_cfg = cfg.task
        self.task = tasks.setup_task(cfg.task)
        model = self.task.build_model(cfg.model)
        model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
        if self.args.fp16:
            model = model.half()
        elif self.args.bf16:
            model = model.to(torch.bfloat16)
        self.model = model.to(self.device).eval()
        self.checkpoint = {
            "path": os.path.abspath(path),
            "bytes": os.path.getsize(path),
            "sha256": file_sha256(path),
        }

    # -- data ----------------------------------------------------------------
    def _load_blocks(self):
        from fairseq.data import PrependTokenDataset, TokenBlockDataset, data_utils

        d = self.task.source_dictionary
        self.pad = d.pad()
        tokens_per_sample = self.args.tokens_per_sample or self.task_cfg.get("tokens_per_sample", 512)
        break_mode = self.args.sample_break_mode or str(self.task_cfg.get("sample_break_mode", "none"))
        self.blocking = {"tokens_per_sample": int(tokens_per_sample),
                         "sample_break_mode": break_mode, "prepend_bos": True}
        tokens = data_utils.load_indexed_dataset(self.split_path, d)
        if tokens is None:
            raise SystemExit(f"se-score: no dataset at {self.split_path}")
        self.blocks = TokenBlockDataset(tokens, tokens.sizes, tokens_per_sample - 1, pad=d.pad(),
                                        eos=d.eos(), break_mode=break_mode)
        self.items = PrependTokenDataset(self.blocks, d.bos())
        self.slices = np.asarray(self.blocks.slice_indices, dtype=np.int64)
        # fairseq-train drops training blocks longer than the positions of the model
        # (--sample-break-mode complete/eos makes them from long sentences): skip them too.
        self.max_positions = min(int(tokens_per_sample), int(self.model.max_positions()))
        self.too_long = self.slices[:, 1] - self.slices[:, 0] + 1 > self.max_positions
        if self.too_long.any():
            logger.warning(
                f"{int(self.too_long.sum())} of {len(self.slices)} blocks ({self.skipped_tokens()} "
                f"tokens) are longer than {self.max_positions} positions with <s> "
                f"(--sample-break-mode {break_mode}); fairseq-train skips them, so se-score "
                "does too: their tokens get score 0 and are never trained on")

    def skipped_tokens(self):
        lengths = self.slices[self.too_long, 1] - self.slices[self.too_long, 0]
        return int(lengths.sum())

    def _plan_chunks(self):
        ends = np.cumsum(self.slices[:, 1] - self.slices[:, 0])
        cuts = [0]
        for b in range(len(self.slices)):
            if ends[b] - (ends[cuts[-1] - 1] if cuts[-1] > 0 else 0) >= self.args.chunk_tokens:
                cuts.append(b + 1)
        if cuts[-1] != len(self.slices):
            cuts.append(len(self.slices))
        self.chunks = list(zip(cuts[:-1], cuts[1:]))

    def manifest(self):
        return {
            "corpus": self.fingerprint,
            "checkpoint": self.checkpoint,
            "metric": self.args.metric,
            "blocking": self.blocking,
            "chunks": [list(c) for c in self.chunks],
            "precision": "fp16" if self.args.fp16 else "bf16" if self.args.bf16 else "fp32",
        }

    def chunk_path(self, i):
        return os.path.join(self.partial_dir, f"chunk-{i:06d}.npy")

    def prepare_partial_dir(self):
        """Rank 0: create or check the partial folder's manifest."""
        manifest_path = os.path.join(self.partial_dir, "manifest.json")
        wanted = self.manifest()
        if os.path.exists(manifest_path):
            with open(manifest_path) as f:
                found = json.load(f)
            if found != wanted:
                differ = sorted(k for k in wanted if found.get(k) != wanted[k])
                raise SystemExit(
                    f"se-score: {self.partial_dir} holds partial results of another run "
                    f"(different {', '.join(differ)}); rerun with the same options to resume, "
                    "or delete that folder to start over"
                )
            return
        from se_fairseq.data import score_file

        os.makedirs(self.partial_dir, exist_ok=True)
        score_file.atomic_write_text(manifest_path, json.dumps(wanted, indent=2, sort_keys=True))

    # -- scoring -------------------------------------------------------------
    def batches(self, first, last):
        sizes = self.slices[first:last, 1] - self.slices[first:last, 0] + 1
        order = first + np.argsort(-sizes, kind="stable")
        order = order[~self.too_long[order]]
        max_tokens = self.args.max_tokens or (None if self.args.batch_size else 16384)
        batch, longest = [], 0
        for b in order:
            n = int(self.slices[b, 1] - self.slices[b, 0] + 1)
            full = (self.args.batch_size and len(batch) >= self.args.batch_size) or (
                max_tokens and batch and max(longest, n) * (len(batch) + 1) > max_tokens)
            if full:
                yield batch
                batch, longest = [], 0
            batch.append(int(b))
            longest = max(longest, n)
        if batch:
            yield batch

    def score_chunk(self, i, progress=None):
        from fairseq.data import data_utils

        from se_fairseq.data import score_file
        from se_fairseq.scoring import score_batch

        first, last = self.chunks[i]
        base = int(self.slices[first, 0])
        out = np.zeros(int(self.slices[last - 1, 1]) - base, dtype=np.float32)
        for batch in self.batches(first, last):
            src = data_utils.collate_tokens([self.items[b] for b in batch], self.pad)
            scores = score_batch(self.model, src.to(self.device), self.pad, self.args.metric).cpu()
            for row, b in enumerate(batch):
                start, end = int(self.slices[b, 0]), int(self.slices[b, 1])
                out[start - base:end - base] = scores[row, 1:1 + end - start].numpy()
            if progress is not None:
                progress.update(int(sum(self.slices[b, 1] - self.slices[b, 0] for b in batch)))
        if progress is not None:  # skipped blocks count as done
            skipped = np.flatnonzero(self.too_long[first:last]) + first
            progress.update(int((self.slices[skipped, 1] - self.slices[skipped, 0]).sum()))
        if not np.isfinite(out).all():
            raise SystemExit(f"se-score: non-finite scores in chunk {i}; try fp32")
        score_file.atomic_save_npy(self.chunk_path(i), out.astype(np.float16))

    def my_pending_chunks(self):
        return [i for i in range(len(self.chunks))
                if i % self.world_size == self.rank and not os.path.exists(self.chunk_path(i))]

    def assemble(self):
        """Rank 0: join the chunks into the score file, then drop the partial folder."""
        from se_fairseq.data import score_file

        scores = np.zeros(self.fingerprint["num_tokens"], dtype=np.float16)
        covered = np.zeros(len(scores), dtype=bool)
        for i, (first, last) in enumerate(self.chunks):
            base, end = int(self.slices[first, 0]), int(self.slices[last - 1, 1])
            chunk = np.load(self.chunk_path(i), allow_pickle=False)
            if len(chunk) != end - base:
                raise SystemExit(f"se-score: {self.chunk_path(i)} is damaged; delete it and rerun")
            scores[base:end] = chunk
            for b in range(first, last):
                if not self.too_long[b]:
                    covered[self.slices[b, 0]:self.slices[b, 1]] = True
        summary = summarize(scores[covered].astype(np.float32))
        summary["tokens_not_scored"] = int((~covered).sum())
        summary["blocks_skipped_too_long"] = int(self.too_long.sum())
        summary["tokens_in_skipped_blocks"] = self.skipped_tokens()
        summary["max_positions"] = self.max_positions
        paths = score_file.write(
            self.prefix, scores, metric=self.args.metric, checkpoint=self.checkpoint,
            blocking=self.blocking, fingerprint=self.fingerprint, extra={"summary": summary},
        )
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        return paths, summary


def summarize(values):
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


def format_summary(metric, summary):
    if summary["tokens"] == 0:
        return "no tokens scored"
    lines = [
        f"{metric}: {summary['tokens']} tokens, mean {summary['mean']:.3f}, std {summary['std']:.3f}, "
        f"min {summary['min']:.3f}, max {summary['max']:.3f}",
        "quantiles: " + "  ".join(f"{k} {v:.3f}" for k, v in summary["quantiles"].items()),
    ]
    edges, counts = summary["histogram"]["edges"], summary["histogram"]["counts"]
    top = max(counts) or 1
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        lines.append(f"  [{lo:7.3f}, {hi:7.3f})  {'#' * max(1 if c else 0, round(40 * c / top)):<40} {c}")
    return "\n".join(lines)


def _init_distributed():
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() and "--cpu" not in sys.argv else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _barrier(world_size):
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def main(argv=None):
    import warnings

    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # hydra/dataloader chatter
    warnings.filterwarnings("ignore", module="hydra")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stderr)
    import fairseq  # noqa: F401  (registers the safe checkpoint loader)

    if args.metric == "rarity":
        return _score_rarity(args)
    if not args.path:
        raise SystemExit(f"se-score: --metric {args.metric} needs --path CKPT")
    import torch
    from tqdm import tqdm

    rank, world_size = _init_distributed()
    job = ScoringJob(args, rank, world_size)
    if rank == 0:
        job.prepare_partial_dir()
        logger.info(f"scoring {args.split} of {args.data}: {job.fingerprint['num_tokens']} tokens in "
                    f"{len(job.blocks)} blocks ({job.blocking}), {len(job.chunks)} chunks, "
                    f"metric {args.metric}, {world_size} rank(s), device {job.device}")
    _barrier(world_size)
    if rank != 0:
        job.prepare_partial_dir()  # checks the manifest rank 0 wrote

    pending = job.my_pending_chunks()
    done_before = len(range(rank, len(job.chunks), world_size)) - len(pending)
    if done_before and rank == 0:
        logger.info(f"resuming: {done_before} chunk(s) of rank {rank} already scored")
    if args.stop_after_chunks:
        pending = pending[: args.stop_after_chunks]
    todo = int(sum(job.slices[job.chunks[i][1] - 1, 1] - job.slices[job.chunks[i][0], 0] for i in pending))
    start = time.perf_counter()
    with tqdm(total=todo, unit="tok", unit_scale=True, desc=f"se-score {args.split}",
              disable=args.no_progress_bar or rank != 0, file=sys.stderr, smoothing=0.1) as bar:
        for i in pending:
            job.score_chunk(i, bar)
    elapsed = time.perf_counter() - start
    if todo:
        logger.info(f"rank {rank}: scored {todo} tokens in {elapsed:.1f}s ({todo / elapsed:.0f} tokens/s)")
    _barrier(world_size)
    missing = [i for i in range(len(job.chunks)) if not os.path.exists(job.chunk_path(i))]
    if missing:
        if rank == 0:
            print(f"se-score: stopped with {len(missing)} of {len(job.chunks)} chunks left in "
                  f"{job.partial_dir}; run the same command again to resume", file=sys.stderr)
        return 0
    if rank == 0:
        (array_path, meta_path), summary = job.assemble()
        print(format_summary(args.metric, summary))
        if summary["blocks_skipped_too_long"]:
            print(f"skipped {summary['blocks_skipped_too_long']} blocks longer than "
                  f"{summary['max_positions']} positions ({summary['tokens_in_skipped_blocks']} "
                  "tokens), as fairseq-train does")
        print(f"wrote {array_path} and {meta_path}")
    _barrier(world_size)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return 0


def _score_rarity(args):
    """--metric rarity: unigram surprisal from the train split's counts; no model, no blocking."""
    from se_fairseq import rarity

    if args.path:
        logger.info("--metric rarity uses no checkpoint; ignoring --path")
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one pass over the token file: nothing to shard
    (array_path, meta_path), scores = rarity.write_score_file(args.data, args.split, args.out)
    print(format_summary("rarity", summarize(scores[scores > 0])))  # special tokens score 0
    print(f"wrote {array_path} and {meta_path}")
    return 0


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
