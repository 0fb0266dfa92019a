// Fused CPU time loop of the layer-normalised GRU (one layer, one direction), forward and backward.
//
// Ba, Kiros & Hinton (2016), "Layer Normalization", arXiv:1607.06450; the GRU analogue of the layer-normalised
// LSTM with torch's placement of b_hn inside the reset product (formulas in gru_rows.h). Laid out like
// lstm_layer_norm.cpp: the op takes the layer input x and W_ih and computes xp = x W_ih^T itself (one product
// for all steps), the per-step products go through oneDNN or ATen (matmul.h), the rest of a step is one pass over
// each batch row (gru_rows.h), and the backward turns gate gradients into dx, dW_ih and dW_hh a chunk of steps
// at a time. Kept for the backward: r, z, n, the normalised recurrent projection (joint: the normalised sums and
// u_n), and xp for the separate normalisation only (recomputed instead where the input is narrow); nothing
// when no gradient is needed. Without weight_ih the op takes xp itself as x ((T, B, 3H): the batch-normalised
// projection of the batch_norm option) and returns its gradient, all steps, in place of dx.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "gru_rows.h"
#include "loop_common.h"
#include "matmul.h"
#include "regularization_rows.h"
#include "workspace.h"

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using namespace rnn_stability;

inline int64_t gru_row_grain(int64_t H) { return std::max<int64_t>(1, 8192 / (3 * H)); }

// As lstm_layer_norm.cpp: the backward recomputes xp when the input is at most half as wide as the state.
inline bool gru_recompute_xp(int64_t in, int64_t H) { return 2 * in <= H; }

struct GruBuffers {
  Tensor x_mean, x_rstd, normed, rstd, act, u_n;

  GruBuffers(int64_t slots, int64_t B, int64_t H, Norm norm, const at::TensorOptions& opts)
      : x_mean(workspace({norm == Norm::kSeparate ? slots : 0, B, 3}, opts)),
        x_rstd(workspace({norm == Norm::kSeparate ? slots : 0, B, 3}, opts)),
        normed(workspace({slots, B, 3 * H}, opts)),
        rstd(workspace({slots, B, 3}, opts)),
        act(workspace({slots, B, 3 * H}, opts)),
        u_n(workspace({norm == Norm::kJoint ? slots : 0, B, H}, opts)) {}

  explicit GruBuffers(const std::vector<Tensor>& t)
      : x_mean(t[0]), x_rstd(t[1]), normed(t[2]), rstd(t[3]), act(t[4]), u_n(t[5]) {}

  std::vector<Tensor> list() const { return {x_mean, x_rstd, normed, rstd, act, u_n}; }

  template <typename T>
  GruRow<T> row(int64_t slot, int64_t b, T in_scale = 1, T* d_scale = nullptr) const {
    const int64_t B = act.size(1), H = act.size(2) / 3, s = slot * B + b;
    auto at_or_null = [](const Tensor& x, int64_t offset) { return x.numel() > 0 ? x.data_ptr<T>() + offset : nullptr; };
    return GruRow<T>{at_or_null(x_mean, s * 3), at_or_null(x_rstd, s * 3), normed.data_ptr<T>() + s * 3 * H,
                     rstd.data_ptr<T>() + s * 3,  act.data_ptr<T>() + s * 3 * H,  at_or_null(u_n, s * H),
                     in_scale,                    d_scale};
  }
};

struct GruParamTensors {
  Tensor gain_ih, shift, bias_hn, gain_hh;
};

template <typename T>
GruParams<T> gru_params(const GruParamTensors& t, int64_t H, double eps, Norm norm) {
  return GruParams<T>{t.gain_ih.defined() ? t.gain_ih.data_ptr<T>() : nullptr, t.shift.data_ptr<T>(),
                      t.bias_hn.data_ptr<T>(), t.gain_hh.data_ptr<T>(), H, static_cast<T>(eps), norm};
}

