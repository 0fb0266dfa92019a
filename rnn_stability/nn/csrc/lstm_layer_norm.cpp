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
// matrix products go through oneDNN or ATen (matmul.h); everything else of a step is one pass over each batch
// row while it is in cache (lstm_rows.h; ATen's Vectorized / Sleef for sigmoid and tanh).
//
// Memory: the op can take the layer input x and W_ih and compute xp itself (one product for all steps); the
// backward then turns the gate gradients into dx and dW_ih a chunk of steps at a time, as it does for dW_hh,
// so neither dxp nor dL/d(W_hh h) is ever held for all steps. The forward keeps for the backward only what it
// cannot cheaply recompute: the activations, the normalised recurrent projection, the cell state and, for the
// separate normalisation only, xp (the other two variants do not read it; where the input is narrow, the
// backward recomputes xp a chunk at a time instead). The cell read-out (LN(c_t) and its
// tanh) is recomputed from c_t and its two moments. Nothing is kept when no gradient is needed (inference).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "loop_common.h"
#include "lstm_buffers.h"
#include "lstm_rows.h"
#include "matmul.h"
#include "regularization_rows.h"
#include "workspace.h"

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using namespace rnn_stability;

// Batch rows per task of at::parallel_for: a row is only a few microseconds of work.
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 8192 / (4 * H)); }

// gain_ih must be given exactly for the separate (and scaled) normalisation.
Norm checked_norm(c10::string_view name, const std::optional<Tensor>& gain_ih, bool* scaled) {
  const Norm norm = parse_norm(name, scaled);
  TORCH_CHECK((norm == Norm::kSeparate) == (gain_ih.has_value() && gain_ih->defined()),
              "lstm_ln: gain_ih is given with the separate normalization and only with it");
  return norm;
}

// Whether the backward recomputes xp from x (a chunk at a time) instead of keeping it: when the input is at
// most half as wide as the hidden state, the product costs a fraction of a step's recurrent products.
inline bool recompute_xp(int64_t in, int64_t H) { return 2 * in <= H; }

// xp = x W_ih^T as (T, B, 4, H) when weight_ih is given (x: (T, B, in)), else x itself (already xp).
Tensor input_projection(const Tensor& x, const Tensor& w_ih, int64_t H) {
  if (!w_ih.defined()) {
    TORCH_CHECK(x.dim() == 4 && x.size(2) == 4, "lstm_ln_forward: xp must be (T, B, 4, H)");
    return x.contiguous();
  }
  TORCH_CHECK(x.dim() == 3 && w_ih.size(0) == 4 * H, "lstm_ln_forward: x must be (T, B, in), W_ih (4H, in)");
  const int64_t T_ = x.size(0), B = x.size(1);
  const Tensor flat = x.contiguous().view({T_ * B, x.size(2)});
  return Linear(w_ih, T_ * B)(flat).view({T_, B, 4, H});
}

