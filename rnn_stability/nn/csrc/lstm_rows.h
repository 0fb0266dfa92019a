// Per-row kernels of the C++ layer-normalised LSTM loop (lstm_layer_norm.cpp): one batch row of one step,
// forward and backward, everything of a step but the matrix products.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>

#include "norm_rows.h"

namespace rnn_stability {

// Parameters shared by all rows and steps (gain_ih is null unless separate; a missing shift or cell_bias is
// given as zeros, so that the inner loops have no branch).
template <typename T>
struct Params {
  const T *gain_ih, *shift, *gain_hh, *cell_weight, *cell_bias;
  int64_t H;
  T eps;
  Norm norm;
};

// Per-step values of one batch row kept for the backward.
template <typename T>
struct Row {
  T* x_mean;     // (4) mean of each block of xp (separate only)
  T* x_rstd;     // (4)
  T* normed;     // (4H) LN(W_hh h) (LN(xp + W_hh h) when joint), before its gain
  T* rstd;       // (4)
  T* act;        // (4H) sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
  T* cell;       // (H) c_t
  T* cell_mean;  // (1)
  T* cell_rstd;  // (1)
  T* cell_xhat;  // (H) LN(c_t) before its gain and bias: scratch, recomputed by the backward
  T* tc;         // (H) tanh of the cell read-out: scratch, recomputed by the backward
  T in_scale;    // multiplies the normalised input projection ("scaled": the input's magnitude; else 1)
  T* d_scale;    // backward, "scaled" only: dL/d(in_scale) is added here (else null)
};

// In-place sigmoid and tanh of n values, vectorised. float's tanh is a rational approximation (the
// clamped odd 13/6 minimax form of Eigen's and TensorFlow's fast tanh: within 7 ulp, 4e-7 absolute, of tanh,
// with |x| < 4e-4 passed through), a fraction of the cost of Sleef's tanh, and the sigmoid from it; double
// keeps Sleef's tanh and exp (1 ulp).
template <typename T>
inline at::vec::Vectorized<T> sigmoid_vec(at::vec::Vectorized<T> v) {
  using Vec = at::vec::Vectorized<T>;
  return Vec(T(1)) / (Vec(T(1)) + v.neg().exp());
}

template <typename T>
inline at::vec::Vectorized<T> tanh_vec(at::vec::Vectorized<T> v) {
  return v.tanh();
}

// The rational tanh's coefficients (numerator in x^2 from the highest power, then the denominator's).
constexpr float kTanhClamp = 7.90531110763549805f, kTanhTiny = 0.0004f;
constexpr float kTanhP[7] = {-2.76076847742355e-16f, 2.00018790482477e-13f, -8.60467152213735e-11f,
                             5.12229709037114e-08f,  1.48572235717979e-05f, 6.37261928875436e-04f,
                             4.89352455891786e-03f};
constexpr float kTanhQ[4] = {1.19825839466702e-06f, 1.18534705686654e-04f, 2.26843463243900e-03f,
                             4.89352518554385e-03f};

#if defined(CPU_CAPABILITY_AVX512)
// AVX-512: the quotient as p times a reciprocal (rcp14 and one Newton step: q is at least 0.0049, and the
// result within 2 ulp of p / q) and the pass-through blends on mask registers: vdivps's long latency and the
// vector-to-mask conversions of the generic form were a third of a row's time at H = 32.
template <>
inline at::vec::Vectorized<float> tanh_vec<float>(at::vec::Vectorized<float> v) {
  const __m512 in = v, x = _mm512_min_ps(_mm512_max_ps(in, _mm512_set1_ps(-kTanhClamp)), _mm512_set1_ps(kTanhClamp));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(kTanhP[0]), q = _mm512_set1_ps(kTanhQ[0]);
  for (int k = 1; k < 7; ++k) p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(kTanhP[k]));
  for (int k = 1; k < 4; ++k) q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(kTanhQ[k]));
  __m512 r = _mm512_rcp14_ps(q);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f)));
  const __m512 y = _mm512_mul_ps(_mm512_mul_ps(x, p), r);
  const __mmask16 pass = _mm512_cmp_ps_mask(_mm512_abs_ps(in), _mm512_set1_ps(kTanhTiny), _CMP_LT_OQ) |
                         _mm512_cmp_ps_mask(in, in, _CMP_UNORD_Q);
  return _mm512_mask_blend_ps(pass, y, in);
}
#else
template <>
inline at::vec::Vectorized<float> tanh_vec<float>(at::vec::Vectorized<float> v) {
  using Vec = at::vec::Vectorized<float>;
  const Vec x = at::vec::clamp(v, Vec(-kTanhClamp), Vec(kTanhClamp)), x2 = x * x;
  Vec p(kTanhP[0]), q(kTanhQ[0]);
  for (int k = 1; k < 7; ++k) p = at::vec::fmadd(p, x2, Vec(kTanhP[k]));
  for (int k = 1; k < 4; ++k) q = at::vec::fmadd(q, x2, Vec(kTanhQ[k]));
  const Vec y = Vec::blendv(x * p / q, v, v.abs() < Vec(kTanhTiny));
  return Vec::blendv(y, v, v.isnan());
}
#endif

