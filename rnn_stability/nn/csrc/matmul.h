// Matrix products of the C++ RNN loops: oneDNN's packed-weight linear where it pays, ATen's mm otherwise.
//
// On CPU ATen's fp32 mm calls MKL, which on AMD processors runs a generic code path; oneDNN (what torch's own
// LSTM uses on CPU) packs the weight once into its blocked layout and runs its JIT kernels, 2-3x faster for the
// per-step products of a recurrent layer (B x H times H x 4H). Packing costs one pass over the weight per call
// of the loop, repaid after a step or two. oneDNN has no float64, and for tiny products (a few hidden units, or
// a batch of 1-3 rows) its fixed per-call cost exceeds MKL's, so those keep at::mm. torch.backends.mkldnn's
// `enabled` flag turns the oneDNN path off, as it does for torch's modules.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>

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

// y = x W^T for a fixed weight W (N, K) and inputs of M rows, through oneDNN when `use_onednn` says so.
class Linear {
 public:
  Linear() = default;

  Linear(const Tensor& weight, int64_t rows) : weight_(weight) {
    if (!weight.defined()) return;
    const OneDnnOps& ops = OneDnnOps::get();
    onednn_ = use_onednn(weight, rows) && ops.linear && ops.linear_add && ops.reorder;
    if (onednn_) {
      torch::jit::Stack stack{weight.contiguous(), c10::IValue(rows)};
      ops.reorder->callBoxed(stack);
      packed_ = stack[0].toTensor();
    } else {
      weight_t_ = weight.t();
    }
  }

  bool defined() const { return weight_.defined(); }

  // Whether oneDNN beats MKL for (rows x K) times (K x N): float32 only, enough rows and a large enough weight.
  static bool use_onednn(const Tensor& weight, int64_t rows) {
    return weight.scalar_type() == at::kFloat && at::globalContext().userEnabledMkldnn() && rows >= 4 &&
           weight.size(0) * weight.size(1) >= 128 * 256;
  }

  // x W^T, a new tensor.
  Tensor operator()(const Tensor& x) const {
    if (!onednn_) return at::mm(x, weight_t_);
    torch::jit::Stack stack{x.contiguous(), packed_, c10::IValue(), std::string("none"),
                            c10::List<std::optional<c10::Scalar>>(), c10::IValue()};
    OneDnnOps::get().linear->callBoxed(stack);
    return stack[0].toTensor();
  }

  // y = x W^T into y (contiguous (M, N)).
  void out(Tensor& y, const Tensor& x) const {
    if (!onednn_) {
      at::mm_out(y, x, weight_t_);
    } else {
      y.copy_((*this)(x));
    }
  }

  // y = other + x W^T into y.
  void add_out(Tensor& y, const Tensor& other, const Tensor& x) const {
    if (!onednn_) {
      at::addmm_out(y, other, x, weight_t_);
      return;
    }
    torch::jit::Stack stack{x.contiguous(), other.contiguous(), packed_, c10::IValue(), std::string("add")};
    OneDnnOps::get().linear_add->callBoxed(stack);
    y.copy_(stack[0].toTensor());
  }

 private:
  Tensor weight_, weight_t_, packed_;
  bool onednn_ = false;
};

// acc += a^T b (a: (M, N), b: (M, K), acc: (N, K)): a weight gradient summed over M rows (steps times batch).
inline void add_transposed_product(Tensor& acc, const Tensor& a, const Tensor& b) {
  if (!Linear::use_onednn(acc, b.size(0)) || !OneDnnOps::get().linear) {
    acc.addmm_(a.t(), b);
    return;
  }
  // oneDNN's linear wants row-major operands: x = a^T (N, M), weight = b^T (K, M), unpacked (used once).
  torch::jit::Stack stack{a.t().contiguous(), b.t().contiguous(), c10::IValue(), std::string("none"),
                          c10::List<std::optional<c10::Scalar>>(), c10::IValue()};
  OneDnnOps::get().linear->callBoxed(stack);
  acc.add_(stack[0].toTensor());
}

}  // namespace rnn_stability
