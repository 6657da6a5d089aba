// The chunk selection's CPU reference (kernels/sparse/sparse_select_ref.cc) against a plain
// selection written apart from it: every chunk's score, then a full stable sort. Checked per
// sequence and KV head: chunk 0 (the sink) always first, min(chunks, keep + 1) ids ascending then
// -1, the chosen chunks are the best-scored (no unchosen chunk scores higher than a chosen one),
// ties go to the lower index; on random and tie-heavy inputs, awkward counts (0, 1, 2, keep,
// keep + 1, keep + 2, max_chunks), GQA 1 / 4 / 8 and widths 64 / 128.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <cmath>
#include <vector>

#include "kernels/sparse/sparse_select.h"
#include "tests/common/sparse_select_case.h"

using namespace svdq;

namespace {

// The order the op ranks by: larger score first (as IEEE order, -0 below +0), ties to lower index.
int64_t Rank(float s) {
  uint32_t b;
  std::memcpy(&b, &s, sizeof b);
  return (b & 0x80000000u) ? -static_cast<int64_t>(b & 0x7fffffffu) - 1 : static_cast<int64_t>(b);
}

void CheckCase(svdq::testing::SparseCase& c) {
  ASSERT_TRUE(kernels::SparseSelectRef(c.Params()).ok());
  const int G = c.H / c.KV;
  for (int b = 0; b < c.B; ++b)
    for (int g = 0; g < c.KV; ++g) {
      const size_t unit = static_cast<size_t>(b) * c.KV + g;
      const int n = c.chunks[b];
      std::vector<float> qr(static_cast<size_t>(G) * c.R, 0.f);
      for (int h = 0; h < G; ++h)
        for (int r = 0; r < c.R; ++r) {
          float s = 0;
          for (int d = 0; d < c.D; ++d)
            s = s + c.basis[(static_cast<size_t>(g) * c.D + d) * c.R + r] * c.q[(static_cast<size_t>(b) * c.H + g * G + h) * c.D + d];
          qr[static_cast<size_t>(h) * c.R + r] = s;
        }
      std::vector<float> score(static_cast<size_t>(n));
      const float* qg = c.q.data() + (static_cast<size_t>(b) * c.H + g * G) * c.D;
      for (int k = 0; k < n; ++k) {
        const size_t at = unit * c.max_chunks + k;
        score[k] = c.bound ? kernels::SparseBoundScore(qg, G, c.D, c.coords.data() + at * 2 * c.D, c.scales[at])
                           : kernels::SparseChunkScore(qr.data(), G, c.R, c.coords.data() + at * c.R, c.scales[at]);
      }
      std::vector<int> order(static_cast<size_t>(std::max(0, n - 1)));
      std::iota(order.begin(), order.end(), 1);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return Rank(score[x]) > Rank(score[y]); });
      std::vector<int> want;
      if (n > 0) want.push_back(0);
      for (int i = 0; i < std::min<int>(c.keep, static_cast<int>(order.size())); ++i) want.push_back(order[i]);
      std::sort(want.begin(), want.end());
      const int32_t* got = c.selected.data() + unit * (c.keep + 1);
      ASSERT_EQ(c.count[unit], static_cast<int32_t>(want.size())) << "b " << b << " g " << g;
      for (int i = 0; i < c.keep + 1; ++i)
        EXPECT_EQ(got[i], i < static_cast<int>(want.size()) ? want[i] : -1) << "b " << b << " g " << g << " slot " << i;
    }
}

}  // namespace

TEST(SparseSelectRef, ChoosesTheBestChunksWithTheSinkAscending) {
  const int keep = 5;
  for (int gqa : {1, 4, 8})
    for (int D : {64, 128}) {
      auto c = svdq::testing::MakeSparseCase(7, 2 * gqa, 2, D, 16, 40, keep, {0, 1, 2, keep, keep + 1, keep + 2, 40},
                                       /*tie_levels=*/0, 1234u + gqa * 7 + D);
      CheckCase(c);
    }
}

TEST(SparseSelectRef, TheBoundChoosesTheBestChunks) {
  for (int gqa : {1, 4, 8})
    for (int D : {64, 128}) {
      auto c = svdq::testing::MakeSparseCase(5, 2 * gqa, 2, D, 0, 40, 5, {0, 1, 6, 7, 40}, 0, 77u + gqa + D, /*bound=*/true);
      CheckCase(c);
    }
  auto t = svdq::testing::MakeSparseCase(2, 8, 2, 64, 0, 50, 7, {50, 20}, /*tie_levels=*/2, 78u, /*bound=*/true);
  CheckCase(t);
}

TEST(SparseSelectRef, TheBoundIsAnUpperBoundOfEveryKeysScore) {
  // lo / hi from a chunk's keys, rounded outward: q . k <= the bound for every key of the chunk.
  std::mt19937 rng(3);
  std::normal_distribution<float> n01(0.f, 1.f);
  const int D = 64, T = 16;
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> k(T * D), q(D);
    for (float& x : k) x = 3.f * n01(rng);
    for (float& x : q) x = n01(rng);
    float amax = 0;
    for (float x : k) amax = std::max(amax, std::abs(x));
    const float scale = amax / 127.f;
    std::vector<int8_t> co(2 * D);
    for (int d = 0; d < D; ++d) {
      float lo = k[d], hi = k[d];
      for (int t = 1; t < T; ++t) lo = std::min(lo, k[t * D + d]), hi = std::max(hi, k[t * D + d]);
      co[d] = static_cast<int8_t>(std::max(-127.f, std::floor(lo / scale)));
      co[D + d] = static_cast<int8_t>(std::min(127.f, std::ceil(hi / scale)));
    }
    const float bound = kernels::SparseBoundScore(q.data(), 1, D, co.data(), scale);
    for (int t = 0; t < T; ++t) {
      float dot = 0;
      for (int d = 0; d < D; ++d) dot += q[d] * k[t * D + d];
      EXPECT_LE(dot, bound * (1 + 1e-5f) + 1e-5f) << "trial " << trial << " key " << t;
    }
  }
}

TEST(SparseSelectRef, TiesGoToTheLowerChunk) {
  // Three distinct coordinate rows: most chunks tie with many others.
  auto c = svdq::testing::MakeSparseCase(3, 8, 2, 128, 8, 64, 9, {64, 33, 10}, /*tie_levels=*/3, 99u);
  CheckCase(c);
  // Every chunk alike: the lowest-indexed ones are chosen.
  auto d = svdq::testing::MakeSparseCase(1, 4, 1, 64, 4, 20, 4, {20}, /*tie_levels=*/1, 5u);
  ASSERT_TRUE(kernels::SparseSelectRef(d.Params()).ok());
  EXPECT_EQ(std::vector<int32_t>(d.selected.begin(), d.selected.end()), (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

TEST(SparseSelectRef, RefusesBadShapes) {
  auto c = svdq::testing::MakeSparseCase(1, 6, 4, 64, 8, 8, 2, {8}, 0, 1u);
  EXPECT_FALSE(kernels::SparseSelectRef(c.Params()).ok());  // 6 query heads over 4 KV heads
  auto d = svdq::testing::MakeSparseCase(1, 4, 1, 64, 8, 8, 2, {9}, 0, 1u);
  EXPECT_FALSE(kernels::SparseSelectRef(d.Params()).ok());  // more chunks than max_chunks
  auto e = svdq::testing::MakeSparseCase(1, 4, 1, 64, 65, 8, 2, {8}, 0, 1u);
  EXPECT_FALSE(kernels::SparseSelectRef(e.Params()).ok());  // R > 64
}
