// KV cache modes: flag parsing and the byte accounting the budget, the metrics and the
// README table rest on, checked against sums written out by hand.
#include <gtest/gtest.h>

#include "server/kv/kv_modes.h"

using namespace svdq::kv;

namespace {

KvShape SmolLm2() {  // 30 layers, 3 KV heads of 64, blocks of 16, fp32 model
  KvShape s;
  s.layers = 30;
  s.kv_heads = 3;
  s.head_dim = 64;
  s.block_size = 16;
  s.dtype_bytes = 4;
  return s;
}

KvModes Modes(const char* key, const char* value) {
  KvModes m;
  EXPECT_TRUE(ParseKeyMode(key, &m.key)) << key;
  EXPECT_TRUE(ParseValueMode(value, &m.value)) << value;
  EXPECT_TRUE(svdq::kernels::ParseSchedule("8,4,2,1,1,0,0,0", &m.schedule).ok());
  return m;
}

TEST(KvModes, ParsingRefusesUnknownNames) {
  KeyMode k;
  ValueMode v;
  BasisSource b;
  EXPECT_FALSE(ParseKeyMode("int8", &k));  // int8 is a value mode only
  EXPECT_FALSE(ParseKeyMode("", &k));
  EXPECT_FALSE(ParseValueMode("int2", &v));
  EXPECT_FALSE(ParseBasisSource("random", &b));
  EXPECT_TRUE(ParseBasisSource("calibrated", &b) && b == BasisSource::kCalibrated);
}

TEST(KvModes, UnquantizedBytesAreTheModelDtype) {
  KvBytes b;
  ASSERT_EQ(ComputeKvBytes(Modes("bf16", "bf16"), SmolLm2(), &b), "");
  EXPECT_EQ(b.key_per_block, 30LL * 3 * 16 * 64 * 4);
  EXPECT_EQ(b.value_per_block, b.key_per_block);
  EXPECT_EQ(b.per_lane, 0);
  EXPECT_DOUBLE_EQ(b.key_per_token(), 30.0 * 3 * 64 * 4);
  EXPECT_EQ(Bf16BytesPerToken(SmolLm2()), 30LL * 3 * 64 * 2);
}

TEST(KvModes, PerTokenCodecsCountCodesAndScales) {
  KvBytes b;
  ASSERT_EQ(ComputeKvBytes(Modes("fp8", "int4"), SmolLm2(), &b), "");
  // fp8: 64 one-byte codes and 2 bf16 scales per token and head; int4: 32 bytes + 2 scales.
  EXPECT_DOUBLE_EQ(b.key_per_token(), 30.0 * 3 * (64 + 4));
  EXPECT_DOUBLE_EQ(b.value_per_token(), 30.0 * 3 * (32 + 4));
  ASSERT_EQ(ComputeKvBytes(Modes("bf16", "int8"), SmolLm2(), &b), "");
  EXPECT_DOUBLE_EQ(b.value_per_token(), 30.0 * 3 * (64 + 4));
}

TEST(KvModes, PageCodedKeysCountPagesTailsAndBases) {
  KvBytes b;
  ASSERT_EQ(ComputeKvBytes(Modes("int4", "bf16"), SmolLm2(), &b), "");
  // A page of one head: 16 x 64 codes of 4 bits (512 B), fp16 scale and zero per channel (256 B).
  EXPECT_EQ(b.key_per_block, 30LL * 3 * (512 + 256));
  EXPECT_EQ(b.per_lane, 30LL * 3 * 16 * 64 * 4);               // the tail page, fp32
  // The identity basis, fp32, and the fp16 copy of its 64 retained columns that the attention reads.
  EXPECT_EQ(b.shared, 30LL * 3 * ((64 * 64 + 64) * 4 + 64 * 64 * 2));
  ASSERT_EQ(ComputeKvBytes(Modes("svdq", "bf16"), SmolLm2(), &b), "");
  // 8,4,2,1,1 bits on groups of 8 channels: 16 x 8 x (8+4+2+1+1) bits = 256 B of codes,
  // and 40 retained channels x 4 B of scale and zero = 160 B; 416 B, already a multiple of 16.
  EXPECT_EQ(b.key_per_block, 30LL * 3 * 416);
  // The tail, the prefill basis and the fp16 copy of its 40 retained columns.
  EXPECT_EQ(b.per_lane, 30LL * 3 * (16 * 64 * 4 + (64 * 64 + 64) * 4 + 64 * 40 * 2));
  KvModes cal = Modes("svdq", "bf16");
  cal.basis = BasisSource::kCalibrated;
  EXPECT_TRUE(cal.pages_shareable());
  EXPECT_FALSE(Modes("svdq", "bf16").pages_shareable());
  EXPECT_TRUE(Modes("int2", "bf16").pages_shareable());
}

// Sparse attention: the plan (recent window of 128 tokens, the rest of the budget chosen besides
// the sink), the landmark bytes per page and per lane, and the key bytes a decode step reads,
// dense and sparse, against sums written out by hand; bad budgets and modes are refused.
TEST(KvModes, SparseAttentionPlansReadsAndStoresLandmarks) {
  KvShape s = SmolLm2();
  s.block_size = 64;
  KvModes m = Modes("svdq", "bf16");
  ASSERT_TRUE(svdq::kernels::ParseSchedule("4,2,2,1,1,0,0,0", &m.schedule).ok());
  KvBytes dense, sparse;
  ASSERT_EQ(ComputeKvBytes(m, s, &dense), "");
  m.sparse_budget = 2048;
  SparsePlan plan;
  ASSERT_EQ(PlanSparse(m, s, &plan), "");
  EXPECT_EQ(plan.recent_pages, 2);
  EXPECT_EQ(plan.keep, 2048 / 64 - 1 - 2);
  ASSERT_EQ(ComputeKvBytes(m, s, &sparse), "");
  EXPECT_EQ(sparse.key_per_block - dense.key_per_block, 30LL * 3 * (64 + 2));  // int8 mean + fp16 scale
  EXPECT_EQ(sparse.per_lane - dense.per_lane, 30LL * 3 * 64 * 4);              // the running sum
  // A page of 64 tokens at 4,2,2,1,1 bits on groups of 8: 64 x 8 x 10 bits = 640 B of codes,
  // 40 retained channels x 4 B = 160 B: 800 B. Read per unit: its pages, mean + 40 basis columns.
  const int64_t page = 800, basis = 4 * 64 * 41, units = 30 * 3;
  const int64_t len = 100 * 64 + 5;  // 100 full pages and a 5-token tail
  KvModes d = m;
  d.sparse_budget = 0;
  EXPECT_EQ(DecodeKeyBytesRead(d, s, len), units * (100 * page + basis + 5 * 64 * 2));
  // Sparse: 98 pages scored (all but the 2 recent), 29 + 1 chosen, 2 recent.
  EXPECT_EQ(DecodeKeyBytesRead(m, s, len), units * ((30 + 2) * page + basis + 5 * 64 * 2 + 98 * (64 + 2)));
  EXPECT_EQ(Bf16KeyBytes(s, len), units * len * 64 * 2);
  // Short contexts: nothing to choose from, everything is read.
  EXPECT_EQ(DecodeKeyBytesRead(m, s, 2 * 64 + 3), DecodeKeyBytesRead(d, s, 2 * 64 + 3));
  EXPECT_EQ(DecodeKeyBytesRead(Modes("bf16", "bf16"), s, 10), units * 10 * 64 * 4);  // the fp32 model's keys
  // Where the attention reads the basis's fp16 copy, its 40 columns cost half.
  KvShape half = s;
  half.half_basis_read = true;
  EXPECT_EQ(DecodeKeyBytesRead(m, s, len) - DecodeKeyBytesRead(m, half, len), units * 64 * 40 * 2);
  // Refused: a budget without room for one chosen page, layer scope, unpaged keys.
  m.sparse_budget = 3 * 64;
  EXPECT_NE(PlanSparse(m, s, &plan).find("at least 256"), std::string::npos);
  EXPECT_NE(ComputeKvBytes(m, s, &sparse), "");
  m.sparse_budget = 2048;
  m.scope = BasisScope::kLayer;
  EXPECT_NE(PlanSparse(m, s, &plan), "");
  KvModes bf = Modes("bf16", "bf16");
  bf.sparse_budget = 2048;
  EXPECT_NE(ComputeKvBytes(bf, s, &sparse), "");
}

// Rank-R landmarks (sparse_landmark_rank): R + 2 bytes a page, the D x R fp32 basis per running
// sequence, read once a step with the landmarks of the scored pages; no prefix sharing; a rank
// of the head dim or more, or above 128, is refused.
TEST(KvModes, RankRLandmarksShrinkWhatSelectionReads) {
  KvShape s = SmolLm2();
  s.block_size = 64;
  KvModes m = Modes("svdq", "bf16");
  ASSERT_TRUE(svdq::kernels::ParseSchedule("4,2,2,1,1,0,0,0", &m.schedule).ok());
  m.sparse_budget = 2048;
  KvBytes full, ranked;
  ASSERT_EQ(ComputeKvBytes(m, s, &full), "");
  const int64_t len = 100 * 64 + 5, units = 30 * 3;
  const int64_t full_read = DecodeKeyBytesRead(m, s, len);
  m.sparse_landmark_rank = 16;
  SparsePlan plan;
  ASSERT_EQ(PlanSparse(m, s, &plan), "");
  EXPECT_EQ(plan.landmark_width, 16);
  ASSERT_EQ(ComputeKvBytes(m, s, &ranked), "");
  EXPECT_EQ(full.key_per_block - ranked.key_per_block, units * (64 - 16));
  EXPECT_EQ(ranked.per_lane - full.per_lane, units * 64 * 16 * 4);
  // 98 scored pages: 48 landmark bytes fewer each, and the basis once.
  EXPECT_EQ(full_read - DecodeKeyBytesRead(m, s, len), units * (98 * 48 - 64 * 16 * 4));
  // Nothing scored (a short context): no basis read either.
  KvModes d = m;
  d.sparse_budget = 0;
  EXPECT_EQ(DecodeKeyBytesRead(m, s, 2 * 64 + 3), DecodeKeyBytesRead(d, s, 2 * 64 + 3));
  EXPECT_FALSE(m.pages_shareable());
  EXPECT_TRUE(Modes("int4", "bf16").pages_shareable());
  for (int bad : {-1, 64, 65}) {
    m.sparse_landmark_rank = bad;
    EXPECT_NE(PlanSparse(m, s, &plan).find("--sparse-landmark-rank"), std::string::npos) << bad;
    EXPECT_NE(ComputeKvBytes(m, s, &ranked), "") << bad;
  }
}

// S landmarks a page (sparse_landmark_subs): S x R + 2 bytes a page and the lane's S running
// sums; the selection reads all of a scored page's; S must divide the page, be at most 8 and hold
// at most 256 coordinates.
TEST(KvModes, SubChunkLandmarksCountEverySlice) {
  KvShape s = SmolLm2();
  s.block_size = 64;
  KvModes m = Modes("svdq", "bf16");
  ASSERT_TRUE(svdq::kernels::ParseSchedule("4,2,2,1,1,0,0,0", &m.schedule).ok());
  m.sparse_budget = 2048;
  m.sparse_landmark_rank = 4;
  KvBytes one, four;
  ASSERT_EQ(ComputeKvBytes(m, s, &one), "");
  const int64_t len = 100 * 64 + 5, units = 30 * 3;
  const int64_t one_read = DecodeKeyBytesRead(m, s, len);
  m.sparse_landmark_subs = 4;
  SparsePlan plan;
  ASSERT_EQ(PlanSparse(m, s, &plan), "");
  EXPECT_EQ(plan.landmark_subs, 4);
  EXPECT_EQ(plan.page_landmark_bytes(), 4 * 4 + 2);
  ASSERT_EQ(ComputeKvBytes(m, s, &four), "");
  EXPECT_EQ(four.key_per_block - one.key_per_block, units * 3 * 4);
  EXPECT_EQ(four.per_lane - one.per_lane, units * 3 * 64 * 4);
  EXPECT_EQ(DecodeKeyBytesRead(m, s, len) - one_read, units * 98 * 3 * 4);  // 98 scored pages
  for (int bad : {0, 3, 9, 128}) {
    m.sparse_landmark_subs = bad;
    EXPECT_NE(PlanSparse(m, s, &plan).find("--sparse-landmark-subs"), std::string::npos) << bad;
    EXPECT_NE(ComputeKvBytes(m, s, &four), "") << bad;
  }
  m.sparse_landmark_rank = 0;  // the mean key: 8 x 64 coordinates a page is too many
  m.sparse_landmark_subs = 8;
  EXPECT_NE(PlanSparse(m, s, &plan).find("256 coordinates a page"), std::string::npos);
  m.sparse_landmark_subs = 4;
  EXPECT_EQ(PlanSparse(m, s, &plan), "");
}

// Dense layers under a sparse budget (sparse_dense_layers = N): those N layers read every page,
// like budget 0, and store and read no landmarks; the other layers read what they read before.
// N must leave a layer sparse.
TEST(KvModes, DenseLayersReadEveryPageAndKeepNoLandmarks) {
  KvShape s = SmolLm2();  // 30 layers of 3 KV heads
  s.block_size = 64;
  KvModes m = Modes("svdq", "bf16");
  ASSERT_TRUE(svdq::kernels::ParseSchedule("4,2,2,1,1,0,0,0", &m.schedule).ok());
  m.sparse_budget = 2048;
  m.sparse_landmark_rank = 2;
  m.sparse_landmark_subs = 4;
  KvModes dense = m;
  dense.sparse_budget = 0;
  const int64_t len = 100 * 64 + 5, per_layer = 3;
  const int64_t sparse_read = DecodeKeyBytesRead(m, s, len), dense_read = DecodeKeyBytesRead(dense, s, len);
  KvBytes all_sparse, two_dense, none;
  ASSERT_EQ(ComputeKvBytes(m, s, &all_sparse), "");
  ASSERT_EQ(ComputeKvBytes(dense, s, &none), "");
  m.sparse_dense_layers = 2;
  EXPECT_FALSE(m.sparse_layer(1));
  EXPECT_TRUE(m.sparse_layer(2));
  EXPECT_FALSE(dense.sparse_layer(2));
  SparsePlan plan;
  ASSERT_EQ(PlanSparse(m, s, &plan), "");
  EXPECT_EQ(plan.sparse_layers, 28);
  // Reads: 2 layers as dense, 28 as sparse (per-layer reads are equal across layers).
  EXPECT_EQ(DecodeKeyBytesRead(m, s, len), dense_read / 30 * 2 + sparse_read / 30 * 28);
  EXPECT_LT(DecodeKeyBytesRead(m, s, len), dense_read);
  // Storage: 2 layers' landmarks (8 + 2 bytes a page and KV head), sums and basis fewer.
  ASSERT_EQ(ComputeKvBytes(m, s, &two_dense), "");
  EXPECT_EQ(all_sparse.key_per_block - two_dense.key_per_block, 2 * per_layer * (4 * 2 + 2));
  EXPECT_EQ(all_sparse.per_lane - two_dense.per_lane, 2 * per_layer * (4 * 64 * 4 + 64 * 2 * 4));
  EXPECT_GT(two_dense.key_per_block, none.key_per_block);
  for (int bad : {-1, 30, 31}) {
    m.sparse_dense_layers = bad;
    EXPECT_NE(PlanSparse(m, s, &plan).find("--sparse-dense-layers must be in [0, 29]"), std::string::npos) << bad;
    EXPECT_NE(ComputeKvBytes(m, s, &two_dense), "") << bad;
  }
  m.sparse_dense_layers = 29;
  EXPECT_EQ(PlanSparse(m, s, &plan), "");
  EXPECT_EQ(plan.sparse_layers, 1);
}

TEST(KvModes, LayerScopeCodesOneLatentPerLayer) {
  KvModes m = Modes("svdq", "bf16");
  ASSERT_TRUE(ParseBasisScope("layer", &m.scope));
  BasisScope sc;
  EXPECT_FALSE(ParseBasisScope("model", &sc));
  EXPECT_EQ(CodecShapeOf(m, SmolLm2()).units, 1);
  EXPECT_EQ(CodecShapeOf(m, SmolLm2()).width, 192);
  // The direct codecs ignore the scope.
  KvModes direct = Modes("int4", "bf16");
  direct.scope = BasisScope::kLayer;
  EXPECT_EQ(CodecShapeOf(direct, SmolLm2()).width, 64);
  KvBytes b;
  ASSERT_EQ(ComputeKvBytes(m, SmolLm2(), &b), "");
  // Width 192, groups of 24: 16 x 24 x (8+4+2+1+1) bits = 768 B of codes, 120 retained channels
  // x 4 B = 480 B; 1248 B per layer (a multiple of 16), as many as three heads of 416 B.
  EXPECT_EQ(b.key_per_block, 30LL * 1248);
  EXPECT_EQ(b.per_lane, 30LL * 3 * 16 * 64 * 4 + 30LL * ((192 * 192 + 192) * 4 + 192 * 120 * 2));  // tail + basis
  EXPECT_NE(m.KeyName().find("layer scope"), std::string::npos);
}

TEST(KvModes, GroupedCodecsNeedHeadDimMultipleOf32) {
  KvShape s = SmolLm2();
  s.head_dim = 48;
  KvBytes b;
  EXPECT_NE(ComputeKvBytes(Modes("bf16", "int8"), s, &b).find("multiple of 32"), std::string::npos);
  EXPECT_EQ(ComputeKvBytes(Modes("bf16", "bf16"), s, &b), "");
}

}  // namespace
