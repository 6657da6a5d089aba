// The chunk selection kernel (kernels/sparse/sparse_select.cu) against its CPU reference: the same
// chunk ids and counts exactly (both score without fused multiply-add), outputs inside their
// bounds (guard bytes), on random and tie-heavy inputs, counts 0 / 1 / keep / keep + 1 / 2,047 /
// 8,192 (the limit), more chunks than the block has threads, GQA 1 / 4 / 8 / 16, widths 64 and 128,
// and keep 0 (the sink alone); landmark and bound (Quest) scores. Label gpu: skipped without CUDA.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/sparse/sparse_select.h"
#include "tests/common/device_buffer.h"
#include "tests/common/sparse_select_case.h"

using namespace svdq;
using svdq::testing::DeviceBuffer;
using svdq::testing::HaveGpu;

namespace {

void Compare(svdq::testing::SparseCase c) {
  DeviceBuffer<float> q(c.q), basis(c.basis), scales(c.scales);
  DeviceBuffer<int8_t> coords(c.coords);
  DeviceBuffer<int32_t> chunks(c.chunks), selected(c.selected), count(c.count);
  kernels::SparseSelectParams p = c.Params();
  p.q = q.ptr(), p.basis = basis.ptr(), p.scales = scales.ptr(), p.coords = coords.ptr();
  p.chunks = chunks.ptr(), p.selected = selected.ptr(), p.count = count.ptr();
  kernels::Status st = kernels::SparseSelect(p, nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_TRUE(kernels::SparseSelectRef(c.Params()).ok());
  EXPECT_EQ(count.Download(), c.count);
  EXPECT_EQ(selected.Download(), c.selected);
  EXPECT_TRUE(selected.GuardsIntact() && count.GuardsIntact());
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
