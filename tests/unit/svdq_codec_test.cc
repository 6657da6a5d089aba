// The SVDq codec's CPU reference: schedules, layout accounting, basis, bit packing,
// round trips and their error bounds, degenerate and non-finite inputs, attention.
// Tolerances are stated at each check.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/common/half.h"
#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_ref.h"
#include "tests/common/svdq_data.h"

using namespace svdq::kernels;
using svdq::testing::MakeKeys;
using svdq::testing::MakeRope;
using svdq::testing::RelativeError;

namespace {

Schedule Sched(const std::string& s) {
  Schedule out;
  Status st = ParseSchedule(s, &out);
  EXPECT_TRUE(st.ok()) << st.message();
  return out;
}

SvdqLayout Layout(int width, int page, const std::string& s) {
  SvdqLayout l;
  Status st = MakeLayout(width, page, Sched(s), &l);
  EXPECT_TRUE(st.ok()) << st.message();
  return l;
}

std::vector<float> Identity(int w) {
  std::vector<float> v(static_cast<size_t>(w) * w, 0.f);
  for (int i = 0; i < w; ++i) v[static_cast<size_t>(i) * w + i] = 1.f;
  return v;
}

// Encodes `pages` pages of one head with a shared mean/basis and decodes them (no RoPE).
std::vector<float> RoundTrip(const SvdqLayout& l, const std::vector<float>& keys, const std::vector<float>& mean,
                             const std::vector<float>& basis, std::vector<uint8_t>* enc = nullptr) {
  const int pages = static_cast<int>(keys.size() / (static_cast<size_t>(l.page_size) * l.width));
  std::vector<float> means, bases;
  for (int p = 0; p < pages; ++p) {
    means.insert(means.end(), mean.begin(), mean.end());
    bases.insert(bases.end(), basis.begin(), basis.end());
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(pages) * l.page_bytes);
  SvdqEncodeParams e;
  e.layout = l;
  e.num_pages = pages;
  e.kv_heads = 1;
  e.keys = keys.data();
  e.mean = means.data();
  e.basis = bases.data();
  e.out = bytes.data();
  Status st = SvdqEncodeRef(e);
  EXPECT_TRUE(st.ok()) << st.message();
  std::vector<float> out(keys.size());
  SvdqDecodeParams d;
  d.layout = l;
  d.num_pages = pages;
  d.kv_heads = 1;
  d.pages = bytes.data();
  d.mean = means.data();
  d.basis = bases.data();
  d.out = out.data();
  EXPECT_TRUE(SvdqDecodeRef(d).ok());
  if (enc) *enc = bytes;
  return out;
}

TEST(Schedule, ParsesAndAccounts) {
  EXPECT_DOUBLE_EQ(Sched("8,4,2,1,1,0,0,0").EquivalentBits(), 2.0);
  EXPECT_DOUBLE_EQ(Sched("8,2,0,0,0,0,0,0").EquivalentBits(), 1.25);
  EXPECT_DOUBLE_EQ(Sched("4,2,2,1,1,0,0,0").EquivalentBits(), 1.25);
  EXPECT_EQ(Sched("3,3,0,0,0,0,0,1").ToString(), "3,3,0,0,0,0,0,1");
}

TEST(Schedule, RejectsBadSchedulesWithAMessage) {
  Schedule s;
  for (const char* bad : {"", "8,2", "8,2,0,0,0,0,0,0,0", "8,2,0,0,0,0,0,5", "0,0,0,0,0,0,0,0", "a,2,0,0,0,0,0,0",
                          "8,2,0,0,0,0,0,0,", "8,,0,0,0,0,0,0", "-1,0,0,0,0,0,0,0", "8, 2,0,0,0,0,0,0x"}) {
    Status st = ParseSchedule(bad, &s);
    EXPECT_FALSE(st.ok()) << "accepted '" << bad << "'";
    EXPECT_NE(st.message().find("schedule"), std::string::npos);
  }
  SvdqLayout l;
  EXPECT_FALSE(MakeLayout(60, 16, Sched("8,2,0,0,0,0,0,0"), &l).ok());  // width not divisible by 8
  EXPECT_FALSE(MakeLayout(64, 0, Sched("8,2,0,0,0,0,0,0"), &l).ok());
}

TEST(Layout, ExactByteAccounting) {
  // d=64, P=16, 8,4,2,1,1,0,0,0: codes 128+64+32+16+16 = 256 B; 40 retained channels:
  // 80 B scales + 80 B zeros -> 416 B per page and head.
  SvdqLayout l = Layout(64, 16, "8,4,2,1,1,0,0,0");
  EXPECT_EQ(l.retained, 40);
  EXPECT_EQ(l.code_bytes, 256);
  EXPECT_EQ(l.page_bytes, 416);
  EXPECT_DOUBLE_EQ(StoredBitsPerElement(l, 16, false), 416 * 8.0 / (16 * 64));
  // Basis (fp16 64x40) and mean (fp16 64) amortized over 1024 tokens.
  EXPECT_NEAR(StoredBitsPerElement(l, 1024, true), (64 * 416 + 2 * 64 * 40 + 2 * 64) * 8.0 / (1024 * 64), 1e-12);
  // 3-bit groups straddle bytes; each group is padded to 4 bytes.
  SvdqLayout l3 = Layout(64, 5, "3,0,0,0,0,0,0,0");
  EXPECT_EQ(l3.code_bytes, 16);  // 5*8*3 = 120 bits -> 15 bytes -> 16
  EXPECT_EQ(l3.RetainedIndex(7), 7);
  EXPECT_EQ(l3.RetainedIndex(8), -1);
}

TEST(BitPacking, EveryWidthRoundTrips) {
  for (int b : {1, 2, 3, 4, 8}) {
    std::vector<uint8_t> buf(64, 0xAB);
    std::mt19937 rng(b);
    std::vector<uint32_t> codes(100);
    for (auto& c : codes) c = rng() & ((1u << b) - 1);
    for (int i = 0; i < 100 && (i + 1) * b <= 512; ++i) WriteCode(buf.data(), i, b, codes[i]);
    for (int i = 0; i < 100 && (i + 1) * b <= 512; ++i) ASSERT_EQ(ReadCode(buf.data(), i, b), codes[i]) << b;
  }
}

TEST(Basis, OrthonormalSortedAndDiagonalizing) {
  const int w = 32;
  auto keys = MakeKeys(300, w, 1);
  SvdqBasis b;
  ASSERT_TRUE(ComputeBasisRef(keys.data(), 300, w, true, &b).ok());
  for (int i = 0; i < w; ++i)
    for (int j = 0; j < w; ++j) {
      double dot = 0;
      for (int k = 0; k < w; ++k) dot += double(b.vectors[k * w + i]) * b.vectors[k * w + j];
      EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-5);
    }
  for (int j = 1; j < w; ++j) EXPECT_GE(b.singular_values[j - 1], b.singular_values[j]);
  // Latent channels are uncorrelated and their energies are the squared singular values.
  std::vector<double> z(300 * w, 0.0);
  for (int t = 0; t < 300; ++t)
    for (int j = 0; j < w; ++j)
      for (int i = 0; i < w; ++i) z[t * w + j] += (keys[t * w + i] - b.mean[i]) * double(b.vectors[i * w + j]);
  for (int a = 0; a < 4; ++a) {
    for (int c = 0; c < 4; ++c) {
      double s = 0;
      for (int t = 0; t < 300; ++t) s += z[t * w + a] * z[t * w + c];
      if (a == c) EXPECT_NEAR(s, b.singular_values[a] * b.singular_values[a], 1e-3 * s);
      else EXPECT_NEAR(s, 0.0, 1e-6 * b.singular_values[0] * b.singular_values[0]);
    }
  }
}

