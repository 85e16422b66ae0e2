"""One rank of tests/test_ddp.py: token_ls under fairseq's data-parallel wrappers.

Each of the two gloo ranks builds the same tiny RoBERTa (same seed, dropout off),
wraps it in fairseq's ``DistributedFairseqModel`` (``pytorch_ddp`` or
``legacy_ddp``), and runs what fairseq's ``Trainer.train_step`` runs on its own
half of a batch: ``task.train_step`` (for ``--se-online``: task.mask_online, then
the criterion), the all-reduce of sample size and logging outputs
(``_fast_stat_sync_sum``), ``optimizer.all_reduce_grads`` and
``optimizer.multiply_grads(world_size / sample_size)``. The gradients must equal
one process running the same on the whole batch, unwrapped.

Each rank writes its findings to ``<out>/rank<r>.json``; the test asserts on them.
"""

import copy
import datetime
import json
import os
import traceback

import torch
import torch.distributed as dist
from support.fairseq_data import NO_DROPOUT, TINY_ROBERTA, setup_task

CASES = [
    (mode, backend) for mode in ("offline", "online") for backend in ("pytorch_ddp", "legacy_ddp")
]
BATCH, STEPS = 8, 2


def build(data, mode):
    extra = ["--se-online"] if mode == "online" else []  # offline: the score file beside train
    task, cfg = setup_task(
        data,
        *TINY_ROBERTA,
        "--cpu",
        "--seed",
        "3",
        "--task",
        "se_mlm",
        "--se-select",
        "topk",
        "--criterion",
        "token_ls",
        "--tls-alpha",
        "0.3",
        *NO_DROPOUT,
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        *extra,
    )
    task.load_dataset("train")
    return task, cfg


def build_model(task, cfg):
    """The same weights on every rank; perturbed so that p_ref is far from uniform."""
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    return model


def batch_ids(task):
    itr = task.get_batch_iterator(
        task.dataset("train"), max_sentences=BATCH, seed=3, num_workers=0
    ).next_epoch_itr(shuffle=True)
    full = [b["id"].tolist() for b in itr if len(b["id"]) == BATCH]
    return full[:STEPS]


def collate(task, ids):
    """What a rank's data loader gives it: its own rows, collated (padded) on their own."""
    ds = task.dataset("train")
    return ds.collater([ds[i] for i in ids])


def wrap(model, cfg, backend, group):
    """fairseq's DistributedFairseqModel with the trainer's options. It passes
    device_ids=[cfg.device_id] to torch's DDP, which only a GPU module accepts; for
    the CPU module here the ids are dropped (the one change from fairseq-train)."""
    import fairseq.models.distributed_fairseq_model as dfm
    from fairseq.models import DistributedFairseqModel

    torch_ddp = dfm.DistributedDataParallel

    def cpu_ddp(module, device_ids=None, output_device=None, **kwargs):
        return torch_ddp(module, **kwargs)

    cfg.distributed_training.ddp_backend = backend
    dfm.DistributedDataParallel = cpu_ddp
    try:
        return DistributedFairseqModel(
            cfg.distributed_training, model, process_group=group, device=torch.device("cpu")
        )
    finally:
        dfm.DistributedDataParallel = torch_ddp


def fairseq_step(task, model, criterion, optimizer, sample, world_size, group):
    """fairseq Trainer.train_step up to the optimizer step, for one sample per update."""
    from fairseq.distributed import utils as distributed_utils

    from se_fairseq.core.online import unwrap_model

    optimizer.zero_grad()
    loss, sample_size, log = task.train_step(sample, model, criterion, optimizer, update_num=0)
    sample_size = sample_size.float() if torch.is_tensor(sample_size) else float(sample_size)
    if world_size > 1:  # Trainer._fast_stat_sync_sum (token_ls's outputs can be summed)
        assert criterion.logging_outputs_can_be_summed()
        data = {"extra_stats_0": sample_size, **{"logging_outputs_" + k: v for k, v in log.items()}}
        data = distributed_utils.all_reduce_dict(data, device=torch.device("cpu"), group=group)
        sample_size = data["extra_stats_0"]
        log = {k[len("logging_outputs_") :]: v for k, v in data.items() if k != "extra_stats_0"}
    optimizer.all_reduce_grads(model)  # legacy_ddp reduces here, pytorch_ddp did in backward
    optimizer.multiply_grads(world_size / (sample_size or 1.0))
    grads = {
        n: p.grad.detach().clone()
        for n, p in unwrap_model(model).named_parameters()
        if p.grad is not None
    }
    stats = {
        k: float(log[k])
        for k in ("loss", "nll_loss", "sample_size", "correct", "ref_correct", "ref_total")
    }
    return grads, stats


