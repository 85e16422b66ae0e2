"""token_ls under fairseq's data-parallel wrappers, without a GPU.

fairseq-train cannot run several CPU processes, but its wrappers can: two gloo
ranks (torch.multiprocessing) wrap a tiny RoBERTa in fairseq's
``DistributedFairseqModel`` (``pytorch_ddp`` and ``legacy_ddp``) and each runs
token_ls, as fairseq's trainer does, on its half of two batches of se_mlm:
offline (top-k masking by a score file) and ``--se-online`` (the task's
``train_step``: mask_online, then the criterion). The gradients, after the
wrapper's all-reduce and fairseq's ``multiply_grads(world_size / sample_size)``,
must equal one unwrapped process on the whole batch. The reference forward runs
the unwrapped module: the wrapper sees one forward per step, the model two.
See tests/ddp_worker.py for what each rank does.
"""

import json
import os
import shutil

import ddp_worker
import numpy as np
import pytest
import torch.multiprocessing as mp
from support.fairseq_data import split_tokens, write_scores

WORLD_SIZE = 2
RTOL = 1e-5  # float32 sums in another order (two halves, other padding) than one batch


@pytest.fixture(scope="module")
def ddp_results(corpus, tmp_path_factory):
    data = str(tmp_path_factory.mktemp("ddp") / "data-bin")
    shutil.copytree(corpus, data)
    tokens = np.concatenate(split_tokens(os.path.join(data, "train")))
    write_scores(
        os.path.join(data, "train"), np.random.default_rng(1).gamma(2.0, 2.0, size=len(tokens))
    )
    out = str(tmp_path_factory.mktemp("ddp_out"))
    try:
        mp.spawn(ddp_worker.run, args=(WORLD_SIZE, data, out), nprocs=WORLD_SIZE, join=True)
    finally:
        results = []
        for rank in range(WORLD_SIZE):
            path = os.path.join(out, f"rank{rank}.json")
            results.append(json.load(open(path)) if os.path.exists(path) else {})
    return results


@pytest.mark.slow
@pytest.mark.parametrize("mode,backend", ddp_worker.CASES)
def test_token_ls_gradients_under_ddp_equal_one_process(ddp_results, mode, backend):
    name = f"{mode}-{backend}"
    per_rank = [r[name] for r in ddp_results]
    for rank, result in enumerate(per_rank):
        assert "error" not in result, f"rank {rank}:\n{result['error']}"
        assert len(result["steps"]) == ddp_worker.STEPS
        for step in result["steps"]:
            # the averaged gradients are one process's on the whole batch ...
            error, worst = step["grad_error"]
            assert error <= RTOL, f"rank {rank}: {worst} off by {error:.3g}"
            # ... which no rank's half alone gives (the test can tell them apart)
            assert step["half_alone_error"][0] > 1000 * RTOL, (rank, step)
            # summed logging outputs: the whole batch's loss and counts
            got, want = step["stats"], step["want_stats"]
            assert got["sample_size"] == want["sample_size"] > 0
            assert got["correct"] == want["correct"] and got["ref_correct"] == want["ref_correct"]
            assert got["ref_total"] == want["ref_total"] == want["sample_size"]
            for key in ("loss", "nll_loss"):
                assert got[key] == pytest.approx(want[key], rel=RTOL)
            # the wrapper ran the training forward only; the reference forward (offline:
            # token_ls's, online: mask_online's) ran on the unwrapped module
            assert step["calls"] == {"wrapper": 1, "model": 2}
    # every rank ends with the same gradients
    for a, b in zip(per_rank[0]["steps"], per_rank[1]["steps"]):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
        assert a["stats"] == b["stats"]
