"""The GPU checks and timings that need no pytest, in one process (benchmarks/gpu_check.sh
runs it after the CUDA op tests).

1. parity: CPU vs CUDA masking, bit for bit, on real batches (a binarized corpus, 512-token
   blocks, a score file) for every selection mode and replacement policy, and on the
   scores the live model gives under --se-online;
2. se-score tokens/s, fp32 vs fp16 vs bf16 (and how far fp16/bf16 scores are from fp32);
3. a training step (fairseq task.train_step + optimizer step): masked_lm vs se_mlm offline
   top-k + token_ls vs se_mlm --se-online + token_ls, and whether online masking syncs.

Writes OUT/gpu_check.json and OUT/gpu_check.md. ``--device cpu --quick`` runs the same code
on a tiny configuration (what tests/test_gpu_check_script.py does without a GPU).
"""

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # tests/support

import fairseq  # noqa: E402,F401  (registers se_mlm / token_ls)
from support.fairseq_data import binarize, setup_task, write_scores, write_zipf_corpus  # noqa: E402

from se_fairseq.core.masking import row_seeds  # noqa: E402


def sizes(quick):
    if quick:
        return dict(
            vocab=200,
            lines=300,
            max_words=60,
            tokens=64,
            layers=2,
            dim=32,
            ffn=64,
            heads=2,
            max_tokens=1024,
            steps=3,
            warmup=1,
        )
    return dict(
        vocab=8000,
        lines=3000,
        max_words=400,
        tokens=512,
        layers=12,
        dim=768,
        ffn=3072,
        heads=12,
        max_tokens=8192,
        steps=10,
        warmup=3,
    )


def model_args(s):
    return [
        "--arch",
        "roberta_base",
        "--encoder-layers",
        str(s["layers"]),
        "--encoder-embed-dim",
        str(s["dim"]),
        "--encoder-ffn-embed-dim",
        str(s["ffn"]),
        "--encoder-attention-heads",
        str(s["heads"]),
        "--max-positions",
        str(s["tokens"]),
        "--tokens-per-sample",
        str(s["tokens"]),
        "--dropout",
        "0.1",
    ]


def make_corpus(root, s):
    text = os.path.join(root, "text")
    write_zipf_corpus(
        text,
        vocab=s["vocab"],
        splits=(("train", s["lines"]), ("valid", 20)),
        max_words=s["max_words"],
        seed=0,
    )
    data = binarize(text, os.path.join(root, "data-bin"))
    write_scores(os.path.join(data, "train"), blocking={"tokens_per_sample": s["tokens"]})
    return data


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ 1. parity

PARITY_CASES = {
    "topk": [],
    "topk, 80/10/10 freq-weighted": [
        "--leave-unmasked-prob",
        "0.1",
        "--random-token-prob",
        "0.1",
        "--freq-weighted-replacement",
    ],
    "sample T=0.7": ["--se-select", "sample", "--se-temperature", "0.7"],
    "sample, random share 0.5": ["--se-select", "sample", "--se-random-share", "0.5"],
    "threshold 6, fallback random": ["--se-select", "threshold", "--se-threshold", "6"],
    "threshold 6, fallback none, 80/10/10": [
        "--se-select",
        "threshold",
        "--se-threshold",
        "6",
        "--se-threshold-fallback",
        "none",
        "--leave-unmasked-prob",
        "0.1",
        "--random-token-prob",
        "0.1",
    ],
}


def real_batches(task, max_tokens, limit):
    """(tokens, scores, seeds) of the train split's batches, as the collater builds them."""
    from fairseq.data import data_utils

    dataset = task.dataset("train").dataset.dataset  # EpochSync -> Sort -> SE mask dataset
    itr = task.get_batch_iterator(
        task.dataset("train"), max_tokens=max_tokens, seed=1, num_workers=0
    )
    for n, indices in enumerate(itr.frozen_batches):
        if n >= limit:
            return
        samples = [dataset[int(i)] for i in indices]
        tokens = data_utils.collate_tokens([x["tokens"] for x in samples], dataset.pad_idx)
        scores = data_utils.collate_tokens([x["scores"].float() for x in samples], 0.0)
        seeds = torch.from_numpy(row_seeds(dataset.seed, 1, np.asarray(indices)))
        yield tokens, scores, seeds


