// The chunk selection's CPU reference (kernels/sparse/sparse_select_ref.cc) against a plain
// selection written apart from it: every chunk's score, then a full stable sort. Checked per
// sequence and KV head: chunk 0 (the sink) always first, min(chunks, keep + 1) ids ascending then
// -1, the chosen chunks are the best-scored (no unchosen chunk scores higher than a chosen one),
// ties go to the lower index; on random and tie-heavy inputs, awkward counts (0, 1, 2, keep,
// keep + 1, keep + 2, max_chunks), GQA 1 / 4 / 8 and widths 64 / 128.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <cmath>
#include <vector>

#include "kernels/sparse/sparse_select.h"
#include "kernels/common/half.h"
#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_ref.h"
#include "tests/common/sparse_select_case.h"
#include "tests/common/svdq_data.h"

using namespace svdq;

namespace {

// Landmark scales are fp16: their bits, as a float; -1 (an unwritten marker); the relative
// rounding of a scale (half an fp16 step, with room for fp32 against fp64 sums).
float Half(uint16_t h) { return kernels::HalfBitsToFloat(h); }
constexpr uint16_t kMinusOne = 0xBC00;
constexpr double kHalfStep = 6e-4;

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
          if (c.basis.empty()) s = c.q[(static_cast<size_t>(b) * c.H + g * G + h) * c.D + r];
          for (int d = 0; d < c.D && !c.basis.empty(); ++d)
            s = s + c.basis[(static_cast<size_t>(g) * c.D + d) * c.R + r] * c.q[(static_cast<size_t>(b) * c.H + g * G + h) * c.D + d];
          qr[static_cast<size_t>(h) * c.R + r] = s;
        }
      std::vector<int8_t> q8(qr.size());
      std::vector<float> qscale(static_cast<size_t>(G));
      for (int h = 0; h < G; ++h)
        qscale[h] = kernels::SparseQuantizeQuery(qr.data() + static_cast<size_t>(h) * c.R, c.R, q8.data() + static_cast<size_t>(h) * c.R);
      std::vector<float> score(static_cast<size_t>(n));
      const float* qg = c.q.data() + (static_cast<size_t>(b) * c.H + g * G) * c.D;
      std::vector<int8_t> qb(static_cast<size_t>(G) * c.D);  // the bound's quantized query rows
      std::vector<float> qbs(static_cast<size_t>(G));
      for (int h = 0; h < G; ++h) qbs[h] = kernels::SparseQuantizeQuery(qg + static_cast<size_t>(h) * c.D, c.D, qb.data() + static_cast<size_t>(h) * c.D);
      for (int k = 0; k < n; ++k) {
        const size_t at = unit * c.max_chunks + k;
        if (c.bound) {
          score[k] = kernels::SparseBoundScore(qb.data(), qbs.data(), G, c.D, c.coords.data() + at * 2 * c.D, Half(c.scales[at]));
          continue;
        }
        // With S landmarks a chunk: the best of the S one-landmark scores.
        for (int s = 0; s < c.S; ++s) {
          const float one = kernels::SparseChunkScore(q8.data(), qscale.data(), G, c.R,
                                                      c.coords.data() + (at * c.S + s) * c.R, Half(c.scales[at]));
          if (s == 0 || Rank(one) > Rank(score[k])) score[k] = one;
        }
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

// S landmarks a chunk (sub-chunk means): a chunk ranks by its best landmark, at S = 2, 4 and 8,
// ties included.
TEST(SparseSelectRef, SubChunkLandmarksRankAChunkByItsBest) {
  for (int S : {2, 4, 8})
    for (int gqa : {1, 8}) {
      auto c = svdq::testing::MakeSparseCase(5, 2 * gqa, 2, 128, 4, 60, 6, {0, 1, 7, 8, 60}, 0, 300u + S + gqa, false, S);
      CheckCase(c);
    }
  auto t = svdq::testing::MakeSparseCase(2, 8, 2, 64, 8, 50, 7, {50, 20}, /*tie_levels=*/2, 301u, false, 4);
  CheckCase(t);
  // A chunk whose one landmark matches the query wins over chunks whose landmarks are all
  // middling, though the mean of its landmarks is the lowest.
  auto d = svdq::testing::MakeSparseCase(1, 1, 1, 64, 4, 3, 1, {3}, 0, 302u, false, 4);
  d.basis.assign(64 * 4, 0.f);  // the first 4 channels
  for (int r = 0; r < 4; ++r) d.basis[r * 4 + r] = 1.f;
  std::fill(d.q.begin(), d.q.end(), 0.f);
  d.q[0] = 1.f;
  std::fill(d.scales.begin(), d.scales.end(), kernels::FloatToHalfBits(0.01f));
  std::fill(d.coords.begin(), d.coords.end(), 0);
  for (int s = 0; s < 4; ++s) d.coords[(1 * 4 + s) * 4] = 40;  // chunk 1: four landmarks at 40
  d.coords[(2 * 4 + 3) * 4] = 100;                             // chunk 2: one at 100, three at -50
  for (int s = 0; s < 3; ++s) d.coords[(2 * 4 + s) * 4] = -50;
  ASSERT_TRUE(kernels::SparseSelectRef(d.Params()).ok());
  EXPECT_EQ(d.selected, (std::vector<int32_t>{0, 2}));
  d.S = 1, d.R = 16;  // the same bytes read as one 16-coordinate landmark a chunk: chunk 1 wins
  d.basis.assign(64 * 16, 0.f);
  for (int r = 0; r < 16; ++r) d.basis[r * 16 + r] = 1.f;
  for (int r = 0; r < 16; r += 4) d.q[r] = 1.f;
  ASSERT_TRUE(kernels::SparseSelectRef(d.Params()).ok());
  EXPECT_EQ(d.selected, (std::vector<int32_t>{0, 1}));
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
    // The op scores the query as int8 (q8 * qs): the bound holds for that query, and equals the
    // max form sum_d max(q_d lo_d, q_d hi_d) exactly.
    std::vector<int8_t> q8(D);
    const float qs = kernels::SparseQuantizeQuery(q.data(), D, q8.data());
    const float bound = kernels::SparseBoundScore(q8.data(), &qs, 1, D, co.data(), scale);
    int max_form = 0;
    for (int d = 0; d < D; ++d) max_form += std::max(q8[d] * co[d], q8[d] * co[D + d]);
    EXPECT_EQ(bound, static_cast<float>(max_form) * qs * scale);
    for (int t = 0; t < T; ++t) {
      float dot = 0;
      for (int d = 0; d < D; ++d) dot += q8[d] * qs * k[t * D + d];
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
  for (int S : {0, 9}) {
    auto f = svdq::testing::MakeSparseCase(1, 4, 1, 64, 8, 8, 2, {8}, 0, 1u, false, 1);
    f.S = S;
    EXPECT_FALSE(kernels::SparseSelectRef(f.Params()).ok()) << "S " << S;
  }
  auto h = svdq::testing::MakeSparseCase(1, 4, 1, 128, 64, 8, 2, {8}, 0, 1u, false, 5);
  EXPECT_FALSE(kernels::SparseSelectRef(h.Params()).ok());  // 5 x 64 coordinates a chunk
  auto bound = svdq::testing::MakeSparseCase(1, 4, 1, 64, 0, 8, 2, {8}, 0, 1u, true);
  bound.S = 2;
  EXPECT_FALSE(kernels::SparseSelectRef(bound.Params()).ok());  // the bound has one landmark a chunk
}

// The serving layout (metadata rows through a page table) chooses exactly what the dense layout
// chooses, for landmarks at R = 16 and R = D = 128 (the identity basis of page landmarks) and for
// the bound.
TEST(SparseSelectRef, ThePageTableLayoutChoosesTheSame) {
  for (int R : {16, 128})
    for (bool bound : {false, true}) {
      auto c = svdq::testing::MakeSparseCase(3, 8, 2, 128, bound ? 0 : R, 300, 9, {300, 2, 150}, 0, 40u + R, bound);
      ASSERT_TRUE(kernels::SparseSelectRef(c.Params()).ok());
      auto pooled = svdq::testing::Pool(c, 41u);
      std::vector<int32_t> selected(c.selected.size(), -7), count(c.count.size(), -7);
      kernels::SparseSelectParams p = c.Params();
      pooled.Apply(&p);
      p.selected = selected.data();
      p.count = count.data();
      ASSERT_TRUE(kernels::SparseSelectRef(p).ok());
      EXPECT_EQ(selected, c.selected) << "R " << R << " bound " << bound;
      EXPECT_EQ(count, c.count);
    }
}

// Per-sequence bases (SparseSelectParams::basis_row): each sequence chooses exactly what it
// chooses alone with its basis row as the shared basis, in the serving layout; the rows matter
// (every sequence on row 0 chooses otherwise).
TEST(SparseSelectRef, PerSequenceBasesScoreEachSequenceInItsOwn) {
  const int R = 16, rows = 4;
  auto c = svdq::testing::MakeSparseCase(3, 8, 2, 64, R, 200, 9, {200, 3, 120}, 0, 61u);
  auto pooled = svdq::testing::Pool(c, 62u);
  std::vector<float> bases = svdq::testing::RandomFloats(static_cast<size_t>(rows) * c.KV * c.D * R, 63u, 0.1f);
  std::vector<int64_t> basis_row = {2, 0, 3};
  kernels::SparseSelectParams p = c.Params();
  pooled.Apply(&p);
  p.basis = bases.data();
  p.basis_row = basis_row.data();
  ASSERT_TRUE(kernels::SparseSelectRef(p).ok());
  const size_t per_seq = static_cast<size_t>(c.KV) * (c.keep + 1);
  for (int b = 0; b < c.B; ++b) {
    std::vector<int32_t> selected(per_seq, -7), count(static_cast<size_t>(c.KV), -7);
    kernels::SparseSelectParams one = p;
    one.B = 1;
    one.q = c.q.data() + static_cast<size_t>(b) * c.H * c.D;
    one.table = pooled.table.data() + static_cast<size_t>(b) * c.max_chunks;
    one.chunks = c.chunks.data() + b;
    one.basis = bases.data() + static_cast<size_t>(basis_row[b]) * c.KV * c.D * R;
    one.basis_row = nullptr;
    one.selected = selected.data();
    one.count = count.data();
    ASSERT_TRUE(kernels::SparseSelectRef(one).ok());
    EXPECT_TRUE(std::equal(selected.begin(), selected.end(), c.selected.begin() + b * per_seq)) << "sequence " << b;
    EXPECT_TRUE(std::equal(count.begin(), count.end(), c.count.begin() + b * c.KV)) << "sequence " << b;
  }
  std::vector<int32_t> shared(c.selected.size(), -7), shared_count(c.count.size(), -7);
  kernels::SparseSelectParams same = p;
  same.basis_row = nullptr;  // every sequence on row 0
  same.selected = shared.data();
  same.count = shared_count.data();
  ASSERT_TRUE(kernels::SparseSelectRef(same).ok());
  EXPECT_NE(shared, c.selected) << "the basis rows made no difference";
}

// Landmarks with the lanes' bases (rank R): two lanes filling pages with the same keys store each
// the mean's R coordinates in its own basis (within half a step), so they differ; the shapes the
// basis needs are checked.
TEST(SparseLandmarks, ABasisGivesTheMeansCoordinatesInTheLanesOwn) {
  const int KV = 2, D = 64, P = 4, R = 16, lanes = 2, blocks = 3;
  std::vector<float> bases = svdq::testing::RandomFloats(static_cast<size_t>(lanes) * KV * D * R, 71u, 0.2f);
  std::vector<float> acc(static_cast<size_t>(lanes) * KV * D, 0.f);
  std::vector<uint16_t> scales(static_cast<size_t>(blocks) * KV, kMinusOne);
  std::vector<int8_t> coords(static_cast<size_t>(blocks) * KV * R, 55);
  std::vector<uint16_t> keys = svdq::testing::RandomBf16(static_cast<size_t>(P) * KV * D, 72u, 2.f);
  std::vector<double> mean(static_cast<size_t>(KV) * D, 0.0);
  for (int t = 0; t < P; ++t)
    for (int i = 0; i < KV * D; ++i) mean[i] += static_cast<double>(kernels::Bf16BitsToFloat(keys[t * KV * D + i])) / P;
  for (int t = 0; t < P; ++t) {
    std::vector<uint16_t> k(keys.begin() + t * KV * D, keys.begin() + (t + 1) * KV * D);
    k.resize(2 * k.size());
    std::copy_n(k.begin(), KV * D, k.begin() + KV * D);  // both rows the same key
    std::vector<int64_t> block = {1, 2}, offset = {t, t}, lane = {0, 1};
    kernels::SparseLandmarkParams p;
    p.rows = 2, p.KV = KV, p.D = D, p.P = P, p.R = R, p.basis = bases.data();
    p.k = k.data(), p.k_stride = KV * D, p.block = block.data(), p.offset = offset.data(), p.lanes = lane.data();
    p.acc = acc.data(), p.coords = coords.data(), p.scales = scales.data();
    ASSERT_TRUE(kernels::SparseLandmarkAppendRef(p).ok());
  }
  for (int ln = 0; ln < lanes; ++ln)
    for (int g = 0; g < KV; ++g) {
      std::vector<double> x(R, 0.0);
      double mx = 0;
      for (int r = 0; r < R; ++r) {
        for (int d = 0; d < D; ++d) x[r] += bases[((static_cast<size_t>(ln) * KV + g) * D + d) * R + r] * mean[g * D + d];
        mx = std::max(mx, std::abs(x[r]));
      }
      const int64_t row = (1 + ln) * KV + g;
      EXPECT_NEAR(Half(scales[row]), mx / 127, kHalfStep * mx / 127);
      for (int r = 0; r < R; ++r)
        EXPECT_NEAR(coords[row * R + r] * Half(scales[row]), x[r], 0.5 * Half(scales[row]) + 1e-5 * mx) << ln << " " << g << " " << r;
    }
  EXPECT_FALSE(std::equal(coords.begin() + KV * R, coords.begin() + 2 * KV * R, coords.begin() + 2 * KV * R))
      << "the two lanes' bases made no difference";
  for (int i = 0; i < KV * R; ++i) EXPECT_EQ(coords[i], 55) << "block 0 was not written";
  kernels::SparseLandmarkParams bad;
  bad.KV = KV, bad.D = D, bad.P = P, bad.k_stride = KV * D;
  bad.R = 5;  // R must be D (or 0) without a basis
  EXPECT_FALSE(kernels::CheckSparseLandmarks(bad).ok());
  bad.basis = bases.data();
  for (int r : {0, D + 1, 129}) {
    bad.R = r;
    EXPECT_FALSE(kernels::CheckSparseLandmarks(bad).ok()) << r;
  }
  bad.R = R;
  EXPECT_TRUE(kernels::CheckSparseLandmarks(bad).ok());
}

// Page landmarks appended a token at a time: the page that completes holds the int8 mean of its
// keys (QuantizeLandmark of their sum), within half a step of the exact mean; pages that do not
// complete write nothing; lanes keep separate sums, and offset 0 restarts a lane.
TEST(SparseLandmarks, AppendedKeysGiveThePageMean) {
  const int KV = 2, D = 64, P = 4, lanes = 2, blocks = 3;
  std::mt19937 rng(3);
  std::normal_distribution<float> n01(0.f, 1.f);
  std::vector<float> acc(static_cast<size_t>(lanes) * KV * D, 99.f);
  std::vector<uint16_t> scales(static_cast<size_t>(blocks) * KV, kMinusOne);
  std::vector<int8_t> coords(static_cast<size_t>(blocks) * KV * D, 55);
  std::vector<double> exact(static_cast<size_t>(KV) * D, 0.0);  // lane 0's page, block 2
  for (int t = 0; t < P; ++t) {
    // Row 0: lane 0 fills block 2; row 1: lane 1 writes offset t of block 0, never completing
    // it (it stops at offset 2).
    std::vector<uint16_t> k(static_cast<size_t>(2) * KV * D);
    for (size_t i = 0; i < k.size(); ++i) {
      float x = 3.f * n01(rng);
      uint32_t bits;
      std::memcpy(&bits, &x, sizeof bits);
      k[i] = static_cast<uint16_t>(bits >> 16);  // truncated to bf16
      uint32_t back = static_cast<uint32_t>(k[i]) << 16;
      std::memcpy(&x, &back, sizeof x);
      if (i < static_cast<size_t>(KV) * D) exact[i] += x / P;
    }
    const int rows = t < 3 ? 2 : 1;
    std::vector<int64_t> block = {2, 0}, offset = {t, t}, lane = {0, 1};
    kernels::SparseLandmarkParams p;
    p.rows = rows, p.KV = KV, p.D = D, p.P = P;
    p.k = k.data(), p.k_stride = KV * D, p.block = block.data(), p.offset = offset.data(), p.lanes = lane.data();
    p.acc = acc.data(), p.coords = coords.data(), p.scales = scales.data();
    ASSERT_TRUE(kernels::SparseLandmarkAppendRef(p).ok());
  }
  for (int g = 0; g < KV; ++g) {
    const float s = Half(scales[2 * KV + g]);
    ASSERT_GT(s, 0.f);
    double mx = 0;
    for (int d = 0; d < D; ++d) mx = std::max(mx, std::abs(exact[g * D + d]));
    EXPECT_NEAR(s, mx / 127, kHalfStep * mx / 127);
    for (int d = 0; d < D; ++d)
      EXPECT_NEAR(coords[(2 * KV + g) * D + d] * s, exact[g * D + d], 0.5 * s + 1e-5 * mx) << g << " " << d;
  }
  for (int i = 0; i < KV * D; ++i) EXPECT_EQ(coords[i], 55) << "block 0 never completed";
  EXPECT_EQ(scales[0], kMinusOne);
  // A zero page: scale 0, coordinates 0.
  std::vector<uint16_t> zero(static_cast<size_t>(KV) * D, 0);
  for (int t = 0; t < P; ++t) {
    std::vector<int64_t> block = {1}, offset = {t}, lane = {1};
    kernels::SparseLandmarkParams p;
    p.rows = 1, p.KV = KV, p.D = D, p.P = P;
    p.k = zero.data(), p.k_stride = KV * D, p.block = block.data(), p.offset = offset.data(), p.lanes = lane.data();
    p.acc = acc.data(), p.coords = coords.data(), p.scales = scales.data();
    ASSERT_TRUE(kernels::SparseLandmarkAppendRef(p).ok());
  }
  EXPECT_EQ(Half(scales[KV]), 0.f);
  for (int d = 0; d < D; ++d) EXPECT_EQ(coords[KV * D + d], 0);
}

// S landmarks a page (SparseLandmarkParams::S): the page's S slices of P / S keys each give their
// means (or, with a basis, their coordinates) under one scale, max |x| / 127 over all of them, in
// slice order; a second lane that starts its page mid-way leaves the first's sums alone; an S
// that does not divide the page, or that holds more than 256 coordinates, is refused.
TEST(SparseLandmarks, SubChunkLandmarksHoldEachSlicesMeanUnderOneScale) {
  const int KV = 2, D = 64, P = 16, S = 4, L = P / S, lanes = 2, blocks = 2;
  for (int R : {0, 8}) {
    const int W = R > 0 ? R : D;
    std::vector<float> bases = svdq::testing::RandomFloats(static_cast<size_t>(lanes) * KV * D * std::max(R, 1), 81u, 0.2f);
    std::vector<float> acc(static_cast<size_t>(lanes) * KV * S * D, 5.f);
    std::vector<uint16_t> scales(static_cast<size_t>(blocks) * KV, kMinusOne);
    std::vector<int8_t> coords(static_cast<size_t>(blocks) * KV * S * W, 55);
    std::vector<uint16_t> keys = svdq::testing::RandomBf16(static_cast<size_t>(P) * KV * D, 82u + R, 2.f);
    for (int t = 0; t < P; ++t) {
      // Row 0: lane 0 fills block 1 from offset 0; row 1: lane 1 writes block 0 from offset 6 on,
      // never completing it.
      std::vector<uint16_t> k(keys.begin() + t * KV * D, keys.begin() + (t + 1) * KV * D);
      k.resize(2 * k.size());
      std::copy_n(k.begin(), KV * D, k.begin() + KV * D);  // both rows the same key
      const int rows = t + 6 < P - 1 ? 2 : 1;  // row 1 stops at offset 14
      std::vector<int64_t> block = {1, 0}, offset = {t, t + 6}, lane = {0, 1};
      kernels::SparseLandmarkParams p;
      p.rows = rows, p.KV = KV, p.D = D, p.P = P, p.S = S;
      if (R > 0) p.basis = bases.data(), p.R = R;
      p.k = k.data(), p.k_stride = KV * D, p.block = block.data(), p.offset = offset.data(), p.lanes = lane.data();
      p.acc = acc.data(), p.coords = coords.data(), p.scales = scales.data();
      ASSERT_TRUE(kernels::SparseLandmarkAppendRef(p).ok());
    }
    for (int g = 0; g < KV; ++g) {
      std::vector<double> x(static_cast<size_t>(S) * W, 0.0);
      double mx = 0;
      for (int s = 0; s < S; ++s) {
        std::vector<double> mean(D, 0.0);
        for (int t = s * L; t < (s + 1) * L; ++t)
          for (int d = 0; d < D; ++d) mean[d] += kernels::Bf16BitsToFloat(keys[(t * KV + g) * D + d]) / static_cast<double>(L);
        for (int c = 0; c < W; ++c) {
          double v = R > 0 ? 0.0 : mean[c];
          for (int d = 0; d < D && R > 0; ++d) v += bases[(static_cast<size_t>(g) * D + d) * R + c] * mean[d];
          x[s * W + c] = v;
          mx = std::max(mx, std::abs(v));
        }
      }
      const int64_t row = 1 * KV + g;
      EXPECT_NEAR(Half(scales[row]), mx / 127, kHalfStep * mx / 127) << "R " << R;
      for (int i = 0; i < S * W; ++i)
        EXPECT_NEAR(coords[row * S * W + i] * Half(scales[row]), x[i], 0.5 * Half(scales[row]) + 1e-5 * mx) << "R " << R << " " << i;
    }
    for (int i = 0; i < KV * S * W; ++i) ASSERT_EQ(coords[i], 55) << "block 0 never completed";
  }
  kernels::SparseLandmarkParams bad;
  bad.KV = KV, bad.D = D, bad.P = P, bad.k_stride = KV * D;
  for (int s : {0, 3, 32}) {
    bad.S = s;
    EXPECT_FALSE(kernels::CheckSparseLandmarks(bad).ok()) << s;
  }
  bad.S = 8;  // 8 x 64 coordinates
  EXPECT_FALSE(kernels::CheckSparseLandmarks(bad).ok());
  bad.S = 4;
  EXPECT_TRUE(kernels::CheckSparseLandmarks(bad).ok());
}

// Sparse SVDq attention in the reference (kernels/svdq/svdq_ref.cc): a KV head attends to its
// listed pages at their own positions, the recent pages and the tail, and to nothing else,
// checked against attention computed apart from it (pages decoded with SvdqDecodeRef, a plain
// softmax); listing every page before the recent ones gives the dense result bit for bit; an
// unsorted list or one reaching into the recent pages is refused.
TEST(SparseAttentionRef, AttendsToTheListedPagesAtTheirPositions) {
  using namespace svdq::kernels;
  const int W = 64, P = 16, KV = 2, G = 2, H = KV * G, pages = 10, tail = 5, recent = 8;
  Schedule sched;
  ASSERT_TRUE(ParseSchedule("8,4,2,1,1,0,0,0", &sched).ok());
  SvdqLayout l;
  ASSERT_TRUE(MakeLayout(W, P, sched, &l).ok());
  std::vector<float> means, bases;
  std::vector<uint8_t> pool(static_cast<size_t>(pages) * KV * l.page_bytes);
  for (int h = 0; h < KV; ++h) {
    auto keys = svdq::testing::MakeKeys(pages * P, W, 11 + h);
    SvdqBasis basis;
    ASSERT_TRUE(ComputeBasisRef(keys.data(), pages * P, W, true, &basis).ok());
    means.insert(means.end(), basis.mean.begin(), basis.mean.end());
    bases.insert(bases.end(), basis.vectors.begin(), basis.vectors.end());
    for (int pg = 0; pg < pages; ++pg) {
      SvdqEncodeParams e{l, 1, 1, &keys[static_cast<size_t>(pg) * P * W], &means[static_cast<size_t>(h) * W],
                         &bases[static_cast<size_t>(h) * W * W], &pool[(static_cast<size_t>(pg) * KV + h) * l.page_bytes], nullptr};
      ASSERT_TRUE(SvdqEncodeRef(e).ok());
    }
  }
  std::vector<float> cos_t, sin_t;
  svdq::testing::MakeRope(pages * P + P, W, 10000.0, &cos_t, &sin_t);
  auto values = svdq::testing::RandomBf16(static_cast<size_t>(pages) * KV * P * W, 2);
  auto tail_k = svdq::testing::RandomBf16(static_cast<size_t>(KV) * P * W, 3);
  auto tail_v = svdq::testing::RandomBf16(static_cast<size_t>(KV) * P * W, 4);
  auto q = svdq::testing::RandomBf16(static_cast<size_t>(H) * W, 5, 0.3f);
  std::vector<int32_t> table(pages), np = {pages}, tl = {tail};
  for (int i = 0; i < pages; ++i) table[i] = i;
  SvdqAttentionParams a;
  a.layout = l, a.batch = 1, a.num_heads = H, a.kv_heads = KV, a.max_pages = pages;
  a.sm_scale = 1.f / std::sqrt(float(W));
  a.q = q.data(), a.key_pages = pool.data(), a.value_pages = values.data(), a.page_table = table.data();
  a.num_pages = np.data(), a.mean = means.data(), a.basis = bases.data(), a.tail_keys = tail_k.data();
  a.tail_values = tail_v.data(), a.tail_len = tl.data(), a.rope_cos = cos_t.data(), a.rope_sin = sin_t.data();
  // Head 0 lists pages 0, 3 and 7; head 1 none (only its recent pages and tail).
  const int stride = 4;
  std::vector<int32_t> list = {0, 3, 7, -1, -1, -1, -1, -1}, count = {3, 0}, from = {recent};
  std::vector<float> sparse(static_cast<size_t>(H) * W);
  SvdqAttentionParams s = a;
  s.sparse_pages = list.data(), s.sparse_count = count.data(), s.sparse_recent = from.data(), s.sparse_stride = stride;
  s.out = sparse.data();
  ASSERT_TRUE(SvdqAttentionRef(s).ok());
  const std::vector<std::vector<int>> attended = {{0, 3, 7, 8, 9}, {8, 9}};
  for (int h = 0; h < KV; ++h) {
    std::vector<float> keys, vals;  // rows of the attended tokens
    for (int pg : attended[h]) {
      std::vector<float> dec(static_cast<size_t>(P) * W);
      const int32_t first_pos = pg * P;
      SvdqDecodeParams d{l, 1, 1, &pool[(static_cast<size_t>(pg) * KV + h) * l.page_bytes], &means[static_cast<size_t>(h) * W],
                         &bases[static_cast<size_t>(h) * W * W], &first_pos, cos_t.data(), sin_t.data(), dec.data()};
      ASSERT_TRUE(SvdqDecodeRef(d).ok());
      keys.insert(keys.end(), dec.begin(), dec.end());
      for (int t = 0; t < P * W; ++t) vals.push_back(Bf16BitsToFloat(values[((static_cast<size_t>(pg) * KV + h) * P) * W + t]));
    }
    for (int t = 0; t < tail * W; ++t) {
      keys.push_back(Bf16BitsToFloat(tail_k[static_cast<size_t>(h) * P * W + t]));
      vals.push_back(Bf16BitsToFloat(tail_v[static_cast<size_t>(h) * P * W + t]));
    }
    const size_t n = keys.size() / W;
    for (int g = 0; g < G; ++g) {
      const int head = h * G + g;
      std::vector<double> w(n);
      double mx = -1e300, sum = 0;
      for (size_t t = 0; t < n; ++t) {
        double dot = 0;
        for (int i = 0; i < W; ++i) dot += Bf16BitsToFloat(q[static_cast<size_t>(head) * W + i]) * double(keys[t * W + i]);
        w[t] = dot * a.sm_scale;
        mx = std::max(mx, w[t]);
      }
      for (auto& x : w) sum += (x = std::exp(x - mx));
      for (int i = 0; i < W; ++i) {
        double o = 0;
        for (size_t t = 0; t < n; ++t) o += w[t] * vals[t * W + i];
        EXPECT_NEAR(sparse[static_cast<size_t>(head) * W + i], o / sum, 1e-4 + 1e-4 * std::abs(o / sum)) << head << " " << i;
      }
    }
  }
  // Every page before the recent ones listed: the dense result exactly.
  std::vector<int32_t> all(static_cast<size_t>(KV) * recent), all_count = {recent, recent};
  for (int h = 0; h < KV; ++h)
    for (int i = 0; i < recent; ++i) all[static_cast<size_t>(h) * recent + i] = i;
  std::vector<float> dense(sparse.size()), full(sparse.size());
  a.out = dense.data();
  ASSERT_TRUE(SvdqAttentionRef(a).ok());
  SvdqAttentionParams f = s;
  f.sparse_pages = all.data(), f.sparse_count = all_count.data(), f.sparse_stride = recent, f.out = full.data();
  ASSERT_TRUE(SvdqAttentionRef(f).ok());
  EXPECT_EQ(full, dense);
  // Bad lists are refused.
  std::vector<int32_t> unsorted = {3, 0, 7, -1, -1, -1, -1, -1}, late = {0, 3, 8, -1, -1, -1, -1, -1};
  s.sparse_pages = unsorted.data();
  EXPECT_FALSE(SvdqAttentionRef(s).ok());
  s.sparse_pages = late.data();
  EXPECT_FALSE(SvdqAttentionRef(s).ok());
}

// Landmarks without a basis (page landmarks: R = D, the coordinates are the mean key itself).
TEST(SparseSelectRef, IdentityLandmarksScoreTheQueryItself) {
  for (int D : {64, 128}) {
    auto c = svdq::testing::MakeSparseCase(3, 8, 2, D, D, 200, 7, {200, 8, 1}, 0, 60u + D);
    c.basis.clear();
    CheckCase(c);
  }
  auto bad = svdq::testing::MakeSparseCase(1, 8, 2, 128, 16, 10, 3, {10}, 0, 61u);
  bad.basis.clear();
  EXPECT_FALSE(kernels::SparseSelectRef(bad.Params()).ok()) << "R < D needs a basis";
  auto wide = svdq::testing::MakeSparseCase(1, 8, 2, 256, 128, 10, 3, {10}, 0, 62u);
  EXPECT_TRUE(kernels::SparseSelectRef(wide.Params()).ok()) << "R = 128 is the largest width";
  auto wider = svdq::testing::MakeSparseCase(1, 8, 2, 256, 129, 10, 3, {10}, 0, 63u);
  EXPECT_FALSE(kernels::SparseSelectRef(wider.Params()).ok()) << "R = 129 is over the limit";
}

TEST(SparseSelectRef, QueryCoordinatesQuantizeToInt8WithinHalfAStep) {
  std::mt19937 rng(5);
  std::normal_distribution<float> n(0.f, 3.f);
  for (int R : {1, 8, 16, 72, 128}) {
    std::vector<float> q(R);
    for (auto& x : q) x = n(rng);
    float others = 0;
    for (float x : q) others = std::max(others, std::fabs(x));
    q[R / 2] = -others - 1;  // the largest magnitude, negative
    std::vector<int8_t> q8(R);
    const float s = kernels::SparseQuantizeQuery(q.data(), R, q8.data());
    float mx = 0;
    for (float x : q) mx = std::max(mx, std::fabs(x));
    EXPECT_FLOAT_EQ(s, mx / 127.f);
    EXPECT_EQ(q8[R / 2], -127) << "the largest magnitude takes the end of the range";
    for (int r = 0; r < R; ++r) EXPECT_LE(std::fabs(q8[r] * s - q[r]), 0.5f * s * (1 + 1e-5f)) << "R " << R << " r " << r;
  }
  std::vector<float> zero(16, 0.f);
  std::vector<int8_t> z8(16, 5);
  EXPECT_EQ(kernels::SparseQuantizeQuery(zero.data(), 16, z8.data()), 0.f);
  for (int8_t v : z8) EXPECT_EQ(v, 0);
}

TEST(SparseSelectRef, ALandmarkScoreIsTheIntegerDotTimesBothScales) {
  // Two query rows against one chunk: the score is the larger row's, exactly
  // float(sum q8 * coords) * qscale * scale, and close to the float dot product.
  const int R = 8;
  const std::vector<float> qr = {1.f, -2.f, 0.5f, 3.f, 0.f, 0.f, 1.f, -1.f,   // row 0
                                 -1.f, 2.f, -0.5f, -3.f, 0.f, 0.f, -1.f, 1.f};  // row 1 = -row 0
  std::vector<int8_t> q8(16);
  float qs[2];
  for (int h = 0; h < 2; ++h) qs[h] = kernels::SparseQuantizeQuery(qr.data() + 8 * h, R, q8.data() + 8 * h);
  const std::vector<int8_t> co = {10, -20, 4, 30, 7, -7, 0, -10};
  const float scale = 0.25f;
  int dot0 = 0;
  float exact0 = 0;
  for (int r = 0; r < R; ++r) dot0 += q8[r] * co[r], exact0 += qr[r] * co[r] * scale;
  ASSERT_GT(dot0, 0);  // row 0 scores positive, row 1 its negative: the max is row 0's
  const float got = kernels::SparseChunkScore(q8.data(), qs, 2, R, co.data(), scale);
  EXPECT_EQ(got, static_cast<float>(dot0) * qs[0] * scale);
  EXPECT_NEAR(got, exact0, 0.01f * std::fabs(exact0));
}

TEST(SparseSelectRef, NonFiniteQueriesQuantizeWithoutUndefinedCasts) {
  // A NaN coordinate quantizes to 0 (the rest of the row as without it); an infinite one makes the
  // row's scale infinite, every coordinate 0 and the row's scores NaN, which rank lowest.
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<float> q = {1.f, nan, -2.f, 0.5f};
  std::vector<int8_t> q8(4, 9);
  const float s = kernels::SparseQuantizeQuery(q.data(), 4, q8.data());
  EXPECT_EQ(s, 2.f / 127.f);
  EXPECT_EQ(q8[1], 0);
  EXPECT_EQ(q8[2], -127);
  q = {1.f, -inf, 3.f, 0.f};
  const float si = kernels::SparseQuantizeQuery(q.data(), 4, q8.data());
  EXPECT_EQ(si, inf);
  for (int8_t v : q8) EXPECT_EQ(v, 0);
  const std::vector<int8_t> co = {1, 2, 3, 4};
  EXPECT_TRUE(std::isnan(kernels::SparseChunkScore(q8.data(), &si, 1, 4, co.data(), 1.f)));
}
