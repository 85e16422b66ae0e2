// CUDA kernels of se_fairseq::select. Needs only the CUDA runtime: the torch
// glue lives in se_select_cuda.cpp.
//
// topk / sample: one block per row. Phase 1 computes the key of every
// eligible position (se_select.h, bit-identical to the CPU op) and compacts
// (key, position) pairs into scratch: shared memory when the row fits,
// otherwise a global buffer the glue allocates. Phase 2: every eligible
// position counts the eligible positions that rank before it (higher key, then
// lower position) and is selected when fewer than k do. The order of the
// compacted pairs does not matter, the comparison is a strict total order, so
// the result is exact and equals the CPU op's. Quadratic in the number of
// eligible positions of a row, with early exit once the rank reaches k.
//
// threshold: elementwise, no keys.
//
// A NaN score at an eligible position is a device-side assert (printing the
// row and position): reported without a host sync, it surfaces at the next
// synchronizing CUDA call, like torch's own device-side index checks.
#include <cuda_runtime.h>

#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <unordered_map>

#include "se_select.h"

namespace se_fairseq {

namespace {

constexpr int kThreads = 256;
// Scratch per position of a row: its key and its position.
constexpr size_t kScratchBytesPerPosition = sizeof(double) + sizeof(int);

__device__ __noinline__ void report_nan(int64_t row, int64_t pos) {
  printf("se_fairseq::select: NaN score at row %lld, position %lld (eligible "
         "scores must be finite or +/-inf)\n",
         static_cast<long long>(row), static_cast<long long>(pos));
  __assert_fail("se_fairseq::select: NaN score among the eligible positions",
                __FILE__, __LINE__, __func__);
}

__global__ void __launch_bounds__(kThreads)
    select_kernel(const float* __restrict__ scores,
                  const bool* __restrict__ eligible,
                  const int64_t* __restrict__ seeds,
                  const int64_t* __restrict__ num_select, int64_t rows,
                  int64_t length, int64_t mode, double ratio,
                  double temperature, bool* __restrict__ out,
                  unsigned char* global_scratch) {
  // Shared path: length doubles, then length ints (dynamic size
  // length * kScratchBytesPerPosition). Unused on the global path.
  extern __shared__ double shared_scratch[];
  __shared__ int count;

  const int64_t row = blockIdx.x;
  const float* s = scores + row * length;
  const bool* e = eligible + row * length;
  bool* o = out + row * length;
  double* keys;
  int* pos;
  if (global_scratch == nullptr) {
    keys = shared_scratch;
    pos = reinterpret_cast<int*>(shared_scratch + length);
  } else {
    // rows * length doubles, then rows * length ints
    double* all_keys = reinterpret_cast<double*>(global_scratch);
    keys = all_keys + row * length;
    pos = reinterpret_cast<int*>(all_keys + rows * length) + row * length;
  }
  const uint64_t seed = static_cast<uint64_t>(seeds[row]);

  // Phase 1: clear the row's output, compact the eligible (key, position).
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < length; p += blockDim.x) {
    o[p] = false;
    if (!e[p]) continue;
    const float sp = s[p];
    if (isnan(sp)) report_nan(row, p);
    const int slot = atomicAdd(&count, 1);
    keys[slot] = selection_key(sp, p, mode, temperature, seed);
    pos[slot] = static_cast<int>(p);
  }
  // Makes count, the scratch (shared or global) and the cleared output of
  // every thread visible to the whole block.
  __syncthreads();

  const int64_t n = count;
  int64_t k;
  if (num_select != nullptr) {
    k = num_select[row] < 0 ? 0 : num_select[row];
    if (k > n) k = n;
  } else {
    k = rounded_count(ratio, n, seed);
  }
  if (k == 0) return;

  // Phase 2: rank counting over the compacted pairs only.
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double key = keys[i];
    const int64_t p = pos[i];
    int64_t rank = 0;
    if (k < n) {
      for (int64_t j = 0; j < n && rank < k; ++j)
        rank += ranks_before(keys[j], pos[j], key, p);
    }
    if (rank < k) o[p] = true;
  }
}

__global__ void __launch_bounds__(kThreads)
    threshold_kernel(const float* __restrict__ scores,
                     const bool* __restrict__ eligible, int64_t length,
                     int64_t total, double threshold, bool* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < total; i += stride) {
    const bool ok = eligible[i];
    const float sp = scores[i];
    if (ok && isnan(sp)) report_nan(i / length, i % length);
    out[i] = ok && static_cast<double>(sp) > threshold;
  }
}

