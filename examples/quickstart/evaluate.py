"""Held-out evaluation of the quickstart's checkpoints, with a unigram baseline.

    python evaluate.py DATA --split test --model NAME=CKPT [...] --hard-scores PREFIX \\
        --rarity-scores PREFIX [--mask-share NAME="TASK ARGS" ...] --out results.json

The test split is cut into blocks exactly as training cuts it (``--tokens-per-sample``,
break mode none, ``<s>`` in front). Suites, each evaluated for every model on the same
masked inputs (every selected token becomes ``<mask>``; special tokens never count):

- ``random``: every test token is masked once: each block is evaluated in 7 passes, each
  masking a random seventh (14 %) of its tokens; so loss and accuracy cover all test tokens;
- ``hard``: per block, the 15 % of tokens with the highest score in ``--hard-scores``
  (the vanilla model's ``se-score --split test`` correctness file), masked together;
- ``bands``: the ``random`` suite split by frequency band: the test tokens sorted by their
  frequency in the train split, cut into thirds of the test tokens (whole token types per
  band): frequent, middle, rare.

The ``unigram`` row is the train split's unigram distribution (add-1 smoothing,
``se_fairseq.rarity``) on the same tokens: cross-entropy, and accuracy of always guessing
the most frequent token. Losses are bits per masked token.

``--mask-share NAME="ARGS"`` builds the train split through ``fairseq-train``'s task with
those task arguments and counts which band the first epoch's masked tokens fall in: what
each training method masks. The report also shows test sentences with the 15 % that the
vanilla's correctness scores (SE) and the rarity scores (``--rarity-scores``) would mask.
"""

import argparse
import json
import math
import os
import shlex

import numpy as np
import torch

BANDS = ("frequent", "middle", "rare")
FOLDS = 7
HARD_SHARE = 0.15


def load_blocks(data, split, tokens_per_sample, bos):
    """Token blocks as fairseq-train builds them with --sample-break-mode none:
    consecutive spans of tokens_per_sample - 1 tokens of the split, <s> in front.
    Returns (blocks, starts): the blocks (with <s>) and each one's offset in the file."""
    from se_fairseq.rarity import load_tokens

    flat = load_tokens(os.path.join(data, split))
    span = tokens_per_sample - 1
    starts = list(range(0, len(flat), span))
    return [np.concatenate([[bos], flat[s : s + span]]) for s in starts], starts


def score_blocks(prefix, split_path, starts, span):
    """Per-block score arrays (aligned with the blocks, 0 for <s>) from a score file."""
    from se_fairseq.data import score_file

    scores = np.asarray(score_file.ScoreFile(prefix, split_path).scores, dtype=np.float32)
    return [np.concatenate([[0.0], scores[s : s + span]]) for s in starts]


def top_share(score, eligible, share=HARD_SHARE):
    """The round(share x eligible) eligible positions with the highest scores (ties: lower
    position first)."""
    idx = np.flatnonzero(eligible)
    k = int(round(share * len(idx)))
    order = idx[np.argsort(-score[idx], kind="stable")]
    chosen = np.zeros(len(score), dtype=bool)
    chosen[order[:k]] = True
    return chosen


