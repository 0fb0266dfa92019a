// The input projection x W^T of a layer with its gradients, through the products of the C++ loops (matmul.h:
// oneDNN's packed-weight linear for float32 products over many rows, our panel kernel otherwise).
//
// The batch_norm option normalises W_ih x over every step before the time loop, so the projection is computed
// outside the loop ops, in Python; there ATen's mm runs MKL, whose float32 path on AMD processors is 2-3x
// slower than oneDNN's (matmul.h). rnn_stability/nn/native_projection.py wraps these two ops in an autograd
// Function.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "matmul.h"

#include <vector>

namespace {

using at::Tensor;
using namespace rnn_stability;

// y = x W^T for x (N, in) and W (out, in).
Tensor projection_forward(const Tensor& x, const Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "projection_forward: x must be (N, in) and weight (out, in)");
  return Linear(weight.contiguous(), x.size(0))(x.contiguous());
}

// [dx = grad W (empty unless need_x), dW = grad^T x (empty unless need_weight)] for grad (N, out).
std::vector<Tensor> projection_backward(const Tensor& grad, const Tensor& x, const Tensor& weight, bool need_x,
                                        bool need_weight) {
  const Tensor g = grad.contiguous();
  Tensor dx = need_x ? Linear(weight.t().contiguous(), g.size(0))(g) : at::empty({0}, x.options());
  Tensor dw = need_weight ? at::zeros_like(weight) : at::empty({0}, weight.options());
  if (need_weight) add_transposed_product(dw, g, x.contiguous());
  return {dx, dw};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnn_stability, m) {
  m.def("projection_forward(Tensor x, Tensor weight) -> Tensor");
  m.def("projection_backward(Tensor grad, Tensor x, Tensor weight, bool need_x, bool need_weight) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnn_stability, CPU, m) {
  m.impl("projection_forward", &projection_forward);
  m.impl("projection_backward", &projection_backward);
}
