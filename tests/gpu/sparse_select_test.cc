// The chunk selection kernel (kernels/sparse/sparse_select.cu) against its CPU reference: the same
// chunk ids and counts exactly (both score without fused multiply-add), outputs inside their
// bounds (guard bytes), on random and tie-heavy inputs, counts 0 / 1 / keep / keep + 1 / 2,047 /
// 8,192 (the limit), more chunks than the block has threads, GQA 1 / 4 / 8 / 16, widths 64 and 128,
// and keep 0 (the sink alone); landmark and bound (Quest) scores. Label gpu: skipped without CUDA.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/sparse/sparse_select.h"
#include "tests/common/device_buffer.h"
#include "tests/common/sparse_select_case.h"
#include "tests/common/svdq_data.h"

using namespace svdq;
using svdq::testing::DeviceBuffer;
using svdq::testing::HaveGpu;

namespace {

void Compare(svdq::testing::SparseCase c) {
  DeviceBuffer<float> q(c.q), basis(c.basis);
  DeviceBuffer<uint16_t> scales(c.scales);
  DeviceBuffer<int8_t> coords(c.coords);
  DeviceBuffer<int32_t> chunks(c.chunks), selected(c.selected), count(c.count);
  kernels::SparseSelectParams p = c.Params();
  p.q = q.ptr(), p.basis = c.basis.empty() ? nullptr : basis.ptr(), p.scales = scales.ptr(), p.coords = coords.ptr();
  p.chunks = chunks.ptr(), p.selected = selected.ptr(), p.count = count.ptr();
  kernels::Status st = kernels::SparseSelect(p, nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_TRUE(kernels::SparseSelectRef(c.Params()).ok());
  EXPECT_EQ(count.Download(), c.count);
  EXPECT_EQ(selected.Download(), c.selected);
  EXPECT_TRUE(selected.GuardsIntact() && count.GuardsIntact());
}

// The case in the serving layout (its metadata rows shuffled through a page table, Pool): the
// kernel's ids and counts against the reference's.
void ComparePooled(svdq::testing::SparseCase& c, uint32_t seed, const std::string& what) {
  auto pooled = svdq::testing::Pool(c, seed);
  kernels::SparseSelectParams ref = c.Params();
  pooled.Apply(&ref);
  ASSERT_TRUE(kernels::SparseSelectRef(ref).ok());
  DeviceBuffer<float> q(c.q), basis(c.basis);
  DeviceBuffer<uint16_t> scales(pooled.scales);
  DeviceBuffer<int8_t> coords(pooled.coords);
  DeviceBuffer<int32_t> table(pooled.table), chunks(c.chunks), selected(std::vector<int32_t>(c.selected.size(), -7)),
      count(std::vector<int32_t>(c.count.size(), -7));
  kernels::SparseSelectParams p = ref;
  p.q = q.ptr(), p.basis = basis.ptr(), p.scales = scales.ptr(), p.coords = coords.ptr(), p.table = table.ptr();
  p.chunks = chunks.ptr(), p.selected = selected.ptr(), p.count = count.ptr();
  kernels::Status st = kernels::SparseSelect(p, nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(selected.Download(), c.selected) << what;
  EXPECT_EQ(count.Download(), c.count) << what;
}

}  // namespace

TEST(SparseSelectGpu, MatchesTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int gqa : {1, 4, 8, 16})
    for (int D : {64, 128})
      Compare(svdq::testing::MakeSparseCase(6, 2 * gqa, 2, D, 16, 2047, 31, {0, 1, 31, 32, 700, 2047}, 0, 17u * gqa + D));
  // The 128k-token shape: 2,048 chunks of 64 tokens, 32 kept, 8 query heads per KV head.
  Compare(svdq::testing::MakeSparseCase(4, 32, 8, 128, 16, 2048, 32, {2048, 2048, 1500, 100}, 0, 3u));
  // The limit, and keep 0.
  Compare(svdq::testing::MakeSparseCase(1, 8, 1, 128, 8, 8192, 100, {8192}, 0, 4u));
  Compare(svdq::testing::MakeSparseCase(2, 8, 2, 64, 8, 64, 0, {64, 1}, 0, 5u));
}

// Page landmarks without a basis (R = D), 1 to 16 query heads per KV head, chunk counts that are
// not a multiple of 16.
TEST(SparseSelectGpu, IdentityLandmarksMatchTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int D : {64, 128})
    for (int gqa : {1, 3, 4, 8, 16}) {
      auto c = svdq::testing::MakeSparseCase(4, 2 * gqa, 2, D, D, 2048, 29, {2048, 2, 1001, 30}, 0, 70u + D + gqa);
      c.basis.clear();
      Compare(c);
    }
  // A 32-coordinate basis, ties included.
  Compare(svdq::testing::MakeSparseCase(3, 16, 2, 128, 32, 3000, 40, {3000, 777, 41}, /*tie_levels=*/3, 8u));
}

