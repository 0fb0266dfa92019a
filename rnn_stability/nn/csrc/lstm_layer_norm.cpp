// Fused CPU time loop of the layer-normalised LSTM (one layer, one direction), forward and backward.
//
// Ba, Kiros & Hinton (2016), "Layer Normalization", arXiv:1607.06450. Given the input projection xp = W_ih x
// for all steps (shape (T, B, 4, H), gate order i, f, g, o), with LN normalising each H-wide gate block to zero
// mean and unit (biased) variance, the gates of the three normalisations (rnn_stability/nn/layer_norm.py) are
//   recurrent: gates_t = xp_t + shift + gain_hh * LN(W_hh h_{t-1})
//   joint:     gates_t = gain_hh * LN(xp_t + W_hh h_{t-1}) + shift                      (gain_hh: the joint gain)
//   separate:  gates_t = gain_ih * LN(xp_t) + shift + gain_hh * LN(W_hh h_{t-1})
// (shift = b_ih + b_hh, or none), and then for all three
//   c_t     = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
//   h_t     = sigmoid(o) * tanh(cell_weight * LN(c_t) + cell_bias)        (h_t = W_hr h_t with a projection)
// These are the formulas of rnn_stability/nn/recurrence.py (lstm_input_gates, lstm_layer_norm_step). The
// matrix products go through ATen (MKL / oneDNN); everything else of a step is one pass over each batch row
// while it is in cache (ATen's Vectorized / Sleef for sigmoid and tanh), instead of ~20 dispatched ops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "workspace.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace {

using at::Tensor;
using rnn_stability::empty_cache;
using rnn_stability::workspace;
using rnn_stability::workspace_bytes;


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

Norm parse_norm(c10::string_view name) {
  if (name == "recurrent") return Norm::kRecurrent;
  if (name == "joint") return Norm::kJoint;
  TORCH_CHECK(name == "separate", "lstm_ln: normalization must be recurrent, joint or separate, got ", name);
  return Norm::kSeparate;
}

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
  T* cell_xhat;  // (H) LN(c_t) before its gain and bias
  T* cell_rstd;  // (1)
  T* tc;         // (H) tanh of the cell read-out
};