def random_folds(blocks, eligible, seed=1):
    """fold[b][i] in 0..FOLDS-1: the pass in which token i of block b is masked."""
    folds = []
    for b, ok in enumerate(eligible):
        rng = np.random.default_rng([seed, b])
        fold = np.full(len(ok), -1)
        idx = np.flatnonzero(ok)
        fold[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % FOLDS
        folds.append(fold)
    return folds


@torch.no_grad()
def token_losses(model, blocks, masks, pad, mask_idx, batch_size=32):
    """Per masked token: loss (nats) and whether the argmax is right, for each block's mask.
    Returns two lists of arrays aligned with the masks' True positions."""
    losses, correct = [], []
    for first in range(0, len(blocks), batch_size):
        rows = range(first, min(first + batch_size, len(blocks)))
        width = max(len(blocks[b]) for b in rows)
        src = torch.full((len(rows), width), pad, dtype=torch.long)
        sel = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, b in enumerate(rows):
            src[r, : len(blocks[b])] = torch.from_numpy(blocks[b])
            sel[r, : len(blocks[b])] = torch.from_numpy(masks[b])
        targets = src[sel]
        src[sel] = mask_idx
        if not sel.any():
            losses += [np.zeros(0)] * len(rows)
            correct += [np.zeros(0, dtype=bool)] * len(rows)
            continue
        logits = model(src, masked_tokens=sel)[0]
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        nll = -lprobs.gather(-1, targets[:, None]).squeeze(-1).numpy()
        hit = (lprobs.argmax(-1) == targets).numpy()
        counts = sel.sum(1).tolist()
        for part_nll, part_hit in zip(
            np.split(nll, np.cumsum(counts)[:-1]), np.split(hit, np.cumsum(counts)[:-1])
        ):
            losses.append(part_nll)
            correct.append(part_hit)
    return losses, correct


def summary(nll, hit):
    nll, hit = np.asarray(nll, dtype=np.float64), np.asarray(hit, dtype=bool)
    if len(nll) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "tokens": 0}
    return {
        "loss": float(nll.mean() / math.log(2)),
        "accuracy": 100.0 * float(hit.mean()),
        "tokens": int(len(nll)),
    }


def frequency_bands(unigram, test_tokens):
    """band id (0 frequent, 1 middle, 2 rare) per dictionary id: the test tokens sorted by
    train frequency and cut into thirds of the test tokens, whole types per band."""
    types, occurrences = np.unique(test_tokens, return_counts=True)
    order = np.lexsort((types, -unigram.counts[types]))  # most frequent in train first
    cum = np.cumsum(occurrences[order]) - occurrences[order] / 2.0  # a type's midpoint
    band_of_type = np.minimum((3 * cum / len(test_tokens)).astype(int), 2)
    band = np.full(len(unigram.counts), 2)  # ids absent from test: rare
    band[types[order]] = band_of_type
    info = []
    for b, name in enumerate(BANDS):
        ids = types[order][band_of_type == b]
        train = unigram.counts[ids]
        info.append(
            {
                "band": name,
                "types": int(len(ids)),
                "test_tokens": int(occurrences[order][band_of_type == b].sum()),
                "train_count_max": int(train.max()) if len(ids) else 0,
                "train_count_min": int(train.min()) if len(ids) else 0,
            }
        )
    return band, info


