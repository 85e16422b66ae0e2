"""Pure numpy reference of ``se_fairseq::select`` (csrc/se_select_cpu.cpp).

It draws the same counter-based random numbers as the C++ and CUDA ops,
computes every key with the same IEEE operations in the same order
(csrc/se_select.h: no libm, no FMA) and breaks ties the same way (higher key
first, then lower position), so all three give identical selections. It is
the fallback when the extension is not built, and the oracle the op is tested
against.
"""

import numpy as np

TOPK, THRESHOLD, SAMPLE = 0, 1, 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x):
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed, counter):
    """Uniform doubles in (0, 1), one per broadcast (seed, counter) pair."""
    seed = np.asarray(seed).astype(np.int64).view(np.uint64)
    counter = np.asarray(counter, dtype=np.uint64)
    h = splitmix64(splitmix64(seed) ^ counter)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def rounded_count(ratio, eligible, seeds):
    """k = floor(ratio * eligible + u): fairseq's probabilistic rounding."""
    u = hash_uniform(seeds, 0)
    k = (np.float64(ratio) * eligible.astype(np.float64) + u).astype(np.int64)
    return np.clip(k, 0, eligible)


def _h(text):
    return np.float64(float.fromhex(text))


# fdlibm e_log.c constants, written as in csrc/se_select.h
_LN2_HI, _LN2_LO = _h("0x1.62e42feep-1"), _h("0x1.a39ef35793c76p-33")
_LG1, _LG2, _LG3 = (
    _h("0x1.5555555555593p-1"),
    _h("0x1.999999997fa04p-2"),
    _h("0x1.2492494229359p-2"),
)
_LG4, _LG5, _LG6 = (
    _h("0x1.c71c51d8e78afp-3"),
    _h("0x1.7466496cb03dep-3"),
    _h("0x1.39a09d078c69fp-3"),
)
_LG7 = _h("0x1.2f112df3e5244p-3")


def se_log(x):
    """Natural log, bit-identical to se_log in csrc/se_select.h (host and CUDA).

    The same operations in the same order; numpy's elementwise float64 +, -, *,
    / are correctly rounded and never fused, unlike np.log (SIMD, may differ in
    the last bit from glibc and CUDA).
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        bits = x.view(np.int64)
        sub = (x > 0) & (bits < 0x0010000000000000)  # subnormal: scale by 2^54
        xs = np.where(sub, x * np.float64(2.0**54), x)
        k = np.where(sub, -54, 0).astype(np.int64)
        bits = xs.view(np.int64)
        hx = bits >> 32
        k = k + ((hx >> 20) - 1023)
        hx = hx & 0x000FFFFF
        i = (hx + 0x95F64) & 0x100000
        m = (((hx | (i ^ 0x3FF00000)) << 32) | (bits & 0xFFFFFFFF)).view(np.float64)
        k = k + (i >> 20)
        f = m - 1.0
        s = f / (2.0 + f)
        z = s * s
        w = z * z
        t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
        t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
        r = t2 + t1
        dk = k.astype(np.float64)
        out = dk * _LN2_HI - ((s * (f - r) - dk * _LN2_LO) - f)
        out = np.where(x == np.inf, np.inf, out)
        out = np.where(x > 0, out, np.where(x == 0, -np.inf, np.nan))
    return out


def _gumbel_keys(scores, seed, temperature):
    """s / T - log(-log(u)) per position, as selection_key in se_select.h."""
    u = hash_uniform(seed, np.arange(len(scores), dtype=np.uint64) + np.uint64(1))
    return scores.astype(np.float64) / np.float64(temperature) - se_log(-se_log(u))


def select_reference(
    scores, eligible, seeds, num_select=None, ratio=0.15, mode=TOPK, threshold=0.0, temperature=1.0
):
    scores = np.asarray(scores, dtype=np.float32)
    eligible = np.asarray(eligible, dtype=bool)
    seeds = np.asarray(seeds, dtype=np.int64)
    if scores.ndim != 2 or eligible.shape != scores.shape or seeds.shape != scores.shape[:1]:
        raise ValueError("select: scores and eligible must be (rows, positions), seeds (rows,)")
    if mode not in (TOPK, THRESHOLD, SAMPLE):
        raise ValueError(f"select: unknown mode {mode}")
    if mode != THRESHOLD and num_select is None and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"select: ratio must lie in [0, 1], got {ratio}")
    if mode == SAMPLE and not temperature > 0:
        raise ValueError(f"select: temperature must be positive, got {temperature}")
    if np.isnan(scores[eligible]).any():
        raise ValueError("select: NaN score among the eligible positions")

    out = np.zeros(scores.shape, dtype=bool)
    if mode == THRESHOLD:
        # in float64, as the C++ op (a float32 compare would round the threshold)
        return eligible & (scores.astype(np.float64) > np.float64(threshold))
    n = eligible.sum(axis=1)
    if num_select is None:
        k = rounded_count(ratio, n, seeds)
    else:
        k = np.minimum(np.maximum(np.asarray(num_select, dtype=np.int64), 0), n)
    length = scores.shape[1]
    positions = np.arange(length)
    for r in range(scores.shape[0]):
        if k[r] == 0:
            continue
        if mode == SAMPLE:
            keys = _gumbel_keys(scores[r], seeds[r], temperature)
        else:
            keys = scores[r].astype(np.float64)
        pos = positions[eligible[r]]
        # lexsort: last key is primary -> descending key, then ascending position
        order = np.lexsort((pos, -keys[pos]))
        out[r, pos[order[: k[r]]]] = True
    return out
