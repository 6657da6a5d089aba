#include "kernels/sparse/sparse_select.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace svdq::kernels {
namespace {

// Larger score -> larger key; NaN lowest.
uint32_t OrderKey(float s) {
  if (s != s) return 0;
  uint32_t b;
  std::memcpy(&b, &s, sizeof b);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// x's coordinates in basis [D, R]: out_r = sum_d basis[d][r] x_d, added in d order without fused
// multiply-adds (the kernels' query projection and landmark projection do the same).
void Project(const float* basis, int D, int R, const float* x, float* out) {
  for (int r = 0; r < R; ++r) {
    float s = 0;
    for (int d = 0; d < D; ++d) s = s + basis[static_cast<size_t>(d) * R + r] * x[d];
    out[r] = s;
  }
}

// max |x_i|, NaN skipped.
float AbsMax(const float* x, int n) {
  float mx = 0;
  for (int i = 0; i < n; ++i) mx = std::max(mx, std::fabs(x[i]));
  return mx;
}

// q8 = rint(x / s), clamped to +-127; 0 where that is NaN (a NaN x, or an infinite row's s), and
// everywhere for s = 0.
void QuantizeBy(const float* x, int n, float s, int8_t* q8) {
  for (int i = 0; i < n; ++i) {
    const float v = s > 0 ? std::nearbyint(x[i] / s) : 0.0f;
    q8[i] = v != v ? 0 : static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
  }
}

}  // namespace

Status CheckSparseSelect(const SparseSelectParams& p) {
  if (p.score == SparseScore::kLandmark && !p.basis && p.R != p.D)
    return Status::Invalid("sparse select: landmarks without a basis need R = D");
  if (!p.q || !p.coords || !p.scales || !p.chunks || !p.selected || !p.count)
    return Status::Invalid("sparse select: a pointer is null");
  if (p.B < 0 || p.KV < 1 || p.H < p.KV || p.H % p.KV != 0 || p.H / p.KV > 16)
    return Status::Invalid("sparse select: needs H a multiple of KV, at most 16 query heads per KV head");
  if (p.D < 1 || p.D > 256) return Status::Invalid("sparse select: needs 1 <= D <= 256");
  if (p.score == SparseScore::kLandmark && (p.R < 1 || p.R > 128 || p.R > p.D))
    return Status::Invalid("sparse select: needs 1 <= R <= min(D, 128)");
  if (p.S < 1 || p.S > kSparseMaxSubs || (p.score == SparseScore::kBound && p.S != 1) ||
      (p.score == SparseScore::kLandmark && p.S * p.R > 256))
    return Status::Invalid("sparse select: needs 1 <= S <= " + std::to_string(kSparseMaxSubs) +
                           " landmarks a chunk, S R <= 256 (the bound: S = 1)");
  if (p.max_chunks < 0 || p.max_chunks > kSparseMaxChunks || p.keep < 0)
    return Status::Invalid("sparse select: max_chunks must be in [0, " + std::to_string(kSparseMaxChunks) +
                           "] and keep >= 0");
  return Status::Ok();
}

float SparseQuantizeQuery(const float* qr, int R, int8_t* q8) {
  const float s = AbsMax(qr, R) / 127.0f;
  QuantizeBy(qr, R, s, q8);
  return s;
}

uint16_t SparseQuantizeLandmark(const float* x, int n, int8_t* q8) {
  float s = AbsMax(x, n) / 127.0f;
  s = s < 65504.0f ? s : 65504.0f;  // the largest finite fp16
  const uint16_t h = FloatToHalfBits(s);
  QuantizeBy(x, n, HalfBitsToFloat(h), q8);
  return h;
}

float SparseChunkScore(const int8_t* q8, const float* qscale, int G, int R, const int8_t* coords, float scale, int S) {
  float best = 0;
  for (int h = 0; h < G; ++h)
    for (int j = 0; j < S; ++j) {
      int32_t dot = 0;
      for (int r = 0; r < R; ++r) dot += static_cast<int32_t>(q8[h * R + r]) * static_cast<int32_t>(coords[j * R + r]);
      float s = static_cast<float>(dot) * qscale[h];
      s = s * scale;
      if ((h == 0 && j == 0) || OrderKey(s) > OrderKey(best)) best = s;
    }
  return best;
}

float SparseBoundScore(const int8_t* q8, const float* qscale, int G, int D, const int8_t* coords, float scale) {
  float best = 0;
  for (int h = 0; h < G; ++h) {
    int32_t sum = 0;
    for (int d = 0; d < D; ++d) {
      const int32_t q = q8[h * D + d];
      sum += std::max(q, 0) * coords[D + d] + std::min(q, 0) * coords[d];
    }
    float s = static_cast<float>(sum) * qscale[h];
    s = s * scale;
    if (h == 0 || OrderKey(s) > OrderKey(best)) best = s;
  }
  return best;
}

Status SparseSelectRef(const SparseSelectParams& p) {
  if (Status st = CheckSparseSelect(p); !st.ok()) return st;
  const int G = p.H / p.KV;
  std::vector<float> qr(static_cast<size_t>(G) * std::max(p.R, 1)), qscale(static_cast<size_t>(G));
  std::vector<int8_t> q8(static_cast<size_t>(G) * std::max(p.R, p.D));
  for (int b = 0; b < p.B; ++b) {
    const int n = p.chunks[b];
    if (n < 0 || n > p.max_chunks) return Status::Invalid("sparse select: a sequence's chunk count is outside [0, max_chunks]");
    for (int g = 0; g < p.KV; ++g) {
      const bool bound = p.score == SparseScore::kBound;
      const float* qg = p.q + (static_cast<size_t>(b) * p.H + g * G) * p.D;  // [G, D]
      if (!bound) {
        const float* basis = SparseBasisOf(p, b, g);
        for (int h = 0; h < G; ++h) {
          float* row = qr.data() + static_cast<size_t>(h) * p.R;
          if (basis) Project(basis, p.D, p.R, qg + static_cast<size_t>(h) * p.D, row);
          else std::copy_n(qg + static_cast<size_t>(h) * p.D, p.R, row);
        }
        for (int h = 0; h < G; ++h)
          qscale[h] = SparseQuantizeQuery(qr.data() + static_cast<size_t>(h) * p.R, p.R, q8.data() + static_cast<size_t>(h) * p.R);
      } else {
        for (int h = 0; h < G; ++h)
          qscale[h] = SparseQuantizeQuery(qg + static_cast<size_t>(h) * p.D, p.D, q8.data() + static_cast<size_t>(h) * p.D);
      }
      const size_t unit = static_cast<size_t>(b) * p.KV + g;
      const int W = SparseChunkWidth(p);
      std::vector<std::pair<uint32_t, int>> ranked;  // (key, chunk) of chunks 1 .. n-1
      for (int c = 1; c < n; ++c) {
        const int64_t at = SparseChunkRow(p, b, g, c);
        const int8_t* co = p.coords + at * W;
        const float scale = SparseScaleValue(p.scales[at]);
        const float score = bound ? SparseBoundScore(q8.data(), qscale.data(), G, p.D, co, scale)
                                  : SparseChunkScore(q8.data(), qscale.data(), G, p.R, co, scale, p.S);
        ranked.emplace_back(OrderKey(score), c);
      }
      const size_t take = std::min(ranked.size(), static_cast<size_t>(p.keep));
      std::partial_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(take), ranked.end(),
                        [](const auto& x, const auto& y) { return x.first != y.first ? x.first > y.first : x.second < y.second; });
      std::vector<int> ids;
      if (n > 0) ids.push_back(0);
      for (size_t i = 0; i < take; ++i) ids.push_back(ranked[i].second);
      std::sort(ids.begin(), ids.end());
      int32_t* out = p.selected + unit * (p.keep + 1);
      for (int i = 0; i < p.keep + 1; ++i) out[i] = i < static_cast<int>(ids.size()) ? ids[i] : -1;
      p.count[unit] = static_cast<int32_t>(ids.size());
    }
  }
  return Status::Ok();
}

