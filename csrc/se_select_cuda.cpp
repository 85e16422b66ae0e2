// Torch glue of the CUDA implementation of se_fairseq::select. Built only
// when torch has CUDA; the kernels are in se_select_cuda_kernel.cu.
//
// Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in the cuBLAS,
// cuSPARSE and cuSOLVER headers, which a bare toolkit may lack.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>
#include <torch/types.h>

#include <limits>

#include "se_select.h"
#include "se_select_checks.h"

namespace se_fairseq {

cudaError_t select_cuda_scratch_bytes(int64_t rows, int64_t length,
                                      int64_t mode, size_t* bytes);

cudaError_t launch_select_cuda(const float* scores, const bool* eligible,
                               const int64_t* seeds, const int64_t* num_select,
                               int64_t rows, int64_t length, int64_t mode,
                               double ratio, double threshold,
                               double temperature, bool* out,
                               void* global_scratch, cudaStream_t stream);

cudaError_t launch_selection_keys_cuda(const float* scores,
                                       const int64_t* seeds, int64_t rows,
                                       int64_t length, int64_t mode,
                                       double temperature, double* out,
                                       cudaStream_t stream);

namespace {

void check_cuda(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();  // raised here: do not leave it for a later call
  const bool arch = status == cudaErrorNoKernelImageForDevice ||
                    status == cudaErrorInvalidDeviceFunction;
  TORCH_CHECK(false, "se_fairseq::select: ", what, " failed: ",
              cudaGetErrorString(status),
              arch ? " (the extension was not built for this GPU's "
                     "architecture: reinstall it on this machine, or set "
                     "TORCH_CUDA_ARCH_LIST to include it, e.g. \"9.0\")"
                   : "");
}

}  // namespace

at::Tensor select_cuda(const at::Tensor& scores, const at::Tensor& eligible,
                       const at::Tensor& seeds,
                       const std::optional<at::Tensor>& num_select,
                       double ratio, int64_t mode, double threshold,
                       double temperature) {
  check_select_args(scores, eligible, seeds, num_select, ratio, mode, temperature);
  TORCH_CHECK(scores.is_cuda(), "se_fairseq::select: the CUDA kernel got "
              "scores on ", scores.device());
  TORCH_CHECK(scores.size(0) <= std::numeric_limits<int>::max() &&
                  scores.size(1) <= std::numeric_limits<int>::max(),
              "se_fairseq::select: at most 2^31 - 1 rows and positions per "
              "row on CUDA");
  const c10::cuda::CUDAGuard guard(scores.device());
  const auto s = scores.contiguous();
  const auto e = eligible.contiguous();
  const auto sd = seeds.contiguous();
  at::Tensor k;
  if (num_select.has_value()) k = num_select->to(at::kLong).contiguous();
  auto out = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  const int64_t rows = s.size(0);
  const int64_t length = s.size(1);
  if (rows == 0 || length == 0) return out;

  size_t scratch_bytes = 0;
  check_cuda(select_cuda_scratch_bytes(rows, length, mode, &scratch_bytes),
             "querying shared memory");
  at::Tensor scratch;  // rows too long for shared memory: keys in global memory
  if (scratch_bytes > 0) {
    scratch = at::empty({static_cast<int64_t>(scratch_bytes)},
                        scores.options().dtype(at::kByte));
  }
  check_cuda(launch_select_cuda(
                 s.data_ptr<float>(), e.data_ptr<bool>(),
                 sd.data_ptr<int64_t>(),
                 k.defined() ? k.data_ptr<int64_t>() : nullptr, rows, length,
                 mode, ratio, threshold, temperature, out.data_ptr<bool>(),
                 scratch.defined() ? scratch.data_ptr() : nullptr,
                 c10::cuda::getCurrentCUDAStream()),
             "kernel launch");
  // No host sync: a NaN score is a device-side assert (see the kernel file).
  return out;
}

at::Tensor selection_keys_cuda(const at::Tensor& scores, const at::Tensor& seeds,
                               int64_t mode, double temperature) {
  check_keys_args(scores, seeds, mode, temperature);
  const c10::cuda::CUDAGuard guard(scores.device());
  const auto s = scores.contiguous();
  const auto sd = seeds.contiguous();
  auto out = at::empty(scores.sizes(), scores.options().dtype(at::kDouble));
  check_cuda(launch_selection_keys_cuda(
                 s.data_ptr<float>(), sd.data_ptr<int64_t>(), s.size(0),
                 s.size(1), mode, temperature, out.data_ptr<double>(),
                 c10::cuda::getCurrentCUDAStream()),
             "kernel launch");
  return out;
}

TORCH_LIBRARY_IMPL(se_fairseq, CUDA, m) {
  m.impl("select", &select_cuda);
  m.impl("_selection_keys", &selection_keys_cuda);
}

}  // namespace se_fairseq