// float: sigmoid(x) = (1 + tanh(x / 2)) / 2 with the rational tanh above (within 4e-7 of sigmoid).
template <>
inline at::vec::Vectorized<float> sigmoid_vec<float>(at::vec::Vectorized<float> v) {
  using Vec = at::vec::Vectorized<float>;
  return at::vec::fmadd(tanh_vec<float>(v * Vec(0.5f)), Vec(0.5f), Vec(0.5f));
}

// f(j, c) for the vectors of n values: c = Vec::size() but for a shorter last one.
template <typename T, typename F>
inline void for_vectors(int64_t n, const F& f) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  int64_t j = 0;
  for (; j + V <= n; j += V) f(j, V);
  if (j < n) f(j, n - j);
}

template <typename T>
inline at::vec::Vectorized<T> load(const T* x, int64_t j, int64_t c) {
  using Vec = at::vec::Vectorized<T>;
  return c == Vec::size() ? Vec::loadu(x + j) : Vec::loadu(x + j, c);
}

template <typename T>
inline void store(at::vec::Vectorized<T> v, T* x, int64_t j, int64_t c) {
  if (c == at::vec::Vectorized<T>::size()) {
    v.store(x + j);
  } else {
    v.store(x + j, c);
  }
}

// The cell read-out of a row from its cell, mean and rstd, in one pass: xhat = LN(c_t) before its gain and tc
// its tanh (each stored where not null) and h = o * tc (where h is not null). The forward and the backward's
// recomputation run this same code, so they give the same bits.
template <typename T>
inline void cell_read_out(const Params<T>& p, const T* cell, T mean, T rstd, T* xhat, T* tc, const T* o, T* h) {
  using Vec = at::vec::Vectorized<T>;
  const T *cw = p.cell_weight, *cb = p.cell_bias;
  const bool none = p.norm == Norm::kNone;  // no cell read-out norm: tanh(c_t)
  const Vec vm(mean), vr(rstd);
  for_vectors<T>(p.H, [&](int64_t j, int64_t c) {
    Vec pre = load(cell, j, c);
    if (!none) {
      const Vec xh = (pre - vm) * vr;
      if (xhat != nullptr) store(xh, xhat, j, c);
      pre = at::vec::fmadd(xh, load(cw, j, c), load(cb, j, c));
    }
    const Vec t = tanh_vec(pre);
    if (tc != nullptr) store(t, tc, j, c);
    if (h != nullptr) store(load(o, j, c) * t, h, j, c);
  });
}

template <typename T>
inline void cell_read_out(const Params<T>& p, const Row<T>& r, T mean, T rstd) {
  cell_read_out(p, r.cell, mean, rstd, r.cell_xhat, r.tc, static_cast<const T*>(nullptr), static_cast<T*>(nullptr));
}

