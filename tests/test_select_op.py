"""The selection op against the numpy reference and against plain definitions."""
import numpy as np
import pytest
import torch

from se_fairseq.ops import extension_available, select
from se_fairseq.ops.reference import SAMPLE, THRESHOLD, TOPK, rounded_count, select_reference

MODES = {"topk": TOPK, "threshold": THRESHOLD, "sample": SAMPLE}


def random_batch(rows=48, length=96, seed=0, quantize=True):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, length, generator=g) * 3
    if quantize:  # float16 score files make ties common: they must break identically
        scores = (scores * 4).round() / 4
    lengths = torch.randint(0, length + 1, (rows,), generator=g)
    eligible = torch.arange(length)[None, :] < lengths[:, None]
    eligible &= torch.rand(rows, length, generator=g) > 0.1
    seeds = torch.randint(-(2**62), 2**62, (rows,), generator=g)
    return scores, eligible, seeds


def test_extension_is_built():
    assert extension_available(), "the C++ op should be built by pip install -e ."


@pytest.mark.parametrize("mode", ["topk", "sample", "threshold"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpu_op_matches_reference(mode, seed):
    scores, eligible, seeds = random_batch(seed=seed)
    got = select(scores, eligible, seeds, ratio=0.3, mode=mode, threshold=0.5, temperature=0.7)
    want = select_reference(scores.numpy(), eligible.numpy(), seeds.numpy(), ratio=0.3,
                            mode=MODES[mode], threshold=0.5, temperature=0.7)
    assert got.dtype == torch.bool and got.shape == scores.shape
    np.testing.assert_array_equal(got.numpy(), want)


def test_fallback_path_equals_extension():
    scores, eligible, seeds = random_batch(seed=5)
    a = select(scores, eligible, seeds, ratio=0.2, mode="sample", use_extension=False)
    b = select(scores, eligible, seeds, ratio=0.2, mode="sample")
    assert torch.equal(a, b)


def test_topk_is_the_k_highest_eligible_scores():
    """Independent of the reference: distinct scores, torch.topk per row."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randperm(64 * 200, generator=g).float().view(64, 200)
    eligible = torch.rand(64, 200, generator=g) > 0.2
    seeds = torch.arange(64)
    got = select(scores, eligible, seeds, ratio=0.15, mode="topk")
    for r in range(64):
        n = int(eligible[r].sum())
        k = int(got[r].sum())
        assert k in (int(np.floor(0.15 * n)), int(np.ceil(0.15 * n)))
        masked_scores = torch.where(eligible[r], scores[r], torch.tensor(-1.0))
        top = set(torch.topk(masked_scores, k).indices.tolist()) if k else set()
        assert set(torch.nonzero(got[r]).view(-1).tolist()) == top
        assert not (got[r] & ~eligible[r]).any()


def test_probabilistic_rounding_is_unbiased():
    n = np.full(20000, 10)
    k = rounded_count(0.15, n, np.arange(20000))
    assert set(np.unique(k)) == {1, 2}
    assert abs(k.mean() - 1.5) < 0.03


def test_ties_break_by_position():
    scores = torch.zeros(1, 10)
    eligible = torch.ones(1, 10, dtype=torch.bool)
    got = select(scores, eligible, torch.tensor([0]), num_select=torch.tensor([3]))
    assert got[0].nonzero().view(-1).tolist() == [0, 1, 2]


def test_threshold_selects_every_eligible_score_above():
    scores, eligible, seeds = random_batch(seed=4, quantize=False)
    got = select(scores, eligible, seeds, mode="threshold", threshold=1.0)
    assert torch.equal(got, eligible & (scores > 1.0))


def test_sample_prefers_high_scores_and_varies_with_seed():
    scores = torch.linspace(0, 3, 50).repeat(4000, 1)
    eligible = torch.ones_like(scores, dtype=torch.bool)
    got = select(scores, eligible, torch.arange(4000), num_select=torch.full((4000,), 5),
                 mode="sample", temperature=1.0)
    freq = got.float().mean(0)
    assert freq[-10:].mean() > 3 * freq[:10].mean()
    assert not torch.equal(got[0], got[1]) or not torch.equal(got[1], got[2])
    # temperature -> 0 approaches top-k
    cold = select(scores[:50], eligible[:50], torch.arange(50), num_select=torch.full((50,), 5),
                  mode="sample", temperature=1e-4)
    assert cold[:, -5:].all()


def test_num_select_larger_than_row_and_empty_rows():
    scores = torch.rand(3, 8)
    eligible = torch.zeros(3, 8, dtype=torch.bool)
    eligible[0, :2] = True  # shorter than k
    eligible[2, :] = True
    got = select(scores, eligible, torch.arange(3), num_select=torch.tensor([5, 5, 0]))
    assert got[0].sum() == 2 and got[0, :2].all()
    assert got[1].sum() == 0  # empty row: nothing to select
    assert got[2].sum() == 0


def test_zero_rows_and_zero_length():
    for shape in ((0, 5), (3, 0)):
        out = select(torch.rand(*shape), torch.ones(*shape, dtype=torch.bool),
                     torch.arange(shape[0]), ratio=0.5)
        assert out.shape == shape


@pytest.mark.parametrize("use_extension", [True, False])
def test_nan_scores_are_an_error(use_extension):
    scores = torch.rand(2, 6)
    scores[1, 3] = float("nan")
    eligible = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises((RuntimeError, ValueError), match="NaN"):
        select(scores, eligible, torch.arange(2), use_extension=use_extension)
    eligible[1, 3] = False  # a NaN where nothing is eligible (padding) is harmless
    select(scores, eligible, torch.arange(2), use_extension=use_extension)


@pytest.mark.parametrize("use_extension", [True, False])
def test_bad_arguments(use_extension):
    scores, eligible, seeds = random_batch(rows=2, length=4)
    with pytest.raises((RuntimeError, ValueError), match="ratio"):
        select(scores, eligible, seeds, ratio=1.5, use_extension=use_extension)
    with pytest.raises((RuntimeError, ValueError), match="temperature"):
        select(scores, eligible, seeds, mode="sample", temperature=0.0, use_extension=use_extension)
    with pytest.raises((RuntimeError, ValueError)):
        select(scores, eligible[:1], seeds, use_extension=use_extension)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["topk", "sample", "threshold"])
def test_cuda_op_matches_cpu_op(mode):
    for seed, length in ((0, 96), (1, 512), (2, 4000)):
        scores, eligible, seeds = random_batch(rows=64, length=length, seed=seed)
        cpu = select(scores, eligible, seeds, ratio=0.15, mode=mode, threshold=0.5, temperature=0.7)
        gpu = select(scores.cuda(), eligible.cuda(), seeds.cuda(), ratio=0.15, mode=mode,
                     threshold=0.5, temperature=0.7)
        assert gpu.is_cuda
        assert torch.equal(cpu, gpu.cpu())
