// The paged decode kernel against a float loop over the gathered pages: head dims 64 and 128
// (tensor cores) and 96 (CUDA cores); GQA 1, 3, 4, 16 and 32 (two row groups); pages of 1, 8,
// 16 and 64 tokens in a shuffled pool; lengths 1, 15, 17, 63, 1,000 and 20,000; one range and
// split ranges, with splits past a sequence's end and sequences longer than the plan; bf16 and
// fp8 keys with bf16, fp8, int8 and int4 values (random codes and scales, dequantized by the
// loop as bf16(code * scale)). Outputs sit between guard regions. Skipped where no CUDA device
// exists.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/attention/paged_decode.h"
#include "kernels/attention/split_merge.h"
#include "kernels/common/half.h"
#include "tests/common/device_buffer.h"

using namespace svdq::kernels;
using svdq::testing::DeviceBuffer;
using svdq::testing::HaveGpu;

namespace {

struct Case {
  int heads, kv, dim, page;
  std::vector<int> lens;
  int splits;        // -1: the planner's choice
  int plan_len = 0;  // max_seq_len given to the kernel (0: the longest length)
  KvFormat keys = KvFormat::kBf16, values = KvFormat::kBf16;
};

// Random pages of one tensor in format f: codes (or bf16 rows) and bf16 scales per 32 channels;
// `at` gives what attention must read, bf16(code * scale).
struct Pages {
  KvFormat f;
  int dim;
  std::vector<uint8_t> bytes;
  std::vector<uint16_t> scales;
  Pages(KvFormat format, int64_t rows, int D, std::mt19937& rng, float spread_every) : f(format), dim(D) {
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_int_distribution<int> byte(0, 255);
    bytes.resize(rows * KvRowBytes(f, D));
    if (f == KvFormat::kBf16) {
      auto* v = reinterpret_cast<uint16_t*>(bytes.data());
      for (int64_t i = 0; i < rows * D; ++i)
        v[i] = FloatToBf16Bits(normal(rng) * (1.f + spread_every * static_cast<float>((i / D) % 7)));
      return;
    }
    for (auto& b : bytes) {
      b = static_cast<uint8_t>(byte(rng));
      if (f == KvFormat::kFp8 && (b & 0x7F) == 0x7F) b ^= 1;  // not NaN
      if (f == KvFormat::kInt8 && b == 0x80) b = 0x81;          // -127 .. 127
    }
    scales.resize(rows * (D / 32));
    const float top = f == KvFormat::kFp8 ? 448.f : f == KvFormat::kInt8 ? 127.f : 7.f;
    for (int64_t i = 0; i < static_cast<int64_t>(scales.size()); ++i)
      scales[i] = FloatToBf16Bits(std::abs(normal(rng)) / top * (1.f + spread_every * static_cast<float>((i / (D / 32)) % 7)));
  }
  float at(int64_t row, int d) const {
    if (f == KvFormat::kBf16) return Bf16BitsToFloat(reinterpret_cast<const uint16_t*>(bytes.data())[row * dim + d]);
    const uint8_t* r = bytes.data() + row * KvRowBytes(f, dim);
    float c;
    if (f == KvFormat::kFp8) c = Fp8E4m3BitsToFloat(r[d]);
    else if (f == KvFormat::kInt8) c = static_cast<float>(static_cast<int8_t>(r[d]));
    else c = static_cast<float>(((r[d / 2] >> (4 * (d % 2))) & 0xF) - 8);
    return Bf16BitsToFloat(FloatToBf16Bits(c * Bf16BitsToFloat(scales[row * (dim / 32) + d / 32])));
  }
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
  // Keys carry a per-token scale so that scores spread (some tokens dominate the softmax).
  std::vector<uint16_t> q(static_cast<size_t>(B) * H * D);
  for (auto& x : q) x = FloatToBf16Bits(normal(rng));
  const int64_t rows = static_cast<int64_t>(pool) * KV * P;
  const Pages k(c.keys, rows, D, rng, 1.f), v(c.values, rows, D, rng, 0.f);
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
  p.key_format = c.keys;
  p.value_format = c.values;
  p.num_splits = c.splits >= 0 ? c.splits : PagedDecodeNumSplits(p, 132);
  DeviceBuffer<uint16_t> dq(q);
  DeviceBuffer<uint8_t> dk(k.bytes), dv(v.bytes);
  DeviceBuffer<uint16_t> dks(k.scales.empty() ? std::vector<uint16_t>(1) : k.scales),
      dvs(v.scales.empty() ? std::vector<uint16_t>(1) : v.scales);
  DeviceBuffer<int32_t> dt(table), dl(c.lens);
  DeviceBuffer<float> dout(std::vector<float>(static_cast<size_t>(B) * H * D, 0.f));
  DeviceBuffer<float> dws(std::vector<float>(std::max<size_t>(1, PagedDecodeWorkspaceFloats(p)), 0.f));
  p.q = dq.ptr();
  p.key_pages = dk.ptr();
  p.value_pages = dv.ptr();
  p.key_scales = dks.ptr();
  p.value_scales = dvs.ptr();
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
      auto at = [&](const Pages& pages, int t, int d) {
        const int64_t page = table[static_cast<size_t>(b) * max_pages + t / P];
        return pages.at((page * KV + kvh) * P + t % P, d);
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
        ASSERT_NEAR(got, ref, 2e-2) << "seq " << b << " head " << h << " dim " << d << " len " << L << " formats "
                                    << static_cast<int>(c.keys) << "/" << static_cast<int>(c.values);
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
  RunCase({32, 8, 128, 16, {1000, 999, 64}, 4}, 3);  // splits past the shorter sequences' ends
}

TEST(PagedDecode, SmolShapesHeadDim64) {
  SKIP_WITHOUT_GPU();
  RunCase({9, 3, 64, 16, {1, 2, 33, 700}, 0}, 4);
  RunCase({9, 3, 64, 8, {700, 5}, 6}, 5);
}

TEST(PagedDecode, GqaRatios) {
  SKIP_WITHOUT_GPU();
  RunCase({4, 4, 128, 16, {77, 1}, 0}, 6);         // no sharing
  RunCase({16, 1, 128, 64, {130, 513}, 0}, 7);     // 16 heads on one KV head
  RunCase({32, 1, 64, 16, {300, 1}, 5}, 8);        // two row groups of 16
  RunCase({24, 1, 128, 16, {50}, 0}, 9);           // a half-full second row group
}

TEST(PagedDecode, OneTokenPages) {
  SKIP_WITHOUT_GPU();
  RunCase({8, 2, 128, 1, {1, 40, 129}, 3}, 10);
}

TEST(PagedDecode, SequencesLongerThanThePlan) {
  SKIP_WITHOUT_GPU();
  // Planned for 256 tokens, but one sequence has 300: each sequence splits its own length.
  RunCase({8, 2, 128, 16, {300, 10}, 4, 256}, 11);
}

TEST(PagedDecode, QuantizedValuesAndFp8Keys) {
  SKIP_WITHOUT_GPU();
  const KvFormat bf16 = KvFormat::kBf16, fp8 = KvFormat::kFp8, int8 = KvFormat::kInt8, int4 = KvFormat::kInt4;
  uint32_t seed = 20;
  for (KvFormat kf : {bf16, fp8})
    for (KvFormat vf : {bf16, fp8, int8, int4}) {
      if (kf == bf16 && vf == bf16) continue;
      RunCase({32, 8, 128, 16, {1, 17, 700}, -1, 0, kf, vf}, seed++);
      RunCase({9, 3, 64, 16, {33, 5}, 2, 0, kf, vf}, seed++);
    }
  RunCase({16, 1, 128, 64, {130, 513}, 0, 0, fp8, int4}, seed++);
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
  p.num_splits = -1;
  EXPECT_FALSE(PagedDecodeAttention(p, nullptr).ok());
  p.num_splits = 0;
  p.head_dim = 96;
  p.value_format = KvFormat::kInt4;  // quantized pages need the tensor-core head dims
  EXPECT_FALSE(PagedDecodeAttention(p, nullptr).ok());
}

TEST(PagedDecode, SplitPlanByWaves) {
  // 264 resident blocks (two per SM on 132 SMs): 32 x 8 units already fill one wave, so no split;
  // 8 x 8 = 64 units split into 4 (256 blocks, one wave) rather than 9 (576, a third wave 18% full).
  EXPECT_EQ(PlanSplitsByWaves(256, 32768, 264, 64, 128, 4096), 1);
  EXPECT_EQ(PlanSplitsByWaves(64, 32768, 264, 64, 128, 4096), 4);
  // One sequence: 8 units; about 33 splits of 1,024 tokens fill the slots once.
  const int one = PlanSplitsByWaves(8, 32768, 264, 64, 128, 4096);
  EXPECT_GE(8 * one, 200);
  EXPECT_LE(8 * one, 264);
  EXPECT_EQ(PlanSplitsByWaves(8, 100, 264, 64, 128, 4096), 2);  // 100 tokens: two ranges of 64 at most
  EXPECT_EQ(PlanSplitsByWaves(8, 64, 264, 64, 128, 4096), 1);
}

}  // namespace