void QuantizeLandmark(const float* sum, int D, int count, int8_t* coords, uint16_t* scale, const float* basis, int R,
                      int S) {
  // The slices' means (or their coordinates in the basis), quantized together (SparseQuantizeLandmark):
  // the landmark kernel's operations, mean = sum * (1 / count), x_r = sum_d basis[d][r] mean_d in d
  // order without fused multiply-adds, an fp16 scale, rint.
  const float inv = 1.0f / static_cast<float>(count);
  const int W = basis ? R : D;
  std::vector<float> mean(static_cast<size_t>(D)), x(static_cast<size_t>(S) * W);
  for (int j = 0; j < S; ++j) {
    for (int d = 0; d < D; ++d) mean[d] = sum[static_cast<size_t>(j) * D + d] * inv;
    if (basis) Project(basis, D, R, mean.data(), x.data() + static_cast<size_t>(j) * W);
    else std::copy(mean.begin(), mean.end(), x.begin() + static_cast<std::ptrdiff_t>(j) * W);
  }
  *scale = SparseQuantizeLandmark(x.data(), S * W, coords);
}

Status CheckSparseLandmarks(const SparseLandmarkParams& p) {
  if (p.rows < 0 || p.KV < 1 || p.D < 1 || p.D > 256 || p.P < 1 || p.k_stride < static_cast<int64_t>(p.KV) * p.D)
    return Status::Invalid("sparse landmarks: bad shape");
  if (p.basis ? p.R < 1 || p.R > 128 || p.R > p.D : p.R != 0 && p.R != p.D)
    return Status::Invalid("sparse landmarks: R must be 0 or D without a basis, and in [1, min(D, 128)] with one");
  if (p.S < 1 || p.S > kSparseMaxSubs || p.P % p.S != 0 || p.S * SparseLandmarkWidth(p) > 256)
    return Status::Invalid("sparse landmarks: S must divide the page, be at most " + std::to_string(kSparseMaxSubs) +
                           ", and hold at most 256 coordinates a page");
  if (p.rows > 0 && (!p.k || !p.block || !p.offset || !p.lanes || !p.acc || !p.coords || !p.scales))
    return Status::Invalid("sparse landmarks: a pointer is null");
  return Status::Ok();
}

