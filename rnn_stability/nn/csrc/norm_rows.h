// Layer-norm pieces shared by the per-row kernels of the C++ loops (lstm_rows.h, gru_rows.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace rnn_stability {

using at::Tensor;

// Mean and 1 / sqrt(var + eps) of n values (biased variance) in one pass, shifted by the first value: the sums
// of d = x - x[0] and d^2 give the variance without the cancellation of E[x^2] - E[x]^2 when the mean is large
// against the spread (the "shifted data" algorithm; x[0] is within a few standard deviations of the mean).
// Two vector accumulators each: the sums are latency-bound chains otherwise.
template <typename T>
inline void moments(const T* x, int64_t n, T eps, T& mean, T& rstd) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const T k = x[0];
  const Vec kv(k), zero(T(0));
  Vec s1a = zero, s1b = zero, s2a = zero, s2b = zero;
  int64_t j = 0;
  for (; j + 2 * V <= n; j += 2 * V) {
    const Vec d0 = Vec::loadu(x + j) - kv, d1 = Vec::loadu(x + j + V) - kv;
    s1a = s1a + d0;
    s1b = s1b + d1;
    s2a = at::vec::fmadd(d0, d0, s2a);
    s2b = at::vec::fmadd(d1, d1, s2b);
  }
  for (; j < n; j += V) {
    const int64_t c = std::min<int64_t>(V, n - j);
    const Vec d = Vec::set(zero, Vec::loadu(x + j, c) - kv, c);
    s1a = s1a + d;
    s2a = at::vec::fmadd(d, d, s2a);
  }
  auto add = [](Vec a, Vec b) { return a + b; };
  const T s1 = at::vec::vec_reduce_all<T>(add, s1a + s1b), s2 = at::vec::vec_reduce_all<T>(add, s2a + s2b);
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

// The "scaled" normalisation's per-row input magnitude: mean |x| over the last dimension of x (..., F), as a
// contiguous tensor of the leading shape. One vector pass per row: x.abs().mean(-1) would first write |x| to
// a fresh tensor of x's size, whose pages cost more to fault in than the sums.
inline Tensor input_scale(const Tensor& x_in) {
  const Tensor x = x_in.contiguous();
  const int64_t F = x.size(-1), rows = F == 0 ? 0 : x.numel() / F;
  Tensor scale = at::empty(x.sizes().slice(0, x.dim() - 1), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_stability_input_scale", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* sp = scale.data_ptr<scalar_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t s = at::vec::map_reduce_all<scalar_t>([](Vec v) { return v.abs(); },
                                                           [](Vec a, Vec b) { return a + b; }, xp + r * F, F);
      sp[r] = s / scalar_t(F);
    }
    if (F == 0) scale.fill_(std::numeric_limits<scalar_t>::quiet_NaN());  // the mean of nothing, as torch's
  });
  return scale;
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