def parity(data, s, device, limit):
    results = {}
    for name, extra in PARITY_CASES.items():
        task, _ = setup_task(
            data,
            *model_args(s),
            "--task",
            "se_mlm",
            "--criterion",
            "masked_lm",
            "--seed",
            "1",
            "--mask-prob",
            "0.15",
            *extra,
        )
        task.load_dataset("train")
        masker = task.build_masker()
        batches = rows = differ = 0
        for tokens, scores, seeds in real_batches(task, s["max_tokens"], limit):
            cpu = masker.mask(tokens, scores, seeds)
            dev = masker.mask(tokens.to(device), scores.to(device), seeds.to(device))
            for a, b in zip(cpu, dev):
                differ += int((a != b.cpu()).any(dim=1).sum())
            batches += 1
            rows += len(tokens)
        results[name] = {"batches": batches, "rows": rows, "rows_differing": differ}
    return results


def online_parity(data, s, device, limit):
    """--se-online: the CUDA selection from the live model's scores equals the CPU masker's
    on the same scores (copied to the host)."""
    task, cfg = setup_task(
        data,
        *model_args(s),
        "--task",
        "se_mlm",
        "--se-online",
        "--criterion",
        "token_ls",
        "--seed",
        "1",
        "--leave-unmasked-prob",
        "0.1",
        "--random-token-prob",
        "0.1",
    )
    torch.manual_seed(0)
    model = task.build_model(cfg.model).to(device)
    task.build_criterion(cfg.criterion)  # the configuration fairseq-train would accept
    task.load_dataset("train")
    masker = task.build_masker()
    from se_fairseq.core.constants import ONLINE_SEEDS
    from se_fairseq.core.online import reference_forward
    from se_fairseq.scoring import score_features

    itr = task.get_batch_iterator(
        task.dataset("train"), max_tokens=s["max_tokens"], seed=1, num_workers=0
    ).next_epoch_itr(shuffle=False)
    rows = differ = batches = 0
    syncs = []
    for n, batch in enumerate(itr):
        if n >= limit:
            break
        tokens = batch["net_input"]["src_tokens"].to(device)
        seeds = batch[ONLINE_SEEDS].to(device)
        with reference_forward(model) as inner:
            features, _ = inner(tokens, features_only=True)
            scores, _ = score_features(
                inner, features, tokens, task.dictionary.pad(), "correctness"
            )
        synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                dev = masker.mask(tokens, scores, seeds)
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
        syncs.append(sum("synchroniz" in str(w.message) for w in caught))
        cpu = masker.mask(tokens.cpu(), scores.cpu(), seeds.cpu())
        for a, b in zip(cpu, dev):
            differ += int((a != b.cpu()).any(dim=1).sum())
        rows += len(tokens)
        batches += 1
    return {
        "batches": batches,
        "rows": rows,
        "rows_differing": differ,
        "host_syncs_in_masking_per_batch": syncs,
    }


# ------------------------------------------------------------------ 2. se-score


def save_checkpoint(data, s, path):
    from support.fairseq_data import save_untrained_checkpoint

    return save_untrained_checkpoint(data, path, model_args(s))


