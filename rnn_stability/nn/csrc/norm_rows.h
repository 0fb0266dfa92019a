// Layer-norm pieces shared by the per-row kernels of the C++ loops (lstm_rows.h, gru_rows.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace rnn_stability {

using at::Tensor;

#if defined(CPU_CAPABILITY_AVX512)
// The sums of 8 vectors of 16 floats, in lanes 0-3 (a0..a3) and 8-11 (a4..a7) of the result: a transposing
// reduction (unpack, shuffle, then 128-bit lane shuffles), 7 adds where 8 separate reductions take 32 and
// serialise on their own 4-level chains.
inline __m512 sum_lanes8(__m512 a0, __m512 a1, __m512 a2, __m512 a3, __m512 a4, __m512 a5, __m512 a6, __m512 a7) {
  auto pair = [](__m512 x, __m512 y) { return _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y)); };
  const __m512 t0 = pair(a0, a1), t1 = pair(a2, a3), t2 = pair(a4, a5), t3 = pair(a6, a7);
  auto quad = [](__m512 x, __m512 y) {
    return _mm512_add_ps(_mm512_shuffle_ps(x, y, 0x44), _mm512_shuffle_ps(x, y, 0xEE));
  };
  const __m512 u0 = quad(t0, t1), u1 = quad(t2, t3);  // each 128-bit lane: its part of 4 sums
  const __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, 0x88), _mm512_shuffle_f32x4(u0, u1, 0xDD));
  return _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
}
#endif

// Means and 1 / sqrt(var + eps) (biased variance) of NB blocks of n values each, block b at x + b n, in one
// pass, each shifted by its first value: the sums of d = x - x[0] and d^2 give the variance without the
// cancellation of E[x^2] - E[x]^2 when the mean is large against the spread (the "shifted data" algorithm;
// x[0] is within a few standard deviations of the mean). The blocks' sums are independent chains (a single
// block gets two), and their horizontal reductions and square roots overlap: a row's 4 gate blocks cost
// little more than one at small n, where each block's chain of reductions would otherwise dominate. For 4
// float blocks (a row's gates) on AVX-512 the 8 sums reduce together (sum_lanes8) and the means and rstds
// are computed as one 4-lane vector: a tenth less time per row at H = 32.
template <typename T, int NB>
C10_ALWAYS_INLINE void block_moments(const T* x, int64_t n, T eps, T* mean, T* rstd) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  constexpr int A = NB >= 2 ? 1 : 2;  // accumulators per block
  const Vec zero(T(0));
  Vec kv[NB], s1[NB][A], s2[NB][A];
  for (int b = 0; b < NB; ++b) {
    kv[b] = Vec(x[b * n]);
    for (int a = 0; a < A; ++a) s1[b][a] = s2[b][a] = zero;
  }
  int64_t j = 0;
  for (; j + A * V <= n; j += A * V) {
    for (int b = 0; b < NB; ++b) {
      for (int a = 0; a < A; ++a) {
        const Vec d = Vec::loadu(x + b * n + j + a * V) - kv[b];
        s1[b][a] = s1[b][a] + d;
        s2[b][a] = at::vec::fmadd(d, d, s2[b][a]);
      }
    }
  }
  for (; j < n; j += V) {
    const int64_t c = std::min<int64_t>(V, n - j);
    for (int b = 0; b < NB; ++b) {
      const Vec d = Vec::set(zero, Vec::loadu(x + b * n + j, c) - kv[b], c);
      s1[b][0] = s1[b][0] + d;
      s2[b][0] = at::vec::fmadd(d, d, s2[b][0]);
    }
  }
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float> && NB == 4) {  // the 8 sums of a row's gate blocks side by side
    const __m128 n_ = _mm_set1_ps(float(n));
    const __m512 sums = sum_lanes8(s1[0][0], s1[1][0], s1[2][0], s1[3][0], s2[0][0], s2[1][0], s2[2][0], s2[3][0]);
    const __m128 m = _mm_div_ps(_mm512_castps512_ps128(sums), n_);
    const __m128 var = _mm_sub_ps(_mm_div_ps(_mm512_extractf32x4_ps(sums, 2), n_), _mm_mul_ps(m, m));
    const __m128 shift = _mm_set_ps(x[3 * n], x[2 * n], x[n], x[0]);
    _mm_storeu_ps(mean, _mm_add_ps(shift, m));
    _mm_storeu_ps(rstd, _mm_div_ps(_mm_set1_ps(1.0f),
                                   _mm_sqrt_ps(_mm_add_ps(_mm_max_ps(var, _mm_setzero_ps()), _mm_set1_ps(eps)))));
    return;
  }
