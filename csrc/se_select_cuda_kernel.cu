// CUDA kernel of se_fairseq::select. Needs only the CUDA runtime: the torch
// glue lives in se_select_cuda.cpp.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "se_select.h"

namespace se_fairseq {

namespace {

constexpr int kThreads = 256;

__device__ double selection_key(float score, int64_t pos, int64_t mode,
                                double temperature, uint64_t seed) {
  const double s = static_cast<double>(score);
  if (mode != kSample) return s;
  const double u = hash_uniform(seed, static_cast<uint64_t>(pos) + 1);
  return s / temperature - log(-log(u));
}

// One block per row. The keys of the row sit in shared memory; every eligible
// position counts the eligible positions that rank before it, and is selected
// when fewer than k do. Quadratic in the row length but branch-free, exact,
// and with the same tie-break as the CPU op.
__global__ void select_kernel(const float* __restrict__ scores,
                              const bool* __restrict__ eligible,
                              const int64_t* __restrict__ seeds,
                              const int64_t* __restrict__ num_select,
                              int64_t length, int64_t mode, double ratio,
                              double threshold, double temperature,
                              bool* __restrict__ out, int* __restrict__ error) {
  extern __shared__ double keys[];  // length doubles
  __shared__ int eligible_count;
  const int64_t row = blockIdx.x;
  const float* s = scores + row * length;
  const bool* e = eligible + row * length;
  bool* o = out + row * length;
  const uint64_t seed = static_cast<uint64_t>(seeds[row]);

  if (threadIdx.x == 0) eligible_count = 0;
  __syncthreads();
  int local = 0;
  for (int64_t p = threadIdx.x; p < length; p += blockDim.x) {
    const bool ok = e[p];
    if (ok && isnan(s[p])) atomicExch(error, 1);
    keys[p] = ok ? selection_key(s[p], p, mode, temperature, seed) : 0.0;
    local += ok;
    o[p] = false;
  }
  atomicAdd(&eligible_count, local);
  __syncthreads();

  const int64_t n = eligible_count;
  if (mode == kThreshold) {
    for (int64_t p = threadIdx.x; p < length; p += blockDim.x)
      o[p] = e[p] && s[p] > threshold;
    return;
  }
  int64_t k;
  if (num_select != nullptr) {
    k = num_select[row] < 0 ? 0 : num_select[row];
    if (k > n) k = n;
  } else {
    k = rounded_count(ratio, n, seed);
  }
  for (int64_t p = threadIdx.x; p < length; p += blockDim.x) {
    if (!e[p]) continue;
    int64_t rank = 0;
    const double kp = keys[p];
    for (int64_t q = 0; q < length && rank < k; ++q)
      rank += e[q] && ranks_before(keys[q], q, kp, p);
    o[p] = rank < k;
  }
}

}  // namespace

// Returns a cudaError_t; *error_flag (device memory) becomes 1 on a NaN score.
cudaError_t launch_select_cuda(const float* scores, const bool* eligible,
                               const int64_t* seeds, const int64_t* num_select,
                               int64_t rows, int64_t length, int64_t mode,
                               double ratio, double threshold,
                               double temperature, bool* out, int* error_flag,
                               cudaStream_t stream) {
  if (rows == 0 || length == 0) return cudaSuccess;
  const size_t shared = static_cast<size_t>(length) * sizeof(double);
  if (shared > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(
        select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(shared));
    if (err != cudaSuccess) return err;
  }
  select_kernel<<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(
      scores, eligible, seeds, num_select, length, mode, ratio, threshold,
      temperature, out, error_flag);
  return cudaGetLastError();
}

}  // namespace se_fairseq
