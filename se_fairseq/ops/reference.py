"""Pure numpy reference of ``se_fairseq::select`` (csrc/se_select_cpu.cpp).

It draws the same counter-based random numbers as the C++ and CUDA ops and
breaks ties the same way (higher key first, then lower position), so all
three give identical selections. It is the fallback when the extension is
not built, and the oracle the op is tested against.
"""
import math

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
    k = (ratio * eligible.astype(np.float64) + u).astype(np.int64)
    return np.clip(k, 0, eligible)


def _gumbel(seed, length):
    u = hash_uniform(seed, np.arange(length, dtype=np.uint64) + np.uint64(1))
    # math.log is the C library's log, as in the C++ op; numpy's SIMD log can
    # differ in the last bit.
    return np.array([-math.log(-math.log(x)) for x in u], dtype=np.float64)


def select_reference(scores, eligible, seeds, num_select=None, ratio=0.15,
                     mode=TOPK, threshold=0.0, temperature=1.0):
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
        return eligible & (scores > threshold)
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
        keys = scores[r].astype(np.float64)
        if mode == SAMPLE:
            keys = keys / temperature + _gumbel(seeds[r], length)
        pos = positions[eligible[r]]
        # lexsort: last key is primary -> descending key, then ascending position
        order = np.lexsort((pos, -keys[pos]))
        out[r, pos[order[: k[r]]]] = True
    return out
