"""Held-out MLM loss and accuracy of checkpoints, under random masking and on hard tokens.

    python evaluate.py DATA --split test --model NAME=CKPT [--model NAME=CKPT ...] --out results.json

- random: fairseq ``masked_lm`` masking (15 %, every selected token -> <mask>), fixed seed;
- hard:   the 15 % of tokens of each block that the vanilla model knows least
          (``se_mlm --se-select topk`` over ``<split>.se_scores`` written by
          ``se-score --split <split>`` with the vanilla checkpoint).

Every model sees exactly the same masked batches. Losses are in bits per
masked token (base 2, as fairseq logs them).
"""
import argparse
import json
import math
import os

import torch


def masked_batches(data, split, task_args, seed=1, batch_size=16):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--arch", "roberta_base", "--seed", str(seed),
                                                "--leave-unmasked-prob", "0", "--random-token-prob", "0",
                                                *task_args])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset(split)
    itr = task.get_batch_iterator(task.dataset(split), max_sentences=batch_size, seed=seed,
                                  num_workers=0).next_epoch_itr(shuffle=False)
    return list(itr)


@torch.no_grad()
def evaluate(model, batches, pad):
    nll = correct = total = 0.0
    for batch in batches:
        masked = batch["target"].ne(pad)
        if not masked.any():
            continue
        logits = model(batch["net_input"]["src_tokens"], masked_tokens=masked)[0]
        targets = batch["target"][masked]
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        nll += float(-lprobs.gather(-1, targets[:, None]).sum())
        correct += float((lprobs.argmax(-1) == targets).sum())
        total += float(masked.sum())
    return {"loss": nll / total / math.log(2), "accuracy": 100.0 * correct / total, "tokens": int(total)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--curve-split", default=None,
                        help="also evaluate this split under fairseq-train's own validation masks "
                        "(the update-0 point of the report's training curves)")
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT")
    parser.add_argument("--tokens-per-sample", default="128")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)  # fairseq's dataset chatter; results are printed below
    from fairseq import checkpoint_utils

    blocking = ["--tokens-per-sample", args.tokens_per_sample, "--sample-break-mode", "none"]
    suites = {
        "random": masked_batches(args.data, args.split, ["--task", "masked_lm", *blocking]),
        **({"curve": masked_batches(args.data, args.curve_split, ["--task", "masked_lm", *blocking],
                                    batch_size=32)} if args.curve_split else {}),
        "hard": masked_batches(args.data, args.split, ["--task", "se_mlm", "--se-select", "topk",
                                                       *blocking]),
    }
    results = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": args.data})
        model = models[0].eval()
        results[name] = {suite: evaluate(model, batches, task.source_dictionary.pad())
                         for suite, batches in suites.items()}
        r = results[name]
        print(f"[eval] {name:<16} random-mask loss {r['random']['loss']:.3f} acc {r['random']['accuracy']:.2f}%"
              f" | hard-15% loss {r['hard']['loss']:.3f} acc {r['hard']['accuracy']:.2f}%", flush=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
