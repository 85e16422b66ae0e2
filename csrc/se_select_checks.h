// Argument checks shared by the CPU and CUDA implementations of
// se_fairseq::select (torch headers: not for the .cu file).
#pragma once

#include <torch/types.h>

#include <optional>

#include "se_select.h"

namespace se_fairseq {

inline void check_select_args(const at::Tensor& scores, const at::Tensor& eligible,
                              const at::Tensor& seeds,
                              const std::optional<at::Tensor>& num_select,
                              double ratio, int64_t mode, double temperature) {
  // The dispatcher picks the CUDA kernel when any argument is a CUDA tensor;
  // a mix of devices is the caller's error, never a silent copy.
  const auto same_device = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == scores.device(),
                "se_fairseq::select: all tensor arguments must be on one device, "
                "but scores is on ", scores.device(), " and ", name, " on ",
                t.device());
  };
  same_device(eligible, "eligible");
  same_device(seeds, "seeds");
  if (num_select.has_value()) same_device(*num_select, "num_select");
  TORCH_CHECK(scores.dim() == 2, "se_fairseq::select: scores must be 2-D "
              "(rows x positions), got ", scores.dim(), "-D");
  TORCH_CHECK(scores.scalar_type() == at::kFloat,
              "se_fairseq::select: scores must be float32");
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
              "se_fairseq::select: temperature must be positive, got ",
              temperature);
  if (num_select.has_value()) {
    TORCH_CHECK(num_select->dim() == 1 && num_select->size(0) == scores.size(0),
                "se_fairseq::select: num_select must hold one count per row");
  }
}

inline void check_keys_args(const at::Tensor& scores, const at::Tensor& seeds,
                            int64_t mode, double temperature) {
  TORCH_CHECK(seeds.device() == scores.device(),
              "se_fairseq::_selection_keys: scores is on ", scores.device(),
              " and seeds on ", seeds.device());
  TORCH_CHECK(scores.dim() == 2 && scores.scalar_type() == at::kFloat,
              "se_fairseq::_selection_keys: scores must be 2-D float32");
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 1 &&
                  seeds.size(0) == scores.size(0),
              "se_fairseq::_selection_keys: seeds must be int64 with one per row");
  TORCH_CHECK(mode == kTopK || mode == kSample,
              "se_fairseq::_selection_keys: mode must be topk (0) or sample (2)");
  TORCH_CHECK(mode != kSample || temperature > 0.0,
              "se_fairseq::_selection_keys: temperature must be positive");
}

}  // namespace se_fairseq
