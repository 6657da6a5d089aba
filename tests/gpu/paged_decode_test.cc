// The bf16 paged decode kernel against a float loop over the gathered pages: head dims 64 and
// 128 (tensor cores) and 96 (CUDA cores); GQA 1, 3, 4, 16 and 32 (two row groups); pages of
// 1, 8, 16 and 64 tokens in a shuffled pool; lengths 1, 15, 17, 63, 1,000 and 20,000; one
// range and split ranges, with splits past a sequence's end and a last split that must take
// keys beyond the plan. Outputs sit between guard regions. Skipped where no CUDA device exists.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/attention/paged_decode.h"
#include "kernels/common/half.h"
#include "tests/common/device_buffer.h"

using namespace svdq::kernels;
using svdq::testing::DeviceBuffer;
using svdq::testing::HaveGpu;

namespace {

struct Case {
  int heads, kv, dim, page;
  std::vector<int> lens;
  int tokens_per_split;  // -1: the planner's choice
  int plan_len = 0;      // max_seq_len given to the kernel (0: the longest length)
};

void RunCase(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int B = static_cast<int>(c.lens.size()), D = c.dim, P = c.page, KV = c.kv, H = c.heads, G = H / KV;
  const int longest = *std::max_element(c.lens.begin(), c.lens.end());
  const int plan_len = c.plan_len > 0 ? c.plan_len : longest;
  const int max_pages = (std::max(longest, plan_len) + P - 1) / P;
  // A shuffled pool with one spare page, so that no sequence's pages are in order.
  int pool = 1;
  for (int L : c.lens) pool += (L + P - 1) / P;
  std::vector<int32_t> ids(pool);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int32_t> table(static_cast<size_t>(B) * max_pages, -1);
  int next = 0;
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < (c.lens[b] + P - 1) / P; ++i) table[static_cast<size_t>(b) * max_pages + i] = ids[next++];
  // Keys carry a per-token offset so that scores spread (some tokens dominate the softmax).
  std::vector<uint16_t> q(static_cast<size_t>(B) * H * D), k(static_cast<size_t>(pool) * KV * P * D),
      v(k.size());
  for (auto& x : q) x = FloatToBf16Bits(normal(rng));
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = FloatToBf16Bits(normal(rng) * (1.f + static_cast<float>((i / D) % 7)));
    v[i] = FloatToBf16Bits(normal(rng));
  }
  const float scale = 1.f / std::sqrt(static_cast<float>(D));

  PagedDecodeParams p;
  p.batch = B;
  p.num_heads = H;
  p.kv_heads = KV;
  p.head_dim = D;
  p.page_size = P;
  p.max_pages = max_pages;
  p.sm_scale = scale;
  p.max_seq_len = plan_len;
  p.tokens_per_split = c.tokens_per_split >= 0 ? c.tokens_per_split : PagedDecodeTokensPerSplit(B, H, KV, plan_len, 132);
  DeviceBuffer<uint16_t> dq(q), dk(k), dv(v);
  DeviceBuffer<int32_t> dt(table), dl(c.lens);
  DeviceBuffer<float> dout(std::vector<float>(static_cast<size_t>(B) * H * D, 0.f));
  DeviceBuffer<float> dws(std::vector<float>(std::max<size_t>(1, PagedDecodeWorkspaceFloats(p)), 0.f));
  p.q = dq.ptr();
  p.key_pages = dk.ptr();
  p.value_pages = dv.ptr();
  p.page_table = dt.ptr();
  p.seq_len = dl.ptr();
  p.out = dout.ptr();
  p.workspace = dws.ptr();
  Status st = PagedDecodeAttention(p, nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out = dout.Download();
  EXPECT_TRUE(dout.GuardsIntact());
  EXPECT_TRUE(dws.GuardsIntact());

  double worst = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kvh = h / G, L = c.lens[b];
      auto at = [&](const std::vector<uint16_t>& pages, int t, int d) {
        const int64_t page = table[static_cast<size_t>(b) * max_pages + t / P];
        return Bf16BitsToFloat(pages[((page * KV + kvh) * P + t % P) * D + d]);
      };
      std::vector<double> s(L);
      double m = -INFINITY;
      for (int t = 0; t < L; ++t) {
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += Bf16BitsToFloat(q[(static_cast<size_t>(b) * H + h) * D + d]) * at(k, t, d);
        s[t] = dot * scale;
        m = std::max(m, s[t]);
      }
      double sum = 0;
      for (int t = 0; t < L; ++t) sum += (s[t] = std::exp(s[t] - m));
      for (int d = 0; d < D; ++d) {
        double acc = 0;
        for (int t = 0; t < L; ++t) acc += s[t] * at(v, t, d);
        const double ref = acc / sum, got = out[(static_cast<size_t>(b) * H + h) * D + d];
        worst = std::max(worst, std::abs(ref - got));
        ASSERT_NEAR(got, ref, 2e-2) << "seq " << b << " head " << h << " dim " << d << " len " << L;
      }
    }
  // bf16 probabilities bound the error; a wrong token or head is off by far more.
  ::testing::Test::RecordProperty("max_abs_error", std::to_string(worst));
}

