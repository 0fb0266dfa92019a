// Buffer pool of the C++ LSTM kernel (see rnn_stability/nn/native.py).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cstdint>
#include <mutex>
#include <vector>

namespace rnn_stability {

using at::Tensor;

// Reusable buffers for the large per-step tensors. On CPU every fresh multi-megabyte allocation is fresh
// pages from the OS, and faulting them in cost more than the arithmetic of the whole loop; the pool hands out
// views of blocks that nothing else references any more (storage use count 1), like a caching allocator.
// Blocks not in use beyond kMaxFreeBytes are released; empty_cache() releases all of them.
// A block made under torch.inference_mode() is an inference tensor, and so is every view of it: autograd
// refuses to save one for backward. Such a block is therefore only handed out again under inference mode; a
// normal block serves both (Lightning validates under inference mode, which would otherwise grow a second pool).
class Workspace {
 public:
  static Workspace& get() {
    static Workspace instance;
    return instance;
  }

  Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
    const int64_t n = c10::multiply_integers(sizes);
    const bool inference = c10::InferenceMode::is_enabled();
    std::lock_guard<std::mutex> guard(mutex_);
    Tensor* best = nullptr;
    for (Tensor& block : blocks_) {
      if (free(block) && (inference || !block.is_inference()) && block.device() == opts.device() &&
          block.scalar_type() == opts.dtype().toScalarType() && block.numel() >= n &&
          block.numel() <= 2 * n + 4096 && (best == nullptr || block.numel() < best->numel())) {
        best = &block;
      }
    }
    if (best == nullptr) {
      blocks_.push_back(at::empty({n}, opts));
      best = &blocks_.back();
      Tensor view = best->narrow(0, 0, n).view(sizes);
      trim(kMaxFreeBytes);
      return view;
    }
    return best->narrow(0, 0, n).view(sizes);
  }

  void release_unused() {
    std::lock_guard<std::mutex> guard(mutex_);
    trim(0);
  }

  int64_t nbytes() {
    std::lock_guard<std::mutex> guard(mutex_);
    int64_t total = 0;
    for (const Tensor& block : blocks_) total += block.nbytes();
    return total;
  }

 private:
  static constexpr int64_t kMaxFreeBytes = int64_t(1) << 30;

  static bool free(const Tensor& block) { return block.storage().use_count() == 1; }

  // Drop free blocks, oldest first, until at most max_bytes of them are kept.
  void trim(int64_t max_bytes) {
    int64_t free_bytes = 0;
    for (const Tensor& block : blocks_) free_bytes += free(block) ? block.nbytes() : 0;
    for (auto it = blocks_.begin(); it != blocks_.end() && free_bytes > max_bytes;) {
      if (free(*it)) {
        free_bytes -= it->nbytes();
        it = blocks_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::mutex mutex_;
  std::vector<Tensor> blocks_;
};

inline Tensor workspace(at::IntArrayRef sizes, const at::TensorOptions& opts) { return Workspace::get().empty(sizes, opts); }

inline void empty_cache() { Workspace::get().release_unused(); }

inline int64_t workspace_bytes() { return Workspace::get().nbytes(); }

}  // namespace rnn_stability