def max_rel_error(got, want):
    """(error, parameter): the largest |got - want| of a parameter over the largest
    |want| of that parameter. The key biases of attention are left out: their exact
    gradient is zero (softmax ignores a shift shared by all keys), so they hold only
    float32 noise, measured against the largest gradient of all instead."""
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
    top = max(float(w.abs().max()) for w in want.values())
    return max(
        (
            float((got[n] - want[n]).abs().max())
            / (top if n.endswith("k_proj.bias") else float(want[n].abs().max())),
            n,
        )
        for n in want
    )


def run_case(task, cfg, mode, backend, rank, world_size, group):
    from fairseq.optim import build_optimizer

    from se_fairseq.core.online import unwrap_model

    criterion = task.build_criterion(cfg.criterion)
    model = build_model(task, cfg)
    reference = copy.deepcopy(model)  # one process, unwrapped
    ref_optimizer = build_optimizer(cfg.optimizer, list(reference.parameters()))

    wrapped = wrap(model, cfg, backend, group)
    assert unwrap_model(wrapped) is model
    optimizer = build_optimizer(cfg.optimizer, list(wrapped.parameters()))
    calls = {"wrapper": 0, "model": 0}
    wrapped.register_forward_pre_hook(lambda *_: calls.__setitem__("wrapper", calls["wrapper"] + 1))
    model.register_forward_pre_hook(lambda *_: calls.__setitem__("model", calls["model"] + 1))

    out = {"steps": []}
    for ids in batch_ids(task):
        half = ids[rank * BATCH // world_size : (rank + 1) * BATCH // world_size]
        before = dict(calls)
        grads, stats = fairseq_step(
            task, wrapped, criterion, optimizer, collate(task, half), world_size, group
        )
        step_calls = {k: calls[k] - before[k] for k in calls}
        want, want_stats = fairseq_step(
            task, reference, criterion, ref_optimizer, collate(task, ids), 1, None
        )
        # negative control: this rank's half alone is far from the whole batch
        alone, _ = fairseq_step(
            task, reference, criterion, ref_optimizer, collate(task, half), 1, None
        )
        out["steps"].append(
            {
                "grad_error": max_rel_error(grads, want),
                "half_alone_error": max_rel_error(alone, want),
                "stats": stats,
                "want_stats": want_stats,
                "calls": step_calls,
                "grad_norm": float(sum(g.double().pow(2).sum() for g in grads.values()).sqrt()),
            }
        )
    return out


def run(rank, world_size, data, out_dir):
    torch.set_num_threads(1)
    import fairseq  # noqa: F401  (registers se_mlm / token_ls)

    dist.init_process_group(
        "gloo",
        init_method="file://" + os.path.join(out_dir, "rendezvous"),
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    group = dist.new_group(list(range(world_size)))
    results = {}
    try:
        for mode in ("offline", "online"):
            task, cfg = build(data, mode)
            for m, backend in CASES:
                if m != mode:
                    continue
                name = f"{mode}-{backend}"
                try:
                    results[name] = run_case(task, cfg, mode, backend, rank, world_size, group)
                except Exception:  # noqa: BLE001  (reported to the test, which fails on it)
                    results[name] = {"error": traceback.format_exc()}
                    raise
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f, indent=1)
        dist.destroy_process_group()