#endif
  auto add = [](Vec p, Vec q) { return p + q; };
  for (int b = 0; b < NB; ++b) {
    for (int a = 1; a < A; ++a) {
      s1[b][0] = s1[b][0] + s1[b][a];
      s2[b][0] = s2[b][0] + s2[b][a];
    }
    const T m = at::vec::vec_reduce_all<T>(add, s1[b][0]) / T(n);
    const T v = at::vec::vec_reduce_all<T>(add, s2[b][0]) / T(n) - m * m;
    mean[b] = x[b * n] + m;
    rstd[b] = T(1) / std::sqrt(std::max(v, T(0)) + eps);
  }
}

// Mean and 1 / sqrt(var + eps) of n values (block_moments of one block).
template <typename T>
C10_ALWAYS_INLINE void moments(const T* x, int64_t n, T eps, T& mean, T& rstd) {
  block_moments<T, 1>(x, n, eps, &mean, &rstd);
}

// Input gradient of y = (x - mean) * rstd given dy and xhat = y, for NB blocks of n values (block b at
// dy + b n, xhat + b n, with rstd[b]): rstd * (dy - mean(dy) - xhat * mean(dy xhat)). Overwrites dy. The
// blocks' sums are independent chains, as in block_moments.
template <typename T, int NB>
C10_ALWAYS_INLINE void block_layer_norm_input_grad(T* dy, const T* xhat, int64_t n, const T* rstd) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec zero(T(0));
  Vec s1[NB], s2[NB];
  for (int b = 0; b < NB; ++b) s1[b] = s2[b] = zero;
  for (int64_t j = 0; j < n; j += V) {
    const int64_t c = std::min<int64_t>(V, n - j);
    for (int b = 0; b < NB; ++b) {
      const Vec d = Vec::loadu(dy + b * n + j, c);  // zeros past n
      s1[b] = s1[b] + d;
      s2[b] = at::vec::fmadd(d, Vec::loadu(xhat + b * n + j, c), s2[b]);
    }
  }
  auto add = [](Vec p, Vec q) { return p + q; };
  Vec m1[NB], m2[NB], r[NB];
  for (int b = 0; b < NB; ++b) {
    m1[b] = Vec(at::vec::vec_reduce_all<T>(add, s1[b]) / T(n));
    m2[b] = Vec(at::vec::vec_reduce_all<T>(add, s2[b]) / T(n));
    r[b] = Vec(rstd[b]);
  }
  for (int64_t j = 0; j < n; j += V) {
    const int64_t c = std::min<int64_t>(V, n - j);
    for (int b = 0; b < NB; ++b) {
      T* d = dy + b * n + j;
      const Vec v = r[b] * (Vec::loadu(d, c) - m1[b] - Vec::loadu(xhat + b * n + j, c) * m2[b]);
      if (c == V) {
        v.store(d);
      } else {
        v.store(d, c);
      }
    }
  }
}

// Input gradient of one block (block_layer_norm_input_grad).
template <typename T>
C10_ALWAYS_INLINE void layer_norm_input_grad(T* dy, const T* xhat, int64_t n, T rstd) {
  block_layer_norm_input_grad<T, 1>(dy, xhat, n, &rstd);
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
