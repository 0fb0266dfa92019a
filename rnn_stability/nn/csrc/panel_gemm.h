// Register-blocked product y (M, N) = init + x (M, K) W^T of the C++ loops (a step's batch of M rows, a chunk
// of steps' rows, or a weight gradient, times a weight packed once per call), on raw pointers: no dispatch, no
// allocation, no per-call setup.
//
// A step's product (M = batch, K = H, N = 4H) is a few microseconds of arithmetic; oneDNN's linear adds a fixed
// cost of several microseconds per call (dispatch, primitive cache lookup, a fresh output tensor), MKL's generic
// AMD path runs at under half of the FMA peak, and float64 has no oneDNN at all. Here W^T is packed once per
// call of a loop into panels of P = 4 vectors of columns (AVX-512: 64 floats, 32 doubles; AVX2: 2 vectors):
// panel p holds the K x P values W^T[k][p P + j] contiguously (zero-padded past N), so one k step of a block
// reads 4 aligned vectors (the packed buffer comes from ATen's 64-byte aligned allocations; misaligned panels
// cost a third at K = 64).
// A block of up to 6 rows keeps 6 x 4 accumulators in registers (24 of AVX-512's 32, with the 4 weight vectors
// and a broadcast of x: 29) over all K; per k it issues 24 FMAs for 4 vector loads and 6 broadcasts, so it is
// bound by the FMA units, not by loads. The panel (K P values) is reused by all row blocks while it is in L1/L2.
// Each output is init plus the sum over k in order, whatever the blocking (the same bits for any batch split).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace rnn_stability {

// Vectors of columns per panel, and rows of a register block: 6 x 4 accumulators of AVX-512's 32 registers;
// with AVX2's 16, 6 x 2 (the classic 6 x 16 float kernel), as 6 x 4 would spill.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int64_t kPanelVecs = 4;
#else
constexpr int64_t kPanelVecs = 2;
#endif
constexpr int64_t kBlockRows = 6;

// Columns per panel for T.
template <typename T>
constexpr int64_t panel_width() {
  return kPanelVecs * at::vec::Vectorized<T>::size();
}

// Values of W (N, K) packed into panels: ceil(N / P) panels of K x P.
template <typename T>
inline int64_t packed_size(int64_t N, int64_t K) {
  constexpr int64_t P = panel_width<T>();
  return (N + P - 1) / P * K * P;
}

// Packs W (N, K), element (n, k) at w[n s0 + k s1] (a transposed weight too), into `out` (packed_size values).
// A panel row k holds W[n0 .. n0 + P)[k]: a contiguous copy where s0 is 1 (W^T given row-major, as the weight
// gradients' operands are), else tiles of 16 k, whose 16 panel rows stay in L1 while the panel's columns fill
// them.
template <typename T>
void pack_panels(const T* w, int64_t s0, int64_t s1, int64_t N, int64_t K, T* out) {
  constexpr int64_t P = panel_width<T>(), kTile = 16;
  for (int64_t n0 = 0; n0 < N; n0 += P) {
    T* panel = out + n0 / P * K * P;
    const int64_t width = std::min(P, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += kTile) {
      const int64_t k1 = std::min(K, k0 + kTile);
      if (s0 == 1) {
        for (int64_t k = k0; k < k1; ++k) std::copy(w + n0 + k * s1, w + n0 + k * s1 + width, panel + k * P);
      } else {
        for (int64_t j = 0; j < width; ++j) {
          const T* src = w + (n0 + j) * s0;
          for (int64_t k = k0; k < k1; ++k) panel[k * P + j] = src[k * s1];
        }
      }
      if (width < P) {
        for (int64_t k = k0; k < k1; ++k) std::fill(panel + k * P + width, panel + (k + 1) * P, T(0));
      }
    }
  }
}

