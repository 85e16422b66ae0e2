"""SelfEvolutionMasker keeps the whole masking step on the batch's device.

The replacement draws (--leave-unmasked-prob / --random-token-prob, the
threshold fallback's 80/10/10) are the counter-based hash of
se_fairseq/ops/reference.py computed with int64 torch ops. Checked here: the
hash bit for bit against the numpy reference, the masker's output against an
independent numpy implementation of the policy (the former host path), and no
host round trip (meta tensors, which cannot be copied to the host, and a CPU run
with every host-transfer method of torch.Tensor made to fail). The CUDA variant
of the bit-identity check is marked ``cuda`` (benchmarks/gpu_check.sh runs it).
"""

import numpy as np
import pytest
import torch
from support.devices import device_params
from support.vocab import CountedVocabulary

from se_fairseq.core import masking as se_masking
from se_fairseq.core.masking import (
    MASKED_LM_LEAVE_UNMASKED_PROB,
    MASKED_LM_RANDOM_TOKEN_PROB,
    SelfEvolutionMasker,
    row_seeds,
)
from se_fairseq.ops.reference import hash_uniform

HAS_CUDA = torch.cuda.is_available()
DEVICES = device_params()


def dictionary(words=60):
    d = CountedVocabulary()
    for i in range(words):
        d.add_symbol(f"w{i}", n=1000 // (i + 1))  # Zipf-like counts for freq-weighted draws
    return d, d.add_symbol("<mask>")


def batch(d, rows=24, length=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(d.nspecial, len(d) - 1, (rows, length), generator=g)
    lengths = torch.randint(3, length + 1, (rows,), generator=g)
    tokens[torch.arange(length)[None, :] >= lengths[:, None]] = d.pad()
    tokens[:, 0] = d.bos()
    tokens[torch.arange(rows), lengths - 1] = d.eos()
    scores = torch.rand(rows, length, generator=g) * 4
    return tokens, scores


def numpy_replace(masker, tokens, selected, seeds, fallback=None):
    """The replacement policy written out with numpy and reference.hash_uniform: decision
    u = hash(stream, 2 p) (keep below leave, random below leave + random), replacement
    id = the inverse CDF at hash(stream, 2 p + 1)."""
    tokens, selected = tokens.cpu().numpy(), selected.cpu().numpy()
    rows, length = tokens.shape
    stream = seeds.cpu().numpy().view(np.uint64) ^ np.uint64(se_masking._REPLACE_STREAM)
    leave = np.full((rows, 1), masker.leave_unmasked_prob)
    both = leave + masker.random_token_prob
    if fallback is not None:
        fb = fallback.cpu().numpy()[:, None]
        leave = np.where(fb, MASKED_LM_LEAVE_UNMASKED_PROB, leave)
        both = np.where(fb, MASKED_LM_LEAVE_UNMASKED_PROB + MASKED_LM_RANDOM_TOKEN_PROB, both)
    positions = np.arange(length, dtype=np.uint64)
    u = hash_uniform(stream[:, None].view(np.int64), 2 * positions)
    draws = hash_uniform(stream[:, None].view(np.int64), 2 * positions + 1)
    replacement = np.minimum(
        np.searchsorted(masker.replacement_cdf, draws, side="right"),
        len(masker.replacement_cdf) - 1,
    )
    keep = selected & (u < leave)
    randomize = selected & ~keep & (u < both)
    source = tokens.copy()
    source[selected & ~keep & ~randomize] = masker.mask_idx
    source[randomize] = replacement[randomize]
    target = np.where(selected, tokens, masker.pad)
    return source, target


def test_device_hash_is_the_reference_hash_bit_for_bit():
    rng = np.random.default_rng(0)
    seeds = np.concatenate(
        [
            rng.integers(-(2**63), 2**63 - 1, 500, dtype=np.int64, endpoint=True),
            np.array([0, -1, 1, 2**63 - 1, -(2**63)], dtype=np.int64),
        ]
    )
    counters = np.concatenate([np.arange(300), rng.integers(0, 2**62, 200)]).astype(np.int64)
    want = hash_uniform(seeds[:, None], counters[None, :].astype(np.uint64))
    got = se_masking._hash_uniform(
        torch.from_numpy(seeds)[:, None], torch.from_numpy(counters)[None, :]
    )
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy().view(np.int64), want.view(np.int64))
    assert ((want > 0) & (want <= 1)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", [(0.1, 0.1), (0.3, 0.0), (0.0, 0.5), (0.2, 0.8), (0.0, 1.0)])
@pytest.mark.parametrize("freq_weighted", [False, True])
def test_replacement_equals_the_numpy_policy(device, policy, freq_weighted):
    d, mask_idx = dictionary()
    leave, rand = policy
    masker = SelfEvolutionMasker(
        d,
        mask_idx,
        mask_prob=0.3,
        mode="topk",
        seed=3,
        leave_unmasked_prob=leave,
        random_token_prob=rand,
        freq_weighted_replacement=freq_weighted,
    )
    tokens, scores = batch(d)
    seeds = torch.from_numpy(row_seeds(3, 2, np.arange(len(tokens)) * 7))
    source, target = masker.mask(tokens.to(device), scores.to(device), seeds.to(device))
    assert source.device.type == device
    selected = target.cpu().ne(d.pad())
    want_source, want_target = numpy_replace(masker, tokens, selected, seeds)
    np.testing.assert_array_equal(source.cpu().numpy(), want_source)
    np.testing.assert_array_equal(target.cpu().numpy(), want_target)
    # the policy is not vacuous: each outcome occurs where its probability is positive
    sel_src, sel_tgt = source.cpu()[selected], target.cpu()[selected]
    assert (sel_src == mask_idx).any() == (leave + rand < 1)
    if leave:
        assert (sel_src == sel_tgt).any()
    if rand:
        assert ((sel_src != sel_tgt) & (sel_src != mask_idx)).any()
        assert (sel_src[sel_src != mask_idx] >= d.nspecial).all()


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_fallback_rows_use_80_10_10(device):
    """Rows with no score above the threshold: masked_lm's policy, even with a 0/0 policy
    for the rows selected by score."""
    d, mask_idx = dictionary()
    masker = SelfEvolutionMasker(
        d, mask_idx, mask_prob=0.4, mode="threshold", seed=1, threshold=3.0, threshold_fallback=True
    )
    tokens, scores = batch(d, rows=64)
    scores[::2] = 0.0  # even rows: nothing above 3 -> random fallback
    seeds = torch.from_numpy(row_seeds(1, 1, np.arange(64)))
    source, target = masker.mask(tokens.to(device), scores.to(device), seeds.to(device))
    selected = target.cpu().ne(d.pad())
    eligible = (tokens >= d.nspecial) & (tokens != mask_idx)
    fallback = ~((scores > 3.0) & eligible).any(dim=1)
    assert fallback[::2].all() and not fallback[1::2].all()
    want_source, _ = numpy_replace(masker, tokens, selected, seeds, fallback)
    np.testing.assert_array_equal(source.cpu().numpy(), want_source)
    by_score = selected & ~fallback[:, None]
    assert by_score.any() and (source.cpu()[by_score] == mask_idx).all()  # all <mask>
    assert (source.cpu()[selected & fallback[:, None]] != mask_idx).any()  # some kept/random
    # fallback rows mask --mask-prob (0.4 here) of their eligible tokens, rounded per row
    share = selected[fallback].sum() / eligible[fallback].sum()
    assert abs(float(share) - 0.4) < 0.05


@pytest.mark.parametrize("whole_words", [False, True])
@pytest.mark.parametrize("mode", ["topk", "sample", "threshold"])
def test_masking_runs_on_meta_tensors(mode, whole_words):
    """Meta tensors have no data: any host copy, .item(), .tolist() or Python bool of a
    tensor raises. The whole masking step (selection, replacement) runs on them, with
    --mask-whole-words too."""
    d, mask_idx = dictionary()
    begins = torch.tensor([i % 3 != 0 for i in range(len(d))]) if whole_words else None
    masker = SelfEvolutionMasker(
        d,
        mask_idx,
        mask_prob=0.3,
        mode=mode,
        seed=1,
        threshold=1.0,
        leave_unmasked_prob=0.1,
        random_token_prob=0.1,
        threshold_fallback=True,
        freq_weighted_replacement=True,
        mask_whole_words=begins,
    )
    tokens, scores = batch(d)
    seeds = torch.from_numpy(row_seeds(1, 1, np.arange(len(tokens))))
    source, target = masker.mask(tokens.to("meta"), scores.to("meta"), seeds.to("meta"))
    assert source.device.type == target.device.type == "meta"
    assert source.shape == target.shape == tokens.shape and source.dtype == tokens.dtype


def test_no_host_transfer_on_cpu(monkeypatch):
    """On CPU the same code path with every device-to-host method of torch.Tensor made to
    fail: what would copy an online CUDA batch to the host fails here."""
    d, mask_idx = dictionary()
    masker = SelfEvolutionMasker(
        d,
        mask_idx,
        mask_prob=0.3,
        mode="threshold",
        seed=1,
        threshold=2.0,
        threshold_fallback=True,
        leave_unmasked_prob=0.1,
        random_token_prob=0.1,
    )
    tokens, scores = batch(d)
    scores[:5] = 0.0
    seeds = torch.from_numpy(row_seeds(1, 1, np.arange(len(tokens))))
    expected = masker.mask(tokens, scores, seeds)
    masker.mask(tokens, scores, seeds)  # caches filled

    def host_transfer(*args, **kwargs):
        raise AssertionError("host transfer in the masking step")

    for name in ("cpu", "numpy", "tolist", "item", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, host_transfer)
    got = masker.mask(tokens, scores, seeds)
    monkeypatch.undo()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def splitmix64_int(x):
    """splitmix64 on Python integers mod 2^64 (written from its definition)."""
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_row_seeds_hash_seed_epoch_and_index():
    """row seed = splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ index), as int64 bits."""
    for seed, epoch in ((1, 1), (5, 3), (-7, 2), (2**40 + 3, 10)):
        indices = [0, 1, 17, 2**31 + 5]
        base = splitmix64_int(splitmix64_int(seed & ((1 << 64) - 1)) ^ epoch)
        want = [splitmix64_int(base ^ i) for i in indices]
        want = [w - (1 << 64) if w >= 1 << 63 else w for w in want]
        got = row_seeds(seed, epoch, indices)
        assert got.dtype == np.int64 and got.tolist() == want


def test_replacement_distribution_and_special_tokens():
    """Random replacements: uniform over the ordinary words, or proportional to their
    dictionary counts; never a special token or <mask>. The masker refuses a share
    outside [0, 1] and its special set is the first nspecial ids plus <mask>."""
    d, mask_idx = dictionary()
    uniform = SelfEvolutionMasker(d, mask_idx, mask_prob=0.1, mode="topk", seed=0)
    weighted = SelfEvolutionMasker(
        d, mask_idx, mask_prob=0.1, mode="topk", seed=0, freq_weighted_replacement=True
    )
    ordinary = np.array([0.0] * d.nspecial + [1.0] * (len(d) - d.nspecial))
    ordinary[mask_idx] = 0.0
    counts = np.array(d.count, dtype=np.float64) * ordinary
    np.testing.assert_allclose(uniform.replacement_cdf, np.cumsum(ordinary) / ordinary.sum())
    np.testing.assert_allclose(weighted.replacement_cdf, np.cumsum(counts) / counts.sum())
    special = torch.zeros(len(d), dtype=torch.bool)
    special[: d.nspecial] = True
    special[mask_idx] = True
    assert torch.equal(uniform.special, special)
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError, match="random_share must lie in"):
            SelfEvolutionMasker(d, mask_idx, mask_prob=0.1, mode="topk", seed=0, random_share=share)
    # replacement ids drawn from the CDF follow it: many draws against the counts
    masker = SelfEvolutionMasker(
        d,
        mask_idx,
        mask_prob=0.99,
        mode="topk",
        seed=0,
        random_token_prob=1.0,
        freq_weighted_replacement=True,
    )
    tokens = torch.full((400, 60), 10)
    tokens[:, 0], tokens[:, -1] = d.bos(), d.eos()
    source, target = masker.mask(tokens, torch.rand(400, 60), torch.arange(400))
    drawn = source[target.ne(d.pad())]
    assert drawn.numel() > 20000 and not ((drawn < d.nspecial) | (drawn == mask_idx)).any()
    share = np.bincount(drawn.numpy(), minlength=len(d)) / drawn.numel()
    np.testing.assert_allclose(share, counts / counts.sum(), atol=0.01)


def test_threshold_masker_defaults_select_above_zero_without_fallback():
    """SelfEvolutionMasker(mode="threshold") with its defaults: threshold 0 and no random
    fallback, so a row with no score above 0 selects nothing."""
    d, mask_idx = dictionary()
    masker = SelfEvolutionMasker(d, mask_idx, mask_prob=0.3, mode="threshold", seed=1)
    tokens, scores = batch(d)
    scores = scores - 2.0
    scores[:3] = -1.0  # nothing above 0 in these rows
    seeds = torch.from_numpy(row_seeds(1, 1, np.arange(len(tokens))))
    source, target = masker.mask(tokens, scores, seeds)
    eligible = (tokens >= d.nspecial) & (tokens != mask_idx)
    assert torch.equal(target.ne(d.pad()), eligible & (scores > 0))
    assert not target[:3].ne(d.pad()).any() and target[3:].ne(d.pad()).any()