TEST(SparseSelectGpu, TheBoundMatchesTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int gqa : {1, 4, 8})
    for (int D : {64, 128, 72})  // 72: the byte-load path
      Compare(svdq::testing::MakeSparseCase(4, 2 * gqa, 2, D, 0, 1100, 17, {0, 1, 18, 1100}, 0, 9u * gqa + D, true));
  Compare(svdq::testing::MakeSparseCase(2, 8, 2, 128, 0, 900, 30, {900, 300}, /*tie_levels=*/2, 10u, true));
}

TEST(SparseSelectGpu, TiesGoToTheLowerChunkAsInTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Compare(svdq::testing::MakeSparseCase(3, 8, 2, 128, 8, 3000, 40, {3000, 777, 41}, /*tie_levels=*/3, 6u));
  Compare(svdq::testing::MakeSparseCase(1, 4, 1, 64, 4, 600, 300, {600}, /*tie_levels=*/1, 7u));
}

// The serving layout (metadata rows through a page table), at R = 4, 12 and 16 (word and
// double-word loads of the coordinates) and at R = D = 128 (page landmarks with an identity
// basis), and the bound: the same ids as the reference.
TEST(SparseSelectGpu, ThePageTableLayoutMatchesTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int R : {4, 12, 16, 128})
    for (bool bound : {false, true}) {
      auto c = svdq::testing::MakeSparseCase(4, 32, 8, 128, bound ? 0 : R, 2048, 29, {2048, 5, 1000, 0}, 0, 50u + R, bound);
      ComparePooled(c, 51u, "R " + std::to_string(R) + " bound " + std::to_string(bound));
    }
}

// Per-sequence landmark bases (SparseSelectParams::basis_row, the serving path's lanes): the same
// ids as the reference, at R = 8, 12, 16, 24 and 32, in the serving layout.
TEST(SparseSelectGpu, PerSequenceBasesMatchTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int R : {8, 12, 16, 24, 32}) {
    auto c = svdq::testing::MakeSparseCase(4, 32, 8, 128, R, 2048, 29, {2048, 5, 1000, 700}, 0, 90u + R);
    auto pooled = svdq::testing::Pool(c, 91u);
    const int rows = 6;
    std::vector<float> bases = svdq::testing::RandomFloats(static_cast<size_t>(rows) * c.KV * c.D * R, 92u + R, 0.1f);
    std::vector<int64_t> basis_row = {5, 0, 3, 5};
    kernels::SparseSelectParams ref = c.Params();
    pooled.Apply(&ref);
    ref.basis = bases.data();
    ref.basis_row = basis_row.data();
    ASSERT_TRUE(kernels::SparseSelectRef(ref).ok());
    DeviceBuffer<float> q(c.q), basis(bases);
    DeviceBuffer<uint16_t> scales(pooled.scales);
    DeviceBuffer<int8_t> coords(pooled.coords);
    DeviceBuffer<int64_t> brow(basis_row);
    DeviceBuffer<int32_t> table(pooled.table), chunks(c.chunks), selected(std::vector<int32_t>(c.selected.size(), -7)),
        count(std::vector<int32_t>(c.count.size(), -7));
    kernels::SparseSelectParams p = ref;
    p.q = q.ptr(), p.basis = basis.ptr(), p.basis_row = brow.ptr(), p.scales = scales.ptr(), p.coords = coords.ptr();
    p.table = table.ptr(), p.chunks = chunks.ptr(), p.selected = selected.ptr(), p.count = count.ptr();
    kernels::Status st = kernels::SparseSelect(p, nullptr);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(selected.Download(), c.selected) << "R " << R;
    EXPECT_EQ(count.Download(), c.count);
  }
}

