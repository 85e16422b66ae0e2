"""Time training updates of the token_ls criterion against fairseq's masked_lm.

Variants, each a forward + backward + optimizer step on the same batches:

  (a) mlm       task masked_lm, criterion masked_lm (fairseq's baseline)
  (b) tls       task se_mlm (top-k masking by score), criterion token_ls
                (--tls-alpha, reference forward projects only the masked positions)
  (c) tls-full  as (b), but the reference forward projects EVERY position through
                the LM head and then indexes the masked ones (the reference code's way)

The variants start from the same weights and run in the same process, alternating
in rounds (the order rotating each round) so that load from elsewhere on the
machine spreads over all of them. (a) and (b)/(c) read the same blocks in the same
order; only the choice of masked tokens differs (random vs by score, ~15% each).

Without --data, a Zipf corpus with a --vocab word dictionary is written and
binarized in a temporary directory, with a random score file for its train split.

    python benchmarks/bench_token_ls.py --updates 30
"""

import argparse
import copy
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings

import fairseq  # noqa: F401  (registers se_mlm / token_ls)
import numpy as np
import torch
from fairseq import optim, tasks

from se_fairseq.criterions.token_ls import TokenLabelSmoothingCriterion
from se_fairseq.data import score_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from support.fairseq_data import binarize, parse_training_args, write_scores, write_zipf_corpus  # noqa: E402


class FullHeadReferenceTLS(TokenLabelSmoothingCriterion):
    """token_ls whose reference forward runs the LM head at every position and then
    keeps the masked ones (as the reference code does)."""

    @staticmethod
    def _reference_logits(inner, net_input, masked):
        return inner(**net_input)[0][masked]  # no masked_tokens: all positions, then index


# ---------------------------------------------------------------------------
# data


# ---------------------------------------------------------------------------
# setup


def model_args(a):
    return [
        "--arch",
        "roberta_base",
        "--encoder-layers",
        str(a.layers),
        "--encoder-embed-dim",
        str(a.embed_dim),
        "--encoder-ffn-embed-dim",
        str(a.ffn_dim),
        "--encoder-attention-heads",
        str(a.heads),
        "--max-positions",
        str(a.tokens_per_sample),
        "--tokens-per-sample",
        str(a.tokens_per_sample),
        "--cpu",
        "--seed",
        "1",
        "--optimizer",
        "adam",
        "--lr",
        "1e-4",
        "--batch-size",
        str(a.batch_size),
    ]


parse = parse_training_args


def batches_of(task, batch_size, count):
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        task.dataset("train"), max_sentences=batch_size, seed=1, num_workers=0
    ).next_epoch_itr(shuffle=True)
    batches = list(itr)
    full = [b for b in batches if len(b["id"]) == batch_size]  # equal work per update
    batches = full or batches
    return [batches[i % len(batches)] for i in range(count)]