TEST(Basis, RejectsNonFiniteKeys) {
  auto keys = MakeKeys(20, 16, 2);
  keys[37] = NAN;
  SvdqBasis b;
  EXPECT_FALSE(ComputeBasisRef(keys.data(), 20, 16, true, &b).ok());
}

TEST(RoundTrip, EightBitsOnAllChannelsIsNearExact) {
  const int w = 64, P = 16;
  auto keys = MakeKeys(4 * P, w, 3);
  SvdqBasis b;
  ASSERT_TRUE(ComputeBasisRef(keys.data(), 4 * P, w, true, &b).ok());
  auto out = RoundTrip(Layout(w, P, "8,8,8,8,8,8,8,8"), keys, b.mean, b.vectors);
  // 8-bit codes: per-channel error <= range/510; relative Frobenius error well under 1%.
  EXPECT_LT(RelativeError(keys, out), 5e-3);
}

TEST(RoundTrip, ErrorWithinHalfAStepAtEveryWidth) {
  // Identity basis and zero mean: the latent is the key, so the quantizer's bound is visible:
  // |k - k^| <= scale/2 plus fp16 rounding of scale and zero (2^-11 relative each, times the levels).
  const int w = 64, P = 16;
  auto keys = MakeKeys(2 * P, w, 4);
  std::vector<float> zero(w, 0.f);
  for (int b : {1, 2, 3, 4, 8}) {
    std::string s = std::to_string(b);
    std::string sched = s + "," + s + "," + s + "," + s + "," + s + "," + s + "," + s + "," + s;
    auto out = RoundTrip(Layout(w, P, sched), keys, zero, Identity(w));
    for (int p = 0; p < 2; ++p)
      for (int c = 0; c < w; ++c) {
        float mn = INFINITY, mx = -INFINITY;
        for (int t = 0; t < P; ++t) {
          mn = std::min(mn, keys[(p * P + t) * w + c]);
          mx = std::max(mx, keys[(p * P + t) * w + c]);
        }
        float levels = float((1 << b) - 1), step = (mx - mn) / levels;
        float bound = 0.5f * step + 1e-3f * (std::abs(mn) + (mx - mn)) + 1e-6f;
        for (int t = 0; t < P; ++t) {
          int e = (p * P + t) * w + c;
          ASSERT_LE(std::abs(out[e] - keys[e]), bound) << "bits " << b << " channel " << c;
        }
      }
  }
}