// One row of a step: the moments of the 4 gate blocks in one pass (block_moments; with the separate
// normalisation also xp's), then each gate's normalisation, gain, shift and non-linearity in one vector pass
// over H, then the cell update and the read-out.
template <typename T>
void forward_row(const Params<T>& p, const T* xp, const T* hh, const T* c_prev, const Row<T>& r, T* h) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t H = p.H;
  T hm[4] = {0, 0, 0, 0}, hr[4] = {1, 1, 1, 1}, xm[4], xr[4];
  if (p.norm == Norm::kJoint) {  // the normalised sum is formed in r.normed, normalised there below
    for_vectors<T>(4 * H, [&](int64_t j, int64_t c) { store(load(xp, j, c) + load(hh, j, c), r.normed, j, c); });
    block_moments<T, 4>(r.normed, H, p.eps, hm, hr);
  } else if (p.norm != Norm::kNone) {
    block_moments<T, 4>(hh, H, p.eps, hm, hr);
  }
  if (p.norm == Norm::kSeparate) {
    block_moments<T, 4>(xp, H, p.eps, xm, xr);
    std::copy(xm, xm + 4, r.x_mean);
    std::copy(xr, xr + 4, r.x_rstd);
  }
  if (p.norm != Norm::kNone) std::copy(hr, hr + 4, r.rstd);
  for (int64_t k = 0; k < 4; ++k) {
    const T *xk = xp + k * H, *hk = hh + k * H, *gh = p.gain_hh + k * H, *sk = p.shift + k * H;
    T *nk = r.normed + k * H, *ak = r.act + k * H;
    auto act = [k](Vec a) { return k == 2 ? tanh_vec(a) : sigmoid_vec(a); };
    const Vec vm(hm[k]), vr(hr[k]);
    if (p.norm == Norm::kNone) {
      for_vectors<T>(H, [&](int64_t j, int64_t c) {
        store(act(load(xk, j, c) + load(hk, j, c) + load(sk, j, c)), ak, j, c);
      });
    } else if (p.norm == Norm::kJoint) {
      for_vectors<T>(H, [&](int64_t j, int64_t c) {
        const Vec n = (load(nk, j, c) - vm) * vr;
        store(n, nk, j, c);
        store(act(n * load(gh, j, c) + load(sk, j, c)), ak, j, c);
      });
    } else if (p.norm == Norm::kRecurrent) {
      for_vectors<T>(H, [&](int64_t j, int64_t c) {
        const Vec n = (load(hk, j, c) - vm) * vr;
        store(n, nk, j, c);
        store(act(load(xk, j, c) + n * load(gh, j, c) + load(sk, j, c)), ak, j, c);
      });
    } else {
      const T* gi = p.gain_ih + k * H;
      const Vec vxm(xm[k]), vxr(xr[k] * r.in_scale);
      for_vectors<T>(H, [&](int64_t j, int64_t c) {
        const Vec n = (load(hk, j, c) - vm) * vr;
        store(n, nk, j, c);
        const Vec a = (load(xk, j, c) - vxm) * vxr * load(gi, j, c) + n * load(gh, j, c) + load(sk, j, c);
        store(act(a), ak, j, c);
      });
    }
  }
  const T *i = r.act, *f = r.act + H, *g = r.act + 2 * H, *o = r.act + 3 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) r.cell[j] = f[j] * c_prev[j] + i[j] * g[j];
  T mean = 0, rstd = 1;
  if (p.norm != Norm::kNone) moments(r.cell, H, p.eps, mean, rstd);
  *r.cell_mean = mean;
  *r.cell_rstd = rstd;
  cell_read_out(p, r.cell, mean, rstd, static_cast<T*>(nullptr), static_cast<T*>(nullptr), o, h);
}

// Gradient accumulators of one row, summed over rows at the end: gain_ih, shift, gain_hh (4H each), then
// cell_weight and cell_bias (H each).
template <typename T>
struct Acc {
  T *gain_ih, *shift, *gain_hh, *cell_weight, *cell_bias;
};