__global__ void __launch_bounds__(kThreads)
    keys_kernel(const float* __restrict__ scores,
                const int64_t* __restrict__ seeds, int64_t length,
                int64_t total, int64_t mode, double temperature,
                double* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < total; i += stride) {
    const int64_t row = i / length;
    out[i] = selection_key(scores[i], i - row * length, mode, temperature,
                           static_cast<uint64_t>(seeds[row]));
  }
}

unsigned elementwise_blocks(int64_t total) {
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > 65536) blocks = 65536;  // grid-stride loops cover the rest
  return static_cast<unsigned>(blocks);
}

// The most dynamic shared memory select_kernel may take on the current
// device: raised once per device to the opt-in limit minus the kernel's
// static shared memory. A failed cudaFuncSetAttribute is cleared and the
// default limit kept (long rows then take the global-memory path).
cudaError_t max_dynamic_shared(size_t* limit) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  static std::mutex mutex;
  static std::unordered_map<int, size_t> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto hit = cache.find(device);
  if (hit != cache.end()) {
    *limit = hit->second;
    return cudaSuccess;
  }
  cudaFuncAttributes attr;
  err = cudaFuncGetAttributes(&attr, select_kernel);
  if (err != cudaSuccess) return err;
  int optin = 0;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               device);
  if (err != cudaSuccess) return err;
  size_t allowed = attr.maxDynamicSharedSizeBytes > 0
                       ? static_cast<size_t>(attr.maxDynamicSharedSizeBytes)
                       : 0;
  const size_t static_bytes = attr.sharedSizeBytes;
  const size_t wanted = static_cast<size_t>(optin) > static_bytes
                            ? static_cast<size_t>(optin) - static_bytes
                            : 0;
  if (wanted > allowed) {
    if (cudaFuncSetAttribute(select_kernel,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(wanted)) == cudaSuccess) {
      allowed = wanted;
    } else {
      (void)cudaGetLastError();  // leave no error behind for a later launch
    }
  }
  cache.emplace(device, allowed);
  *limit = allowed;
  return cudaSuccess;
}

}  // namespace

// Bytes of global scratch that launch_select_cuda needs (0 when the keys of
// a row fit in shared memory, or in threshold mode, which needs no keys).
cudaError_t select_cuda_scratch_bytes(int64_t rows, int64_t length,
                                      int64_t mode, size_t* bytes) {
  *bytes = 0;
  if (mode == kThreshold || rows == 0 || length == 0) return cudaSuccess;
  size_t limit = 0;
  const cudaError_t err = max_dynamic_shared(&limit);
  if (err != cudaSuccess) return err;
  const size_t per_row = static_cast<size_t>(length) * kScratchBytesPerPosition;
  if (per_row > limit) *bytes = static_cast<size_t>(rows) * per_row;
  return cudaSuccess;
}

// Launches the kernel of `mode` on `stream`; global_scratch must hold
// select_cuda_scratch_bytes(rows, length, mode) bytes (nullptr when 0).
// Returns the launch's cudaError_t. Every pointer is device memory.
cudaError_t launch_select_cuda(const float* scores, const bool* eligible,
                               const int64_t* seeds, const int64_t* num_select,
                               int64_t rows, int64_t length, int64_t mode,
                               double ratio, double threshold,
                               double temperature, bool* out,
                               void* global_scratch, cudaStream_t stream) {
  if (rows == 0 || length == 0) return cudaSuccess;
  if (mode == kThreshold) {
    const int64_t total = rows * length;
    threshold_kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(
        scores, eligible, length, total, threshold, out);
    return cudaGetLastError();
  }
  const size_t shared =
      global_scratch == nullptr
          ? static_cast<size_t>(length) * kScratchBytesPerPosition
          : 0;
  select_kernel<<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(
      scores, eligible, seeds, num_select, rows, length, mode, ratio,
      temperature, out, static_cast<unsigned char*>(global_scratch));
  return cudaGetLastError();
}

// Launches the kernel of se_fairseq::_selection_keys (tests only).
cudaError_t launch_selection_keys_cuda(const float* scores,
                                       const int64_t* seeds, int64_t rows,
                                       int64_t length, int64_t mode,
                                       double temperature, double* out,
                                       cudaStream_t stream) {
  if (rows == 0 || length == 0) return cudaSuccess;
  const int64_t total = rows * length;
  keys_kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(
      scores, seeds, length, total, mode, temperature, out);
  return cudaGetLastError();
}

}  // namespace se_fairseq