// Returns [out, h_n, c_n, xp (kept for the backward: separate with weight_ih and save only, else empty),
// pre_proj (empty without projection), then with save the per-step buffers of Buffers::list()] (without
// save they are one step's scratch: not returned, nor wrapped as Python objects).
std::vector<Tensor> lstm_ln_forward(const Tensor& x_in, const std::optional<Tensor>& weight_ih,
                                    const std::optional<Tensor>& gain_ih, const std::optional<Tensor>& shift,
                                    const Tensor& h0_in, const Tensor& c0_in, const Tensor& weight_hh,
                                    const Tensor& gain_hh, const Tensor& cell_weight,
                                    const std::optional<Tensor>& cell_bias, const std::optional<Tensor>& weight_hr,
                                    double eps, bool reverse, bool save, c10::string_view normalization,
                                    const std::optional<Tensor>& rec_mask, const std::optional<Tensor>& zone_h,
                                    const std::optional<Tensor>& zone_c) {
  bool scaled = false;
  const Norm norm = checked_norm(normalization, gain_ih, &scaled);
  const int64_t H = weight_hh.size(0) / 4;
  const Tensor w_ih = contiguous_or_undefined(weight_ih);
  TORCH_CHECK(!scaled || w_ih.defined(), "lstm_ln_forward: the scaled normalization needs x and weight_ih");
  // "scaled": the mean absolute value of each row's input features, (T, B).
  const Tensor in_scale = scaled ? input_scale(x_in) : Tensor();
  // Unless the backward reads xp (kept), the input projection runs a chunk of steps at a time into one buffer
  // that stays in cache, instead of one (T, B, 4H) product (or a product per chunk) in fresh pages.
  const bool keep_xp = save && w_ih.defined() && norm == Norm::kSeparate && !recompute_xp(x_in.size(2), H);
  const bool chunked = !keep_xp && w_ih.defined() && x_in.size(0) > 1;
  const int64_t C = chunked ? chunk_steps(x_in.size(0), x_in.size(1)) : x_in.size(0);
  const Tensor x_c = chunked ? x_in.contiguous() : Tensor();
  const Linear xp_of(chunked ? w_ih : Tensor(), C * x_in.size(1));
  const Tensor xp_buf = at::empty({chunked ? C * x_in.size(1) : 0, 4 * H}, x_in.options());
  const Tensor xp = chunked ? Tensor() : input_projection(x_in, w_ih, H);
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const Tensor w_hr = contiguous_or_undefined(weight_hr);
  const int64_t T_ = x_in.size(0), B = x_in.size(1);
  const auto opts = x_in.options();
  Buffers buf(save ? T_ : 1, save ? T_ : 2, B, H, norm == Norm::kSeparate, opts);
  Tensor pre_proj = workspace({w_hr.defined() ? (save ? T_ : 1) : 0, B, H}, opts);
  Tensor out = at::empty({T_, B, h0.size(-1)}, opts);
  Tensor read_out = at::empty({B, 2 * H}, opts), hh_buf = at::empty({B, 4 * H}, opts);
  const Linear hh_of(weight_hh, B), proj(w_hr.defined() ? w_hr : Tensor(), B);
  const LayerNormParams lnp{contiguous_or_undefined(gain_ih), contiguous_or_zeros(shift, {4, H}, opts),
                            gain_hh.contiguous(), cell_weight.contiguous(), contiguous_or_zeros(cell_bias, {H}, opts)};
  // Recurrent dropout and zoneout (regularization_rows.h): the masks, the masked state that enters W_hh, and
  // the zoned cells (the state the next step reads; buf.cell keeps the new cells, which the read-out normalised).
  const int64_t W = h0.size(-1);
  const Tensor rec = recurrent_mask(rec_mask, B, W, opts);
  const Zone zh(zone_h, T_, B, W), zc(zone_c, T_, B, H);
  Tensor h_rec = at::empty({rec.defined() ? B : 0, W}, opts);
  Tensor zcell = workspace({zc.on() ? (save ? T_ : 2) : 0, B, H}, opts);
  // The loop touches no tensor per step (raw pointers; the products of the small path take pointers too).
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "lstm_ln_forward", [&] {
    const auto p = params<scalar_t>(lnp, H, eps, norm);
    const auto rows = buf.bases<scalar_t>();
    scalar_t *read_out_p = read_out.data_ptr<scalar_t>(), *out_p = out.data_ptr<scalar_t>();
    const scalar_t *scale_p = scaled ? in_scale.data_ptr<scalar_t>() : nullptr;
    const scalar_t* xp_p = chunked ? nullptr : xp.data_ptr<scalar_t>();  // xp of step xp_t0 (chunked: its chunk)
    int64_t xp_t0 = 0;
    Tensor xp_chunk;
    scalar_t *pre_p = w_hr.defined() ? pre_proj.data_ptr<scalar_t>() : nullptr, *hh_buf_p = hh_buf.data_ptr<scalar_t>();
    scalar_t* h_rec_p = rec.defined() ? h_rec.data_ptr<scalar_t>() : nullptr;
    const scalar_t* rec_p = rec.defined() ? rec.data_ptr<scalar_t>() : nullptr;
    scalar_t* zcell_p = zc.on() ? zcell.data_ptr<scalar_t>() : nullptr;
    const scalar_t *h_prev_p = h0.data_ptr<scalar_t>(), *c_prev = c0.data_ptr<scalar_t>();
    int64_t h_step = -1;  // the step whose output h_prev_p points into (-1: h0)
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = reverse ? T_ - 1 - s : s, slot = save ? t : 0, cell_slot = save ? t : s % 2;
      if (chunked && s % C == 0) {  // the steps [xp_t0, xp_t0 + n) processed next
        const int64_t n = std::min(C, T_ - s);
        xp_t0 = reverse ? T_ - s - n : s;
        Tensor xp_rows = xp_buf.narrow(0, 0, n * B);
        xp_chunk = xp_of.into(xp_rows, x_c.narrow(0, xp_t0, n).view({n * B, x_c.size(2)}));
        xp_p = xp_chunk.data_ptr<scalar_t>();
      }
      const scalar_t* h_in = h_prev_p;
      if (rec_p != nullptr) {
        mul_into(h_rec_p, h_prev_p, rec_p, B * W);
        h_in = h_rec_p;
      }
      const scalar_t* hh_p = hh_buf_p;
      Tensor hh;
      if (hh_of.is_small()) {
        hh_of.small_raw<scalar_t>(h_in, B, nullptr, hh_buf_p);
      } else {
        hh = hh_of.into(hh_buf, rec_p != nullptr ? h_rec : (h_step < 0 ? h0 : out.select(0, h_step)));
        hh_p = hh.data_ptr<scalar_t>();
      }
      scalar_t* out_t_p = out_p + t * B * W;
      scalar_t* h_p = w_hr.defined() ? pre_p + slot * B * H : out_t_p;
      // Zoneout of this step: keep values, the zoned cell and the new one.
      const Keep<scalar_t> kh = zh.step<scalar_t>(t), kc = zc.step<scalar_t>(t);
      const scalar_t* c_new_p = rows.cell + cell_slot * B * H;
      scalar_t* zc_p = zc.on() ? zcell_p + cell_slot * B * H : nullptr;
      at::parallel_for(0, B, row_grain(H), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          forward_row<scalar_t>(p, xp_p + ((t - xp_t0) * B + b) * 4 * H, hh_p + b * 4 * H, c_prev + b * H,
                                rows.row(slot, cell_slot, b, read_out_p + b * 2 * H,
                                         scale_p == nullptr ? scalar_t(1) : scale_p[t * B + b]),
                                h_p + b * H);
          if (zc_p != nullptr) zone_blend_into(zc_p + b * H, c_new_p + b * H, c_prev + b * H, kc.at(b * H), H);
          if (zh.on() && !w_hr.defined()) zone_blend(h_p + b * H, h_prev_p + b * W, kh.at(b * W), W);
        }
      });
      if (w_hr.defined()) {
        Tensor out_t = out.select(0, t);
        proj.out(out_t, pre_proj.select(0, slot));
      }
      if (zh.on() && w_hr.defined()) zone_blend(out_t_p, h_prev_p, kh, B * W);
      h_prev_p = out_t_p;
      h_step = t;
      c_prev = zc.on() ? zc_p : c_new_p;
    }
  });
  // The final state: the last step's output and (zoned) cell.
  const int64_t last = reverse ? 0 : T_ - 1, last_cell = save ? last : (T_ - 1) % 2;
  const Tensor h = T_ == 0 ? h0 : out.select(0, last);
  const Tensor c = T_ == 0 ? c0 : (zc.on() ? zcell : buf.cell).select(0, last_cell);
  std::vector<Tensor> result{out, h.clone(), c.clone(), keep_xp ? xp : at::empty({0}, opts), pre_proj};
  if (!save) return result;
  for (const Tensor& t : buf.list()) result.push_back(t);
  if (zc.on()) result.push_back(zcell);  // read by the backward as saved[8]
  return result;
}

