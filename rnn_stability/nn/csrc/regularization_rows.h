// Recurrent dropout and zoneout in the C++ time loops (lstm_layer_norm.cpp, gru_layer_norm.cpp).
//
// Recurrent dropout: variational dropout (Gal & Ghahramani 2016, "A Theoretically Grounded Application of
// Dropout in Recurrent Neural Networks") on h_{t-1} where it enters W_hh: one (B, W) inverted-dropout mask m
// per sequence and layer / direction, shared by the gates and the steps, so the product is W_hh (m * h_{t-1});
// the GRU's update z h_{t-1} keeps the unmasked state (Keras's recurrent_dropout).
// Zoneout (Krueger et al. 2017, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations"): the
// state after a step is s_t = s_new + k (s_{t-1} - s_new), k a 0/1 keep mask drawn per step in training and
// the probability p in eval (the expectation). Both are the formulas of rnn_stability/nn/recurrence.py's
// _layer_norm_loop, given the same masks.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace rnn_stability {

using at::Tensor;

// The keep values of one step's rows, from a 0/1 mask (bytes: a bool tensor) or one probability (eval's
// expectation): keep(j) is T(mask[j]) or p. Masks are drawn as bool (1 byte per value: a float mask costs a
// conversion pass after the draw and four times the memory; rnn_stability/nn/regularization.py keep_mask).
template <typename T>
struct Keep {
  const uint8_t* mask = nullptr;  // null: every value keeps p
  T p = T(0);

  // The keep values from row offset n on.
  Keep at(int64_t n) const { return {mask == nullptr ? nullptr : mask + n, p}; }
};

// Calls f(j, k_j) for j < n with k_j the keep value of j, as one vectorisable loop.
template <typename T, typename F>
inline void each_keep(const Keep<T>& k, int64_t n, F&& f) {
  if (k.mask != nullptr) {
    const uint8_t* m = k.mask;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) f(j, T(m[j]));
  } else {
    const T p = k.p;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) f(j, p);
  }
}

// Zoneout keep values of one state: (T, B, W) 0/1 masks, or one probability for every step.
struct Zone {
  Tensor mask;  // (T, B, W) bool; undefined with a probability or when off
  double p = 0.0;
  bool enabled = false;
  int64_t step_stride = 0;  // values between consecutive steps

  Zone() = default;

  // `given`: undefined / absent (off), a 0-dim tensor (the probability, eval) or (T, B, W) masks (bool, or
  // 0/1 values of any dtype, as tests inject them).
  Zone(const std::optional<Tensor>& given, int64_t T, int64_t B, int64_t W) {
    if (!given.has_value() || !given->defined()) return;
    enabled = true;
    if (given->dim() == 0) {
      p = given->item<double>();
      return;
    }
    TORCH_CHECK(given->dim() == 3 && given->size(0) == T && given->size(1) == B && given->size(2) == W,
                "rnn_stability: zoneout masks must be (T, B, W) = (", T, ", ", B, ", ", W, ") or a 0-dim p");
    mask = (given->scalar_type() == at::kBool ? *given : given->ne(0)).contiguous();
    step_stride = B * W;
  }

  bool on() const { return enabled; }

  // The (B, W) keep values of step t.
  template <typename T>
  Keep<T> step(int64_t t) const {
    if (!mask.defined()) return {nullptr, T(p)};
    return {reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()) + t * step_stride, T(0)};
  }

  // The (B, W) keep values of step t as a tensor (bool), or p as a 0-dim tensor of `opts`.
  Tensor at_step(int64_t t, const at::TensorOptions& opts) const {
    return mask.defined() ? mask[t] : at::scalar_tensor(p, opts);
  }
};

// y = y + k (old - y), in place (y holds the new state): the zoneout update of n values.
template <typename T>
inline void zone_blend(T* y, const T* old, const Keep<T>& k, int64_t n) {
  each_keep(k, n, [=](int64_t j, T kj) { y[j] += kj * (old[j] - y[j]); });
}

// y = a b (n values).
template <typename T>
inline void mul_into(T* y, const T* a, const T* b, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = a[j] * b[j];
}

// y += a b (n values).
template <typename T>
inline void add_product(T* y, const T* a, const T* b, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] += a[j] * b[j];
}

// y = new + k (old - new) into y.
template <typename T>
inline void zone_blend_into(T* y, const T* new_value, const T* old, const Keep<T>& k, int64_t n) {
  each_keep(k, n, [=](int64_t j, T kj) { y[j] = new_value[j] + kj * (old[j] - new_value[j]); });
}

// The LSTM cell's zoneout in the backward, around a row's backward_row (which reads dc as the gradient of the
// new cell and leaves there the gradient of the cell before its forget gate): dc holds dL/dc_t of the zoned
// cell on entry; zone_carry_in keeps k dc (the path to c_{t-1} past the step) in carry and leaves (1 - k) dc;
// after backward_row, zone_carry_out makes dc = carry + f dc, dL/dc_{t-1}.
template <typename T>
inline void zone_carry_in(T* dc, const Keep<T>& k, T* carry, int64_t n) {
  each_keep(k, n, [=](int64_t j, T kj) {
    carry[j] = kj * dc[j];
    dc[j] -= carry[j];
  });
}

template <typename T>
inline void zone_carry_out(T* dc, const T* f, const T* carry, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dc[j] = carry[j] + f[j] * dc[j];
}

// Backward of zone_blend for a state s (ds: dL/ds_t, to which the carry k_later ds_later of the later step's
// zoneout is added first when ds_later is given): dnew = (1 - k) ds, the gradient of the new value.
template <typename T>
inline void zone_split(T* ds, const T* ds_later, const Keep<T>& k_later, const Keep<T>& k, T* dnew, int64_t n) {
  if (ds_later != nullptr) each_keep(k_later, n, [=](int64_t j, T kj) { ds[j] += kj * ds_later[j]; });
  each_keep(k, n, [=](int64_t j, T kj) { dnew[j] = ds[j] - kj * ds[j]; });
}

// The recurrent-dropout mask (B, W), contiguous in the loop's dtype, or undefined.
inline Tensor recurrent_mask(const std::optional<Tensor>& given, int64_t B, int64_t W, const at::TensorOptions& opts) {
  if (!given.has_value() || !given->defined()) return Tensor();
  TORCH_CHECK(given->dim() == 2 && given->size(0) == B && given->size(1) == W,
              "rnn_stability: the recurrent-dropout mask must be (B, W) = (", B, ", ", W, ")");
  return given->to(opts.dtype()).contiguous();
}

// h_{t-1} of steps [a, b) as rows ((b - a) B, W), times the recurrent-dropout mask when there is one.
inline Tensor masked_rows(const Tensor& rows, const Tensor& mask) {
  if (!mask.defined()) return rows;
  const int64_t B = mask.size(0), W = mask.size(1);
  return (rows.view({rows.size(0) / B, B, W}) * mask).view({rows.size(0), W});
}

}  // namespace rnn_stability
