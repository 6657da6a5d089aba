// Test data for the SVDq codec: keys shaped like real pre-RoPE keys (a few dominant
// directions, outlier channels, a non-zero mean), RoPE tables, bf16 buffers.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/common/half.h"

namespace svdq::testing {

// [tokens, width] keys: mean + low-rank signal with decaying strength + small noise,
// with two channels scaled up (the outliers that hurt per-channel quantization).
inline std::vector<float> MakeKeys(int64_t tokens, int width, uint32_t seed, float noise = 0.05f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  const int rank = std::max(2, width / 8);
  std::vector<float> dirs(static_cast<size_t>(rank) * width), mean(width);
  for (auto& x : dirs) x = n01(rng);
  for (auto& x : mean) x = 0.5f * n01(rng);
  std::vector<float> k(static_cast<size_t>(tokens) * width);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < width; ++i) k[t * width + i] = mean[i] + noise * n01(rng);
    for (int r = 0; r < rank; ++r) {
      float a = n01(rng) * 3.f / (1.f + r);
      for (int i = 0; i < width; ++i) k[t * width + i] += a * dirs[r * width + i] / std::sqrt(float(width));
    }
    k[t * width + 1] *= 8.f;
    k[t * width + width / 2 + 3] *= 5.f;
  }
  return k;
}

// Rotate-half RoPE tables [positions, width], halves duplicated, like the model's.
inline void MakeRope(int positions, int width, double theta, std::vector<float>* cos_t, std::vector<float>* sin_t) {
  cos_t->resize(static_cast<size_t>(positions) * width);
  sin_t->resize(cos_t->size());
  for (int p = 0; p < positions; ++p) {
    for (int i = 0; i < width / 2; ++i) {
      double ang = p * std::pow(theta, -2.0 * i / width);
      for (int half : {0, width / 2}) {
        (*cos_t)[static_cast<size_t>(p) * width + i + half] = static_cast<float>(std::cos(ang));
        (*sin_t)[static_cast<size_t>(p) * width + i + half] = static_cast<float>(std::sin(ang));
      }
    }
  }
}

inline std::vector<uint16_t> RandomBf16(size_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, sd);
  std::vector<uint16_t> out(n);
  for (auto& x : out) x = kernels::FloatToBf16Bits(d(rng));
  return out;
}

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> out(n);
  for (auto& x : out) x = d(rng);
  return out;
}

inline double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * double(a[i] - b[i]);
    den += double(a[i]) * a[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace svdq::testing
