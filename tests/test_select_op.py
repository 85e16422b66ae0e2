"""The selection op against independent references (the numpy reference,
torch.topk, plain definitions), on every device: tests that take ``device``
run on CPU and, marked ``cuda``, on the GPU when one is visible, so the first
GPU run checks the CUDA kernel against everything the CPU kernel is checked
against."""

import importlib
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from support.devices import device_params

from se_fairseq.ops import extension_available, select
from se_fairseq.ops.reference import (
    SAMPLE,
    THRESHOLD,
    TOPK,
    hash_uniform,
    rounded_count,
    se_log,
    select_reference,
)

# the module (se_fairseq.ops.select is also the name of the function)
select_module = importlib.import_module("se_fairseq.ops.select")
MODES = {"topk": TOPK, "threshold": THRESHOLD, "sample": SAMPLE}
# Loads se_fairseq._C (the operator) and registers its fake kernel, for the
# tests that call torch.ops.se_fairseq directly; test_extension_is_built reports a missing build.
extension_available()
HAS_CUDA = torch.cuda.is_available()
DEVICES = device_params()
# Row lengths around the CUDA kernel's limits: 12 bytes of shared memory per
# position; 48 KiB default limit (4096 positions), the old kernel's 48 KiB of
# 8-byte keys (6144), the opt-in limit of H100/H200 (~19.3k), then the
# global-memory path.
LONG_LENGTHS = [4095, 4097, 6143, 6145, 7000, 19369, 19371, 30000]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


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