GruParamTensors gru_param_tensors(const std::optional<Tensor>& gain_ih, const std::optional<Tensor>& shift,
                                  const std::optional<Tensor>& bias_hn, const Tensor& gain_hh, int64_t H,
                                  const at::TensorOptions& opts) {
  return {contiguous_or_undefined(gain_ih), contiguous_or_zeros(shift, {3, H}, opts),
          contiguous_or_zeros(bias_hn, {H}, opts), gain_hh.contiguous()};
}

Norm gru_norm(c10::string_view name, const std::optional<Tensor>& gain_ih, bool* scaled) {
  const Norm norm = parse_norm(name, scaled);
  TORCH_CHECK((norm == Norm::kSeparate) == (gain_ih.has_value() && gain_ih->defined()),
              "gru_ln: gain_ih is given with the separate normalization and only with it");
  return norm;
}

// Returns [out, h_n, xp (kept for the backward: separate, saving and not recomputed; else empty), then the
// per-step buffers of GruBuffers::list()].
std::vector<Tensor> gru_ln_forward(const Tensor& x_in, const std::optional<Tensor>& weight_ih,
                                   const std::optional<Tensor>& gain_ih,
                                   const std::optional<Tensor>& shift, const std::optional<Tensor>& bias_hn,
                                   const Tensor& h0_in, const Tensor& weight_hh, const Tensor& gain_hh, double eps,
                                   bool reverse, bool save, c10::string_view normalization,
                                   const std::optional<Tensor>& rec_mask, const std::optional<Tensor>& zone_h) {
  bool scaled = false;
  const Norm norm = gru_norm(normalization, gain_ih, &scaled);
  TORCH_CHECK(x_in.dim() == 3 && weight_hh.size(0) % 3 == 0, "gru_ln_forward: x must be (T, B, in)");
  const int64_t T_ = x_in.size(0), B = x_in.size(1), H = weight_hh.size(0) / 3;
  const Tensor x = x_in.contiguous(), h0 = h0_in.contiguous();
  const auto opts = x.options();
  const Tensor w_ih = contiguous_or_undefined(weight_ih);
  TORCH_CHECK(w_ih.defined() || (norm != Norm::kSeparate && x.size(2) == 3 * H),
              "gru_ln_forward: without weight_ih, x is xp (T, B, 3H), and the normalization not separate");
  const Tensor in_scale = scaled ? x.abs().mean(-1).contiguous() : Tensor();  // "scaled": (T, B)
  const Tensor xp = w_ih.defined() ? Linear(w_ih, T_ * B)(x.view({T_ * B, x.size(2)})).view({T_, B, 3 * H}) : x;
  GruBuffers buf(save ? T_ : 1, B, H, norm, opts);
  Tensor out = at::empty({T_, B, H}, opts), u_buf = at::empty({B, 3 * H}, opts);
  const Linear u_of(weight_hh, B);
  const GruParamTensors pt = gru_param_tensors(gain_ih, shift, bias_hn, gain_hh, H, opts);
  Tensor h = h0;
  // Recurrent dropout (the masked state enters W_hh only) and zoneout (regularization_rows.h).
  const Tensor rec = recurrent_mask(rec_mask, B, H, opts);
  const Zone zh(zone_h, T_, B, H);
  Tensor h_rec = at::empty({rec.defined() ? B : 0, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_ln_forward", [&] {
    const auto p = gru_params<scalar_t>(pt, H, eps, norm);
    const scalar_t* scale_p = scaled ? in_scale.data_ptr<scalar_t>() : nullptr;
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = reverse ? T_ - 1 - s : s, slot = save ? t : 0;
      const Tensor u = u_of.into(u_buf, rec.defined() ? at::mul_out(h_rec, h, rec) : h);
      const scalar_t *xp_p = xp.data_ptr<scalar_t>(), *u_p = u.data_ptr<scalar_t>(), *h_p = h.data_ptr<scalar_t>();
      scalar_t* out_p = out[t].data_ptr<scalar_t>();
      const Keep<scalar_t> kh = zh.step<scalar_t>(t);
      at::parallel_for(0, B, gru_row_grain(H), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          gru_forward_row<scalar_t>(p, xp_p + (t * B + b) * 3 * H, u_p + b * 3 * H, h_p + b * H,
                                    buf.row<scalar_t>(slot, b, scale_p == nullptr ? scalar_t(1) : scale_p[t * B + b]),
                                    out_p + b * H);
          if (zh.on()) zone_blend(out_p + b * H, h_p + b * H, kh.at(b * H), H);
        }
      });
      h = out[t];
    }
  });
  const bool keep_xp = save && w_ih.defined() && norm == Norm::kSeparate && !gru_recompute_xp(x.size(2), H);
  std::vector<Tensor> result{out, h.clone(), keep_xp ? xp : at::empty({0}, opts)};
  for (const Tensor& t : buf.list()) result.push_back(t);
  return result;
}

