// Per-row kernels of the C++ layer-normalised GRU loop (gru_layer_norm.cpp): one batch row of one step.
//
// With xp = W_ih x_t and u = W_hh h_{t-1} split into their (r, z, n) blocks, LN normalising each block,
// shift = (b_ir + b_hr, b_iz + b_hz, b_in) and b_hn the recurrent bias of the candidate:
//   recurrent / separate: a = xp + shift (separate: gain_ih * LN(xp) + shift), hn = gain_hh_n * LN(u)_n + b_hn,
//     r = sigmoid(a_r + gain_hh_r * LN(u)_r), z = sigmoid(a_z + gain_hh_z * LN(u)_z), n = tanh(a_n + r * hn)
//   joint: r = sigmoid(gain_r * LN(xp_r + u_r) + shift_r), likewise z,
//     n = tanh(gain_n * LN(xp_n + r * u_n) + shift_n + r * b_hn)
// and h_t = n + z * (h_{t-1} - n) for all three: rnn_stability/nn/recurrence.py's gru_layer_norm_step.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "norm_rows.h"

namespace rnn_stability {

// Parameters shared by all rows and steps (gain_ih null unless separate; missing biases given as zeros).
template <typename T>
struct GruParams {
  const T *gain_ih, *shift, *bias_hn, *gain_hh;
  int64_t H;
  T eps;
  Norm norm;
};

// Per-step values of one batch row kept for the backward.
template <typename T>
struct GruRow {
  T* x_mean;  // (3) separate only
  T* x_rstd;  // (3)
  T* normed;  // (3H) LN(u) (joint: LN(xp_r + u_r), LN(xp_z + u_z), LN(xp_n + r u_n))
  T* rstd;    // (3)
  T* act;     // (3H) r, z, n
  T* u_n;     // (H) joint only: u_n, which the reset gate multiplies
  T in_scale;  // multiplies the normalised input projection ("scaled": the input's magnitude; else 1)
  T* d_scale;  // backward, "scaled" only: dL/d(in_scale) is added here (else null)
};

template <typename T>
inline void sigmoid_map(T* x, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  at::vec::map([](Vec v) { return Vec(T(1)) / (Vec(T(1)) + v.neg().exp()); }, x, x, n);
}

template <typename T>
inline void tanh_map(T* x, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  at::vec::map([](Vec v) { return v.tanh(); }, x, x, n);
}

template <typename T>
void gru_forward_row(const GruParams<T>& p, const T* xp, const T* u, const T* h_prev, const GruRow<T>& r, T* h) {
  const int64_t H = p.H;
  T *act = r.act, *normed = r.normed;
  if (p.norm == Norm::kJoint) {
    for (int64_t k = 0; k < 2; ++k) {
      T* nk = normed + k * H;
      const T *xk = xp + k * H, *uk = u + k * H, *gk = p.gain_hh + k * H, *sk = p.shift + k * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) nk[j] = xk[j] + uk[j];
      T m, rs;
      moments(nk, H, p.eps, m, rs);
      r.rstd[k] = rs;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        nk[j] = (nk[j] - m) * rs;
        act[k * H + j] = nk[j] * gk[j] + sk[j];
      }
    }
    sigmoid_map(act, 2 * H);
    const T *rg = act, *xn = xp + 2 * H, *un = u + 2 * H;
    T* nn = normed + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      r.u_n[j] = un[j];
      nn[j] = xn[j] + rg[j] * un[j];
    }
    T m, rs;
    moments(nn, H, p.eps, m, rs);
    r.rstd[2] = rs;
    const T *gn = p.gain_hh + 2 * H, *sn = p.shift + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      nn[j] = (nn[j] - m) * rs;
      act[2 * H + j] = nn[j] * gn[j] + sn[j] + rg[j] * p.bias_hn[j];
    }
  } else {
    for (int64_t k = 0; k < 3; ++k) {
      const T* uk = u + k * H;
      T* nk = normed + k * H;
      if (p.norm == Norm::kNone) {  // no layer norm: normed holds u itself (with gain 1)
        std::copy(uk, uk + H, nk);
        continue;
      }
      T m, rs;
      moments(uk, H, p.eps, m, rs);
      r.rstd[k] = rs;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) nk[j] = (uk[j] - m) * rs;
    }
    // act holds a = xp + shift (separate: gain_ih * LN(xp) + shift) for now.
    for (int64_t k = 0; k < 3; ++k) {
      const T *xk = xp + k * H, *sk = p.shift + k * H;
      T* ak = act + k * H;
      if (p.norm == Norm::kSeparate) {
        const T* gi = p.gain_ih + k * H;
        T xm, xr;
        moments(xk, H, p.eps, xm, xr);
        r.x_mean[k] = xm;
        r.x_rstd[k] = xr;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) ak[j] = (xk[j] - xm) * xr * gi[j] * r.in_scale + sk[j];
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) ak[j] = xk[j] + sk[j];
      }
    }
    const T *g = p.gain_hh;
    if (p.norm == Norm::kNone) {
#pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j) act[j] += normed[j];
      sigmoid_map(act, 2 * H);
      const T *rg = act, *nn = normed + 2 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) act[2 * H + j] += rg[j] * (nn[j] + p.bias_hn[j]);
    } else {
#pragma omp simd
    for (int64_t j = 0; j < 2 * H; ++j) act[j] += normed[j] * g[j];
    sigmoid_map(act, 2 * H);
    const T *rg = act, *nn = normed + 2 * H, *gn = g + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) act[2 * H + j] += rg[j] * (nn[j] * gn[j] + p.bias_hn[j]);
    }
  }
  tanh_map(act + 2 * H, H);
  const T *z = act + H, *n = act + 2 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) h[j] = n[j] + z[j] * (h_prev[j] - n[j]);
}

