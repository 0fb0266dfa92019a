// Matrix products of the C++ RNN loops: our own register-blocked panels for the per-step products (a batch
// of rows times a weight), oneDNN's packed-weight linear for the products over many steps' rows.
//
// On CPU ATen's fp32 mm calls MKL, which on AMD processors runs a generic code path at under half of the FMA
// peak; oneDNN (what torch's own LSTM uses on CPU) packs the weight once into its blocked layout and runs its
// JIT kernels near the peak, but each call through ATen's operator costs several microseconds (dispatch,
// primitive cache lookup, a fresh output tensor), a third of a step's product at H = 128, B = 32, and it has no
// float64. A step's product therefore runs panel_gemm.h's kernel (the weight packed once per call of the loop,
// the product written into the loop's buffer): 1.2-1.6x oneDNN's speed for a batch of 1 to 128 rows, and twice
// MKL's in float64. Products over all steps at once (thousands of rows) go to oneDNN in float32.
// torch.backends.mkldnn's `enabled` flag turns the oneDNN path off (the panels then run everything).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>

#include "panel_gemm.h"
#include "workspace.h"

namespace rnn_stability {

using at::Tensor;

// The oneDNN linear operators of this torch build, if it has them (looked up once).
struct OneDnnOps {
  std::optional<c10::OperatorHandle> linear, linear_add, reorder;

  static const OneDnnOps& get() {
    static const OneDnnOps ops = [] {
      OneDnnOps o;
      auto& dispatcher = c10::Dispatcher::singleton();
      o.linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
      o.linear_add = dispatcher.findSchema({"mkldnn::_linear_pointwise", "binary"});
      o.reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
      return o;
    }();
    return ops;
  }
};

// y = x W^T for a fixed weight W (N, K) and inputs of M rows: the register-blocked panels of panel_gemm.h
// (W packed once, here), or oneDNN's linear for the products over many steps' rows.
class Linear {
 public:
  Linear() = default;

  Linear(const Tensor& weight, int64_t rows) : weight_(weight) {
    if (!weight.defined()) return;
    const OneDnnOps& ops = OneDnnOps::get();
    onednn_ = rows > kPanelRows && use_onednn(weight, rows) && ops.linear && ops.linear_add && ops.reorder;
    if (onednn_) {
      torch::jit::Stack stack{weight.contiguous(), c10::IValue(rows)};
      ops.reorder->callBoxed(stack);
      packed_ = stack[0].toTensor();
      return;
    }
    const int64_t N = weight.size(0), K = weight.size(1);
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "rnn_stability_pack_panels", [&] {
      packed_ = at::empty({packed_size<scalar_t>(N, K)}, weight.options());
      pack_panels<scalar_t>(weight.data_ptr<scalar_t>(), weight.stride(0), weight.stride(1), N, K,
                            packed_.data_ptr<scalar_t>());
    });
  }

  bool defined() const { return weight_.defined(); }

  // Whether the product runs the panels on raw pointers (then small_raw may be called; else oneDNN).
  bool is_small() const { return defined() && !onednn_; }

  // y (M, N) = init + x (M, K) W^T on raw contiguous rows of x and y (init null: zeros, else init[m][n] at
  // init[m ldi + n inci], by default contiguous rows; inci 0 broadcasts); is_small() only.
  template <typename T>
  void small_raw(const T* x, int64_t M, const T* init, T* y, int64_t ldi = -1, int64_t inci = 1) const {
    panel_product<T>(x, M, weight_.size(1), packed_.data_ptr<T>(), weight_.size(0), init, y, -1, 1, ldi, inci);
  }

  // Whether oneDNN beats MKL for (rows x K) times (K x N): float32 only, enough rows and a large enough weight.
  static bool use_onednn(const Tensor& weight, int64_t rows) {
    return weight.scalar_type() == at::kFloat && at::globalContext().userEnabledMkldnn() && rows >= 4 &&
           weight.size(0) * weight.size(1) >= 128 * 256;
  }