def se_score_speed(data, s, device, root):
    from se_fairseq.scoring_job import score_corpus

    ckpt = save_checkpoint(data, s, os.path.join(root, "model.pt"))
    precisions = ["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]
    out, scores = {}, {}
    for precision in precisions:
        options = dict(device=str(device), precision=precision, max_tokens=s["max_tokens"] * 2)
        score_corpus(
            data,
            ckpt,
            out=os.path.join(root, f"warm-{precision}"),
            chunk_tokens=4096,
            stop_after_chunks=1,
            **options,
        )  # warm-up: CUDA context, kernels
        synchronize(device)
        start = time.perf_counter()
        result = score_corpus(data, ckpt, out=os.path.join(root, f"s-{precision}"), **options)
        synchronize(device)
        seconds = time.perf_counter() - start
        tokens = result.summary["tokens"]
        scores[precision] = np.load(result.array_path).astype(np.float64)
        out[precision] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
    for precision in precisions[1:]:
        diff = np.abs(scores[precision] - scores["fp32"])
        out[precision]["max_abs_diff_vs_fp32"] = float(diff.max())
        out[precision]["mean_abs_diff_vs_fp32"] = float(diff.mean())
        out[precision]["speedup_vs_fp32"] = (
            out[precision]["tokens_per_s"] / out["fp32"]["tokens_per_s"]
        )
    return out


# ------------------------------------------------------------------ 3. training step

STEP_CASES = {
    "masked_lm": ["--task", "masked_lm", "--criterion", "masked_lm"],
    "se_mlm topk + token_ls": ["--task", "se_mlm", "--criterion", "token_ls"],
    "se_mlm --se-online + token_ls": ["--task", "se_mlm", "--se-online", "--criterion", "token_ls"],
}


def step_time(data, s, device):
    from fairseq.optim import build_optimizer

    out = {}
    for name, extra in STEP_CASES.items():
        task, cfg = setup_task(
            data, *model_args(s), "--seed", "1", "--optimizer", "adam", "--lr", "1e-5", *extra
        )
        torch.manual_seed(0)
        model = task.build_model(cfg.model).to(device)
        criterion = task.build_criterion(cfg.criterion).to(device)
        optimizer = build_optimizer(cfg.optimizer, [p for p in model.parameters()])
        task.load_dataset("train")
        itr = task.get_batch_iterator(
            task.dataset("train"), max_tokens=s["max_tokens"], seed=1, num_workers=0
        ).next_epoch_itr(shuffle=True)
        times = []
        for n, batch in enumerate(itr):
            if n >= s["warmup"] + s["steps"]:
                break
            batch = _to(batch, device)
            synchronize(device)
            start = time.perf_counter()
            task.train_step(batch, model, criterion, optimizer, update_num=n)
            optimizer.step()
            optimizer.zero_grad()
            synchronize(device)
            if n >= s["warmup"]:
                times.append(time.perf_counter() - start)
        out[name] = {
            "steps": len(times),
            "median_s": float(np.median(times)),
            "mean_s": float(np.mean(times)),
        }
    base = out["masked_lm"]["median_s"]
    for name in out:
        out[name]["ratio_to_masked_lm"] = out[name]["median_s"] / base
    return out


def _to(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


# ------------------------------------------------------------------ report


def markdown(report):
    lines = [f"# GPU check ({report['device_name']}, torch {report['torch']})", ""]
    lines += [
        "## CPU vs device masking (rows differing must be 0)",
        "",
        "| case | batches | rows | rows differing |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in report["parity"].items():
        lines.append(f"| {name} | {r['batches']} | {r['rows']} | {r['rows_differing']} |")
    o = report["online_parity"]
    lines.append(
        f"| --se-online (live scores), 80/10/10 | {o['batches']} | {o['rows']} | "
        f"{o['rows_differing']} |"
    )
    lines += [
        "",
        f"host syncs in online masking per batch: {o['host_syncs_in_masking_per_batch']}",
        "",
        "## se-score",
        "",
        "| precision | tokens/s | speed-up vs fp32 | max abs diff |",
        "| --- | --- | --- | --- |",
    ]
    for p, r in report["se_score"].items():
        lines.append(
            f"| {p} | {r['tokens_per_s']:.0f} | {r.get('speedup_vs_fp32', 1.0):.2f} | "
            f"{r.get('max_abs_diff_vs_fp32', 0.0):.3g} |"
        )
    lines += [
        "",
        "## training step (fp32)",
        "",
        "| task | median s | ratio to masked_lm |",
        "| --- | --- | --- |",
    ]
    for name, r in report["step"].items():
        lines.append(f"| {name} | {r['median_s']:.4f} | {r['ratio_to_masked_lm']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU self-test)")
    parser.add_argument("--parity-batches", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: torch sees no CUDA device")
    s = sizes(args.quick)
    os.makedirs(args.out, exist_ok=True)
    report = {
        "device": str(device),
        "torch": torch.__version__,
        "sizes": s,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "timings_s": {},
    }
    failures = []
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        data = make_corpus(root, s)
        report["timings_s"]["corpus"] = time.perf_counter() - start
        for key, fn in (
            ("parity", lambda: parity(data, s, device, args.parity_batches)),
            ("online_parity", lambda: online_parity(data, s, device, args.parity_batches)),
            ("se_score", lambda: se_score_speed(data, s, device, root)),
            ("step", lambda: step_time(data, s, device)),
        ):
            start = time.perf_counter()
            try:
                report[key] = fn()
            except Exception as err:  # report what ran; the shell script shows the traceback
                import traceback

                report[key] = {"error": repr(err), "traceback": traceback.format_exc()}
                failures.append(key)
            report["timings_s"][key] = time.perf_counter() - start
            with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
                json.dump(report, f, indent=2)
    differing = sum(
        r["rows_differing"]
        for r in report.get("parity", {}).values()
        if isinstance(r, dict) and "rows_differing" in r
    )
    differing += report.get("online_parity", {}).get("rows_differing", 0)
    report["parity_ok"] = not failures[:2] and differing == 0
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    if not failures:
        with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
            f.write(markdown(report))
    print(json.dumps({k: report[k] for k in ("parity_ok", "timings_s")}, indent=2))
    if failures or differing:
        print(f"gpu_check.py: failed parts {failures}, {differing} rows differing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
