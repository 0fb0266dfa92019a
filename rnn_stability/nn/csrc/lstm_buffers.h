// Per-step buffers and parameters of the C++ layer-normalised LSTM loop (lstm_layer_norm.cpp).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "lstm_rows.h"
#include "workspace.h"

namespace rnn_stability {

using at::Tensor;

// Per-step buffers, (slots, B, ...) each. With save == false a step reuses slot 0 (cells alternate between two
// slots, as a step reads the previous step's cell).
struct Buffers {
  Tensor x_mean, x_rstd, normed, rstd, act, cell, cell_mean, cell_rstd;

  Buffers(int64_t slots, int64_t cell_slots, int64_t B, int64_t H, bool separate, const at::TensorOptions& opts)
      : x_mean(workspace({separate ? slots : 0, B, 4}, opts)),
        x_rstd(workspace({separate ? slots : 0, B, 4}, opts)),
        normed(workspace({slots, B, 4 * H}, opts)),
        rstd(workspace({slots, B, 4}, opts)),
        act(workspace({slots, B, 4 * H}, opts)),
        cell(workspace({cell_slots, B, H}, opts)),
        cell_mean(workspace({slots, B}, opts)),
        cell_rstd(workspace({slots, B}, opts)) {}

  explicit Buffers(const std::vector<Tensor>& t)
      : x_mean(t[0]), x_rstd(t[1]), normed(t[2]), rstd(t[3]), act(t[4]), cell(t[5]), cell_mean(t[6]),
        cell_rstd(t[7]) {}

  std::vector<Tensor> list() const { return {x_mean, x_rstd, normed, rstd, act, cell, cell_mean, cell_rstd}; }

  // Base pointers of the buffers (taken once per call: Row construction then needs no tensor access).
  template <typename T>
  struct Bases {
    T *x_mean, *x_rstd, *normed, *rstd, *act, *cell, *cell_mean, *cell_rstd;
    int64_t B, H;

    // Row b of a slot; its cell read-out goes to `read_out` (2H scratch values of the row).
    Row<T> row(int64_t slot, int64_t cell_slot, int64_t b, T* read_out, T in_scale = 1, T* d_scale = nullptr) const {
      const int64_t s = slot * B + b;
      return Row<T>{x_mean == nullptr ? nullptr : x_mean + s * 4,
                    x_rstd == nullptr ? nullptr : x_rstd + s * 4,
                    normed + s * 4 * H,
                    rstd + s * 4,
                    act + s * 4 * H,
                    cell + (cell_slot * B + b) * H,
                    cell_mean + s,
                    cell_rstd + s,
                    read_out,
                    read_out + H,
                    in_scale,
                    d_scale};
    }
  };

  template <typename T>
  Bases<T> bases() const {
    auto ptr = [](const Tensor& x) { return x.numel() > 0 ? x.data_ptr<T>() : nullptr; };
    return Bases<T>{ptr(x_mean),    ptr(x_rstd),    ptr(normed),    ptr(rstd),    ptr(act),
                    ptr(cell),      ptr(cell_mean), ptr(cell_rstd), act.size(1), cell.size(2)};
  }
};

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

}  // namespace rnn_stability