TEST(RoundTrip, ConstantChannelsAreExact) {
  const int w = 16, P = 8;
  std::vector<float> keys(P * w);
  for (int t = 0; t < P; ++t)
    for (int c = 0; c < w; ++c) keys[t * w + c] = 0.75f * (c - 4);  // fp16-exact, zero range per channel
  auto out = RoundTrip(Layout(w, P, "1,1,1,1,1,1,1,1"), keys, std::vector<float>(w, 0.f), Identity(w));
  EXPECT_EQ(out, keys);
}

TEST(RoundTrip, NonFiniteKeysAreAnError) {
  const int w = 16, P = 4;
  auto keys = MakeKeys(P, w, 5);
  keys[9] = INFINITY;
  SvdqLayout l = Layout(w, P, "8,2,0,0,0,0,0,0");
  std::vector<uint8_t> bytes(l.page_bytes);
  auto ident = Identity(w);
  std::vector<float> mean(w, 0.f);
  SvdqEncodeParams e;
  e.layout = l;
  e.num_pages = 1;
  e.kv_heads = 1;
  e.keys = keys.data();
  e.mean = mean.data();
  e.basis = ident.data();
  e.out = bytes.data();
  Status st = SvdqEncodeRef(e);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("non-finite"), std::string::npos);
}

