"""The scoring job as a library: chunk plan, manifest, resume and assembly, in-process."""

import json
import os
import shutil

import numpy as np
import pytest
from support.fairseq_data import split_tokens

from se_fairseq.data.score_file import ScoreFile
from se_fairseq.scoring_job import ScoringError, ScoringJob, plan_chunks, score_corpus


def test_plan_chunks_cuts_after_reaching_the_budget():
    assert plan_chunks([3, 3, 3, 3, 3], 6) == [(0, 2), (2, 4), (4, 5)]
    assert plan_chunks([10, 1, 1], 5) == [(0, 1), (1, 3)]
    assert plan_chunks([], 5) == []
    lengths = np.random.default_rng(0).integers(1, 60, size=500)
    chunks = plan_chunks(lengths, 400)
    assert chunks[0][0] == 0 and chunks[-1][1] == 500
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))  # contiguous, no gap
    for first, last in chunks[:-1]:  # each reaches the budget, and not one block earlier
        assert lengths[first:last].sum() >= 400 > lengths[first : last - 1].sum()


@pytest.fixture
def data(corpus, tmp_path):
    return str(shutil.copytree(corpus, tmp_path / "data-bin"))


@pytest.mark.slow
def test_stop_resume_and_assembly_in_process(vanilla_checkpoint, data, tmp_path):
    options = dict(chunk_tokens=700, batch_size=4)
    full = score_corpus(data, vanilla_checkpoint, out=str(tmp_path / "full"), **options)
    assert full.complete and full.chunks_left == 0 and full.chunks_total > 3
    part = str(tmp_path / "part")
    first = score_corpus(data, vanilla_checkpoint, out=part, stop_after_chunks=2, **options)
    assert not first.complete and first.chunks_left == first.chunks_total - 2
    assert not os.path.exists(part + ".npy")
    manifest = json.load(open(os.path.join(part + ".partial", "manifest.json")))
    assert manifest["metric"] == "correctness" and len(manifest["chunks"]) == full.chunks_total
    second = score_corpus(data, vanilla_checkpoint, out=part, **options)
    assert second.complete and not os.path.exists(part + ".partial")
    assert open(part + ".npy", "rb").read() == open(full.array_path, "rb").read()
    split = os.path.join(data, "train")
    loaded = ScoreFile(part, split)
    assert second.summary["tokens"] == sum(map(len, split_tokens(split)))
    assert loaded.meta["summary"] == second.summary


@pytest.mark.slow
def test_manifest_of_other_options_is_refused_in_process(vanilla_checkpoint, data, tmp_path):
    out = str(tmp_path / "s")
    score_corpus(data, vanilla_checkpoint, out=out, chunk_tokens=700, stop_after_chunks=1)
    with pytest.raises(ScoringError, match="partial results of another run.*metric"):
        score_corpus(data, vanilla_checkpoint, out=out, chunk_tokens=700, metric="confidence")
    job = ScoringJob(data, vanilla_checkpoint, out=out, chunk_tokens=700, rank=1, world_size=2)
    shutil.rmtree(out + ".partial")
    with pytest.raises(ScoringError, match="storage that all ranks see"):
        job.prepare_partial_dir()


def test_missing_checkpoint_is_a_scoring_error(data, tmp_path):
    with pytest.raises(ScoringError, match="not found"):
        score_corpus(data, str(tmp_path / "nope.pt"))