// Gradient accumulators of one row: gain_ih, shift, gain_hh (3H each), bias_hn (H).
template <typename T>
struct GruAcc {
  T *gain_ih, *shift, *gain_hh, *bias_hn;
};

// Gradients of one row at one step. dh: dL/dh_t, to which this adds dh_later * z_later (the path through the
// next step's update gate) when z_later is given. Writes dL/dxp to dxp and dL/du to dhh; scratch: 6H values.
template <typename T>
void gru_backward_row(const GruParams<T>& p, T* dh, const T* dh_later, const T* z_later, const T* xp,
                      const T* h_prev, const GruRow<T>& r, T* dxp, T* dhh, const GruAcc<T>& acc, T* scratch) {
  const int64_t H = p.H;
  const T *rg = r.act, *z = r.act + H, *n = r.act + 2 * H, *normed = r.normed;
  if (z_later != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dh[j] += dh_later[j] * z_later[j];
  }
  T *da = scratch, *dn_pre = scratch + 2 * H;  // (r, z) pre-activation gradients, then that of n's
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    dn_pre[j] = dh[j] * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    da[H + j] = dh[j] * (h_prev[j] - n[j]) * z[j] * (T(1) - z[j]);
  }
  if (p.norm == Norm::kJoint) {
    const T *nn = normed + 2 * H, *gn = p.gain_hh + 2 * H;
    T *acc_gn = acc.gain_hh + 2 * H, *acc_sn = acc.shift + 2 * H, *dmix = dxp + 2 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      acc_gn[j] += dn_pre[j] * nn[j];
      acc_sn[j] += dn_pre[j];
      acc.bias_hn[j] += dn_pre[j] * rg[j];
      dmix[j] = dn_pre[j] * gn[j];
    }
    layer_norm_input_grad(dmix, nn, H, r.rstd[2]);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      dhh[2 * H + j] = dmix[j] * rg[j];
      const T dr = dmix[j] * r.u_n[j] + dn_pre[j] * p.bias_hn[j];
      da[j] = dr * rg[j] * (T(1) - rg[j]);
    }
    for (int64_t k = 0; k < 2; ++k) {
      const T *d = da + k * H, *nk = normed + k * H, *gk = p.gain_hh + k * H;
      T *acc_g = acc.gain_hh + k * H, *acc_s = acc.shift + k * H, *ds = dxp + k * H, *du = dhh + k * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        acc_g[j] += d[j] * nk[j];
        acc_s[j] += d[j];
        ds[j] = d[j] * gk[j];
      }
      layer_norm_input_grad(ds, nk, H, r.rstd[k]);
      std::copy(ds, ds + H, du);
    }
    return;
  }
  // Recurrent / separate. dhn (gradient of gain_hh_n * LN(u)_n + b_hn) goes to scratch + 3H.
  T* dhn = scratch + 3 * H;
  const T *nn = normed + 2 * H, *gn = p.gain_hh + 2 * H;
  if (p.norm == Norm::kNone) {  // no layer norm: hn = u_n + b_hn, and u gets the gate gradients
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T hn = nn[j] + p.bias_hn[j];
      const T da_r = dn_pre[j] * hn * rg[j] * (T(1) - rg[j]);
      const T dr = dn_pre[j] * rg[j];
      acc.shift[j] += da_r;
      acc.shift[H + j] += da[H + j];
      acc.shift[2 * H + j] += dn_pre[j];
      acc.bias_hn[j] += dr;
      dxp[j] = da_r;
      dxp[H + j] = da[H + j];
      dxp[2 * H + j] = dn_pre[j];
      dhh[j] = da_r;
      dhh[H + j] = da[H + j];
      dhh[2 * H + j] = dr;
    }
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T hn = nn[j] * gn[j] + p.bias_hn[j];
    da[j] = dn_pre[j] * hn * rg[j] * (T(1) - rg[j]);
    dhn[j] = dn_pre[j] * rg[j];
  }
  for (int64_t k = 0; k < 3; ++k) {
    const T* dx = da + k * H;                     // gradient of a_k (the input side)
    const T* dr = k < 2 ? da + k * H : dhn;       // gradient of the recurrent side's gain output
    const T *nk = normed + k * H, *gk = p.gain_hh + k * H;
    T *acc_g = acc.gain_hh + k * H, *acc_s = acc.shift + k * H, *du = dhh + k * H, *dxk = dxp + k * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      acc_s[j] += dx[j];
      acc_g[j] += dr[j] * nk[j];
      du[j] = dr[j] * gk[j];
    }
    if (k == 2) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) acc.bias_hn[j] += dr[j];
    }
    layer_norm_input_grad(du, nk, H, r.rstd[k]);
    if (p.norm == Norm::kSeparate) {
      const T xm = r.x_mean[k], xr = r.x_rstd[k], *xk = xp + k * H, *gi = p.gain_ih + k * H;
      T *xhat = scratch + 4 * H, *acc_gi = acc.gain_ih + k * H;
      T d_scale = 0;
#pragma omp simd reduction(+ : d_scale)
      for (int64_t j = 0; j < H; ++j) {
        xhat[j] = (xk[j] - xm) * xr;
        const T ds = dx[j] * r.in_scale;
        acc_gi[j] += ds * xhat[j];
        dxk[j] = ds * gi[j];
        d_scale += dx[j] * gi[j] * xhat[j];
      }
      if (r.d_scale != nullptr) *r.d_scale += d_scale;
      layer_norm_input_grad(dxk, xhat, H, xr);
    } else {
      std::copy(dx, dx + H, dxk);
    }
  }
}

}  // namespace rnn_stability