// Returns the gradients of lstm_ln_forward's tensor arguments, in their order: x (xp without weight_ih),
// weight_ih, gain_ih, shift, h0, c0, weight_hh, gain_hh, cell_weight, cell_bias, weight_hr (empty where the
// argument was not given). `xp_saved` is what the forward kept of xp (the forward's x without weight_ih),
// `saved` the per-step buffers (forward run with save = true).
std::vector<Tensor> lstm_ln_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn,
                                     const Tensor& x_in, const std::optional<Tensor>& weight_ih,
                                     const Tensor& xp_saved, const std::optional<Tensor>& gain_ih,
                                     const std::optional<Tensor>& shift, const Tensor& h0, const Tensor& c0_in,
                                     const Tensor& weight_hh, const Tensor& gain_hh, const Tensor& cell_weight,
                                     const std::optional<Tensor>& cell_bias, const std::optional<Tensor>& weight_hr,
                                     const Tensor& out, const Tensor& pre_proj, at::TensorList saved, double eps,
                                     bool reverse, c10::string_view normalization,
                                     const std::optional<Tensor>& rec_mask, const std::optional<Tensor>& zone_h,
                                     const std::optional<Tensor>& zone_c) {
  bool scaled = false;
  const Norm norm = checked_norm(normalization, gain_ih, &scaled);
  const Tensor w_ih = contiguous_or_undefined(weight_ih), c0 = c0_in.contiguous();
  const bool projected = w_ih.defined();
  const Tensor x = projected ? x_in.contiguous() : Tensor();
  // "scaled": the input's magnitude per row (recomputed) and, per chunk, the gradient it receives.
  const Tensor in_scale = scaled ? input_scale(x) : Tensor();
  const Tensor xp = projected ? xp_saved : x_in.contiguous();  // empty unless separate when projected
  const bool recompute = projected && norm == Norm::kSeparate && xp.numel() == 0;
  const Tensor w_hr = contiguous_or_undefined(weight_hr);
  const Buffers buf(saved.vec());
  const int64_t T_ = out.size(0), B = out.size(1), H = weight_hh.size(0) / 4;
  const auto opts = out.options();
  const int64_t K = chunk_steps(T_, B);
  // Recurrent dropout and zoneout: the masks, the zoned cells the forward kept, dL/dh_t of the zoned hidden
  // state (two slots alternating: the later step's is carried past its zoneout) and the rows' cell carry.
  const int64_t W = out.size(-1);
  const Tensor rec = recurrent_mask(rec_mask, B, W, opts);
  const Zone zh(zone_h, T_, B, W), zc(zone_c, T_, B, H);
  const Tensor zcell = zc.on() ? saved[8] : Tensor();
  Tensor d_state = at::empty({zh.on() ? 2 : 0, B, W}, opts), c_carry = at::empty({zc.on() ? B : 0, H}, opts);
  // Gradients of xp (all steps when xp was given, else a chunk at a time, two chunks alternating so that the
  // step after a chunk still reads the last dL/d(W_hh h)), and of W_hh h (joint: the same buffer).
  Tensor grad_xp = projected ? workspace({2, K, B, 4, H}, opts) : workspace({T_, B, 4, H}, opts);
  Tensor grad_hh = norm == Norm::kJoint ? grad_xp : workspace({2, K, B, 4, H}, opts);
  Tensor grad_x = projected ? at::empty({T_, B, x.size(2)}, opts) : grad_xp;
  Tensor grad_w_ih = projected ? at::zeros_like(w_ih) : at::empty({0}, opts);
  Tensor grad_w_hh = at::zeros_like(weight_hh);
  Tensor grad_h = workspace({w_hr.defined() ? T_ : 1, B, out.size(-1)}, opts);
  Tensor dm = at::empty({B, H}, opts);
  Tensor dc = grad_cn.contiguous().clone();
  Tensor acc4 = at::zeros({3, B, 4 * H}, opts), acc1 = at::zeros({2, B, H}, opts);
  Tensor scratch = at::empty({B, 7 * H}, opts);
  Tensor d_scale = at::empty({scaled ? K : 0, B}, opts);
  const Linear dh_of(weight_hh.t(), B), dm_of(w_hr.defined() ? w_hr.t() : Tensor(), B);
  const Linear dx_of(projected ? w_ih.t() : Tensor(), K * B), xp_of(recompute ? w_ih : Tensor(), K * B);
  // dL/d(W_hh h) of the step processed just before this one (the next one in time order): its pointer, and
  // its chunk buffer and index there for the products that take tensors.
  Tensor later_chunk;
  int64_t later = -1, later_index = 0;
  auto dhh_later_of = [&] { return later_chunk[later_index].view({B, 4 * H}); };
  const LayerNormParams lnp{contiguous_or_undefined(gain_ih), contiguous_or_zeros(shift, {4, H}, opts),
                            gain_hh.contiguous(), cell_weight.contiguous(), contiguous_or_zeros(cell_bias, {H}, opts)};
  // Steps [a, b) of chunk k, in time order; chunks are processed from the last step backward (or the first).
  const int64_t chunks = (T_ + K - 1) / K;
  auto chunk_range = [&](int64_t k) {
    const int64_t a = reverse ? k * K : std::max<int64_t>(0, T_ - (k + 1) * K);
    const int64_t b = reverse ? std::min(T_, (k + 1) * K) : T_ - k * K;
    return std::make_pair(a, b);
  };
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lstm_ln_backward", [&] {
    const auto p = params<scalar_t>(lnp, H, eps, norm);
    const auto rows = buf.bases<scalar_t>();
    const scalar_t* scale_p = scaled ? in_scale.data_ptr<scalar_t>() : nullptr;
    scalar_t* d_scale_p = scaled ? d_scale.data_ptr<scalar_t>() : nullptr;
    scalar_t *acc4_p = acc4.data_ptr<scalar_t>(), *acc1_p = acc1.data_ptr<scalar_t>();
    scalar_t *dc_p = dc.data_ptr<scalar_t>(), *scratch_p = scratch.data_ptr<scalar_t>();
    // The step loop reads raw pointers: dL/dh rows, the output gradient, the cells.
    scalar_t* grad_h_p = grad_h.data_ptr<scalar_t>();
    // The output gradient, read through go_p by the small products only: in place where a row's values are
    // contiguous or one broadcast value (an expanded gradient), else a pooled copy.
    Tensor go = grad_out;
    if (dh_of.is_small() && go.stride(2) > 1) go = workspace(grad_out.sizes(), opts).copy_(grad_out);
    const scalar_t *go_p = dh_of.is_small() ? go.data_ptr<scalar_t>() : nullptr, *c0_p = c0.data_ptr<scalar_t>();
    const scalar_t* cell_p = (zc.on() ? zcell : buf.cell).data_ptr<scalar_t>();
    const scalar_t* dhh_later_p = nullptr;
    for (int64_t k = 0; k < chunks; ++k) {
      int64_t a, b;
      std::tie(a, b) = chunk_range(k);
      // This chunk's gradient buffers, indexed by step - a.
      Tensor gxp = projected ? grad_xp[k % 2].narrow(0, 0, b - a) : grad_xp.narrow(0, a, b - a);
      Tensor ghh = norm == Norm::kJoint ? gxp : grad_hh[k % 2].narrow(0, 0, b - a);
      // xp of the chunk's steps (separate only), indexed by step - a.
      Tensor xp_chunk;
      if (recompute) {
        Tensor xp_rows = workspace({(b - a) * B, 4 * H}, opts);  // pooled: no fresh pages per chunk
        xp_chunk = xp_of.into(xp_rows, x.narrow(0, a, b - a).reshape({(b - a) * B, x.size(2)}));
      } else if (norm == Norm::kSeparate) {
        xp_chunk = xp.narrow(0, a, b - a);
      }
      const scalar_t* xp_p = xp_chunk.defined() ? xp_chunk.data_ptr<scalar_t>() : nullptr;
      scalar_t *gxp_base = gxp.data_ptr<scalar_t>(), *ghh_base = ghh.data_ptr<scalar_t>();
      if (scaled) d_scale.zero_();
      for (int64_t i = 0; i < b - a; ++i) {
        const int64_t t = reverse ? a + i : b - 1 - i, earlier = reverse ? t + 1 : t - 1;
        scalar_t* dh_p = grad_h_p + (w_hr.defined() ? t : 0) * B * W;
        if (later >= 0 && !zh.on() && !rec.defined() && dh_of.is_small()) {
          dh_of.small_raw<scalar_t>(dhh_later_p, B, go_p + t * go.stride(0), dh_p, go.stride(1), go.stride(2));
        } else {
          Tensor dh = grad_h[w_hr.defined() ? t : 0];
          const Tensor dhh_later = later < 0 ? Tensor() : dhh_later_of();
          if (zh.on() || rec.defined()) {
            // dL/dh_t of the state: the output's, the later step's W_hh (m h_t) and, with zoneout, its carry.
            const int64_t done = reverse ? t : T_ - 1 - t;  // steps processed before this one
            Tensor ds = zh.on() ? d_state[done % 2] : dh;
            if (later < 0) {
              at::add_out(ds, grad_out[t], grad_hn);
            } else if (rec.defined()) {
              at::addcmul_out(ds, grad_out[t], dh_of(dhh_later), rec);
            } else {
              dh_of.add_out(ds, grad_out[t], dhh_later);
            }
            if (zh.on()) {
              const scalar_t* ds_later = later < 0 ? nullptr : d_state[(done + 1) % 2].data_ptr<scalar_t>();
              zone_split(ds.data_ptr<scalar_t>(), ds_later, zh.step<scalar_t>(later < 0 ? t : later),
                         zh.step<scalar_t>(t), dh_p, B * W);
            }
          } else if (later < 0) {
            at::add_out(dh, grad_out[t], grad_hn);
          } else {
            dh_of.add_out(dh, grad_out[t], dhh_later);
          }
        }
        if (w_hr.defined()) dm_of.out(dm, grad_h[t]);
        const scalar_t* dm_p = w_hr.defined() ? dm.data_ptr<scalar_t>() : dh_p;
        const bool first = earlier < 0 || earlier >= T_;
        const scalar_t* c_prev = first ? c0_p : cell_p + earlier * B * H;
        const Keep<scalar_t> kc = zc.step<scalar_t>(t);
        const scalar_t* f_now = rows.act + t * B * 4 * H + H;
        scalar_t* carry_p = zc.on() ? c_carry.data_ptr<scalar_t>() : nullptr;
        // With the cell's zoneout the forget gate is applied after the row (zone_carry_out), not before.
        const scalar_t* f_next = later < 0 || zc.on() ? nullptr : rows.act + later * B * 4 * H + H;
        scalar_t *gxp_p = gxp_base + (t - a) * B * 4 * H, *ghh_p = ghh_base + (t - a) * B * 4 * H;
        at::parallel_for(0, B, row_grain(H), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const Acc<scalar_t> acc{acc4_p + r * 4 * H, acc4_p + (B + r) * 4 * H, acc4_p + (2 * B + r) * 4 * H,
                                    acc1_p + r * H, acc1_p + (B + r) * H};
            scalar_t* row_scratch = scratch_p + r * 7 * H;
            if (carry_p != nullptr) zone_carry_in(dc_p + r * H, kc.at(r * H), carry_p + r * H, H);
            backward_row<scalar_t>(p, dm_p + r * H, xp_p == nullptr ? nullptr : xp_p + ((t - a) * B + r) * 4 * H,
                                   c_prev + r * H, f_next == nullptr ? nullptr : f_next + r * 4 * H,
                                   rows.row(t, t, r, row_scratch + 5 * H, scaled ? scale_p[t * B + r] : scalar_t(1),
                                            scaled ? d_scale_p + (t - a) * B + r : nullptr),
                                   dc_p + r * H,
                                   gxp_p + r * 4 * H, ghh_p + r * 4 * H, acc, row_scratch);
            if (carry_p != nullptr) zone_carry_out(dc_p + r * H, f_now + r * 4 * H, carry_p + r * H, H);
          }
        });
        dhh_later_p = ghh_p;
        later_chunk = ghh;
        later_index = t - a;
        later = t;
      }
      // Weight gradients of the chunk: dW_hh += dhh^T h_{t-1}, and with the projection dx and dW_ih.
      const int64_t rows = (b - a) * B;
      add_transposed_product(grad_w_hh, ghh.reshape({rows, 4 * H}),
                             masked_rows(previous_states(out, h0, a, b, reverse), rec));
      if (projected) {
        const Tensor gxp_rows = gxp.reshape({rows, 4 * H});
        Tensor dx = grad_x.narrow(0, a, b - a).view({rows, x.size(2)});
        dx_of.out(dx, gxp_rows);
        const Tensor x_rows = x.narrow(0, a, b - a).reshape({rows, x.size(2)});
        add_transposed_product(grad_w_ih, gxp_rows, x_rows);
        // d mean|x| / dx = sign(x) / F.
        if (scaled) dx.addcmul_(x_rows.sign(), d_scale.narrow(0, 0, b - a).reshape({rows, 1}), 1.0 / x.size(2));
      }
    }
  });
  Tensor grad_h0 = dh_of(later < 0 ? Tensor() : dhh_later_of());
  Tensor grad_c0 = dc * buf.act[later].view({B, 4, H}).select(1, 1);
  // Recurrent dropout: W_hh read m h0; zoneout: h0 and c0 also reach the first step's zoned states directly.
  if (rec.defined()) grad_h0.mul_(rec);
  if (zh.on()) grad_h0.addcmul_(d_state[(T_ - 1) % 2], zh.at_step(later, opts));
  if (zc.on()) grad_c0 = dc;
  Tensor grad_w_hr = w_hr.defined() ? at::mm(grad_h.view({T_ * B, grad_h.size(-1)}).t(), pre_proj.reshape({T_ * B, H}))
                                    : at::empty({0}, opts);
  Tensor acc4_sum = acc4.sum(1).view({3, 4, H}), acc1_sum = acc1.sum(1);
  Tensor grad_gain_ih = norm == Norm::kSeparate ? acc4_sum[0] : at::empty({0}, opts);
  if (!projected) grad_x = grad_xp;
  return {grad_x,      grad_w_ih,   grad_gain_ih, acc4_sum[1], grad_h0,  grad_c0,
          grad_w_hh,   acc4_sum[2], acc1_sum[0],  acc1_sum[1], grad_w_hr};
}

}  // namespace

