// Layer-norm pieces shared by the per-row kernels of the C++ loops (lstm_rows.h, gru_rows.h).
#pragma once

#include <ATen/ATen.h>

#include <cmath>

namespace rnn_stability {

// Mean and 1 / sqrt(var + eps) of n values (two passes, biased variance).
template <typename T>
inline void moments(const T* x, int64_t n, T eps, T& mean, T& rstd) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += x[j];
  mean = sum / T(n);
  T var = 0;
#pragma omp simd reduction(+ : var)
  for (int64_t j = 0; j < n; ++j) var += (x[j] - mean) * (x[j] - mean);
  rstd = T(1) / std::sqrt(var / T(n) + eps);
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

// Which pre-activations are normalised (the `layer_norm` choices of rnn_stability/nn/layer_norm.py).
enum class Norm { kRecurrent, kJoint, kSeparate };

inline Norm parse_norm(c10::string_view name) {
  if (name == "recurrent") return Norm::kRecurrent;
  if (name == "joint") return Norm::kJoint;
  TORCH_CHECK(name == "separate", "lstm_ln: normalization must be recurrent, joint or separate, got ", name);
  return Norm::kSeparate;
}

}  // namespace rnn_stability