class Variant:
    def __init__(self, name, task, model, criterion, cfg, batches):
        self.name, self.task, self.model, self.criterion = name, task, model, criterion
        self.optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
        self.batches = batches
        self.next = 0
        self.times = []

    def update(self, timed=True):
        sample = self.batches[self.next]
        self.next += 1
        start = time.perf_counter()
        self.optimizer.zero_grad()
        loss, sample_size, _ = self.task.train_step(
            sample, self.model, self.criterion, self.optimizer, self.next
        )
        self.optimizer.multiply_grads(1.0 / max(float(sample_size), 1.0))
        self.optimizer.step()
        elapsed = time.perf_counter() - start
        if timed:
            self.times.append(elapsed)
        return loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=30, help="timed updates per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed updates per variant first")
    ap.add_argument("--round-size", type=int, default=5, help="updates per variant per round")
    ap.add_argument("--data", help="data-bin with train split and dict.txt (default: make one)")
    ap.add_argument("--vocab", type=int, default=8000, help="words in the generated corpus")
    ap.add_argument("--num-train", type=int, default=2000, help="lines in the generated corpus")
    ap.add_argument("--alpha", type=float, default=0.1, help="--tls-alpha of (b) and (c)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--ffn-dim", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tokens-per-sample", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0 = torch's default); 1 keeps timings stable on a shared "
        "machine, where spinning OpenMP threads otherwise swamp the measurement",
    )
    ap.add_argument("--show-times", action="store_true", help="print every update's time")
    ap.add_argument(
        "--online",
        action="store_true",
        help="also time (d) se_mlm --se-online + token_ls (scores from the live model; "
        "its bound: (c), offline plus the LM head at every position)",
    )
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # fairseq's INFO/WARNING chatter
    if a.threads:
        torch.set_num_threads(a.threads)

    tmp = tempfile.mkdtemp(prefix="bench_token_ls_")
    try:
        t0 = time.perf_counter()
        if a.data:
            data = a.data
            prefix = score_file.default_prefix(os.path.join(data, "train"))
            if not all(os.path.exists(p) for p in score_file.paths(prefix)):
                prefix = os.path.join(tmp, "train.se_scores")
                write_scores(
                    os.path.join(data, "train"),
                    prefix=prefix,
                    blocking={"tokens_per_sample": a.tokens_per_sample},
                )
        else:
            text = write_zipf_corpus(
                tmp,
                vocab=a.vocab,
                write_dict=True,
                splits=(("train", a.num_train), ("valid", max(a.num_train // 10, 10))),
            )
            data = binarize(tmp, os.path.join(tmp, "data-bin"), text["dict"])
            prefix = score_file.default_prefix(os.path.join(data, "train"))
            write_scores(
                os.path.join(data, "train"),
                prefix=prefix,
                blocking={"tokens_per_sample": a.tokens_per_sample},
            )
        common = model_args(a)
        n_batches = a.warmup + a.updates

        mlm_cfg = parse(data, *common, "--task", "masked_lm", "--criterion", "masked_lm")
        mlm_task = tasks.setup_task(mlm_cfg.task)
        se_cfg = parse(
            data,
            *common,
            "--task",
            "se_mlm",
            "--se-scores",
            prefix,
            "--criterion",
            "token_ls",
            "--tls-alpha",
            str(a.alpha),
        )
        se_task = tasks.setup_task(se_cfg.task)

        pad = se_task.source_dictionary.pad()
        mlm_batches = batches_of(mlm_task, a.batch_size, n_batches)
        se_batches = batches_of(se_task, a.batch_size, n_batches)
        for x, y in zip(mlm_batches, se_batches):  # same blocks, same order
            assert torch.equal(x["id"], y["id"])
            assert torch.equal(
                x["net_input"]["src_tokens"].ne(pad), y["net_input"]["src_tokens"].ne(pad)
            )

        torch.manual_seed(1)
        base = mlm_task.build_model(mlm_cfg.model)
        mlm_crit = mlm_task.build_criterion(mlm_cfg.criterion)
        tls_crit = se_task.build_criterion(se_cfg.criterion)
        full_crit = FullHeadReferenceTLS(se_cfg.criterion, se_task)
        variants = [
            Variant("(a) masked_lm", mlm_task, copy.deepcopy(base), mlm_crit, mlm_cfg, mlm_batches),
            Variant(
                f"(b) token_ls a={a.alpha}",
                se_task,
                copy.deepcopy(base),
                tls_crit,
                se_cfg,
                se_batches,
            ),
            Variant(
                "(c) token_ls full-head ref",
                se_task,
                copy.deepcopy(base),
                full_crit,
                se_cfg,
                se_batches,
            ),
        ]

        if a.online:
            on_cfg = parse(
                data,
                *common,
                "--task",
                "se_mlm",
                "--se-online",
                "--criterion",
                "token_ls",
                "--tls-alpha",
                str(a.alpha),
            )
            on_task = tasks.setup_task(on_cfg.task)
            on_batches = batches_of(on_task, a.batch_size, n_batches)
            for x, y in zip(on_batches, se_batches):
                assert torch.equal(x["id"], y["id"])
            variants.append(
                Variant(
                    "(d) online SE + token_ls",
                    on_task,
                    copy.deepcopy(base),
                    on_task.build_criterion(on_cfg.criterion),
                    on_cfg,
                    on_batches,
                )
            )

        # (b) and (c) compute the same loss (same weights, same batch; eval mode so that
        # dropout does not draw different masks for the two calls)
        with torch.no_grad():
            variants[1].model.eval(), variants[2].model.eval()
            lb = tls_crit(variants[1].model, se_batches[0])[0]
            lc = full_crit(variants[2].model, se_batches[0])[0]
            variants[1].model.train(), variants[2].model.train()
        torch.testing.assert_close(lb, lc, rtol=1e-4, atol=0.0)

        setup_s = time.perf_counter() - t0
        sel_mlm = np.mean([int(b["target"].ne(pad).sum()) for b in mlm_batches[a.warmup :]])
        sel_se = np.mean([int(b["target"].ne(pad).sum()) for b in se_batches[a.warmup :]])
        ntok = np.mean([int(b["net_input"]["src_tokens"].ne(pad).sum()) for b in se_batches])
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: "
            f"{a.layers} layers, embed {a.embed_dim}, ffn {a.ffn_dim}, heads {a.heads}, "
            f"vocab {len(se_task.source_dictionary)}; batch {a.batch_size} x "
            f"{a.tokens_per_sample} ({ntok:.0f} non-pad tokens); selected tokens/batch: "
            f"masked_lm {sel_mlm:.1f}, se_mlm {sel_se:.1f}; setup {setup_s:.1f}s"
        )

        for v in variants:
            for _ in range(a.warmup):
                v.update(timed=False)
        done, rnd = 0, 0
        while done < a.updates:
            k = min(a.round_size, a.updates - done)
            shift = rnd % len(variants)
            order = variants[shift:] + variants[:shift]
            for v in order:
                for _ in range(k):
                    v.update()
            done += k
            rnd += 1

        if a.show_times:
            for v in variants:
                print(v.name, np.round(v.times, 3).tolist())
        base_mean = np.mean(variants[0].times)
        print(f"{a.updates} timed updates per variant, {rnd} rounds of <= {a.round_size}")
        for v in variants:
            t = np.array(v.times)
            print(
                f"  {v.name:28s} mean {t.mean():.4f} s/update  median {np.median(t):.4f}  "
                f"min {t.min():.4f}  std {t.std():.4f}"
            )
        base_median = np.median(variants[0].times)
        ratio_b = np.mean(variants[1].times) / base_mean
        ratio_c = np.mean(variants[2].times) / base_mean
        med_b = np.median(variants[1].times) / base_median
        med_c = np.median(variants[2].times) / base_median
        print(f"ratio (b)/(a) = {ratio_b:.3f} of means, {med_b:.3f} of medians   (target <= 1.4)")
        print(f"ratio (c)/(a) = {ratio_c:.3f} of means, {med_c:.3f} of medians")
        print(f"ratio (c)/(b) = {ratio_c / ratio_b:.3f} of means, {med_c / med_b:.3f} of medians")
        if a.online:
            ratio_d = np.mean(variants[3].times) / base_mean
            med_d = np.median(variants[3].times) / base_median
            print(f"ratio (d)/(a) = {ratio_d:.3f} of means, {med_d:.3f} of medians")
            print(
                f"ratio (d)/(b) = {ratio_d / ratio_b:.3f} of means, {med_d / med_b:.3f} of medians"
            )
            print(
                f"ratio (d)/(c) = {ratio_d / ratio_c:.3f} of means, {med_d / med_c:.3f} of medians"
                "   (online vs its bound: offline + LM head at every position; target <= ~1)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