TORCH_LIBRARY(rnn_stability, m) {
  m.def(
      "lstm_ln_forward(Tensor x, Tensor? weight_ih, Tensor? gain_ih, Tensor? shift, Tensor h0, Tensor c0, "
      "Tensor weight_hh, Tensor gain_hh, Tensor cell_weight, Tensor? cell_bias, Tensor? weight_hr, float eps, "
      "bool reverse, bool save, str normalization, Tensor? rec_mask=None, Tensor? zone_h=None, "
      "Tensor? zone_c=None) -> Tensor[]");
  m.def(
      "lstm_ln_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor? weight_ih, "
      "Tensor xp_saved, Tensor? gain_ih, Tensor? shift, Tensor h0, Tensor c0, Tensor weight_hh, Tensor gain_hh, "
      "Tensor cell_weight, Tensor? cell_bias, Tensor? weight_hr, Tensor out, Tensor pre_proj, Tensor[] saved, "
      "float eps, bool reverse, str normalization, Tensor? rec_mask=None, Tensor? zone_h=None, "
      "Tensor? zone_c=None) -> Tensor[]");
  m.def("empty_cache() -> ()", &empty_cache);
  m.def("workspace_bytes() -> int", &workspace_bytes);
}

TORCH_LIBRARY_IMPL(rnn_stability, CPU, m) {
  m.impl("lstm_ln_forward", &lstm_ln_forward);
  m.impl("lstm_ln_backward", &lstm_ln_backward);
}
