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

}  // namespace se_fairseq
