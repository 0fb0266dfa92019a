// Bernoulli masks of the regularisers (rnn_stability/nn/regularization.py `_bernoulli`) on CPU.
//
// A mask value compares 16 random bits with a threshold q: `hit` if bits < q (probability q / 2^16), else 0.
// The bits are the 16-bit lanes of the SplitMix64 stream (Steele, Lea & Flood 2014, "Fast Splittable
// Pseudorandom Number Generators"; the generator Vigna's xoshiro family is seeded with) started at `seed`:
// word i is mix(seed + (i + 1) gamma), value j is lane j % 4 of word j / 4 (little-endian, as a view of the
// words as int16 would read them). The seed is one draw of torch's generator, so `seed_everything` still
// reproduces the masks. Every word depends only on its index, so blocks of words are drawn in parallel and
// the loop vectorises (64-bit multiplies: AVX-512DQ); torch's CPU `random_` (mt19937) took 2.5 ns per
// 64-bit word, a zoneout mask of 100 x 32 x 256 values 0.5 ms, plus a comparison pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace {

using at::Tensor;

constexpr int64_t kBlockWords = 256;  // words drawn into a stack buffer before their lanes are compared

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Values [begin, end) of the mask (begin a multiple of 4 kBlockWords).
template <typename T>
void draw_block(T* out, int64_t begin, int64_t end, uint64_t seed, uint16_t threshold, T hit) {
  constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;
  uint64_t words[kBlockWords];
  const uint16_t* lanes = reinterpret_cast<const uint16_t*>(words);
  for (int64_t start = begin; start < end; start += 4 * kBlockWords) {
    const int64_t n = std::min<int64_t>(4 * kBlockWords, end - start), first = start / 4;
    const int64_t count = (n + 3) / 4;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) words[i] = splitmix64(seed + uint64_t(first + i + 1) * kGamma);
    T* o = out + start;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) o[j] = lanes[j] < threshold ? hit : T(0);
  }
}

// A mask of n values (1-D, `dtype`: bool, float or double): `hit` with probability threshold / 2^16, else 0.
Tensor bernoulli_mask(int64_t n, int64_t threshold, double hit, int64_t seed, at::ScalarType dtype) {
  TORCH_CHECK(n >= 0 && threshold >= 0 && threshold <= 65536, "bernoulli_mask: n >= 0, 0 <= threshold <= 2^16");
  Tensor out = at::empty({n}, at::TensorOptions().dtype(dtype));
  if (threshold == 65536) return out.fill_(hit);  // every value hits (the comparison has 16 bits)
  const uint64_t s = static_cast<uint64_t>(seed);
  const auto t = static_cast<uint16_t>(threshold);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBool, dtype, "bernoulli_mask", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto h = static_cast<scalar_t>(hit);
    at::parallel_for(0, (n + 4 * kBlockWords - 1) / (4 * kBlockWords), 16, [&](int64_t b0, int64_t b1) {
      draw_block<scalar_t>(o, b0 * 4 * kBlockWords, std::min(n, b1 * 4 * kBlockWords), s, t, h);
    });
  });
  return out;
}

}  // namespace

// A factory with no tensor argument: one kernel for every dispatch key (the mask is made on CPU).
TORCH_LIBRARY_FRAGMENT(rnn_stability, m) {
  m.def("bernoulli_mask(int n, int threshold, float hit, int seed, ScalarType dtype) -> Tensor", &bernoulli_mask);
}