def to(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def reference(scores, eligible, seeds, num_select=None, mode="topk", **kw):
    return select_reference(
        scores.numpy(),
        eligible.numpy(),
        seeds.numpy(),
        None if num_select is None else num_select.numpy(),
        mode=MODES[mode],
        **kw,
    )


def test_extension_is_built():
    assert extension_available(), "the C++ op should be built by pip install -e ."


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("mode", ["topk", "sample", "threshold"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_op_matches_reference(device, mode, seed):
    scores, eligible, seeds = random_batch(seed=seed)
    got = select(
        *to(device, scores, eligible, seeds), ratio=0.3, mode=mode, threshold=0.5, temperature=0.7
    )
    want = reference(scores, eligible, seeds, mode=mode, ratio=0.3, threshold=0.5, temperature=0.7)
    assert got.dtype == torch.bool and got.shape == scores.shape and got.device.type == device.type
    np.testing.assert_array_equal(got.cpu().numpy(), want)


@pytest.mark.parametrize("length", LONG_LENGTHS)
@pytest.mark.parametrize("mode", ["topk", "sample", "threshold"])
def test_long_rows_match_reference(device, mode, length):
    """Rows past every shared-memory limit; few rows, num_select and ratio."""
    scores, eligible, seeds = random_batch(rows=3, length=length, seed=length)
    eligible[0] = True  # one full row
    for kw in ({"ratio": 0.15}, {"num_select": torch.tensor([length // 3, 5, length])}):
        got = select(
            *to(device, scores, eligible, seeds),
            mode=mode,
            threshold=0.5,
            temperature=0.7,
            **{k: v.to(device) if torch.is_tensor(v) else v for k, v in kw.items()},
        )
        want = reference(scores, eligible, seeds, mode=mode, threshold=0.5, temperature=0.7, **kw)
        np.testing.assert_array_equal(got.cpu().numpy(), want)


def test_fallback_path_equals_extension():
    scores, eligible, seeds = random_batch(seed=5)
    a = select(scores, eligible, seeds, ratio=0.2, mode="sample", use_extension=False)
    b = select(scores, eligible, seeds, ratio=0.2, mode="sample")
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode,temperature", [("topk", 1.0), ("sample", 1.0), ("sample", 0.3)])
def test_selection_keys_bit_identical_to_reference(device, mode, temperature):
    """The keys themselves, bit for bit: C++ host, CUDA device and numpy."""
    scores, _, seeds = random_batch(rows=64, length=700, seed=9, quantize=False)
    scores[0, :4] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0])
    got = (
        torch.ops.se_fairseq._selection_keys(*to(device, scores, seeds), MODES[mode], temperature)
        .cpu()
        .numpy()
    )
    if mode == "sample":
        u = hash_uniform(seeds.numpy()[:, None], np.arange(700, dtype=np.uint64)[None, :] + 1)
        want = scores.numpy().astype(np.float64) / temperature - se_log(-se_log(u))
    else:
        want = scores.numpy().astype(np.float64)
    np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))


def test_se_log_is_a_logarithm():
    """se_log (shared by C++, CUDA and numpy) against math.log: within 2 ulp."""
    rng = np.random.default_rng(0)
    u = hash_uniform(rng.integers(-(2**62), 2**62, 20000), np.arange(20000, dtype=np.uint64))
    x = np.concatenate(
        [
            u,
            -np.log(u),
            rng.uniform(1e-300, 1e300, 1000),
            np.exp(rng.uniform(-700, 700, 5000)),
            2.0 ** np.arange(-1074, 1024, dtype=np.float64),
            [1.0, 2.0, 0.5, 1 - 2**-53, 1 + 2**-52, np.sqrt(2), 5e-324, 2.2e-308, 1.7e308],
        ]
    )
    got = se_log(x)
    want = np.array([math.log(v) for v in x])
    ulp = np.spacing(np.abs(want))
    assert np.all(np.abs(got - want) <= 2 * ulp), float(np.max(np.abs(got - want) / ulp))
    assert se_log(1.0) == 0.0
    assert se_log(0.0) == -np.inf and se_log(-0.0) == -np.inf and se_log(np.inf) == np.inf
    assert np.isnan(se_log(-1.0)) and np.isnan(se_log(np.nan))


# ------------------------------------------------ independent definitions


def test_topk_is_the_k_highest_eligible_scores(device):
    """Independent of the reference: distinct scores, torch.topk per row."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randperm(64 * 200, generator=g).float().view(64, 200)
    eligible = torch.rand(64, 200, generator=g) > 0.2
    seeds = torch.arange(64)
    got = select(*to(device, scores, eligible, seeds), ratio=0.15, mode="topk").cpu()
    for r in range(64):
        n = int(eligible[r].sum())
        k = int(got[r].sum())
        assert k in (int(np.floor(0.15 * n)), int(np.ceil(0.15 * n)))
        masked_scores = torch.where(eligible[r], scores[r], torch.tensor(-1.0))
        top = set(torch.topk(masked_scores, k).indices.tolist()) if k else set()
        assert set(torch.nonzero(got[r]).view(-1).tolist()) == top
        assert not (got[r] & ~eligible[r]).any()


def test_long_row_topk_against_torch_topk(device):
    """A 20000-position row (global-memory path on CUDA) against torch.topk."""
    g = torch.Generator().manual_seed(4)
    scores = torch.randperm(2 * 20000, generator=g).float().view(2, 20000)
    eligible = torch.ones(2, 20000, dtype=torch.bool)
    got = select(
        *to(device, scores, eligible, torch.arange(2)),
        num_select=torch.tensor([3000, 20000]).to(device),
    ).cpu()
    assert set(got[0].nonzero().view(-1).tolist()) == set(
        torch.topk(scores[0], 3000).indices.tolist()
    )
    assert got[1].all()


def test_probabilistic_rounding_is_unbiased():
    n = np.full(20000, 10)
    k = rounded_count(0.15, n, np.arange(20000))
    assert set(np.unique(k)) == {1, 2}
    assert abs(k.mean() - 1.5) < 0.03


def test_op_rounding_is_unbiased(device):
    scores = torch.rand(20000, 10)
    eligible = torch.ones(20000, 10, dtype=torch.bool)
    k = select(*to(device, scores, eligible, torch.arange(20000)), ratio=0.15).sum(1).cpu()
    assert set(k.unique().tolist()) == {1, 2}
    assert abs(k.double().mean().item() - 1.5) < 0.03


def test_ties_break_by_position(device):
    scores = torch.zeros(1, 10)
    scores[0, 5:] = -0.0  # -0.0 ties with +0.0
    eligible = torch.ones(1, 10, dtype=torch.bool)
    got = select(
        *to(device, scores, eligible, torch.tensor([0])), num_select=torch.tensor([3]).to(device)
    )
    assert got[0].nonzero().view(-1).tolist() == [0, 1, 2]


def test_threshold_selects_every_eligible_score_above(device):
    scores, eligible, seeds = random_batch(seed=4, quantize=False)
    got = select(*to(device, scores, eligible, seeds), mode="threshold", threshold=1.0).cpu()
    assert torch.equal(got, eligible & (scores > 1.0))


def test_threshold_compares_in_double(device):
    """float32(0.1) > 0.1 in double: the op and the reference agree (a float32
    compare, numpy's default for a Python float, would say no)."""
    scores = torch.tensor([[0.1, 0.0999999, 0.25, 0.5]])
    eligible = torch.ones(1, 4, dtype=torch.bool)
    got = select(*to(device, scores, eligible, torch.tensor([0])), mode="threshold", threshold=0.1)
    assert got.cpu().tolist() == [[True, False, True, True]]
    want = reference(scores, eligible, torch.tensor([0]), mode="threshold", threshold=0.1)
    assert want.tolist() == [[True, False, True, True]]


def test_sample_prefers_high_scores_and_varies_with_seed(device):
    scores = torch.linspace(0, 3, 50).repeat(4000, 1)
    eligible = torch.ones_like(scores, dtype=torch.bool)
    got = select(
        *to(device, scores, eligible, torch.arange(4000)),
        num_select=torch.full((4000,), 5).to(device),
        mode="sample",
        temperature=1.0,
    ).cpu()
    assert (got.sum(1) == 5).all()
    freq = got.float().mean(0)
    assert freq[-10:].mean() > 3 * freq[:10].mean()
    assert not torch.equal(got[0], got[1]) or not torch.equal(got[1], got[2])
    # temperature -> 0 approaches top-k
    cold = select(
        *to(device, scores[:50], eligible[:50], torch.arange(50)),
        num_select=torch.full((50,), 5).to(device),
        mode="sample",
        temperature=1e-4,
    )
    assert cold[:, -5:].all()


@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_num_select_larger_than_row_and_empty_rows(device, mode):
    scores = torch.rand(4, 8)
    eligible = torch.zeros(4, 8, dtype=torch.bool)
    eligible[0, :2] = True  # shorter than k
    eligible[2, :] = True
    eligible[3, :] = True
    got = select(
        *to(device, scores, eligible, torch.arange(4)),
        mode=mode,
        num_select=torch.tensor([5, 5, 0, -2]).to(device),
    ).cpu()
    assert got[0].sum() == 2 and got[0, :2].all()
    assert got[1].sum() == 0  # empty row: nothing to select
    assert got[2].sum() == 0
    assert got[3].sum() == 0  # negative counts select nothing


@pytest.mark.parametrize("mode", ["topk", "sample", "threshold"])
def test_zero_rows_and_zero_length(device, mode):
    for shape in ((0, 5), (3, 0), (0, 0)):
        out = select(
            *to(
                device,
                torch.rand(*shape),
                torch.ones(*shape, dtype=torch.bool),
                torch.arange(shape[0]),
            ),
            ratio=0.5,
            mode=mode,
        )
        assert out.shape == shape and out.device.type == device.type


def test_infinite_scores(device):
    scores = torch.tensor([[1.0, float("inf"), -float("inf"), 2.0, float("inf")]])
    eligible = torch.ones(1, 5, dtype=torch.bool)
    for mode in ("topk", "sample"):
        got = select(
            *to(device, scores, eligible, torch.tensor([7])),
            mode=mode,
            num_select=torch.tensor([2]).to(device),
        ).cpu()
        assert got[0].nonzero().view(-1).tolist() == [1, 4]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("mode", ["topk", "sample", "threshold"])
@pytest.mark.parametrize("use_extension", [True, False])
def test_nan_scores_are_an_error(mode, use_extension):
    scores = torch.rand(2, 6)
    scores[1, 3] = float("nan")
    eligible = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises((RuntimeError, ValueError), match="NaN"):
        select(scores, eligible, torch.arange(2), mode=mode, use_extension=use_extension)
    eligible[1, 3] = False  # a NaN where nothing is eligible (padding) is harmless
    select(scores, eligible, torch.arange(2), mode=mode, use_extension=use_extension)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (torch sees no GPU)")
@pytest.mark.parametrize("mode", ["topk", "sample", "threshold"])
def test_cuda_nan_is_a_device_side_assert(mode):
    """On CUDA a NaN is reported without a host sync: a device-side assert
    that surfaces at the next synchronizing call. It poisons the CUDA context,
    so it runs in a subprocess."""
    code = f"""
import torch
from se_fairseq.ops import select
scores = torch.rand(2, 6, device="cuda")
scores[1, 3] = float("nan")
eligible = torch.ones(2, 6, dtype=torch.bool, device="cuda")
select(scores, eligible, torch.arange(2, device="cuda"), mode="{mode}")
torch.cuda.synchronize()
print("NO ERROR")
"""
    env = dict(os.environ, SE_FAIRSEQ_NO_AUTOLOAD="1")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "NO ERROR" not in out, out
    assert "NaN score at row 1, position 3" in out, out
    assert "device-side assert" in out, out


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (torch sees no GPU)")
def test_cuda_op_does_not_sync():
    scores, eligible, seeds = random_batch(rows=64, length=512, seed=3)
    scores, eligible, seeds = to("cuda", scores, eligible, seeds)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for mode in ("topk", "sample", "threshold"):
            select(scores, eligible, seeds, ratio=0.15, mode=mode)
        select(scores, eligible, seeds, num_select=torch.full((64,), 7, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("use_extension", [True, False])
def test_bad_arguments(device, use_extension):
    if device.type != "cpu" and not use_extension:
        pytest.skip("the numpy reference is device-independent")
    scores, eligible, seeds = to(device, *random_batch(rows=2, length=4))
    with pytest.raises((RuntimeError, ValueError), match="ratio"):
        select(scores, eligible, seeds, ratio=1.5, use_extension=use_extension)
    with pytest.raises((RuntimeError, ValueError), match="temperature"):
        select(scores, eligible, seeds, mode="sample", temperature=0.0, use_extension=use_extension)
    with pytest.raises((RuntimeError, ValueError)):
        select(scores, eligible[:1], seeds, use_extension=use_extension)


def mixed_device_cases(a, b):
    scores, eligible, seeds = random_batch(rows=2, length=4)
    k = torch.tensor([1, 2])
    yield "eligible", (scores.to(a), eligible.to(b), seeds.to(a), None)
    yield "seeds", (scores.to(a), eligible.to(a), seeds.to(b), None)
    yield "num_select", (scores.to(a), eligible.to(a), seeds.to(a), k.to(b))


@pytest.mark.parametrize("use_extension", [True, False])
def test_mixed_devices_are_an_error_meta(use_extension):
    """Without a GPU: CPU tensors mixed with meta tensors. Covers the Python wrapper's
    check (``select``, both paths) and the op called through the dispatcher, which picks
    the fake (meta) kernel for such a mix, and that kernel runs the wrapper's Python check;
    neither reaches the C++ TORCH_CHECK. The C++ check itself is tested in
    tests/test_oracles.py (redispatch to the CPU kernel) and, on a GPU, by
    test_mixed_devices_are_an_error_cuda below."""
    for a, b in (("cpu", "meta"), ("meta", "cpu")):
        for name, (s, e, sd, k) in mixed_device_cases(a, b):
            # the first argument off the scores' device is named, as the C++ check does
            message = f"one device, but scores is on {a} and {name} on {b}"
            with pytest.raises(RuntimeError, match=message):
                select(s, e, sd, num_select=k, use_extension=use_extension)
            with pytest.raises(RuntimeError, match=message):
                torch.ops.se_fairseq.select(s, e, sd, k, 0.15, TOPK, 0.0, 1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (torch sees no GPU)")
def test_mixed_devices_are_an_error_cuda():
    """CPU scores with CUDA seeds reach the CUDA kernel: a clear error, not an assert."""
    for a, b in (("cpu", "cuda"), ("cuda", "cpu")):
        for name, (s, e, sd, k) in mixed_device_cases(a, b):
            for mode in (TOPK, THRESHOLD, SAMPLE):
                with pytest.raises(RuntimeError, match=f"one device.*{name} on"):
                    torch.ops.se_fairseq.select(s, e, sd, k, 0.15, mode, 0.0, 1.0)
            with pytest.raises(RuntimeError, match=f"one device.*{name} on"):
                select(s, e, sd, num_select=k)
    torch.cuda.synchronize()  # no error left behind


# ------------------------------------------- fallback, fake kernel, opcheck


def test_device_without_kernel_falls_back_with_one_warning(monkeypatch):
    """An extension without a kernel for the tensors' device (CUDA torch built
    without a toolkit): the CPU kernel runs on copies, one warning."""
    monkeypatch.setattr(select_module, "has_kernel_for", lambda device: False)
    monkeypatch.setattr(select_module, "_warned_devices", set())
    scores, eligible, seeds = random_batch(seed=6)
    with pytest.warns(RuntimeWarning, match="no CPU kernel"):
        got = select(scores, eligible, seeds, ratio=0.2, mode="sample")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = select(scores, eligible, seeds, ratio=0.2, mode="sample")
    want = reference(scores, eligible, seeds, mode="sample", ratio=0.2)
    np.testing.assert_array_equal(got.numpy(), want)
    assert torch.equal(got, again)


def test_registered_kernels():
    assert extension_available()
    for key in ("CPU", "Meta"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("se_fairseq::select", key), key
    if HAS_CUDA:
        assert select_module.has_kernel_for(torch.device("cuda")), (
            "CUDA torch with a GPU but the extension has no CUDA kernel: see README 'Installing'"
        )


def test_fake_kernel_on_meta_tensors():
    scores, eligible, seeds = to("meta", *random_batch(rows=5, length=7))
    out = select(scores, eligible, seeds, ratio=0.2)
    assert out.device.type == "meta" and out.shape == (5, 7) and out.dtype == torch.bool


def opcheck_samples(device):
    scores, eligible, seeds = random_batch(rows=6, length=40, seed=8)
    scores, eligible, seeds = to(device, scores, eligible, seeds)
    k = torch.tensor([0, 1, 5, 40, 3, 2], device=device)
    for mode in (TOPK, THRESHOLD, SAMPLE):
        yield (scores, eligible, seeds, None, 0.15, mode, 0.5, 0.7)
        yield (scores, eligible, seeds, k, 0.15, mode, 0.5, 0.7)
    yield (scores[:0], eligible[:0], seeds[:0], None, 0.15, TOPK, 0.0, 1.0)


def test_opcheck(device):
    for args in opcheck_samples(device):
        torch.library.opcheck(torch.ops.se_fairseq.select.default, args)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, e, sd: (s[0], e[0], sd), "scores must be 2-D"),
        (lambda s, e, sd: (s.double(), e, sd), "scores must be float32"),
        (lambda s, e, sd: (s, e.int(), sd), "eligible must be a bool tensor shaped like scores"),
        (lambda s, e, sd: (s, e[:, :3], sd), "eligible must be a bool tensor shaped like scores"),
        (lambda s, e, sd: (s, e, sd.int()), "seeds must be int64 with one per row"),
        (lambda s, e, sd: (s, e, sd[:1]), "seeds must be int64 with one per row"),
    ],
)
def test_fake_kernel_checks_like_the_cpp_kernel(change, message):
    """The fake (meta) kernel refuses what the C++ kernel refuses, with its message."""
    scores, eligible, seeds = random_batch(rows=2, length=4)
    for device in ("meta", "cpu"):
        args = change(*to(device, scores, eligible, seeds))
        with pytest.raises(RuntimeError, match=message):
            torch.ops.se_fairseq.select(*args, None, 0.15, TOPK, 0.0, 1.0)


def test_wrapper_converts_argument_types():
    """select() accepts float64/float16 scores, uint8 eligibility and int32 seeds, and
    selects as the op on float32 / bool / int64 (scores are compared in float32)."""
    scores, eligible, _ = random_batch(seed=11)
    seeds = torch.arange(len(scores)) * 7919 - 100  # int32-representable
    want = select(scores, eligible, seeds, ratio=0.3, mode="sample", temperature=0.5)
    for use_extension in (True, False):
        got = select(
            scores.double(),
            eligible.to(torch.uint8),
            seeds.int(),
            ratio=0.3,
            mode="sample",
            temperature=0.5,
            use_extension=use_extension,
        )
        assert got.dtype == torch.bool and torch.equal(got, want)
        got = select(
            scores,
            eligible,
            seeds,
            ratio=0.3,
            mode=SAMPLE,
            temperature=0.5,
            use_extension=use_extension,
        )  # the mode as its number
        assert torch.equal(got, want)
    with torch.enable_grad():
        leaf = scores.clone().requires_grad_()
        assert torch.equal(
            select(leaf, eligible, seeds, ratio=0.3, mode="sample", temperature=0.5), want
        )


def test_kernel_lookup_by_device_type():
    assert select_module.has_kernel_for(torch.device("cpu"))
    assert select_module.has_kernel_for(torch.device("meta"))
    assert select_module._has_kernel_for_type(
        "cuda"
    ) == torch._C._dispatch_has_kernel_for_dispatch_key("se_fairseq::select", "CUDA")
    assert not select_module._has_kernel_for_type("no_such_device")


@pytest.mark.parametrize("use_extension", [True, False])
def test_argument_rules_at_their_limits(use_extension):
    """ratio 0 and 1 are valid (nothing / every eligible position), threshold mode ignores
    ratio, topk ignores temperature, num_select replaces ratio; unknown modes and
    misshapen arguments are refused."""
    scores, eligible, seeds = random_batch(rows=6, length=12, seed=2)

    def run(**kw):
        return select(scores, eligible, seeds, use_extension=use_extension, **kw)

    for mode in ("topk", "sample"):
        assert not run(ratio=0.0, mode=mode).any()
        assert torch.equal(run(ratio=1.0, mode=mode), eligible)
    assert torch.equal(run(ratio=5.0, mode="threshold", threshold=0.0), eligible & (scores > 0))
    assert torch.equal(run(mode="topk", temperature=0.0, ratio=0.5), run(mode="topk", ratio=0.5))
    k = torch.tensor([0, 1, 2, 3, 4, 5])
    assert (
        run(num_select=k, ratio=7.0, mode="topk").sum(1).tolist()
        == torch.minimum(k, eligible.sum(1)).tolist()
    )
    with pytest.raises((RuntimeError, ValueError), match="unknown mode"):
        run(mode=3)
    with pytest.raises((RuntimeError, ValueError)):
        select(scores[0], eligible[0], seeds, use_extension=use_extension)
    with pytest.raises((RuntimeError, ValueError)):
        select(scores, eligible, seeds[:2], use_extension=use_extension)


def test_fake_kernel_registration_is_idempotent():
    """Registering the fake kernel again (a reloaded module) is not an error."""
    assert extension_available()
    select_module._register_fake()
    out = select(*to("meta", *random_batch(rows=2, length=3)), ratio=0.5)
    assert out.device.type == "meta"


def test_reference_defaults_and_float32_scores():
    """select_reference's defaults are the op's (ratio 0.15, topk, threshold 0, T = 1), and
    it ranks scores in float32 as the op does: float64 scores equal in float32 tie."""
    scores, eligible, seeds = random_batch(seed=12)
    s, e, sd = scores.numpy(), eligible.numpy(), seeds.numpy()
    np.testing.assert_array_equal(
        select_reference(s, e, sd), select_reference(s, e, sd, ratio=0.15, mode=TOPK)
    )
    np.testing.assert_array_equal(select_reference(s, e, sd, mode=THRESHOLD), e & (s > 0))
    np.testing.assert_array_equal(
        select_reference(s, e, sd, mode=SAMPLE, ratio=0.3),
        select_reference(s, e, sd, mode=SAMPLE, ratio=0.3, temperature=1.0),
    )
    np.testing.assert_array_equal(
        select(scores, eligible, seeds).numpy(), select_reference(s, e, sd)
    )
    tie = np.array([[1.0, 1.0 + 1e-12, 0.5]])  # one float32 value: position 0 wins the tie
    one = np.ones((1, 3), dtype=bool)
    assert select_reference(tie, one, [0], num_select=[1]).tolist() == [[True, False, False]]
    assert select(
        torch.from_numpy(tie),
        torch.from_numpy(one),
        torch.tensor([0]),
        num_select=torch.tensor([1]),
    ).tolist() == [[True, False, False]]


@pytest.mark.parametrize("use_extension", [True, False])
def test_threshold_mode_selects_every_eligible_score_above_the_threshold(use_extension):
    """mode="threshold" by its definition: eligible and score > threshold (default 0), on
    both paths (the compiled op and the numpy reference), no count or seed involved."""
    scores, eligible, seeds = random_batch(rows=8, length=30)
    scores = scores * 4 - 2  # some below 0
    for kwargs, threshold in (({}, 0.0), ({"threshold": 1.25}, 1.25), ({"threshold": -0.5}, -0.5)):
        got = select(
            scores, eligible, seeds, mode="threshold", use_extension=use_extension, **kwargs
        )
        want = eligible & (scores > threshold)
        assert torch.equal(got, want) and want.any() and (eligible & ~want).any()
