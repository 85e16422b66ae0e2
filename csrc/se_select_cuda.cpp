// Torch glue of the CUDA implementation of se_fairseq::select. Built only
// when torch has CUDA; the kernel itself is in se_select_cuda_kernel.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "se_select.h"
#include "se_select_checks.h"

namespace se_fairseq {

cudaError_t launch_select_cuda(const float* scores, const bool* eligible,
                               const int64_t* seeds, const int64_t* num_select,
                               int64_t rows, int64_t length, int64_t mode,
                               double ratio, double threshold,
                               double temperature, bool* out, int* error_flag,
                               cudaStream_t stream);

at::Tensor select_cuda(const at::Tensor& scores, const at::Tensor& eligible,
                       const at::Tensor& seeds,
                       const std::optional<at::Tensor>& num_select,
                       double ratio, int64_t mode, double threshold,
                       double temperature) {
  check_select_args(scores, eligible, seeds, num_select, ratio, mode, temperature);
  const c10::cuda::CUDAGuard guard(scores.device());
  const auto s = scores.contiguous();
  const auto e = eligible.to(scores.device()).contiguous();
  const auto sd = seeds.to(scores.device()).contiguous();
  at::Tensor k;
  if (num_select.has_value()) {
    k = num_select->to(scores.device(), at::kLong).contiguous();
  }
  auto out = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  auto error = at::zeros({1}, scores.options().dtype(at::kInt));
  const cudaError_t status = launch_select_cuda(
      s.data_ptr<float>(), e.data_ptr<bool>(), sd.data_ptr<int64_t>(),
      k.defined() ? k.data_ptr<int64_t>() : nullptr, s.size(0), s.size(1),
      mode, ratio, threshold, temperature, out.data_ptr<bool>(),
      error.data_ptr<int>(), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "se_fairseq::select: CUDA launch failed: ",
              cudaGetErrorString(status));
  TORCH_CHECK(error.item<int>() == 0,
              "se_fairseq::select: NaN score among the eligible positions");
  return out;
}

TORCH_LIBRARY_IMPL(se_fairseq, CUDA, m) { m.impl("select", &select_cuda); }

}  // namespace se_fairseq
