// Shared definitions of the se_fairseq::select operator.
//
// The operator picks, for every row of a padded batch, which positions to
// mask. The random numbers it needs come from a counter-based hash (not a
// stateful generator) so that the CPU op, the CUDA op and the numpy reference
// in se_fairseq/ops/reference.py draw exactly the same numbers for a row,
// whatever the batch the row lands in.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SE_HOST_DEVICE inline
#endif

namespace se_fairseq {

enum SelectMode : int64_t {
  kTopK = 0,       // the k highest-scored eligible positions
  kThreshold = 1,  // every eligible position scored above the threshold
  kSample = 2,     // k positions drawn without replacement (Gumbel top-k)
};

SE_HOST_DEVICE uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Uniform double in the open interval (0, 1) for (row seed, counter).
SE_HOST_DEVICE double hash_uniform(uint64_t seed, uint64_t counter) {
  const uint64_t h = splitmix64(splitmix64(seed) ^ counter);
  return (static_cast<double>(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// Counter 0 of a row rounds k; counter 1 + p draws the Gumbel noise of
// position p.
SE_HOST_DEVICE int64_t rounded_count(double ratio, int64_t eligible,
                                     uint64_t seed) {
  const double u = hash_uniform(seed, 0);
  int64_t k = static_cast<int64_t>(ratio * static_cast<double>(eligible) + u);
  if (k < 0) k = 0;
  if (k > eligible) k = eligible;
  return k;
}

// True when position a (key ka) ranks before position b (key kb): higher key
// first, lower position first among equal keys.
SE_HOST_DEVICE bool ranks_before(double ka, int64_t a, double kb, int64_t b) {
  return ka > kb || (ka == kb && a < b);
}

}  // namespace se_fairseq