// Gradients of gru_ln_forward's tensor arguments in their order: x, weight_ih, gain_ih, shift, bias_hn, h0,
// weight_hh, gain_hh (empty where not given).
std::vector<Tensor> gru_ln_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& x_in,
                                    const std::optional<Tensor>& weight_ih, const Tensor& xp_saved,
                                    const std::optional<Tensor>& gain_ih, const std::optional<Tensor>& shift,
                                    const std::optional<Tensor>& bias_hn, const Tensor& h0_in,
                                    const Tensor& weight_hh, const Tensor& gain_hh, const Tensor& out,
                                    at::TensorList saved, double eps, bool reverse, c10::string_view normalization,
                                    const std::optional<Tensor>& rec_mask, const std::optional<Tensor>& zone_h) {
  bool scaled = false;
  const Norm norm = gru_norm(normalization, gain_ih, &scaled);
  const GruBuffers buf(saved.vec());
  const Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), w_ih = contiguous_or_undefined(weight_ih);
  const bool projected = w_ih.defined();  // else x is xp, and its gradient is kept for all steps
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2), in = x.size(2);
  const auto opts = out.options();
  const int64_t K = chunk_steps(T_, B);
  const bool recompute = norm == Norm::kSeparate && xp_saved.numel() == 0;
  Tensor grad_xp = workspace({projected ? K : T_, B, 3 * H}, opts);
  Tensor grad_u = workspace({2, K, B, 3 * H}, opts);
  Tensor grad_x = projected ? at::empty({T_, B, in}, opts) : grad_xp;
  Tensor grad_w_ih = projected ? at::zeros_like(w_ih) : at::empty({0}, opts);
  Tensor grad_w_hh = at::zeros_like(weight_hh);
  Tensor dh_bufs = at::empty({2, B, H}, opts);
  Tensor acc3 = at::zeros({3, B, 3 * H}, opts), acc_bias_hn = at::zeros({B, H}, opts);
  Tensor scratch = at::empty({B, 6 * H}, opts);
  const Tensor in_scale = scaled ? x.abs().mean(-1).contiguous() : Tensor();
  Tensor d_scale = at::empty({scaled ? K : 0, B}, opts);
  const Linear dh_of(weight_hh.t(), B), dx_of(projected ? w_ih.t() : Tensor(), K * B);
  const Linear xp_of(recompute ? w_ih : Tensor(), K * B);
  const GruParamTensors pt = gru_param_tensors(gain_ih, shift, bias_hn, gain_hh, H, opts);
  Tensor du_later, dh_later;
  int64_t later = -1, processed = 0;
  // Recurrent dropout and zoneout: the masks and dL/dh_t of the zoned state (two slots alternating; dh_bufs
  // then hold the gradients of the new states, which the row kernels read).
  const Tensor rec = recurrent_mask(rec_mask, B, H, opts);
  const Zone zh(zone_h, T_, B, H);
  Tensor d_state = at::empty({zh.on() ? 2 : 0, B, H}, opts);
  const int64_t chunks = (T_ + K - 1) / K;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "gru_ln_backward", [&] {
    const auto p = gru_params<scalar_t>(pt, H, eps, norm);
    scalar_t *acc3_p = acc3.data_ptr<scalar_t>(), *acc_hn_p = acc_bias_hn.data_ptr<scalar_t>();
    scalar_t* scratch_p = scratch.data_ptr<scalar_t>();
    const scalar_t* scale_p = scaled ? in_scale.data_ptr<scalar_t>() : nullptr;
    scalar_t* d_scale_p = scaled ? d_scale.data_ptr<scalar_t>() : nullptr;
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t a = reverse ? k * K : std::max<int64_t>(0, T_ - (k + 1) * K);
      const int64_t b = reverse ? std::min(T_, (k + 1) * K) : T_ - k * K;
      Tensor gxp = grad_xp.narrow(0, projected ? 0 : a, b - a), gu = grad_u[k % 2].narrow(0, 0, b - a);
      Tensor xp_chunk;
      if (recompute) {
        xp_chunk = xp_of(x.narrow(0, a, b - a).reshape({(b - a) * B, in}));
      } else if (norm == Norm::kSeparate) {
        xp_chunk = xp_saved.narrow(0, a, b - a);
      }
      const scalar_t* xp_p = xp_chunk.defined() ? xp_chunk.data_ptr<scalar_t>() : nullptr;
      if (scaled) d_scale.zero_();
      for (int64_t i = 0; i < b - a; ++i) {
        const int64_t t = reverse ? a + i : b - 1 - i, earlier = reverse ? t + 1 : t - 1;
        Tensor dh = dh_bufs[processed % 2];  // dh_later is the other one
        Tensor ds = zh.on() ? d_state[processed % 2] : dh;
        if (later < 0) {
          at::add_out(ds, grad_out[t], grad_hn);
        } else if (zh.on() || rec.defined()) {  // the later step read m h_t (m = 1 without recurrent dropout)
          if (rec.defined()) {
            at::addcmul_out(ds, grad_out[t], dh_of(du_later), rec);
          } else {
            dh_of.add_out(ds, grad_out[t], du_later);
          }
        } else {
          dh_of.add_out(dh, grad_out[t], du_later);
        }
        const bool first = earlier < 0 || earlier >= T_;
        const scalar_t* h_prev = (first ? h0 : out[earlier]).data_ptr<scalar_t>();
        const scalar_t* z_later = later < 0 ? nullptr : buf.act.data_ptr<scalar_t>() + later * B * 3 * H + H;
        const scalar_t* dh_later_p = later < 0 ? nullptr : dh_later.data_ptr<scalar_t>();
        scalar_t *dh_p = dh.data_ptr<scalar_t>(), *gxp_p = gxp[t - a].data_ptr<scalar_t>();
        scalar_t* gu_p = gu[t - a].data_ptr<scalar_t>();
        // Zoneout: the state's gradient gets the later step's update-gate path and carry here, then gives the
        // new state's to the row kernel (which then adds nothing).
        scalar_t* ds_p = zh.on() ? ds.data_ptr<scalar_t>() : nullptr;
        const scalar_t* ds_later_p = zh.on() && later >= 0 ? d_state[(processed + 1) % 2].data_ptr<scalar_t>() : nullptr;
        const Keep<scalar_t> kh_later = zh.step<scalar_t>(later < 0 ? t : later), kh = zh.step<scalar_t>(t);
        at::parallel_for(0, B, gru_row_grain(H), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            if (ds_p != nullptr) {
              if (ds_later_p != nullptr) {
                add_product(ds_p + r * H, dh_later_p + r * H, z_later + r * 3 * H, H);
              }
              zone_split(ds_p + r * H, ds_later_p == nullptr ? nullptr : ds_later_p + r * H, kh_later.at(r * H),
                         kh.at(r * H), dh_p + r * H, H);
            }
            const GruAcc<scalar_t> acc{acc3_p + r * 3 * H, acc3_p + (B + r) * 3 * H, acc3_p + (2 * B + r) * 3 * H,
                                       acc_hn_p + r * H};
            gru_backward_row<scalar_t>(p, dh_p + r * H, dh_later_p == nullptr ? nullptr : dh_later_p + r * H,
                                       z_later == nullptr || ds_p != nullptr ? nullptr : z_later + r * 3 * H,
                                       xp_p == nullptr ? nullptr : xp_p + ((t - a) * B + r) * 3 * H,
                                       h_prev + r * H,
                                       buf.row<scalar_t>(t, r, scaled ? scale_p[t * B + r] : scalar_t(1),
                                                         scaled ? d_scale_p + (t - a) * B + r : nullptr),
                                       gxp_p + r * 3 * H, gu_p + r * 3 * H,
                                       acc, scratch_p + r * 6 * H);
          }
        });
        du_later = gu[t - a];
        dh_later = dh;
        later = t;
        ++processed;
      }
      const int64_t rows = (b - a) * B;
      add_transposed_product(grad_w_hh, gu.reshape({rows, 3 * H}),
                             masked_rows(previous_states(out, h0, a, b, reverse), rec));
      if (!projected) continue;  // the gradient of xp is the result
      const Tensor gxp_rows = gxp.reshape({rows, 3 * H});
      Tensor dx = grad_x.narrow(0, a, b - a).view({rows, in});
      dx_of.out(dx, gxp_rows);
      const Tensor x_rows = x.narrow(0, a, b - a).reshape({rows, in});
      add_transposed_product(grad_w_ih, gxp_rows, x_rows);
      // d mean|x| / dx = sign(x) / F.
      if (scaled) dx.addcmul_(x_rows.sign(), d_scale.narrow(0, 0, b - a).reshape({rows, 1}), 1.0 / in);
    }
  });
  // dL/dh0: through the first step's recurrent product and its update gate.
  Tensor grad_h0 = dh_of(du_later).addcmul_(dh_later, buf.act[later].narrow(1, H, H));
  // Recurrent dropout: W_hh read m h0; zoneout: h0 also reaches the first step's zoned state directly.
  if (rec.defined()) grad_h0 = (dh_of(du_later) * rec).addcmul_(dh_later, buf.act[later].narrow(1, H, H));
  if (zh.on()) grad_h0.addcmul_(d_state[(processed - 1) % 2], zh.at_step(later, opts));
  Tensor acc3_sum = acc3.sum(1).view({3, 3, H});
  Tensor grad_gain_ih = norm == Norm::kSeparate ? acc3_sum[0] : at::empty({0}, opts);
  return {grad_x, grad_w_ih, grad_gain_ih, acc3_sum[1], acc_bias_hn.sum(0), grad_h0, grad_w_hh, acc3_sum[2]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnn_stability, m) {
  m.def(
      "gru_ln_forward(Tensor x, Tensor? weight_ih, Tensor? gain_ih, Tensor? shift, Tensor? bias_hn, Tensor h0, "
      "Tensor weight_hh, Tensor gain_hh, float eps, bool reverse, bool save, str normalization, "
      "Tensor? rec_mask=None, Tensor? zone_h=None) -> Tensor[]");
  m.def(
      "gru_ln_backward(Tensor grad_out, Tensor grad_hn, Tensor x, Tensor? weight_ih, Tensor xp_saved, "
      "Tensor? gain_ih, Tensor? shift, Tensor? bias_hn, Tensor h0, Tensor weight_hh, Tensor gain_hh, Tensor out, "
      "Tensor[] saved, float eps, bool reverse, str normalization, Tensor? rec_mask=None, "
      "Tensor? zone_h=None) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnn_stability, CPU, m) {
  m.impl("gru_ln_forward", &gru_ln_forward);
  m.impl("gru_ln_backward", &gru_ln_backward);
}