// Gradients of one row at one step. dm: dL/d(o * tc). dc: on entry the gradient carried from the later step
// (times its forget gate f_next, or times 1 when f_next is null), on exit dL/dc_t. Writes dL/dxp to dxp and
// dL/d(W_hh h_{t-1}) to dhh (when joint both are dL/d(xp + W_hh h_{t-1}), and dxp may be dhh); scratch holds
// 5H values; r.cell_xhat and r.tc are recomputed.
template <typename T>
void backward_row(const Params<T>& p, const T* dm, const T* xp, const T* c_prev, const T* f_next, const Row<T>& r,
                  T* dc, T* dxp, T* dhh, const Acc<T>& acc, T* scratch) {
  const int64_t H = p.H;
  const T *i = r.act, *f = r.act + H, *g = r.act + 2 * H, *o = r.act + 3 * H;
  T *dg = scratch, *d_cell = scratch + 4 * H;
  cell_read_out(p, r, *r.cell_mean, *r.cell_rstd);
  if (p.norm == Norm::kNone) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T t = r.tc[j];
      d_cell[j] = dm[j] * o[j] * (T(1) - t * t);
      dg[3 * H + j] = dm[j] * t * o[j] * (T(1) - o[j]);
    }
  } else {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T t = r.tc[j];
    const T d_read = dm[j] * o[j] * (T(1) - t * t);
    acc.cell_weight[j] += d_read * r.cell_xhat[j];
    acc.cell_bias[j] += d_read;
    d_cell[j] = d_read * p.cell_weight[j];
    dg[3 * H + j] = dm[j] * t * o[j] * (T(1) - o[j]);
  }
  layer_norm_input_grad(d_cell, r.cell_xhat, H, *r.cell_rstd);
  }
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T d = d_cell[j] + dc[j] * (f_next != nullptr ? f_next[j] : T(1));
    dc[j] = d;
    dg[j] = d * g[j] * i[j] * (T(1) - i[j]);
    dg[H + j] = d * c_prev[j] * f[j] * (T(1) - f[j]);
    dg[2 * H + j] = d * i[j] * (T(1) - g[j] * g[j]);
  }
  for (int64_t k = 0; k < 4; ++k) {
    const int64_t o4 = k * H;
    const T *d = dg + o4, *normed = r.normed + o4, *gh = p.gain_hh + o4;
    T *acc_shift = acc.shift + o4, *acc_gh = acc.gain_hh + o4, *dh = dhh + o4, *dx = dxp + o4;
    if (p.norm == Norm::kNone) {  // gates = xp + W_hh h + shift: all three get the gate gradient
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        acc_shift[j] += d[j];
        dh[j] = d[j];
        dx[j] = d[j];
      }
      continue;
    }
    if (p.norm == Norm::kSeparate) {
      const T xm = r.x_mean[k], xr = r.x_rstd[k], *xk = xp + o4, *gi = p.gain_ih + o4;
      T *xhat = d_cell, *acc_gi = acc.gain_ih + o4;  // d_cell reused: (H) normalised input block
      T d_scale = 0;
#pragma omp simd reduction(+ : d_scale)
      for (int64_t j = 0; j < H; ++j) {
        xhat[j] = (xk[j] - xm) * xr;
        const T ds = d[j] * r.in_scale;
        acc_gi[j] += ds * xhat[j];
        acc_shift[j] += d[j];
        acc_gh[j] += d[j] * normed[j];
        dx[j] = ds * gi[j];
        dh[j] = d[j] * gh[j];
        d_scale += d[j] * gi[j] * xhat[j];
      }
      if (r.d_scale != nullptr) *r.d_scale += d_scale;
      layer_norm_input_grad(dx, xhat, H, xr);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        acc_shift[j] += d[j];
        acc_gh[j] += d[j] * normed[j];
        dh[j] = d[j] * gh[j];
      }
      // Recurrent: the gate gradient is that of xp. Joint: xp's is that of the sum, dhh (dxp is dhh).
      if (p.norm == Norm::kRecurrent) std::copy(d, d + H, dx);
    }
  }
  // The 4 blocks of dL/d(W_hh h) (joint: of the sum) through their normalisation, in one pass.
  if (p.norm != Norm::kNone) block_layer_norm_input_grad<T, 4>(dhh, r.normed, H, r.rstd);
}

}  // namespace rnn_stability
