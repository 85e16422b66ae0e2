"""Scores and the run that trains on them: blocking, unscored tokens, valid blocks, threshold.

Each behaviour here used to degrade silently: a score file of other blocks was used
as is, tokens se-score skipped (score 0) were ranked by the tie rule, valid blocks
longer than the model stopped fairseq-train at its first validation, and threshold
mode said neither its threshold nor how much it masked.
"""

import pytest

pytest.importorskip("fairseq", reason="the fairseq side: pip install 'se-fairseq[fairseq]'")

import logging
import os
import shutil

import numpy as np
from support.fairseq_data import setup_task, split_tokens, write_scores

from se_fairseq.data import score_file
from se_fairseq.tasks.se_mlm_config import SelfEvolutionConfigError


def task_for(data, *args):
    return setup_task(
        data, "--task", "se_mlm", "--arch", "roberta_base", "--tokens-per-sample", "64", *args
    )[0]


def batches(task, split="train"):
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(
        dataset,
        max_sentences=8,
        max_positions=task.max_positions(),
        ignore_invalid_inputs=True,
        num_workers=0,
        seed=1,
        epoch=1,
    )
    return list(itr.next_epoch_itr(shuffle=False))


def test_unscored_tokens_are_never_selected_by_score(scored_corpus):
    """Unscored tokens hold the highest values of the array: ranked as scores, top-k would
    pick them first. eos blocks: block i is sentence i behind <s>."""
    split = os.path.join(scored_corpus, "train")
    sentences = split_tokens(split)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sentences])])
    values = np.random.default_rng(0).gamma(2.0, 2.0, size=offsets[-1])
    ranges = []
    for i in range(len(sentences)):
        if i % 3 == 0:
            ranges.append((offsets[i], offsets[i + 1]))  # whole sentence
        elif i % 5 == 1:
            ranges.append((offsets[i], offsets[i] + len(sentences[i]) // 2))  # its first half
    unscored = np.zeros(offsets[-1], dtype=bool)
    for a, b in ranges:
        unscored[a:b] = True
    values[unscored] = 1000.0

    def selections(recorded):
        fingerprint = score_file.corpus_fingerprint(split)
        score_file.write(
            score_file.default_prefix(split),
            values,
            metric="correctness",
            checkpoint=None,
            blocking={"independent_of_blocking": True},
            fingerprint=fingerprint,
            unscored_ranges=ranges if recorded else (),
        )
        task = task_for(scored_corpus, "--sample-break-mode", "eos", "--mask-prob", "0.3")
        task.load_dataset("train")
        picked = np.zeros(offsets[-1], dtype=bool)
        pad = task.source_dictionary.pad()
        for batch in batches(task):
            for row, i in enumerate(batch["id"].tolist()):
                chosen = batch["target"][row, 1 : 1 + len(sentences[i])].ne(pad).numpy()
                picked[offsets[i] : offsets[i + 1]] |= chosen
        return picked

    picked = selections(recorded=True)
    assert picked.sum() > 100 and not (picked & unscored).any()
    # budget: 30 % of each sentence's *scored* non-special tokens (probabilistic rounding)
    for i in range(len(sentences)):
        scored = (~unscored[offsets[i] : offsets[i + 1]] & (sentences[i] >= 4)).sum()
        assert picked[offsets[i] : offsets[i + 1]].sum() <= int(np.ceil(0.3 * scored))
    # the same values without the record: the top-k takes the 1000s
    assert (selections(recorded=False) & unscored).sum() > 100


def test_unscored_ranges_survive_a_round_trip_and_damage_is_refused(corpus, tmp_path):
    split = os.path.join(corpus, "train")
    n = score_file.corpus_fingerprint(split)["num_tokens"]
    prefix = str(tmp_path / "s")
    write_scores(split, np.ones(n), prefix=prefix)  # no unscored tokens: an empty record
    loaded = score_file.ScoreFile(prefix, split)
    assert loaded.records_unscored and loaded.num_unscored == 0
    with pytest.raises(score_file.ScoreFileError, match="sorted and disjoint"):
        score_file.write(
            prefix,
            np.ones(n),
            metric="correctness",
            checkpoint=None,
            blocking={},
            fingerprint=score_file.corpus_fingerprint(split),
            unscored_ranges=[(5, 10), (8, 12)],
        )


def test_a_score_file_of_other_blocking_is_refused_naming_both(corpus, tmp_path):
    data = str(tmp_path / "data-bin")
    shutil.copytree(corpus, data)
    split = os.path.join(data, "train")
    write_scores(
        split,
        blocking={"tokens_per_sample": 64, "sample_break_mode": "complete", "prepend_bos": True},
    )
    with pytest.raises(score_file.ScoreFileError) as refused:
        task_for(data).load_dataset("train")  # fairseq's default: none
    message = str(refused.value)
    assert "--sample-break-mode complete" in message and "--sample-break-mode none" in message
    assert "train.se_scores.json" in message
    task_for(data, "--sample-break-mode", "complete").load_dataset("train")  # the same: fine
    with pytest.raises(score_file.ScoreFileError, match="--tokens-per-sample 64.*32"):
        setup_task(
            data,
            "--task",
            "se_mlm",
            "--arch",
            "roberta_base",
            "--tokens-per-sample",
            "32",
            "--sample-break-mode",
            "complete",
        )[0].load_dataset("train")


def test_valid_blocks_longer_than_the_model_are_refused_at_start_up(scored_corpus):
    """complete blocks of 16 tokens: sentences of up to 40 words are longer."""
    args = ("--tokens-per-sample", "16", "--sample-break-mode", "complete")
    with pytest.raises(SelfEvolutionConfigError, match="--skip-invalid-size-inputs-valid-test"):
        task_for(scored_corpus, *args).load_dataset("valid")
    task = task_for(scored_corpus, *args, "--skip-invalid-size-inputs-valid-test")
    task.load_dataset("valid")
    assert (np.asarray(task.dataset("valid").sizes) > 16).any()  # fairseq skips them itself


def test_threshold_mode_logs_its_threshold_and_share_and_warns_when_nothing_is_masked(
    scored_corpus, caplog
):
    split = os.path.join(scored_corpus, "train")
    values = np.asarray(
        score_file.ScoreFile(score_file.default_prefix(split), split).scores, dtype=np.float32
    )
    with caplog.at_level(logging.INFO, logger="se_fairseq"):
        task_for(scored_corpus, "--se-select", "threshold", "--se-threshold", "3.5").load_dataset(
            "train"
        )
    share = 100.0 * (values > 3.5).mean()
    assert f"threshold 3.5 (--se-threshold); {share:.1f} % of the {len(values)}" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="se_fairseq"):
        task = task_for(
            scored_corpus,
            "--se-select",
            "threshold",
            "--se-threshold",
            "1000",
            "--se-threshold-fallback",
            "none",
        )
        task.load_dataset("train")
        first = batches(task)[0]
    assert first["target"].ne(task.source_dictionary.pad()).sum() == 0
    assert "no token is ever masked" in caplog.text
    assert "no token of a batch of 8 blocks scores above the threshold 1000" in caplog.text
    batch_max = max(float(v) for v in values)
    assert "its highest score is" in caplog.text and batch_max < 1000
    assert caplog.text.count("no token of a batch") == 1  # once per process