template <typename T>
void forward_row(const Params<T>& p, const T* xp, const T* hh, const T* c_prev, const Row<T>& r, T* h) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t H = p.H;
  for (int64_t k = 0; k < 4; ++k) {
    const T *xk = xp + k * H, *hk = hh + k * H, *gh = p.gain_hh + k * H, *sk = p.shift + k * H;
    T *nk = r.normed + k * H, *ak = r.act + k * H;
    T hm, hr;
    if (p.norm == Norm::kJoint) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) nk[j] = xk[j] + hk[j];
      moments(nk, H, p.eps, hm, hr);
      r.rstd[k] = hr;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        nk[j] = (nk[j] - hm) * hr;
        ak[j] = nk[j] * gh[j] + sk[j];
      }
    } else if (p.norm == Norm::kRecurrent) {
      moments(hk, H, p.eps, hm, hr);
      r.rstd[k] = hr;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        nk[j] = (hk[j] - hm) * hr;
        ak[j] = xk[j] + nk[j] * gh[j] + sk[j];
      }
    } else {
      const T* gi = p.gain_ih + k * H;
      T xm, xr;
      moments(xk, H, p.eps, xm, xr);
      moments(hk, H, p.eps, hm, hr);
      r.x_mean[k] = xm;
      r.x_rstd[k] = xr;
      r.rstd[k] = hr;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        nk[j] = (hk[j] - hm) * hr;
        ak[j] = (xk[j] - xm) * xr * gi[j] + nk[j] * gh[j] + sk[j];
      }
    }
    if (k == 2) {
      at::vec::map([](Vec v) { return v.tanh(); }, ak, ak, H);
    } else {
      at::vec::map([](Vec v) { return Vec(T(1)) / (Vec(T(1)) + v.neg().exp()); }, ak, ak, H);
    }
  }
  const T *i = r.act, *f = r.act + H, *g = r.act + 2 * H, *o = r.act + 3 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) r.cell[j] = f[j] * c_prev[j] + i[j] * g[j];
  T mean, rstd;
  moments(r.cell, H, p.eps, mean, rstd);
  *r.cell_rstd = rstd;
  const T *cw = p.cell_weight, *cb = p.cell_bias;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    r.cell_xhat[j] = (r.cell[j] - mean) * rstd;
    r.tc[j] = r.cell_xhat[j] * cw[j] + cb[j];
  }
  at::vec::map([](Vec v) { return v.tanh(); }, r.tc, r.tc, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) h[j] = o[j] * r.tc[j];
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
// 5H values.
template <typename T>
void backward_row(const Params<T>& p, const T* dm, const T* xp, const T* c_prev, const T* f_next, const Row<T>& r,
                  T* dc, T* dxp, T* dhh, const Acc<T>& acc, T* scratch) {
  const int64_t H = p.H;
  const T *i = r.act, *f = r.act + H, *g = r.act + 2 * H, *o = r.act + 3 * H;
  T *dg = scratch, *d_cell = scratch + 4 * H;
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
    if (p.norm == Norm::kSeparate) {
      const T xm = r.x_mean[k], xr = r.x_rstd[k], *xk = xp + o4, *gi = p.gain_ih + o4;
      T *xhat = d_cell, *acc_gi = acc.gain_ih + o4;  // d_cell reused: (H) normalised input block
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        xhat[j] = (xk[j] - xm) * xr;
        acc_gi[j] += d[j] * xhat[j];
        acc_shift[j] += d[j];
        acc_gh[j] += d[j] * normed[j];
        dx[j] = d[j] * gi[j];
        dh[j] = d[j] * gh[j];
      }
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
    layer_norm_input_grad(dh, normed, H, r.rstd[k]);
  }
}

// Batch rows per task of at::parallel_for: a row is only a few microseconds of work.
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 8192 / (4 * H)); }

// Per-step buffers, (slots, B, ...) each. With save == false a step reuses slot 0 (cells alternate between two
// slots, as a step reads the previous step's cell).
struct Buffers {
  Tensor x_mean, x_rstd, normed, rstd, act, cell, cell_xhat, cell_rstd, tc;

  Buffers(int64_t slots, int64_t cell_slots, int64_t B, int64_t H, const at::TensorOptions& opts)
      : x_mean(workspace({slots, B, 4}, opts)),
        x_rstd(workspace({slots, B, 4}, opts)),
        normed(workspace({slots, B, 4 * H}, opts)),
        rstd(workspace({slots, B, 4}, opts)),
        act(workspace({slots, B, 4 * H}, opts)),
        cell(workspace({cell_slots, B, H}, opts)),
        cell_xhat(workspace({slots, B, H}, opts)),
        cell_rstd(workspace({slots, B}, opts)),
        tc(workspace({slots, B, H}, opts)) {}

  explicit Buffers(const std::vector<Tensor>& t)
      : x_mean(t[0]), x_rstd(t[1]), normed(t[2]), rstd(t[3]), act(t[4]), cell(t[5]), cell_xhat(t[6]),
        cell_rstd(t[7]), tc(t[8]) {}

  std::vector<Tensor> list() const { return {x_mean, x_rstd, normed, rstd, act, cell, cell_xhat, cell_rstd, tc}; }

  template <typename T>
  Row<T> row(int64_t slot, int64_t cell_slot, int64_t b) const {
    const int64_t B = act.size(1), H = tc.size(2), s = slot * B + b;
    return Row<T>{x_mean.data_ptr<T>() + s * 4, x_rstd.data_ptr<T>() + s * 4, normed.data_ptr<T>() + s * 4 * H,
                  rstd.data_ptr<T>() + s * 4,   act.data_ptr<T>() + s * 4 * H,  cell.data_ptr<T>() + (cell_slot * B + b) * H,
                  cell_xhat.data_ptr<T>() + s * H, cell_rstd.data_ptr<T>() + s, tc.data_ptr<T>() + s * H};
  }
};

