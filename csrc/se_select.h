// Shared definitions of the se_fairseq::select operator.
//
// The operator picks, for every row of a padded batch, which positions to
// mask. The random numbers it needs come from a counter-based hash (not a
// stateful generator) so that the CPU op, the CUDA op and the numpy reference
// in se_fairseq/ops/reference.py draw exactly the same numbers for a row,
// whatever the batch the row lands in.
//
// Bit-identical arithmetic. Every floating-point value that decides a
// selection (the rounded count k, the sampling keys) is computed here, once
// for host and device, with IEEE-754 double +, -, *, / in round-to-nearest
// and exact bit operations only:
//   - on the device through __dadd_rn & co., which nvcc never fuses into an
//     FMA (plain a * b + c would be contracted by default);
//   - on the host through plain operators, in separate inline functions and
//     compiled with -ffp-contract=off (setup.py);
//   - no libm: glibc's log, CUDA's log and numpy's SIMD log may differ in the
//     last bit, so se_log below replaces them.
// reference.py mirrors every expression, operation for operation.
#pragma once

#include <cstdint>
#include <cstring>

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

// ---- exact building blocks ------------------------------------------------

SE_HOST_DEVICE double se_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

SE_HOST_DEVICE double se_sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

SE_HOST_DEVICE double se_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

SE_HOST_DEVICE double se_div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

SE_HOST_DEVICE int64_t se_double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return __double_as_longlong(x);
#else
  int64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
#endif
}

SE_HOST_DEVICE double se_bits_double(int64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(bits);
#else
  double x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
#endif
}

// Natural logarithm, bit-identical on host, device and in reference.py.
// fdlibm's __ieee754_log (e_log.c) reduction and minimax polynomial, with its
// general formula used for every argument: x = 2^k * m, m in
// [sqrt(2)/2, sqrt(2)), f = m - 1, s = f / (2 + f),
// log(x) = k*ln2_hi - ((s*(f - R(s^2)) - k*ln2_lo) - f). Within 2 ulp of the
// true logarithm (tests/test_select_op.py measures it). x == +-0 gives -inf,
// x < 0 and NaN give NaN, +inf gives +inf.
SE_HOST_DEVICE double se_log(double x) {
  const int64_t kPosInf = 0x7ff0000000000000LL;
  if (!(x > 0.0)) {  // -inf for +-0, NaN for negatives and NaN
    return x == 0.0 ? se_bits_double(static_cast<int64_t>(0xfff0000000000000ULL))
                    : se_bits_double(0x7ff8000000000000LL);
  }
  int64_t bits = se_double_bits(x);
  if (bits >= kPosInf) return x;  // +inf
  int64_t k = 0;
  if (bits < 0x0010000000000000LL) {  // subnormal: scale by 2^54 (exact)
    x = se_mul(x, 0x1p54);
    k = -54;
    bits = se_double_bits(x);
  }
  int64_t hx = bits >> 32;  // sign 0, exponent, top 20 bits of the mantissa
  k += (hx >> 20) - 1023;
  hx &= 0x000fffff;
  const int64_t i = (hx + 0x95f64) & 0x100000;
  // m: x's mantissa with exponent 0 (or -1 when the mantissa exceeds sqrt(2))
  const double m = se_bits_double(((hx | (i ^ 0x3ff00000)) << 32) |
                                  (bits & 0xffffffffLL));
  k += i >> 20;
  const double f = se_sub(m, 1.0);
  const double s = se_div(f, se_add(2.0, f));
  const double z = se_mul(s, s);
  const double w = se_mul(z, z);
  const double t1 = se_mul(
      w, se_add(0x1.999999997fa04p-2,                     // Lg2
                se_mul(w, se_add(0x1.c71c51d8e78afp-3,    // Lg4
                                 se_mul(w, 0x1.39a09d078c69fp-3)))));  // Lg6
  const double t2 = se_mul(
      z, se_add(0x1.5555555555593p-1,                     // Lg1
                se_mul(w, se_add(0x1.2492494229359p-2,    // Lg3
                                 se_mul(w, se_add(0x1.7466496cb03dep-3,  // Lg5
                                                  se_mul(w, 0x1.2f112df3e5244p-3)))))));  // Lg7
  const double r = se_add(t2, t1);
  const double dk = static_cast<double>(k);  // |k| < 1100: exact
  return se_sub(se_mul(dk, 0x1.62e42feep-1),  // ln2_hi
                se_sub(se_sub(se_mul(s, se_sub(f, r)),
                              se_mul(dk, 0x1.a39ef35793c76p-33)),  // ln2_lo
                       f));
}

// ---- random numbers ---------------------------------------------------------

SE_HOST_DEVICE uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Uniform double in (0, 1] for (row seed, counter): (h + 0.5) / 2^53 with
// h < 2^53; h = 2^53 - 1 rounds to exactly 1.
SE_HOST_DEVICE double hash_uniform(uint64_t seed, uint64_t counter) {
  const uint64_t h = splitmix64(splitmix64(seed) ^ counter);
  return se_mul(se_add(static_cast<double>(h >> 11), 0.5),
                1.0 / 9007199254740992.0);
}

// Counter 0 of a row rounds k; counter 1 + p draws the Gumbel noise of
// position p. k = floor(ratio * eligible + u), clamped to [0, eligible].
SE_HOST_DEVICE int64_t rounded_count(double ratio, int64_t eligible,
                                     uint64_t seed) {
  const double u = hash_uniform(seed, 0);
  int64_t k = static_cast<int64_t>(
      se_add(se_mul(ratio, static_cast<double>(eligible)), u));
  if (k < 0) k = 0;
  if (k > eligible) k = eligible;
  return k;
}

// The key a position is ranked by: its score (topk), or its score over the
// temperature plus Gumbel noise, s / T - log(-log(u)) (sample). u == 1 gives
// the key +inf.
SE_HOST_DEVICE double selection_key(float score, int64_t pos, int64_t mode,
                                    double temperature, uint64_t seed) {
  const double s = static_cast<double>(score);
  if (mode != kSample) return s;
  const double u = hash_uniform(seed, static_cast<uint64_t>(pos) + 1);
  return se_sub(se_div(s, temperature), se_log(-se_log(u)));
}

// True when position a (key ka) ranks before position b (key kb): higher key
// first, lower position first among equal keys (-0.0 == +0.0). A strict
// total order on distinct positions whenever no key is NaN.
SE_HOST_DEVICE bool ranks_before(double ka, int64_t a, double kb, int64_t b) {
  return ka > kb || (ka == kb && a < b);
}

}  // namespace se_fairseq