def masked_train_targets(data, task_args, seed=1, tokens_per_sample=128):
    """Targets of the first epoch of the train split as fairseq-train's task masks it."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [
            data,
            "--arch",
            "roberta_base",
            "--seed",
            str(seed),
            "--tokens-per-sample",
            str(tokens_per_sample),
            "--sample-break-mode",
            "none",
            *task_args,
        ],
    )
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    pad = task.source_dictionary.pad()
    itr = task.get_batch_iterator(
        task.dataset("train"), max_sentences=64, seed=seed, num_workers=0
    ).next_epoch_itr(shuffle=False)
    return np.concatenate([b["target"][b["target"].ne(pad)].numpy() for b in itr])


def highlight(pieces, first, second):
    """One line of text from SentencePiece pieces; tokens in `first` as **x**, in `second`
    as [x], in both as **[x]**."""
    out = []
    for piece, a, b in zip(pieces, first, second):
        space = piece.startswith("\u2581")
        word = piece.lstrip("\u2581")
        if not word:
            out.append(" " if space else "")
            continue
        mark = f"[{word}]" if b else word
        mark = f"**{mark}**" if a else mark
        out.append((" " if space else "") + mark)
    return "".join(out).strip()


def examples(blocks, dictionary, se_masks, rarity_masks, eligible, count=3, span=40):
    """Three test passages (spread over the split) with what SE and rarity would mask.

    Blocks are consecutive spans of the split, so a passage may run over several of them
    (each block's masks are its own top 15 %). A passage starts after a paragraph end."""
    picks = np.linspace(0, len(blocks) - 1, count + 2).astype(int)[1:-1]
    out = []
    for b in picks:
        last = b
        while (
            last + 1 < len(blocks)
            and sum(len(blocks[i]) - 1 for i in range(b, last + 1)) < 3 * span
        ):
            last += 1
        join = lambda arrays: np.concatenate([a[1:] for a in arrays[b : last + 1]])  # drop each <s>
        tokens, se, rare, ok = join(blocks), join(se_masks), join(rarity_masks), join(eligible)
        eos = np.flatnonzero(tokens == dictionary.eos())
        start = int(eos[0]) + 1 if len(eos) and eos[0] < len(tokens) - span else 0
        sl = slice(start, min(start + span, len(tokens)))
        pieces = [
            dictionary[t] if k else "\u2581\u23ce" for t, k in zip(tokens[sl], ok[sl])
        ]  # </s>: a return sign
        out.append(
            {
                "block": int(b),
                "text": highlight(pieces, se[sl], rare[sl]),
                "se": int(se[sl].sum()),
                "rarity": int(rare[sl].sum()),
                "both": int((se[sl] & rare[sl]).sum()),
            }
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--model", action="append", required=True, help="NAME=CHECKPOINT (first: the vanilla)"
    )
    parser.add_argument(
        "--hard-scores",
        required=True,
        help="score file prefix of the split by the vanilla model (se-score --split test)",
    )
    parser.add_argument(
        "--rarity-scores",
        required=True,
        help="score file prefix of the split's rarity (se-score --metric rarity --split test)",
    )
    parser.add_argument(
        "--mask-share",
        action="append",
        default=[],
        help='NAME="TASK ARGS": count what this task configuration masks in train',
    )
    parser.add_argument("--tokens-per-sample", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)  # fairseq's dataset chatter; results are printed below
    from fairseq import checkpoint_utils

    from se_fairseq.rarity import Unigram

    unigram = Unigram.from_data(args.data)
    special = np.array(unigram.special)
    split_path = os.path.join(args.data, args.split)
    models = [spec.split("=", 1) for spec in args.model]
    first_model, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [models[0][1]], arg_overrides={"data": args.data}
    )
    dictionary = task.source_dictionary
    pad, mask_idx = dictionary.pad(), dictionary.index("<mask>")
    blocks, starts = load_blocks(args.data, args.split, args.tokens_per_sample, dictionary.bos())
    span = args.tokens_per_sample - 1
    eligible = [~np.isin(b, special) for b in blocks]
    folds = random_folds(blocks, eligible)
    hard = [
        top_share(s, ok)
        for s, ok in zip(score_blocks(args.hard_scores, split_path, starts, span), eligible)
    ]
    rare = [
        top_share(s, ok)
        for s, ok in zip(score_blocks(args.rarity_scores, split_path, starts, span), eligible)
    ]

    test_tokens = np.concatenate([b[ok] for b, ok in zip(blocks, eligible)])
    band, band_info = frequency_bands(unigram, test_tokens)
    # token ids of each suite, in the order token_losses returns them
    fold_masks = [[f == k for f in folds] for k in range(FOLDS)]
    random_ids = np.concatenate([b[m] for k in range(FOLDS) for b, m in zip(blocks, fold_masks[k])])
    hard_ids = np.concatenate([b[m] for b, m in zip(blocks, hard)])

    def evaluate_suites(nll_of, hit_of):
        """nll/hit arrays of the random suite (fold order) and the hard suite -> summaries."""
        r_nll, r_hit, h_nll, h_hit = (
            nll_of("random"),
            hit_of("random"),
            nll_of("hard"),
            hit_of("hard"),
        )
        out = {"random": summary(r_nll, r_hit), "hard": summary(h_nll, h_hit), "bands": {}}
        for b, name in enumerate(BANDS):
            sel = band[random_ids] == b
            out["bands"][name] = summary(r_nll[sel], r_hit[sel])
        return out

    top = int(np.argmax(unigram.logp))
    uni = {
        "random": (-unigram.logp[random_ids], random_ids == top),
        "hard": (-unigram.logp[hard_ids], hard_ids == top),
    }
    results = {"unigram": evaluate_suites(lambda s: uni[s][0], lambda s: uni[s][1])}
    # per-token losses in bits (for paired error bars in the report) and the random suite's bands
    per_token = {
        "random_band": band[random_ids],
        "unigram.random": uni["random"][0] / math.log(2),
        "unigram.hard": uni["hard"][0] / math.log(2),
    }
    for name, path in models:
        if name == models[0][0]:
            model = first_model[0]
        else:
            model = checkpoint_utils.load_model_ensemble_and_task(
                [path], arg_overrides={"data": args.data}
            )[0][0]
        model.eval()
        runs = {
            "random": [
                token_losses(model, blocks, fold_masks[k], pad, mask_idx) for k in range(FOLDS)
            ],
            "hard": [token_losses(model, blocks, hard, pad, mask_idx)],
        }
        flat = {
            s: (
                np.concatenate([x for nll, _ in r for x in nll]),
                np.concatenate([x for _, hit in r for x in hit]),
            )
            for s, r in runs.items()
        }
        results[name] = evaluate_suites(lambda s: flat[s][0], lambda s: flat[s][1])
        per_token[f"{name}.random"] = flat["random"][0] / math.log(2)
        per_token[f"{name}.hard"] = flat["hard"][0] / math.log(2)
        r = results[name]
        print(
            f"[eval] {name:<10} random-mask loss {r['random']['loss']:.3f} "
            f"acc {r['random']['accuracy']:.2f}%"
            f" | hard-15% loss {r['hard']['loss']:.3f} acc {r['hard']['accuracy']:.2f}% | bands "
            + " ".join(f"{r['bands'][b]['loss']:.2f}" for b in BANDS),
            flush=True,
        )
    u = results["unigram"]
    print(
        f"[eval] {'unigram':<10} random-mask loss {u['random']['loss']:.3f} "
        f"acc {u['random']['accuracy']:.2f}%"
        f" | hard-15% loss {u['hard']['loss']:.3f} | bands "
        + " ".join(f"{u['bands'][b]['loss']:.2f}" for b in BANDS),
        flush=True,
    )

    shares = {}
    train_eligible = int(unigram.counts.sum() - unigram.counts[special].sum())
    for spec in args.mask_share:
        name, task_args = spec.split("=", 1)
        targets = masked_train_targets(
            args.data, shlex.split(task_args), tokens_per_sample=args.tokens_per_sample
        )
        counts = np.bincount(band[targets], minlength=3)
        shares[name] = {
            "masked": int(len(targets)),
            "args": task_args,
            "rate": float(len(targets) / train_eligible),
            **{b: float(counts[i] / max(1, len(targets))) for i, b in enumerate(BANDS)},
        }
        print(
            f"[eval] masks of {name:<10} {shares[name]['rate']:.1%} of train tokens: "
            + " ".join(f"{b} {shares[name][b]:.1%}" for b in BANDS),
            flush=True,
        )
    test_band_counts = np.bincount(band[test_tokens], minlength=3)
    hard_counts = np.bincount(band[hard_ids], minlength=3)
    rare_ids = np.concatenate([b[m] for b, m in zip(blocks, rare)])
    rare_counts = np.bincount(band[rare_ids], minlength=3)
    meta = {
        "split": args.split,
        "blocks": len(blocks),
        "tokens": int(len(test_tokens)),
        "random_folds": FOLDS,
        "hard_share": HARD_SHARE,
        "bands": band_info,
        "unigram": unigram.describe(),
        "unigram_top_token": dictionary[top],
        "test_band_share": {
            b: float(test_band_counts[i] / len(test_tokens)) for i, b in enumerate(BANDS)
        },
        "test_masks": {
            "se": {b: float(hard_counts[i] / max(1, len(hard_ids))) for i, b in enumerate(BANDS)},
            "rarity": {
                b: float(rare_counts[i] / max(1, len(rare_ids))) for i, b in enumerate(BANDS)
            },
            "overlap": float(
                sum((h & r).sum() for h, r in zip(hard, rare)) / max(1, len(hard_ids))
            ),
        },
        "models": [name for name, _ in models],
    }
    out = {
        "meta": meta,
        "results": results,
        "mask_shares": shares,
        "examples": examples(blocks, dictionary, hard, rare, eligible),
    }
    np.savez_compressed(os.path.splitext(args.out)[0] + ".tokens.npz", **per_token)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