// S landmarks a chunk (sub-chunk means, scored by the best): the same ids as the reference at
// R = 4 and 8 (the fast paths) with S = 4, R = 12 with S = 2, R = 2 with S = 4 and 2 (two
// landmarks a word), and R = 5 with S = 3, R = 2 with S = 3, R = 3 with S = 4 (the byte loop), in
// the serving layout, ties included.
TEST(SparseSelectGpu, SubChunkLandmarksMatchTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const std::vector<std::pair<int, int>> shapes = {{4, 4}, {8, 4}, {12, 2}, {2, 4}, {2, 2}, {5, 3}, {2, 3}, {3, 4}};
  for (auto [R, S] : shapes)
    for (int ties : {0, 3}) {
      auto c = svdq::testing::MakeSparseCase(4, 32, 8, 128, R, 2048, 29, {2048, 5, 1000, 700}, ties, 120u + R, false, S);
      ComparePooled(c, 121u, "R " + std::to_string(R) + " S " + std::to_string(S) + " ties " + std::to_string(ties));
    }
}

// Page landmarks on the device: the same accumulators, coordinates and scales as the reference,
// bit for bit, over a page's worth of steps with rows that complete pages at different steps;
// without a basis (R = D) and with the lanes' bases at R = 16 and 32; and S landmarks a page
// (slices of P / S keys under one scale): S = 2 without a basis, S = 4 at R = 4 and 16.
TEST(SparseLandmarksGpu, MatchTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const std::vector<std::pair<int, int>> shapes = {{0, 1}, {16, 1}, {32, 1}, {0, 2}, {4, 4}, {16, 4}};
  for (int D : {64, 128})
  for (auto [R, S] : shapes) {
    const int KV = 8, P = 16, lanes = 5, blocks = 12, rows = 4, W = S * (R > 0 ? R : D);
    std::vector<float> acc(static_cast<size_t>(lanes) * KV * S * D, 0.f);
    std::vector<uint16_t> scales(static_cast<size_t>(blocks) * KV, 0xBC00);  // fp16 -1: unwritten
    std::vector<int8_t> coords(static_cast<size_t>(blocks) * KV * W, 7);
    std::vector<float> bases = svdq::testing::RandomFloats(static_cast<size_t>(lanes) * KV * D * std::max(R, 1), 7u + R, 0.2f);
    DeviceBuffer<float> dbases(bases);
    DeviceBuffer<float> dacc(acc);
    DeviceBuffer<uint16_t> dscales(scales);
    DeviceBuffer<int8_t> dcoords(coords);
    const int64_t stride = static_cast<int64_t>(KV) * D + 64;  // rows with padding, as q|k|v slices are
    for (int t = 0; t < 2 * P; ++t) {
      auto k = svdq::testing::RandomBf16(static_cast<size_t>(rows) * stride, 100u + t + D, 2.f);
      // Row r starts its page at step 3 r (lanes 4, 1, 2, 0), so pages complete at different steps.
      std::vector<int64_t> block(rows), offset(rows), lane = {4, 1, 2, 0};
      for (int r = 0; r < rows; ++r) {
        const int pos = std::max(0, t - 3 * r);
        offset[r] = pos % P;
        block[r] = 3 * r + pos / P;
      }
      kernels::SparseLandmarkParams p;
      p.rows = rows, p.KV = KV, p.D = D, p.P = P, p.S = S, p.k_stride = stride;
      p.k = k.data(), p.block = block.data(), p.offset = offset.data(), p.lanes = lane.data();
      p.acc = acc.data(), p.coords = coords.data(), p.scales = scales.data();
      if (R > 0) p.basis = bases.data(), p.R = R;
      ASSERT_TRUE(kernels::SparseLandmarkAppendRef(p).ok());
      DeviceBuffer<uint16_t> dk(k);
      DeviceBuffer<int64_t> db(block), doff(offset), dl(lane);
      kernels::SparseLandmarkParams g = p;
      g.k = dk.ptr(), g.block = db.ptr(), g.offset = doff.ptr(), g.lanes = dl.ptr();
      g.acc = dacc.ptr(), g.coords = dcoords.ptr(), g.scales = dscales.ptr();
      if (R > 0) g.basis = dbases.ptr();
      kernels::Status st = kernels::SparseLandmarkAppend(g, nullptr);
      ASSERT_TRUE(st.ok()) << st.message();
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    EXPECT_EQ(dacc.Download(), acc);
    EXPECT_EQ(dcoords.Download(), coords) << "D " << D << " R " << R << " S " << S;
    EXPECT_EQ(dscales.Download(), scales) << "D " << D << " R " << R << " S " << S;
    EXPECT_TRUE(dcoords.GuardsIntact() && dscales.GuardsIntact());
  }
}