  // x W^T, a new tensor.
  Tensor operator()(const Tensor& x) const {
    if (!onednn_) {
      Tensor y = at::empty({x.size(0), weight_.size(0)}, x.options());
      out(y, x);
      return y;
    }
    torch::jit::Stack stack{x.contiguous(), packed_, c10::IValue(), std::string("none"),
                            c10::List<std::optional<c10::Scalar>>(), c10::IValue()};
    OneDnnOps::get().linear->callBoxed(stack);
    return stack[0].toTensor();
  }

  // x W^T into `buffer` (contiguous (M, N)) and returned, or a new tensor from oneDNN (saves a copy).
  Tensor into(Tensor& buffer, const Tensor& x) const {
    if (onednn_) return (*this)(x);
    out(buffer, x);
    return buffer;
  }

  // y = x W^T into y (contiguous (M, N)).
  void out(Tensor& y, const Tensor& x) const {
    if (!onednn_) {
      panels(y, x, Tensor());
    } else {
      y.copy_((*this)(x));
    }
  }

  // y = other + x W^T into y.
  void add_out(Tensor& y, const Tensor& other, const Tensor& x) const {
    if (!onednn_) {
      panels(y, x, other.contiguous());
      return;
    }
    torch::jit::Stack stack{x.contiguous(), other.contiguous(), packed_, c10::IValue(), std::string("add")};
    OneDnnOps::get().linear_add->callBoxed(stack);
    y.copy_(stack[0].toTensor());
  }

 private:
  // Up to a chunk of steps' rows (chunk_steps: about 1024) the panels run too: they write into the loop's
  // pooled buffers, where oneDNN's fresh output of a megabyte or two costs more in page faults than its 5-10%
  // faster arithmetic at that size saves. The products over all steps (thousands of rows) go to oneDNN.
  static constexpr int64_t kPanelRows = 1024;

  void panels(Tensor& y, const Tensor& x_in, const Tensor& init) const {
    const Tensor x = x_in.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_stability_panel_product", [&] {
      small_raw<scalar_t>(x.data_ptr<scalar_t>(), x.size(0), init.defined() ? init.data_ptr<scalar_t>() : nullptr,
                          y.data_ptr<scalar_t>());
    });
  }

  Tensor weight_, packed_;
  bool onednn_ = false;
};

// acc += a^T b (a: (M, N), b: (M, K), acc: (N, K)): a weight gradient summed over M rows (a chunk of steps
// times the batch). The panels take x = a^T and W = b^T packed straight from b's strides (a pooled buffer),
// and accumulate into acc in place: no product tensor. x is read in place (a column stride: each k step reads
// 6 neighbouring values of one row of a) where K < 512; for longer products those strided reads, one row of a
// (N values apart) per k, cost more than a transposed copy into a pooled buffer (up to 1.3x at H = 1024), and
// the copy is made. MKL, which ATen's addmm runs, reaches under half the FMA peak on AMD processors, and
// oneDNN's linear needs both operands transposed and returns a fresh (N, K) product to add.
inline void add_transposed_product(Tensor& acc, const Tensor& a, const Tensor& b) {
  if (!acc.is_contiguous()) {  // e.g. zeros_like of a transposed weight: accumulate in a contiguous copy
    Tensor dense = acc.contiguous();
    add_transposed_product(dense, a, b);
    acc.copy_(dense);
    return;
  }
  const int64_t M = a.size(0), N = a.size(1), K = b.size(1);
  const bool in_place = a.stride(1) == 1 && K < 512;
  Tensor a_t;
  if (!in_place) {
    a_t = workspace({N, M}, a.options());
    a_t.copy_(a.t());
  }
  AT_DISPATCH_FLOATING_TYPES(acc.scalar_type(), "rnn_stability_add_transposed_product", [&] {
    Tensor packed = workspace({packed_size<scalar_t>(K, M)}, b.options());
    pack_panels<scalar_t>(b.data_ptr<scalar_t>(), b.stride(1), b.stride(0), K, M, packed.data_ptr<scalar_t>());
    scalar_t* y = acc.data_ptr<scalar_t>();
    const scalar_t* x = in_place ? a.data_ptr<scalar_t>() : a_t.data_ptr<scalar_t>();
    panel_product<scalar_t>(x, N, M, packed.data_ptr<scalar_t>(), K, y, y, in_place ? 1 : M,
                            in_place ? a.stride(0) : 1);
  });
}

}  // namespace rnn_stability
