// Matrix products of the C++ RNN loops: oneDNN's packed-weight linear where it pays, a plain loop for small
// weights (where ATen's per-call cost exceeds the arithmetic), ATen's mm otherwise.
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
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <optional>
#include <string>

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

// y (M, N) = init + x (M, K) W^T with W^T given as wt (K, N), row by row (init null: zeros): no allocation
// and no dispatch, for weights of a few thousand values, where a step's product takes a microsecond or two.
// Blocks of up to 8 vectors of a row's outputs stay in registers over the K inputs (each output is still the
// sum over k in order, from its init).
template <typename T>
void small_product(const T* x, int64_t M, int64_t K, const T* wt, int64_t N, const T* init, T* y) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * K;
    T* yr = y + m * N;
    const T* ir = init == nullptr ? nullptr : init + m * N;
    int64_t n = 0;
    for (; n + 8 * V <= N; n += 8 * V) {
      Vec acc[8];
      for (int64_t u = 0; u < 8; ++u) acc[u] = ir != nullptr ? Vec::loadu(ir + n + u * V) : Vec(T(0));
      for (int64_t k = 0; k < K; ++k) {
        const Vec a(xr[k]);
        const T* w = wt + k * N + n;
        for (int64_t u = 0; u < 8; ++u) acc[u] = at::vec::fmadd(a, Vec::loadu(w + u * V), acc[u]);
      }
      for (int64_t u = 0; u < 8; ++u) acc[u].store(yr + n + u * V);
    }
    for (; n < N; n += V) {
      const int64_t c = std::min<int64_t>(V, N - n);
      Vec acc = ir != nullptr ? Vec::loadu(ir + n, c) : Vec(T(0));
      for (int64_t k = 0; k < K; ++k) acc = at::vec::fmadd(Vec(xr[k]), Vec::loadu(wt + k * N + n, c), acc);
      acc.store(yr + n, c);
    }
  }
}

// y = x W^T for a fixed weight W (N, K) and inputs of M rows, through oneDNN when `use_onednn` says so.
class Linear {
 public:
  Linear() = default;

  Linear(const Tensor& weight, int64_t rows) : weight_(weight) {
    if (!weight.defined()) return;
    const OneDnnOps& ops = OneDnnOps::get();
    onednn_ = use_onednn(weight, rows) && ops.linear && ops.linear_add && ops.reorder;
    // A batch of 1-3 rows (a matrix-vector product) also runs small_product: MKL's generic gemv on AMD CPUs
    // reaches a fraction of its bandwidth.
    small_ = !onednn_ && ((weight.numel() <= kSmall && rows <= kSmallRows) || rows < 4);
    if (small_) {
      weight_t_ = weight.t().contiguous();
    } else if (onednn_) {
      torch::jit::Stack stack{weight.contiguous(), c10::IValue(rows)};
      ops.reorder->callBoxed(stack);
      packed_ = stack[0].toTensor();
    } else {
      weight_t_ = weight.t();
    }
  }

  bool defined() const { return weight_.defined(); }

  // Whether the product runs small_product (raw pointers, no dispatch: see small_raw).
  bool is_small() const { return small_; }

  // y (M, N) = init + x (M, K) W^T on raw contiguous rows (init null: zeros); is_small() only.
  template <typename T>
  void small_raw(const T* x, int64_t M, const T* init, T* y) const {
    small_product<T>(x, M, weight_t_.size(0), weight_t_.data_ptr<T>(), weight_t_.size(1), init, y);
  }

  // Whether oneDNN beats MKL for (rows x K) times (K x N): float32 only, enough rows and a large enough weight.
  static bool use_onednn(const Tensor& weight, int64_t rows) {
    return weight.scalar_type() == at::kFloat && at::globalContext().userEnabledMkldnn() && rows >= 4 &&
           weight.size(0) * weight.size(1) >= 128 * 256;
  }

  // x W^T, a new tensor.
  Tensor operator()(const Tensor& x) const {
    if (small_) {
      Tensor y = at::empty({x.size(0), weight_.size(0)}, x.options());
      out(y, x);
      return y;
    }
    if (!onednn_) return at::mm(x, weight_t_);
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
    if (small_) {
      small(y, x, Tensor());
    } else if (!onednn_) {
      at::mm_out(y, x, weight_t_);
    } else {
      y.copy_((*this)(x));
    }
  }

  // y = other + x W^T into y.
  void add_out(Tensor& y, const Tensor& other, const Tensor& x) const {
    if (small_) {
      small(y, x, other.contiguous());
      return;
    }
    if (!onednn_) {
      at::addmm_out(y, other, x, weight_t_);
      return;
    }
    torch::jit::Stack stack{x.contiguous(), other.contiguous(), packed_, c10::IValue(), std::string("add")};
    OneDnnOps::get().linear_add->callBoxed(stack);
    y.copy_(stack[0].toTensor());
  }

 private:
  static constexpr int64_t kSmall = 64 * 256;  // weights up to 4H x H with H = 64
  static constexpr int64_t kSmallRows = 64;    // a step's batch; products over all steps go to ATen (MKL)

  void small(Tensor& y, const Tensor& x_in, const Tensor& init) const {
    const Tensor x = x_in.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_stability_small_product", [&] {
      small_product<scalar_t>(x.data_ptr<scalar_t>(), x.size(0), x.size(1), weight_t_.data_ptr<scalar_t>(),
                              weight_t_.size(1), init.defined() ? init.data_ptr<scalar_t>() : nullptr,
                              y.data_ptr<scalar_t>());
    });
  }

  Tensor weight_, weight_t_, packed_;
  bool onednn_ = false, small_ = false;
};

// acc += a^T b (a: (M, N), b: (M, K), acc: (N, K)): a weight gradient summed over M rows (steps times batch).
inline void add_transposed_product(Tensor& acc, const Tensor& a, const Tensor& b) {
  if (!Linear::use_onednn(acc, b.size(0)) || !OneDnnOps::get().linear) {
    acc.addmm_(a.t(), b);
    return;
  }
  // oneDNN's linear wants row-major operands: x = a^T (N, M), weight = b^T (K, M), unpacked (used once).
  // The transposed copies go to pooled buffers: fresh multi-megabyte ones cost page faults at every call.
  Tensor at_ = workspace({a.size(1), a.size(0)}, a.options()), bt = workspace({b.size(1), b.size(0)}, b.options());
  at_.copy_(a.t());
  bt.copy_(b.t());
  torch::jit::Stack stack{at_, bt, c10::IValue(), std::string("none"),
                          c10::List<std::optional<c10::Scalar>>(), c10::IValue()};
  OneDnnOps::get().linear->callBoxed(stack);
  acc.add_(stack[0].toTensor());
}

}  // namespace rnn_stability
