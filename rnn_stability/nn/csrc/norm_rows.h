// Layer-norm pieces shared by the per-row kernels of the C++ loops (lstm_rows.h, gru_rows.h).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace rnn_stability {

// Mean and 1 / sqrt(var + eps) of n values (biased variance) in one pass, shifted by the first value: the sums
// of d = x - x[0] and d^2 give the variance without the cancellation of E[x^2] - E[x]^2 when the mean is large
// against the spread (the "shifted data" algorithm; x[0] is within a few standard deviations of the mean).
template <typename T>
inline void moments(const T* x, int64_t n, T eps, T& mean, T& rstd) {
  const T k = x[0];
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    const T d = x[j] - k;
    s1 += d;
    s2 += d * d;
  }
  const T m = s1 / T(n);
  mean = k + m;
  rstd = T(1) / std::sqrt(std::max(s2 / T(n) - m * m, T(0)) + eps);
}

// Input gradient of y = (x - mean) * rstd given dy and xhat = y: rstd * (dy - mean(dy) - xhat * mean(dy xhat)).
// Overwrites dy.
template <typename T>
inline void layer_norm_input_grad(T* dy, const T* xhat, int64_t n, T rstd) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    s1 += dy[j];
    s2 += dy[j] * xhat[j];
  }
  const T m1 = s1 / T(n), m2 = s2 / T(n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dy[j] = rstd * (dy[j] - m1 - xhat[j] * m2);
}

// Which pre-activations are normalised (the `layer_norm` choices of rnn_stability/nn/layer_norm.py). "scaled"
// is kSeparate with the normalised input projection multiplied by the input's mean absolute value, a per-row
// scalar (Row::in_scale; 1 for "separate", which multiplies exactly). kNone normalises nothing: torch's own
// LSTM / GRU step (the loops of the recurrent regularisers without layer norm; no gains, no cell read-out norm).
enum class Norm { kRecurrent, kJoint, kSeparate, kNone };

inline Norm parse_norm(c10::string_view name, bool* scaled = nullptr) {
  if (scaled != nullptr) *scaled = name == "scaled";
  if (name == "recurrent") return Norm::kRecurrent;
  if (name == "joint") return Norm::kJoint;
  if (name == "none") return Norm::kNone;
  TORCH_CHECK(name == "separate" || name == "scaled",
              "rnn_stability: normalization must be recurrent, joint, separate, scaled or none, got ", name);
  return Norm::kSeparate;
}

}  // namespace rnn_stability