Status SparseLandmarkAppendRef(const SparseLandmarkParams& p) {
  if (Status st = CheckSparseLandmarks(p); !st.ok()) return st;
  const int slice = p.P / p.S;
  for (int r = 0; r < p.rows; ++r) {
    const int64_t off = p.offset[r];
    if (off < 0 || off >= p.P) return Status::Invalid("sparse landmarks: an offset is outside the page");
    for (int g = 0; g < p.KV; ++g) {
      float* sums = p.acc + (p.lanes[r] * p.KV + g) * p.S * p.D;  // [S, D]
      float* acc = sums + (off / slice) * p.D;
      const uint16_t* k = p.k + r * p.k_stride + static_cast<int64_t>(g) * p.D;
      for (int d = 0; d < p.D; ++d) {
        uint32_t bits = static_cast<uint32_t>(k[d]) << 16;
        float x;
        std::memcpy(&x, &bits, sizeof x);
        acc[d] = (off % slice == 0 ? 0.0f : acc[d]) + x;
      }
      if (off == p.P - 1) {
        const int64_t row = p.block[r] * p.KV + g;
        const float* basis = p.basis ? p.basis + (p.lanes[r] * p.KV + g) * p.D * p.R : nullptr;
        QuantizeLandmark(sums, p.D, slice, p.coords + row * p.S * SparseLandmarkWidth(p), p.scales + row, basis, p.R,
                         p.S);
      }
    }
  }
  return Status::Ok();
}

}  // namespace svdq::kernels
