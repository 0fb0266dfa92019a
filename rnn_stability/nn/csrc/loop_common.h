// Helpers shared by the C++ time loops (lstm_layer_norm.cpp, gru_layer_norm.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>

namespace rnn_stability {

using at::Tensor;

// Steps per chunk of the backward's weight and input gradients: enough rows for an efficient product.
inline int64_t chunk_steps(int64_t T, int64_t B) { return std::min<int64_t>(T, std::max<int64_t>(4, 1024 / std::max<int64_t>(B, 1))); }

inline Tensor contiguous_or_undefined(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

inline Tensor contiguous_or_zeros(const std::optional<Tensor>& t, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return t.has_value() && t->defined() ? t->contiguous() : at::zeros(sizes, opts);
}

// h_{t-1} of steps [a, b) as ((b - a) B, out) rows: out of the neighbouring steps, h0 for the first step.
inline Tensor previous_states(const Tensor& out, const Tensor& h0, int64_t a, int64_t b, bool reverse) {
  const int64_t T_ = out.size(0), n = b - a;
  const int64_t from = reverse ? a + 1 : a - 1;  // h_{t-1} of step a
  Tensor rows;
  if (from >= 0 && from + n <= T_) {
    rows = out.narrow(0, from, n);
  } else if (reverse) {  // the last step reads h0
    rows = at::cat({out.narrow(0, from, n - 1), h0.unsqueeze(0)}, 0);
  } else {  // step 0 reads h0
    rows = at::cat({h0.unsqueeze(0), out.narrow(0, 0, n - 1)}, 0);
  }
  return rows.reshape({n * out.size(1), out.size(2)});
}

}  // namespace rnn_stability