Tensor contiguous_or_undefined(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

Tensor contiguous_or_zeros(const std::optional<Tensor>& t, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return t.has_value() && t->defined() ? t->contiguous() : at::zeros(sizes, opts);
}

// Contiguous copies (where needed) of the layer-norm parameters, owned for as long as Params points into them.
struct LayerNormParams {
  Tensor gain_ih, shift, gain_hh, cell_weight, cell_bias;
};

template <typename T>
Params<T> params(const LayerNormParams& t, int64_t H, double eps, Norm norm) {
  auto ptr = [](const Tensor& x) { return x.defined() ? x.data_ptr<T>() : nullptr; };
  return Params<T>{ptr(t.gain_ih),   ptr(t.shift), ptr(t.gain_hh), ptr(t.cell_weight),
                   ptr(t.cell_bias), H,            static_cast<T>(eps), norm};
}

// gain_ih must be given exactly for the separate normalisation.
Norm checked_norm(c10::string_view name, const std::optional<Tensor>& gain_ih) {
  const Norm norm = parse_norm(name);
  TORCH_CHECK((norm == Norm::kSeparate) == (gain_ih.has_value() && gain_ih->defined()),
              "lstm_ln: gain_ih is given with the separate normalization and only with it");
  return norm;
}

// Returns [out, h_n, c_n, pre_proj (empty without projection), then the per-step buffers of Buffers::list()].
std::vector<Tensor> lstm_ln_forward(const Tensor& xp_in, const std::optional<Tensor>& gain_ih,
                                    const std::optional<Tensor>& shift, const Tensor& h0_in, const Tensor& c0_in,
                                    const Tensor& weight_hh, const Tensor& gain_hh, const Tensor& cell_weight,
                                    const std::optional<Tensor>& cell_bias, const std::optional<Tensor>& weight_hr,
                                    double eps, bool reverse, bool save, c10::string_view normalization) {
  TORCH_CHECK(xp_in.dim() == 4 && xp_in.size(2) == 4, "lstm_ln_forward: xp must be (T, B, 4, H)");
  const Norm norm = checked_norm(normalization, gain_ih);
  const Tensor xp = xp_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const Tensor w_hr = contiguous_or_undefined(weight_hr);
  const int64_t T_ = xp.size(0), B = xp.size(1), H = xp.size(3);
  const auto opts = xp.options();
  Buffers buf(save ? T_ : 1, save ? T_ : 2, B, H, opts);
  Tensor pre_proj = workspace({w_hr.defined() ? (save ? T_ : 1) : 0, B, H}, opts);
  Tensor out = at::empty({T_, B, h0.size(-1)}, opts);
  Tensor hh = at::empty({B, 4 * H}, opts);
  const Tensor w_hh_t = weight_hh.t();
  Tensor h = h0, c = c0;
  const LayerNormParams lnp{contiguous_or_undefined(gain_ih), contiguous_or_zeros(shift, {4, H}, opts),
                            gain_hh.contiguous(), cell_weight.contiguous(), contiguous_or_zeros(cell_bias, {H}, opts)};
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "lstm_ln_forward", [&] {
    const auto p = params<scalar_t>(lnp, H, eps, norm);
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = reverse ? T_ - 1 - s : s, slot = save ? t : 0, cell_slot = save ? t : s % 2;
      at::mm_out(hh, h, w_hh_t);
      Tensor out_t = out[t];
      Tensor h_pre = w_hr.defined() ? pre_proj[slot] : out_t;
      const scalar_t* c_prev = c.data_ptr<scalar_t>();
      const scalar_t *xp_p = xp.data_ptr<scalar_t>(), *hh_p = hh.data_ptr<scalar_t>();
      scalar_t* h_p = h_pre.data_ptr<scalar_t>();
      at::parallel_for(0, B, row_grain(H), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          forward_row<scalar_t>(p, xp_p + (t * B + b) * 4 * H, hh_p + b * 4 * H, c_prev + b * H,
                                buf.row<scalar_t>(slot, cell_slot, b), h_p + b * H);
        }
      });
      if (w_hr.defined()) at::mm_out(out_t, h_pre, w_hr.t());
      h = out_t;
      c = buf.cell[cell_slot];
    }
  });
  std::vector<Tensor> result{out, h.clone(), c.clone(), pre_proj};
  for (const Tensor& t : buf.list()) result.push_back(t);
  return result;
}

