// Torch glue of the CUDA implementation of se_fairseq::select. Built only
// when torch has CUDA; the kernel itself is in se_select_cuda_kernel.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "se_select.h"

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
  TORCH_CHECK(scores.dim() == 2 && scores.scalar_type() == at::kFloat,
              "se_fairseq::select: scores must be 2-D float32");
  TORCH_CHECK(eligible.scalar_type() == at::kBool &&
                  eligible.sizes() == scores.sizes(),
              "se_fairseq::select: eligible must be a bool tensor shaped like "
              "scores");
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 1 &&
                  seeds.size(0) == scores.size(0),
              "se_fairseq::select: seeds must be int64 with one per row");
  TORCH_CHECK(mode == kTopK || mode == kThreshold || mode == kSample,
              "se_fairseq::select: unknown mode ", mode);
  TORCH_CHECK(mode == kThreshold || num_select.has_value() ||
                  (ratio >= 0.0 && ratio <= 1.0),
              "se_fairseq::select: ratio must lie in [0, 1], got ", ratio);
  TORCH_CHECK(mode != kSample || temperature > 0.0,
              "se_fairseq::select: temperature must be positive");
  const c10::cuda::CUDAGuard guard(scores.device());
  const auto s = scores.contiguous();
  const auto e = eligible.to(scores.device()).contiguous();
  const auto sd = seeds.to(scores.device()).contiguous();
  at::Tensor k;
  if (num_select.has_value()) {
    k = num_select->to(scores.device(), at::kLong).contiguous();
    TORCH_CHECK(k.dim() == 1 && k.size(0) == scores.size(0),
                "se_fairseq::select: num_select must hold one count per row");
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