TEST(RoundTrip, SvdBasisBeatsDirectQuantizationAtTheSameBits) {
  // On keys with a few dominant directions and outlier channels, 2.0 equivalent bits in
  // the SVD basis must beat 2 bits per original channel (the paper's central claim).
  const int w = 64, P = 16;
  auto keys = MakeKeys(8 * P, w, 6);
  SvdqBasis b;
  ASSERT_TRUE(ComputeBasisRef(keys.data(), 8 * P, w, true, &b).ok());
  double svdq = RelativeError(keys, RoundTrip(Layout(w, P, "8,4,2,1,1,0,0,0"), keys, b.mean, b.vectors));
  double direct = RelativeError(keys, RoundTrip(Layout(w, P, "2,2,2,2,2,2,2,2"), keys, std::vector<float>(w, 0.f), Identity(w)));
  EXPECT_LT(svdq, 0.5 * direct) << "svdq " << svdq << " direct " << direct;
}

TEST(Attention, MatchesDenseAttentionOnDecodedKeys) {
  // The reference attention against an independent computation: decode the pages with
  // RoPE, then plain softmax attention. Tolerance 1e-5 absolute (both fp32/fp64).
  const int w = 64, P = 4, kv = 2, heads = 6, pages = 3, tail = 3;
  SvdqLayout l = Layout(w, P, "8,4,2,1,1,0,0,0");
  const int n = pages * P + tail;
  std::vector<float> cos_t, sin_t;
  MakeRope(64, w, 10000.0, &cos_t, &sin_t);
  std::vector<float> means, bases;
  std::vector<std::vector<float>> keys(kv);
  for (int h = 0; h < kv; ++h) {
    keys[h] = MakeKeys(n, w, 10 + h);
    SvdqBasis b;
    ASSERT_TRUE(ComputeBasisRef(keys[h].data(), n, w, true, &b).ok());
    means.insert(means.end(), b.mean.begin(), b.mean.end());
    bases.insert(bases.end(), b.vectors.begin(), b.vectors.end());
  }
  // Encode page by page, [page, head] order, into a pool with pages in reverse order.
  std::vector<uint8_t> pool(static_cast<size_t>(pages) * kv * l.page_bytes);
  std::vector<int32_t> table(pages);
  for (int p = 0; p < pages; ++p) table[p] = pages - 1 - p;
  for (int p = 0; p < pages; ++p) {
    for (int h = 0; h < kv; ++h) {
      SvdqEncodeParams e;
      e.layout = l;
      e.num_pages = 1;
      e.kv_heads = 1;
      e.keys = &keys[h][static_cast<size_t>(p) * P * w];
      e.mean = &means[h * w];
      e.basis = &bases[static_cast<size_t>(h) * w * w];
      e.out = &pool[(static_cast<size_t>(table[p]) * kv + h) * l.page_bytes];
      ASSERT_TRUE(SvdqEncodeRef(e).ok());
    }
  }
  auto values = svdq::testing::RandomBf16(static_cast<size_t>(pages) * kv * P * w, 7);
  auto tail_k = svdq::testing::RandomBf16(static_cast<size_t>(kv) * P * w, 8);
  auto tail_v = svdq::testing::RandomBf16(static_cast<size_t>(kv) * P * w, 9);
  auto q = svdq::testing::RandomBf16(static_cast<size_t>(heads) * w, 10, 0.5f);
  int32_t np = pages, tl = tail;
  std::vector<float> out(heads * w);
  SvdqAttentionParams a;
  a.layout = l;
  a.batch = 1;
  a.num_heads = heads;
  a.kv_heads = kv;
  a.max_pages = pages;
  a.sm_scale = 1.f / std::sqrt(float(w));
  a.q = q.data();
  a.key_pages = pool.data();
  a.value_pages = values.data();
  a.page_table = table.data();
  a.num_pages = &np;
  a.mean = means.data();
  a.basis = bases.data();
  a.tail_keys = tail_k.data();
  a.tail_values = tail_v.data();
  a.tail_len = &tl;
  a.rope_cos = cos_t.data();
  a.rope_sin = sin_t.data();
  a.out = out.data();
  ASSERT_TRUE(SvdqAttentionRef(a).ok());

  for (int h = 0; h < kv; ++h) {
    std::vector<float> k(n * w), v(n * w);
    for (int p = 0; p < pages; ++p) {
      SvdqDecodeParams d;
      int32_t pos0 = p * P;
      d.layout = l;
      d.num_pages = 1;
      d.kv_heads = 1;
      d.pages = &pool[(static_cast<size_t>(table[p]) * kv + h) * l.page_bytes];
      d.mean = &means[h * w];
      d.basis = &bases[static_cast<size_t>(h) * w * w];
      d.first_pos = &pos0;
      d.rope_cos = cos_t.data();
      d.rope_sin = sin_t.data();
      d.out = &k[static_cast<size_t>(p) * P * w];
      ASSERT_TRUE(SvdqDecodeRef(d).ok());
      for (int e = 0; e < P * w; ++e)
        v[p * P * w + e] = Bf16BitsToFloat(values[(static_cast<size_t>(table[p]) * kv + h) * P * w + e]);
    }
    for (int e = 0; e < tail * w; ++e) {
      k[pages * P * w + e] = Bf16BitsToFloat(tail_k[h * P * w + e]);
      v[pages * P * w + e] = Bf16BitsToFloat(tail_v[h * P * w + e]);
    }
    for (int g = 0; g < heads / kv; ++g) {
      int head = h * (heads / kv) + g;
      std::vector<float> s(n);
      float mx = -INFINITY;
      for (int t = 0; t < n; ++t) {
        float acc = 0;
        for (int i = 0; i < w; ++i) acc += Bf16BitsToFloat(q[head * w + i]) * k[t * w + i];
        s[t] = acc / std::sqrt(float(w));
        mx = std::max(mx, s[t]);
      }
      float sum = 0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (int i = 0; i < w; ++i) {
        float acc = 0;
        for (int t = 0; t < n; ++t) acc += s[t] / sum * v[t * w + i];
        EXPECT_NEAR(out[head * w + i], acc, 1e-5) << "head " << head << " dim " << i;
      }
    }
  }
}