// Returns the gradients of lstm_ln_forward's tensor arguments, in their order: xp, gain_ih, shift, h0, c0,
// weight_hh, gain_hh, cell_weight, cell_bias, weight_hr (empty without projection). `saved` is what lstm_ln_forward returned after pre_proj (forward run with save=true).
std::vector<Tensor> lstm_ln_backward(const Tensor& grad_out_in, const Tensor& grad_hn, const Tensor& grad_cn,
                                     const Tensor& xp_in, const std::optional<Tensor>& gain_ih,
                                     const std::optional<Tensor>& shift, const Tensor& h0, const Tensor& c0_in,
                                     const Tensor& weight_hh, const Tensor& gain_hh, const Tensor& cell_weight,
                                     const std::optional<Tensor>& weight_hr, const Tensor& out, const Tensor& pre_proj,
                                     at::TensorList saved, double eps, bool reverse, c10::string_view normalization) {
  const Norm norm = checked_norm(normalization, gain_ih);
  const Tensor grad_out = grad_out_in.contiguous(), xp = xp_in.contiguous(), c0 = c0_in.contiguous();
  const Tensor w_hr = contiguous_or_undefined(weight_hr);
  const Buffers buf(saved.vec());
  const int64_t T_ = xp.size(0), B = xp.size(1), H = xp.size(3);
  const auto opts = xp.options();
  Tensor grad_xp = workspace({T_, B, 4, H}, opts);
  // Joint: the gradients of xp and of W_hh h_{t-1} are those of their sum, one buffer.
  Tensor grad_hh = norm == Norm::kJoint ? grad_xp.view({T_, B, 4 * H}) : workspace({T_, B, 4 * H}, opts);
  Tensor grad_h = workspace({w_hr.defined() ? T_ : 1, B, out.size(-1)}, opts);
  Tensor dm = at::empty({B, H}, opts);
  Tensor dc = grad_cn.contiguous().clone();
  Tensor acc4 = at::zeros({3, B, 4 * H}, opts), acc1 = at::zeros({2, B, H}, opts);
  Tensor scratch = at::empty({B, 5 * H}, opts);
  int64_t later = -1;  // the step processed just before this one (the next one in time order)
  const LayerNormParams lnp{contiguous_or_undefined(gain_ih), contiguous_or_zeros(shift, {4, H}, opts),
                            gain_hh.contiguous(), cell_weight.contiguous(), Tensor()};
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "lstm_ln_backward", [&] {
    const auto p = params<scalar_t>(lnp, H, eps, norm);
    scalar_t *acc4_p = acc4.data_ptr<scalar_t>(), *acc1_p = acc1.data_ptr<scalar_t>();
    scalar_t *dc_p = dc.data_ptr<scalar_t>(), *grad_xp_p = grad_xp.data_ptr<scalar_t>();
    scalar_t *grad_hh_p = grad_hh.data_ptr<scalar_t>(), *scratch_p = scratch.data_ptr<scalar_t>();
    const scalar_t* xp_p = xp.data_ptr<scalar_t>();
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = reverse ? s : T_ - 1 - s, earlier = reverse ? t + 1 : t - 1;
      Tensor dh = grad_h[w_hr.defined() ? t : 0];
      if (later < 0) {
        at::add_out(dh, grad_out[t], grad_hn);
      } else {
        at::addmm_out(dh, grad_out[t], grad_hh[later], weight_hh);
      }
      if (w_hr.defined()) at::mm_out(dm, dh, w_hr);
      const scalar_t* dm_p = (w_hr.defined() ? dm : dh).data_ptr<scalar_t>();
      const bool first = earlier < 0 || earlier >= T_;
      const scalar_t* c_prev = (first ? c0 : buf.cell[earlier]).data_ptr<scalar_t>();
      const scalar_t* f_next = later < 0 ? nullptr : buf.act.data_ptr<scalar_t>() + later * B * 4 * H + H;
      at::parallel_for(0, B, row_grain(H), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t row = (t * B + b) * 4 * H;
          const Acc<scalar_t> acc{acc4_p + b * 4 * H, acc4_p + (B + b) * 4 * H, acc4_p + (2 * B + b) * 4 * H,
                                  acc1_p + b * H, acc1_p + (B + b) * H};
          backward_row<scalar_t>(p, dm_p + b * H, xp_p + row, c_prev + b * H,
                                 f_next == nullptr ? nullptr : f_next + b * 4 * H, buf.row<scalar_t>(t, t, b),
                                 dc_p + b * H, grad_xp_p + row, grad_hh_p + row, acc, scratch_p + b * 5 * H);
        }
      });
      later = t;
    }
  });
  const Tensor first = grad_hh[later];  // the step that read h0 and c0
  Tensor grad_h0 = at::mm(first, weight_hh);
  Tensor grad_c0 = dc * buf.act[later].view({B, 4, H}).select(1, 1);
  // dW_hh = sum_t dhh_t^T h_{t-1}: one product over all steps but the first, whose h_{t-1} is h0.
  Tensor grad_w_hh = at::mm(first.t(), h0);
  if (T_ > 1) {
    const int64_t rows = (T_ - 1) * B;
    Tensor dhh_rest = grad_hh.narrow(0, reverse ? 0 : 1, T_ - 1).reshape({rows, 4 * H});
    Tensor h_rest = out.narrow(0, reverse ? 1 : 0, T_ - 1).reshape({rows, out.size(-1)});
    grad_w_hh.addmm_(dhh_rest.t(), h_rest);
  }
  Tensor grad_w_hr = w_hr.defined() ? at::mm(grad_h.view({T_ * B, grad_h.size(-1)}).t(), pre_proj.reshape({T_ * B, H}))
                                    : at::empty({0}, opts);
  Tensor acc4_sum = acc4.sum(1).view({3, 4, H}), acc1_sum = acc1.sum(1);
  Tensor grad_gain_ih = norm == Norm::kSeparate ? acc4_sum[0] : at::empty({0}, opts);
  return {grad_xp,   grad_gain_ih, acc4_sum[1], grad_h0,     grad_c0,
          grad_w_hh, acc4_sum[2],  acc1_sum[0], acc1_sum[1], grad_w_hr};
}

}  // namespace

TORCH_LIBRARY(rnn_stability, m) {
  m.def(
      "lstm_ln_forward(Tensor xp, Tensor? gain_ih, Tensor? shift, Tensor h0, Tensor c0, Tensor weight_hh, "
      "Tensor gain_hh, Tensor cell_weight, Tensor? cell_bias, Tensor? weight_hr, float eps, bool reverse, "
      "bool save, str normalization) -> Tensor[]");
  m.def(
      "lstm_ln_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor xp, Tensor? gain_ih, "
      "Tensor? shift, Tensor h0, Tensor c0, Tensor weight_hh, Tensor gain_hh, Tensor cell_weight, "
      "Tensor? weight_hr, Tensor out, Tensor pre_proj, Tensor[] saved, float eps, bool reverse, "
      "str normalization) -> Tensor[]");
  m.def("empty_cache() -> ()", &empty_cache);
  m.def("workspace_bytes() -> int", &workspace_bytes);
}

TORCH_LIBRARY_IMPL(rnn_stability, CPU, m) {
  m.impl("lstm_ln_forward", &lstm_ln_forward);
  m.impl("lstm_ln_backward", &lstm_ln_backward);
}
