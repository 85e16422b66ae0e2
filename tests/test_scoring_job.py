"""The scoring job as a library: chunk plan, manifest, resume and assembly, in-process."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from support.fairseq_data import split_tokens

from se_fairseq.core.job import (
    ChunkedJob,
    length_sorted_batches,
    replace_own_files,
)
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


# -- nothing the job did not write is deleted; one line for bad input -------------------


def test_the_partial_folder_loses_only_the_files_the_job_wrote(
    untrained_checkpoint, data, tmp_path
):
    out = str(tmp_path / "s")
    first = score_corpus(data, untrained_checkpoint, out=out, chunk_tokens=700, stop_after_chunks=2)
    assert not first.complete
    with open(os.path.join(out + ".partial", "notes.txt"), "w") as f:
        f.write("mine")
    assert score_corpus(data, untrained_checkpoint, out=out, chunk_tokens=700).complete
    assert os.listdir(out + ".partial") == ["notes.txt"]
    ScoreFile(out, os.path.join(data, "train"))


@pytest.mark.parametrize("name", ["s.json", "s.npy"])
def test_an_out_that_names_a_file_the_job_did_not_write_is_refused(
    untrained_checkpoint, data, tmp_path, name
):
    (tmp_path / "o").mkdir()
    out = str(tmp_path / "o" / "s")
    mine = tmp_path / "o" / name
    mine.write_bytes(b'{"mine": true}\n')
    with pytest.raises(ScoringError, match=rf"{re.escape(str(mine))}: .*not a score file"):
        score_corpus(data, untrained_checkpoint, out=out, chunk_tokens=700)
    assert mine.read_bytes() == b'{"mine": true}\n'
    assert os.listdir(tmp_path / "o") == [name]  # nothing written
    mine.unlink()
    first = score_corpus(data, untrained_checkpoint, out=out, chunk_tokens=700)
    again = score_corpus(data, untrained_checkpoint, out=out, chunk_tokens=700, metric="confidence")
    assert first.complete and again.complete  # its own earlier score file is replaced
    assert ScoreFile(out, os.path.join(data, "train")).metric == "confidence"


def test_command_a_damaged_chunk_gets_one_line_naming_it(untrained_checkpoint, data, tmp_path):
    from se_fairseq.cli import score

    out = str(tmp_path / "s")
    args = [data, "--path", untrained_checkpoint, "--out", out, "--chunk-tokens", "700"]
    args += ["--no-progress-bar", "--cpu"]
    assert score.main([*args, "--stop-after-chunks", "2"]) == 0
    chunk = os.path.join(out + ".partial", "chunk-000001.npy")
    with open(chunk, "r+b") as f:
        f.truncate(50)
    with pytest.raises(SystemExit) as exit_:
        score.main(args)
    message = exit_.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert message.startswith(f"se-score: {chunk}: damaged") and "delete it" in message


# -- the core job, with a toy adapter: items of given lengths, a forward of their ids ----


class ToyJob(ChunkedJob):
    """Item k holds lengths[k] tokens; token t of item k scores k + t / 100."""

    def __init__(self, lengths, chunk_tokens, out=None, rank=0, world_size=1, metric="m"):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.metric, self.forwards = metric, []
        partial = None if out is None else out + ".partial"
        self.setup_job(plan_chunks(self.lengths, chunk_tokens), partial, rank, world_size)

    def barrier(self):  # ranks run one after the other here
        pass

    def manifest(self):
        return {"metric": self.metric, "chunks": [list(c) for c in self.chunks]}

    def chunk_tokens(self, i):
        first, last = self.chunks[i]
        return int(self.offsets[last] - self.offsets[first])

    def chunk_scores(self, i, bar=None):
        first, last = self.chunks[i]
        self.forwards.append(i)
        return np.concatenate(
            [k + np.arange(self.lengths[k], dtype=np.float32) / 100 for k in range(first, last)]
        )

    def all_scores(self):
        return np.concatenate([self.load_chunk(i) for i in range(len(self.chunks))])


def toy_reference(lengths):
    return np.concatenate([k + np.arange(n, dtype=np.float32) / 100 for k, n in enumerate(lengths)])


LENGTHS = [5, 3, 8, 1, 4, 6, 2, 7]


def test_core_job_shards_stops_and_resumes(tmp_path):
    out = str(tmp_path / "toy")
    rank0, rank1 = ToyJob(LENGTHS, 6, out, 0, 2), ToyJob(LENGTHS, 6, out, 1, 2)
    assert rank0.chunks == [(0, 2), (2, 3), (3, 6), (6, 8)]
    assert rank0.run(stop_after_chunks=1) is False and rank0.forwards == [0]
    assert rank1.run() is False and rank1.forwards == [1, 3]  # chunks r, r + W
    assert rank0.run() is True and rank0.forwards == [0, 2]  # chunk 0 not again
    again = ToyJob(LENGTHS, 6, out)
    assert again.run() is True and again.forwards == []
    np.testing.assert_array_equal(again.all_scores(), toy_reference(LENGTHS))
    again.remove_partial_dir()
    assert not os.path.exists(out + ".partial")


def test_core_job_in_memory_and_progress():
    job = ToyJob(LENGTHS, 10)
    totals = []

    class Bar:
        def __init__(self, total):
            totals.append(total)

        def close(self):
            totals.append("closed")

    assert job.run(progress=Bar) is True and job.partial_dir is None
    assert totals == [sum(LENGTHS), "closed"]
    np.testing.assert_array_equal(job.all_scores(), toy_reference(LENGTHS))


def test_core_job_refuses_other_partial_results_and_damaged_chunks(tmp_path):
    out = str(tmp_path / "toy")
    ToyJob(LENGTHS, 6, out).run(stop_after_chunks=2)
    with pytest.raises(
        ScoringError, match=r"toy\.partial holds partial results .*different metric"
    ):
        ToyJob(LENGTHS, 6, out, metric="other").run()
    with pytest.raises(ScoringError, match="storage that all ranks see"):
        ToyJob(LENGTHS, 6, str(tmp_path / "nowhere"), 1, 2).run()
    job = ToyJob(LENGTHS, 6, out)
    np.save(job.chunk_path(1), np.zeros(3, dtype=np.float32))  # a chunk of another length
    with pytest.raises(ScoringError, match=r"chunk-000001\.npy: damaged \(a float32 array"):
        job.load_chunk(1)
    with open(job.chunk_path(0), "wb") as f:
        f.write(b"\x93NUMPY garbage")
    with pytest.raises(ScoringError, match=r"chunk-000000\.npy: damaged .*delete it"):
        job.load_chunk(0)


def test_core_job_failing_before_its_first_chunk_leaves_nothing(tmp_path):
    out = str(tmp_path / "toy")

    class Failing(ToyJob):
        def chunk_scores(self, i, bar=None):
            raise ScoringError("the forward failed")

    with pytest.raises(ScoringError, match="the forward failed"):
        Failing(LENGTHS, 6, out).run()
    assert os.listdir(tmp_path) == []
    ToyJob(LENGTHS, 6, out).run(stop_after_chunks=1)
    with pytest.raises(ScoringError, match="the forward failed"):
        Failing(LENGTHS, 6, out).run()
    assert sorted(os.listdir(out + ".partial")) == ["chunk-000000.npy", "manifest.json"]  # kept


def test_core_job_refuses_non_finite_scores(tmp_path):
    class Infinite(ToyJob):
        def chunk_scores(self, i, bar=None):
            return np.full(self.chunk_tokens(i), np.inf, dtype=np.float32)

    with pytest.raises(ScoringError, match="infinite scores in chunk 0; try fp32"):
        Infinite(LENGTHS, 6).run()


def test_length_sorted_batches():
    sizes = [3, 9, 1, 9, 4, 0]
    assert list(length_sorted_batches(sizes, batch_size=2)) == [[1, 3], [4, 0], [2, 5]]
    assert list(length_sorted_batches(sizes, max_tokens=18)) == [[1, 3], [4, 0, 2, 5]]
    assert list(length_sorted_batches(sizes, max_tokens=8)) == [[1], [3], [4, 0], [2, 5]]
    skip = [False, False, False, True, False, True]
    assert list(length_sorted_batches(sizes, max_tokens=18, skip=skip)) == [[1, 4], [0, 2]]


def test_replace_own_files_keeps_the_others(tmp_path):
    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    new.mkdir()
    for name in ("data-0-of-2", "data-1-of-2", "state", "record", "notes.txt"):
        (out / name).write_text("old")
    for name in ("data-0-of-1", "state", "record"):
        (new / name).write_text("new")
    replace_own_files(
        str(new), str(out), ["data-0-of-2", "data-1-of-2", "state", "record"], "record"
    )
    assert sorted(os.listdir(out)) == ["data-0-of-1", "notes.txt", "record", "state"]
    assert (out / "notes.txt").read_text() == "old" and (out / "record").read_text() == "new"
    assert not new.exists()


@pytest.mark.fairseq
def test_the_command_offers_the_break_modes_of_fairseqs_masked_lm():
    """se-score's parser spells the choices itself (it must import nothing of the fairseq
    side for --hf): they are masked_lm's, which the job takes."""
    from fairseq.tasks.masked_lm import SAMPLE_BREAK_MODE_CHOICES

    from se_fairseq.cli import score
    from se_fairseq.scoring_job import BREAK_MODES

    masked_lm = [str(choice) for choice in SAMPLE_BREAK_MODE_CHOICES]
    assert list(score.BREAK_MODES) == list(BREAK_MODES) == masked_lm
    action = next(a for a in score.build_parser()._actions if a.dest == "sample_break_mode")
    assert list(action.choices) == masked_lm