// Rows [0, MR) of a block times one panel: y[m][0, width) = init[m][0, width) + sum_k x[m][k] panel[k][.]
// (x[m][k] at x[m ldx + k kx]; y's row stride ldy; init may be null: zeros, else init[m][n] is at
// init[m ldi + n inci] with inci 1, or 0 for a value broadcast along the row, as an expanded gradient's).
template <typename T, int MR>
inline void panel_block(const T* x, int64_t ldx, int64_t kx, int64_t K, const T* panel, const T* init,
                        int64_t ldi, int64_t inci, T* y, int64_t ldy, int64_t width) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size(), NR = kPanelVecs;
  const bool full = width == NR * V;
  Vec acc[MR][NR];
  for (int m = 0; m < MR; ++m) {
    for (int u = 0; u < NR; ++u) {
      const int64_t c = std::min<int64_t>(V, width - u * V);
      if (init == nullptr || c <= 0) {
        acc[m][u] = Vec(T(0));
      } else if (inci == 0) {
        acc[m][u] = Vec(init[m * ldi]);
      } else {
        acc[m][u] = full ? Vec::loadu(init + m * ldi + u * V) : Vec::loadu(init + m * ldi + u * V, c);
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* b = panel + k * NR * V;
    Vec w[NR];
    for (int u = 0; u < NR; ++u) w[u] = Vec::loadu(b + u * V);
    for (int m = 0; m < MR; ++m) {
      const Vec a(x[m * ldx + k * kx]);
      for (int u = 0; u < NR; ++u) acc[m][u] = at::vec::fmadd(a, w[u], acc[m][u]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int u = 0; u < NR; ++u) {
      const int64_t c = std::min<int64_t>(V, width - u * V);
      if (full) {
        acc[m][u].store(y + m * ldy + u * V);
      } else if (c > 0) {
        acc[m][u].store(y + m * ldy + u * V, c);
      }
    }
  }
}

// Rows of one block (1 to kBlockRows) times one panel.
template <typename T>
inline void panel_rows(int64_t rows, const T* x, int64_t ldx, int64_t kx, int64_t K, const T* panel, const T* init,
                       int64_t ldi, int64_t inci, T* y, int64_t ldy, int64_t width) {
  switch (rows) {
    case 1: return panel_block<T, 1>(x, ldx, kx, K, panel, init, ldi, inci, y, ldy, width);
    case 2: return panel_block<T, 2>(x, ldx, kx, K, panel, init, ldi, inci, y, ldy, width);
    case 3: return panel_block<T, 3>(x, ldx, kx, K, panel, init, ldi, inci, y, ldy, width);
    case 4: return panel_block<T, 4>(x, ldx, kx, K, panel, init, ldi, inci, y, ldy, width);
    case 5: return panel_block<T, 5>(x, ldx, kx, K, panel, init, ldi, inci, y, ldy, width);
    default: return panel_block<T, 6>(x, ldx, kx, K, panel, init, ldi, inci, y, ldy, width);
  }
}

// y (M, N) = init + x (M, K) W^T with W packed by pack_panels; y contiguous rows, init null (zeros) or
// init[m][n] at init[m ldi + n inci] (by default contiguous rows; inci 0 broadcasts a value per row), x[m][k]
// at x[m ldx + k kx] (by default contiguous rows; kx > 1 reads a transposed x in place). The M rows
// are split into blocks of near-equal size (32 rows: 6, 6, 5, 5, 5, 5), so that no block
// is a thin remainder. Panels are shared out among threads when the product is large enough to pay for it.
template <typename T>
void panel_product(const T* x, int64_t M, int64_t K, const T* packed, int64_t N, const T* init, T* y,
                   int64_t ldx = -1, int64_t kx = 1, int64_t ldi = -1, int64_t inci = 1) {
  if (ldx < 0) ldx = K;
  if (ldi < 0) ldi = N;
  constexpr int64_t P = panel_width<T>();
  if (M == 0 || N == 0) return;
  const int64_t panels = (N + P - 1) / P, blocks = (M + kBlockRows - 1) / kBlockRows;
  const int64_t base = M / blocks, extra = M % blocks;
  auto run = [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * P, width = std::min(P, N - n0);
      const T* panel = packed + p * K * P;
      int64_t m0 = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t rows = base + (blk < extra ? 1 : 0);
        panel_rows<T>(rows, x + m0 * ldx, ldx, kx, K, panel, init == nullptr ? nullptr : init + m0 * ldi + n0 * inci,
                      ldi, inci, y + m0 * N + n0, N, width);
        m0 += rows;
      }
    }
  };
  // A thread's share should be well above at::parallel_for's own cost (a few microseconds).
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, M * K * P));
  if (panels > grain) {
    at::parallel_for(0, panels, grain, run);
  } else {
    run(0, panels);
  }
}

}  // namespace rnn_stability