TEST(Attention, RejectsBadShapes) {
  SvdqAttentionParams a;
  a.layout = Layout(64, 16, "8,2,0,0,0,0,0,0");
  a.num_heads = 6;
  a.kv_heads = 4;
  EXPECT_FALSE(SvdqAttentionRef(a).ok());  // 6 % 4 != 0
}

}  // namespace

// The split plan the attention kernels share (SplitPages over SplitCount(max, pps) blocks):
// every attended page exactly once and the tail exactly once, for every list length up to max
// and past it (a prompt row in a sparse step: the overflow goes to the last split); within max,
// the tail rides with the last page and no split exists for the tail alone.
TEST(Attention, SplitsCoverEveryPageOnceAndPlaceTheTail) {
  using svdq::kernels::SplitCount;
  using svdq::kernels::SplitPages;
  for (int max_pages = 0; max_pages <= 40; ++max_pages) {
    for (int pps = 0; pps <= 12; ++pps) {
      const int splits = SplitCount(max_pages, pps);
      ASSERT_GE(splits, 1);
      for (int np = 0; np <= max_pages + 20; ++np) {
        std::vector<int> seen(np, 0);
        int tails = 0, tail_split = -1;
        for (int s = 0; s < splits; ++s) {
          const auto slice = SplitPages(np, pps, s, splits);
          for (int pg = std::max(0, slice.first); pg < slice.last; ++pg) ++seen[pg];
          if (slice.tail) ++tails, tail_split = s;
        }
        for (int pg = 0; pg < np; ++pg) ASSERT_EQ(seen[pg], 1) << "max " << max_pages << " pps " << pps << " np " << np << " page " << pg;
        ASSERT_EQ(tails, 1) << "max " << max_pages << " pps " << pps << " np " << np;
        if (np > 0 && np <= max_pages) {
          const auto slice = SplitPages(np, pps, tail_split, splits);
          EXPECT_TRUE(slice.first < np && np <= slice.last) << "the tail's split holds the last page";
        }
      }
      if (pps > 0 && max_pages > 0) EXPECT_LT((splits - 1) * pps, max_pages) << "a split for the tail alone, max " << max_pages << " pps " << pps;
    }
  }
}
