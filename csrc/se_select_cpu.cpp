// Schema and CPU implementation of se_fairseq::select.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "se_select.h"
#include "se_select_checks.h"

extern "C" {
// Importing se_fairseq._C loads the library, which registers the operator.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr,
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace se_fairseq {

namespace {

void select_row(const float* scores, const bool* eligible, int64_t length,
                int64_t mode, double ratio, int64_t fixed_k, double threshold,
                double temperature, uint64_t seed, bool* out,
                std::vector<int64_t>& positions, std::vector<double>& keys) {
  positions.clear();
  for (int64_t p = 0; p < length; ++p) {
    if (!eligible[p]) continue;
    TORCH_CHECK(!std::isnan(scores[p]), "se_fairseq::select: NaN score at "
                "position ", p, " of a row; score files and online scores "
                "must be finite or +/-inf");
    positions.push_back(p);
  }
  const int64_t n = static_cast<int64_t>(positions.size());
  if (mode == kThreshold) {
    for (int64_t p : positions) out[p] = scores[p] > threshold;
    return;
  }
  int64_t k = fixed_k >= 0 ? std::min(fixed_k, n)
                           : rounded_count(ratio, n, seed);
  if (k == 0) return;
  if (k < n) {
    keys.resize(length);
    for (int64_t p : positions)
      keys[p] = selection_key(scores[p], p, mode, temperature, seed);
    auto before = [&](int64_t a, int64_t b) {
      return ranks_before(keys[a], a, keys[b], b);
    };
    std::nth_element(positions.begin(), positions.begin() + (k - 1),
                     positions.end(), before);
  }
  for (int64_t i = 0; i < k; ++i) out[positions[i]] = true;
}

}  // namespace

at::Tensor select_cpu(const at::Tensor& scores, const at::Tensor& eligible,
                      const at::Tensor& seeds,
                      const std::optional<at::Tensor>& num_select,
                      double ratio, int64_t mode, double threshold,
                      double temperature) {
  check_select_args(scores, eligible, seeds, num_select, ratio, mode, temperature);

  const auto scores_c = scores.contiguous();
  const auto eligible_c = eligible.contiguous();
  const auto seeds_c = seeds.contiguous();
  at::Tensor k_c;
  if (num_select.has_value()) {
    k_c = num_select->to(at::kLong).contiguous();
  }
  auto out = at::zeros(scores.sizes(), scores.options().dtype(at::kBool));

  const int64_t rows = scores.size(0);
  const int64_t length = scores.size(1);
  const float* s = scores_c.data_ptr<float>();
  const bool* e = eligible_c.data_ptr<bool>();
  const int64_t* sd = seeds_c.data_ptr<int64_t>();
  const int64_t* kp = k_c.defined() ? k_c.data_ptr<int64_t>() : nullptr;
  bool* o = out.data_ptr<bool>();

  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> positions;
    std::vector<double> keys;
    positions.reserve(length);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t fixed_k = kp ? std::max<int64_t>(kp[r], 0) : -1;
      select_row(s + r * length, e + r * length, length, mode, ratio, fixed_k,
                 threshold, temperature, static_cast<uint64_t>(sd[r]),
                 o + r * length, positions, keys);
    }
  });
  return out;
}

at::Tensor selection_keys_cpu(const at::Tensor& scores, const at::Tensor& seeds,
                              int64_t mode, double temperature) {
  check_keys_args(scores, seeds, mode, temperature);
  const auto s = scores.contiguous();
  const auto sd = seeds.contiguous();
  auto out = at::empty(scores.sizes(), scores.options().dtype(at::kDouble));
  const int64_t rows = s.size(0);
  const int64_t length = s.size(1);
  const float* sp = s.data_ptr<float>();
  const int64_t* seed = sd.data_ptr<int64_t>();
  double* o = out.data_ptr<double>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t p = 0; p < length; ++p)
      o[r * length + p] = selection_key(sp[r * length + p], p, mode, temperature,
                                        static_cast<uint64_t>(seed[r]));
  return out;
}

TORCH_LIBRARY(se_fairseq, m) {
  m.def(
      "select(Tensor scores, Tensor eligible, Tensor seeds, Tensor? "
      "num_select, float ratio, int mode, float threshold, float temperature) "
      "-> Tensor");
  // The keys select ranks by, for tests: CPU, CUDA and the numpy reference
  // must agree bit for bit.
  m.def(
      "_selection_keys(Tensor scores, Tensor seeds, int mode, float "
      "temperature) -> Tensor");
}

TORCH_LIBRARY_IMPL(se_fairseq, CPU, m) {
  m.impl("select", &select_cpu);
  m.impl("_selection_keys", &selection_keys_cpu);
}

}  // namespace se_fairseq
