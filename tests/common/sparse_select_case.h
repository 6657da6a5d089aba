// Random inputs for the chunk selection op (kernels/sparse/sparse_select.h), shared by its CPU
// and GPU tests. `tie_levels` > 0 draws coordinates from that many constant rows, so that many
// chunks score exactly alike (ties must go to the lower chunk index). `bound`: Quest-style
// metadata (per-channel lo <= hi, 2 D bytes a chunk) instead of landmark coordinates.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "kernels/sparse/sparse_select.h"

namespace svdq::testing {

struct SparseCase {
  int B, H, KV, D, R, max_chunks, keep;
  bool bound = false;
  int S = 1;  // landmarks a chunk
  std::vector<float> q, basis;
  std::vector<uint16_t> scales;  // fp16 bits
  std::vector<int8_t> coords;
  std::vector<int32_t> chunks, selected, count;
  kernels::SparseSelectParams Params() {
    kernels::SparseSelectParams p;
    p.q = q.data();
    p.basis = basis.empty() ? nullptr : basis.data();  // empty: the identity (R = D)
    p.coords = coords.data();
    p.scales = scales.data();
    p.chunks = chunks.data();
    p.selected = selected.data();
    p.count = count.data();
    p.B = B, p.H = H, p.KV = KV, p.D = D, p.R = R, p.max_chunks = max_chunks, p.keep = keep;
    p.score = bound ? kernels::SparseScore::kBound : kernels::SparseScore::kLandmark;
    p.S = S;
    return p;
  }
};

inline SparseCase MakeSparseCase(int B, int H, int KV, int D, int R, int max_chunks, int keep,
                                 const std::vector<int32_t>& chunks, int tie_levels, uint32_t seed,
                                 bool bound = false, int subs = 1) {
  SparseCase c{B, H, KV, D, R, max_chunks, keep};
  c.bound = bound;
  c.S = subs;
  const int W = bound ? 2 * D : subs * R;
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  std::uniform_int_distribution<int> i8(-127, 127), level(0, tie_levels > 0 ? tie_levels - 1 : 0);
  c.q.resize(static_cast<size_t>(B) * H * D);
  for (float& x : c.q) x = n01(rng);
  c.basis.resize(static_cast<size_t>(KV) * D * R);
  for (float& x : c.basis) x = n01(rng) * 0.1f;
  const size_t units = static_cast<size_t>(B) * KV * max_chunks;
  c.coords.resize(units * W);
  c.scales.resize(units);
  std::vector<std::vector<int8_t>> rows(static_cast<size_t>(tie_levels > 0 ? tie_levels : 0), std::vector<int8_t>(W));
  for (auto& row : rows)
    for (auto& x : row) x = static_cast<int8_t>(i8(rng));
  for (size_t u = 0; u < units; ++u) {
    if (tie_levels > 0) {
      const auto& row = rows[static_cast<size_t>(level(rng))];
      for (int r = 0; r < W; ++r) c.coords[u * W + r] = row[r];
      c.scales[u] = kernels::FloatToHalfBits(0.01f);
    } else {
      for (int r = 0; r < W; ++r) c.coords[u * W + r] = static_cast<int8_t>(i8(rng));
      c.scales[u] = kernels::FloatToHalfBits(0.001f + 0.02f * std::abs(n01(rng)));
    }
    if (bound)  // lo <= hi per channel
      for (int d = 0; d < D; ++d) {
        int8_t& lo = c.coords[u * W + d];
        int8_t& hi = c.coords[u * W + D + d];
        if (lo > hi) std::swap(lo, hi);
      }
  }
  c.chunks = chunks;
  c.selected.assign(static_cast<size_t>(B) * KV * (keep + 1), -7);
  c.count.assign(static_cast<size_t>(B) * KV, -7);
  return c;
}

// The serving layout of a case (SparseSelectParams::table): chunk c of sequence b is row
// table[b * max_chunks + c] of a pool [rows, KV, W] whose rows are shuffled.
struct PooledCase {
  std::vector<int32_t> table;
  std::vector<int8_t> coords;
  std::vector<uint16_t> scales;
  void Apply(kernels::SparseSelectParams* p) {
    p->table = table.data();
    p->coords = coords.data();
    p->scales = scales.data();
  }
};

inline PooledCase Pool(const SparseCase& c, uint32_t seed) {
  const int W = c.bound ? 2 * c.D : c.S * c.R, rows = c.B * c.max_chunks;
  std::vector<int32_t> perm(static_cast<size_t>(rows));
  for (int i = 0; i < rows; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
  PooledCase out{perm, std::vector<int8_t>(static_cast<size_t>(rows) * c.KV * W),
                 std::vector<uint16_t>(static_cast<size_t>(rows) * c.KV)};
  for (int b = 0; b < c.B; ++b)
    for (int k = 0; k < c.max_chunks; ++k) {
      const int64_t row = perm[static_cast<size_t>(b) * c.max_chunks + k];
      for (int g = 0; g < c.KV; ++g) {
        const int64_t from = (static_cast<int64_t>(b) * c.KV + g) * c.max_chunks + k, to = row * c.KV + g;
        std::copy_n(c.coords.begin() + from * W, W, out.coords.begin() + to * W);
        out.scales[to] = c.scales[from];
      }
    }
  return out;
}

}  // namespace svdq::testing