#define SKIP_WITHOUT_GPU() \
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device"

TEST(PagedDecode, Llama3ShapesOneRange) {
  SKIP_WITHOUT_GPU();
  RunCase({32, 8, 128, 16, {1, 15, 17, 63, 1000}, 0}, 1);
}

TEST(PagedDecode, Llama3ShapesSplit) {
  SKIP_WITHOUT_GPU();
  RunCase({32, 8, 128, 16, {20000, 1, 300}, -1}, 2);
  RunCase({32, 8, 128, 16, {1000, 999, 64}, 256}, 3);  // splits past the shorter sequences' ends
}

TEST(PagedDecode, SmolShapesHeadDim64) {
  SKIP_WITHOUT_GPU();
  RunCase({9, 3, 64, 16, {1, 2, 33, 700}, 0}, 4);
  RunCase({9, 3, 64, 8, {700, 5}, 128}, 5);
}

TEST(PagedDecode, GqaRatios) {
  SKIP_WITHOUT_GPU();
  RunCase({4, 4, 128, 16, {77, 1}, 0}, 6);         // no sharing
  RunCase({16, 1, 128, 64, {130, 513}, 0}, 7);     // 16 heads on one KV head
  RunCase({32, 1, 64, 16, {300, 1}, 64}, 8);       // two row groups of 16
  RunCase({24, 1, 128, 16, {50}, 0}, 9);           // a half-full second row group
}

TEST(PagedDecode, OneTokenPages) {
  SKIP_WITHOUT_GPU();
  RunCase({8, 2, 128, 1, {1, 40, 129}, 64}, 10);
}

TEST(PagedDecode, LastSplitTakesKeysPastThePlan) {
  SKIP_WITHOUT_GPU();
  // Planned for 256 tokens in ranges of 64, but one sequence has 300: the last range takes the rest.
  RunCase({8, 2, 128, 16, {300, 10}, 64, 256}, 11);
}

TEST(PagedDecode, CudaCoreHeadDim96) {
  SKIP_WITHOUT_GPU();
  RunCase({6, 2, 96, 16, {1, 45, 500}, 0}, 12);
}

TEST(PagedDecode, RejectsBadShapes) {
  PagedDecodeParams p;
  p.batch = 1;
  p.num_heads = 6;
  p.kv_heads = 4;  // not a divisor
  p.head_dim = 128;
  p.page_size = 16;
  p.max_pages = 4;
  p.max_seq_len = 64;
  EXPECT_FALSE(PagedDecodeAttention(p, nullptr).ok());
  p.kv_heads = 2;
  p.max_seq_len = 65;  // beyond max_pages * page_size
  EXPECT_FALSE(PagedDecodeAttention(p, nullptr).ok());
  p.max_seq_len = 64;
  p.head_dim = 100;  // not a multiple of 8
  EXPECT_FALSE(PagedDecodeAttention(p, nullptr).ok());
  p.head_dim = 128;
  p.tokens_per_split = 100;  // not a multiple of 64
  EXPECT_FALSE(PagedDecodeAttention(p, nullptr).ok());
}

TEST(PagedDecode, SplitPlan) {
  // Small batches split to fill 132 SMs; large ones do not; sizes are multiples of 64.
  const int one = PagedDecodeTokensPerSplit(1, 32, 8, 32768, 132);
  EXPECT_GT(one, 0);
  EXPECT_EQ(one % 64, 0);
  EXPECT_GE(8 * ((32768 + one - 1) / one), 2 * 132);  // enough blocks
  EXPECT_EQ(PagedDecodeTokensPerSplit(64, 32, 8, 32768, 132), 0);
  EXPECT_EQ(PagedDecodeTokensPerSplit(1, 32, 8, 100, 132), 0);  // too short to split
}

}  // namespace
