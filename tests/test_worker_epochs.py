"""Masks per (epoch, sample) whatever the DataLoader worker count, and across resumes.

fairseq reuses one DataLoader with persistent workers across epochs; these tests
iterate whole epochs through ``task.get_batch_iterator`` exactly as fairseq-train
does, with 0, 1 and 2 worker processes.
"""

import pytest
import torch
from support.fairseq_data import make_task

EPOCHS = (1, 2, 3)


def epoch_masks(task, num_workers, epochs=EPOCHS, batch_size=8):
    """{(epoch, sample id): masked source row} over whole epochs of one iterator."""
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        task.dataset("train"),
        max_sentences=batch_size,
        seed=5,
        epoch=epochs[0],
        num_workers=num_workers,
    )
    out = {}
    for epoch in epochs:
        batches = itr.next_epoch_itr(shuffle=True)
        assert itr.epoch == epoch
        for batch in batches:
            src = batch["net_input"]["src_tokens"]
            for row, i in enumerate(batch["id"].tolist()):
                out[(epoch, i)] = src[row]
    return out


def same_epoch_table(masks, epochs=EPOCHS):
    """Share of samples whose mask in epoch e equals the one in epoch e - 1."""
    ids = sorted({i for _, i in masks})
    return {
        e: sum(torch.equal(masks[(e, i)], masks[(e - 1, i)]) for i in ids) / len(ids)
        for e in epochs[1:]
    }


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "random", "topk"])
def test_masks_do_not_depend_on_the_worker_count(scored_corpus, mode):
    by_workers = {}
    for workers in (0, 1, 2):
        task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-select", mode)
        by_workers[workers] = epoch_masks(task, workers)
    reference = by_workers[0]
    for workers in (1, 2):
        masks = by_workers[workers]
        assert masks.keys() == reference.keys()
        differ = [key for key in reference if not torch.equal(masks[key], reference[key])]
        assert not differ, (
            f"{len(differ)} of {len(reference)} masks differ with "
            f"{workers} worker(s), first at (epoch, id) = {differ[0]}"
        )
    if mode in ("sample", "random"):  # masks change from one epoch to the next
        for workers, masks in by_workers.items():
            repeats = same_epoch_table(masks)
            assert all(share < 0.5 for share in repeats.values()), (workers, repeats)


@pytest.mark.slow
def test_fairseq_masked_lm_equality_with_workers(scored_corpus):
    """se_mlm random == fairseq masked_lm where masked_lm is right (no workers), and
    se_mlm keeps those masks with workers."""
    fairseq_task, _ = make_task(scored_corpus, "--task", "masked_lm")
    expected = epoch_masks(fairseq_task, 0)
    for workers in (0, 1):
        se_task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-select", "random")
        got = epoch_masks(se_task, workers)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "random"])
def test_resume_in_epoch_2_masks_like_the_uninterrupted_run(scored_corpus, mode):
    """What fairseq's checkpoint restore does: a new task, the iterator built for the saved
    epoch, its state loaded (3 batches of epoch 2 done), then the rest of the epoch."""
    task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-select", mode)
    uninterrupted = epoch_masks(task, 1, epochs=(1, 2))
    resumed_task, _ = make_task(scored_corpus, "--task", "se_mlm", "--se-select", mode)
    resumed_task.load_dataset("train", epoch=2)
    itr = resumed_task.get_batch_iterator(
        resumed_task.dataset("train"), max_sentences=8, seed=5, epoch=2, num_workers=1
    )
    itr.load_state_dict({"version": 2, "epoch": 2, "iterations_in_epoch": 3, "shuffle": True})
    rest = list(itr.next_epoch_itr(shuffle=True))
    assert itr.epoch == 2 and len(rest) > 5
    for batch in rest:
        src = batch["net_input"]["src_tokens"]
        for row, i in enumerate(batch["id"].tolist()):
            assert torch.equal(src[row], uninterrupted[(2, i)]), f"sample {i}"
