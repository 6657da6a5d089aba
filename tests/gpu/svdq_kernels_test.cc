// The SVDq CUDA kernels against the CPU reference, on random data and awkward shapes:
// one page and many, GQA ratios 1 to 8, head dims 64 and 128, every schedule kind,
// page sizes 1 and 16, tails of 0, 1 and P-1 tokens, an odd batch. Outputs are written
// between guard regions that must stay untouched. Skipped where no CUDA device exists.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

#include "kernels/common/half.h"
#include "tests/common/device_buffer.h"
#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_attention_tc.h"
#include "kernels/svdq/svdq_cuda.h"
#include "kernels/svdq/svdq_ref.h"
#include "tests/common/svdq_data.h"

using namespace svdq::kernels;
using svdq::testing::DeviceBuffer;
using svdq::testing::HaveGpu;
using svdq::testing::MakeKeys;
using svdq::testing::MakeRope;

namespace {

#define SKIP_WITHOUT_GPU() \
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device"


SvdqLayout Layout(int width, int page, const std::string& s) {
  Schedule sched;
  EXPECT_TRUE(ParseSchedule(s, &sched).ok());
  SvdqLayout l;
  EXPECT_TRUE(MakeLayout(width, page, sched, &l).ok());
  return l;
}

const char* kSchedules[] = {"8,4,2,1,1,0,0,0", "8,2,0,0,0,0,0,0", "4,2,2,1,1,0,0,0", "3,3,3,0,0,0,0,0",
                            "8,8,8,8,8,8,8,8", "1,1,1,1,1,1,1,1", "0,0,4,0,2,0,0,1"};

// Per-page keys, means and bases (one basis per head, repeated per page) for encode tests.
struct EncodeCase {
  SvdqLayout l;
  int pages, kv;
  std::vector<float> keys, mean, basis;
};

EncodeCase MakeEncodeCase(int width, int P, const std::string& sched, int pages, int kv, uint32_t seed) {
  EncodeCase c{Layout(width, P, sched), pages, kv, {}, {}, {}};
  std::vector<std::vector<float>> head_keys(kv);
  std::vector<SvdqBasis> bases(kv);
  for (int h = 0; h < kv; ++h) {
    head_keys[h] = MakeKeys(static_cast<int64_t>(pages) * P, width, seed + h);
    EXPECT_TRUE(ComputeBasisRef(head_keys[h].data(), static_cast<int64_t>(pages) * P, width, true, &bases[h]).ok());
  }
  for (int p = 0; p < pages; ++p)
    for (int h = 0; h < kv; ++h) {
      auto b = head_keys[h].begin() + static_cast<int64_t>(p) * P * width;
      c.keys.insert(c.keys.end(), b, b + P * width);
      c.mean.insert(c.mean.end(), bases[h].mean.begin(), bases[h].mean.end());
      c.basis.insert(c.basis.end(), bases[h].vectors.begin(), bases[h].vectors.end());
    }
  return c;
}

// Two encoded records hold the same latents within the codec's tolerance. The projection
// sums in a different order (fused multiply-adds on the GPU), so a channel's min/max, hence its
// fp16 scale and zero, may move by an fp16 ulp; an ulp of the zero point can exceed a
// quantization step (a channel with a large offset and a small range), shifting that
// channel's codes. So codes are not compared one to one. Tolerance: every decoded latent
// within 1.01 steps plus 2e-3 of its magnitude (two fp16 ulps) of the reference's.
void ExpectSameLatents(const SvdqLayout& l, const uint8_t* a, const uint8_t* b, const std::string& what) {
  for (int ch = 0; ch < l.width; ++ch) {
    int j = l.RetainedIndex(ch);
    if (j < 0) continue;
    int grp = ch / l.group_size;
    float sa = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(a + l.scale_offset)[j]);
    float sb = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(b + l.scale_offset)[j]);
    float za = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(a + l.zero_offset)[j]);
    float zb = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(b + l.zero_offset)[j]);
    ASSERT_NEAR(sa, sb, 2e-3f * std::abs(sa) + 1e-6f) << what;
    ASSERT_NEAR(za, zb, 2e-3f * std::abs(za) + 1e-6f) << what;
    for (int t = 0; t < l.page_size; ++t) {
      int idx = t * l.group_size + (ch - grp * l.group_size);
      int ca = ReadCode(a + l.group_offset[grp], idx, l.bits[grp]);
      int cb = ReadCode(b + l.group_offset[grp], idx, l.bits[grp]);
      float va = za + ca * sa, vb = zb + cb * sb;
      ASSERT_LE(std::abs(va - vb), 1.01f * std::max(sa, sb) + 2e-3f * (std::abs(za) + std::abs(va)) + 1e-6f) << what;
    }
  }
}

TEST(SvdqKernels, EncodeMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (int width : {64, 128})
    for (int P : {1, 16})
      for (int pages : {1, 7})
        for (const char* s : kSchedules) {
          EncodeCase c = MakeEncodeCase(width, P, s, pages, 2, 100 + width + P);
          std::vector<uint8_t> ref(static_cast<size_t>(pages) * 2 * c.l.page_bytes);
          SvdqEncodeParams p{c.l, pages, 2, c.keys.data(), c.mean.data(), c.basis.data(), ref.data(), nullptr};
          ASSERT_TRUE(SvdqEncodeRef(p).ok());
          DeviceBuffer<float> dk(c.keys), dm(c.mean), db(c.basis);
          DeviceBuffer<uint8_t> dout(std::vector<uint8_t>(ref.size(), 0));
          DeviceBuffer<int32_t> flag(std::vector<int32_t>{0});
          SvdqEncodeParams g{c.l, pages, 2, dk.ptr(), dm.ptr(), db.ptr(), dout.ptr(), flag.ptr()};
          Status st = SvdqEncode(g, nullptr);
          ASSERT_TRUE(st.ok()) << st.message();
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          auto got = dout.Download();
          EXPECT_TRUE(dout.GuardsIntact());
          EXPECT_EQ(flag.Download()[0], 0);
          for (int rec = 0; rec < pages * 2; ++rec)
            ExpectSameLatents(c.l, &ref[static_cast<size_t>(rec) * c.l.page_bytes],
                              &got[static_cast<size_t>(rec) * c.l.page_bytes], s);
        }
}

// Tail pages encoded in place, as the decode step does: keys read from lanes of a bf16 tail
// [lanes, P, kv, W], only rows whose token completes the page, written to other pages of the
// pool, each with its own basis row. Pages of incomplete rows and pages no row names stay as
// they were.
TEST(SvdqKernels, EncodeTailsInPlaceMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (int width : {64, 128}) {
    const int P = 16, kv = 2, lanes = 3, pool = 6;
    SvdqLayout l = Layout(width, P, "8,4,2,1,1,0,0,0");
    // Two basis rows from real-ish keys; a tail per lane in bf16.
    EncodeCase c = MakeEncodeCase(width, P, "8,4,2,1,1,0,0,0", 2, kv, 7 + width);
    std::vector<uint16_t> tails(static_cast<size_t>(lanes) * P * kv * width);
    std::vector<float> keys = MakeKeys(static_cast<int64_t>(lanes) * P * kv, width, 31);
    for (size_t i = 0; i < tails.size(); ++i) tails[i] = FloatToBf16Bits(keys[i]);
    // mean/basis rows: c.mean is [page, kv, W] for 2 pages, i.e. 2 basis rows of [kv, W].
    const std::vector<int64_t> key_lane = {2, 0, 1}, last = {P - 1, 3, P - 1}, out_page = {5, 1, 0};
    const std::vector<int32_t> basis_row = {1, 0, 0};
    std::vector<uint8_t> ref(static_cast<size_t>(pool) * kv * l.page_bytes, 0xA5);
    SvdqEncodeParams p;
    p.layout = l;
    p.num_pages = 3;
    p.kv_heads = kv;
    p.keys_bf16 = tails.data();
    p.key_lane = key_lane.data();
    p.encode_if_last = last.data();
    p.out_page = out_page.data();
    p.mean = c.mean.data();
    p.basis = c.basis.data();
    p.basis_index = basis_row.data();
    p.out = ref.data();
    ASSERT_TRUE(SvdqEncodeRef(p).ok());
    DeviceBuffer<uint16_t> dt(tails);
    DeviceBuffer<int64_t> dl(key_lane), de(last), dp(out_page);
    DeviceBuffer<int32_t> dbi(basis_row);
    DeviceBuffer<float> dm(c.mean), db(c.basis);
    DeviceBuffer<uint8_t> dout(std::vector<uint8_t>(ref.size(), 0xA5));
    SvdqEncodeParams g = p;
    g.keys_bf16 = dt.ptr();
    g.key_lane = dl.ptr();
    g.encode_if_last = de.ptr();
    g.out_page = dp.ptr();
    g.basis_index = dbi.ptr();
    g.mean = dm.ptr();
    g.basis = db.ptr();
    g.out = dout.ptr();
    Status st = SvdqEncode(g, nullptr);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    auto got = dout.Download();
    EXPECT_TRUE(dout.GuardsIntact());
    for (int page = 0; page < pool; ++page)
      for (int h = 0; h < kv; ++h) {
        const size_t at = (static_cast<size_t>(page) * kv + h) * l.page_bytes;
        const bool written = page == 5 || page == 0;  // rows 0 and 2 complete their pages
        if (!written) {
          for (int i = 0; i < l.page_bytes; ++i) ASSERT_EQ(got[at + i], 0xA5) << "page " << page << " was written";
          continue;
        }
        ASSERT_NE(ref[at], 0xA5);
        ExpectSameLatents(l, &ref[at], &got[at], "tail");
      }
  }
}

TEST(SvdqKernels, EncodeFlagsNonFiniteKeys) {
  SKIP_WITHOUT_GPU();
  EncodeCase c = MakeEncodeCase(64, 16, "8,2,0,0,0,0,0,0", 2, 1, 5);
  c.keys[16 * 64 + 5] = NAN;  // page 1
  DeviceBuffer<float> dk(c.keys), dm(c.mean), db(c.basis);
  DeviceBuffer<uint8_t> dout(std::vector<uint8_t>(2 * c.l.page_bytes, 0xFF));
  DeviceBuffer<int32_t> flag(std::vector<int32_t>{0});
  SvdqEncodeParams g{c.l, 2, 1, dk.ptr(), dm.ptr(), db.ptr(), dout.ptr(), flag.ptr()};
  ASSERT_TRUE(SvdqEncode(g, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(flag.Download()[0], 1);
  auto got = dout.Download();
  for (int i = 0; i < c.l.page_bytes; ++i) ASSERT_EQ(got[c.l.page_bytes + i], 0) << "bad page must be zeroed";
}

TEST(SvdqKernels, DecodeMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (int width : {64, 128})
    for (int P : {1, 16})
      for (const char* s : kSchedules) {
        const int pages = 5, kv = 3;
        EncodeCase c = MakeEncodeCase(width, P, s, pages, kv, 7);
        std::vector<uint8_t> bytes(static_cast<size_t>(pages) * kv * c.l.page_bytes);
        SvdqEncodeParams e{c.l, pages, kv, c.keys.data(), c.mean.data(), c.basis.data(), bytes.data(), nullptr};
        ASSERT_TRUE(SvdqEncodeRef(e).ok());
        std::vector<float> cos_t, sin_t;
        MakeRope(pages * P + 1, width, 10000.0, &cos_t, &sin_t);
        std::vector<int32_t> pos(pages);
        for (int p = 0; p < pages; ++p) pos[p] = p * P;
        std::vector<float> ref(c.keys.size());
        SvdqDecodeParams d{c.l, pages, kv, bytes.data(), c.mean.data(), c.basis.data(), pos.data(),
                           cos_t.data(), sin_t.data(), ref.data()};
        ASSERT_TRUE(SvdqDecodeRef(d).ok());
        DeviceBuffer<uint8_t> dpages(bytes);
        DeviceBuffer<float> dm(c.mean), db(c.basis), dc(cos_t), ds(sin_t), dout(std::vector<float>(ref.size(), 0.f));
        DeviceBuffer<int32_t> dpos(pos);
        SvdqDecodeParams g{c.l, pages, kv, dpages.ptr(), dm.ptr(), db.ptr(), dpos.ptr(), dc.ptr(), ds.ptr(), dout.ptr()};
        ASSERT_TRUE(SvdqDecode(g, nullptr).ok());
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        auto got = dout.Download();
        EXPECT_TRUE(dout.GuardsIntact());
        // Tolerance: 1e-4 absolute + 1e-4 relative (fp32 sums in a different order).
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_TRUE(std::isfinite(got[i]));
          ASSERT_NEAR(got[i], ref[i], 1e-4f + 1e-4f * std::abs(ref[i])) << s << " at " << i;
        }
      }
}

struct AttnCase {
  int width, P, kv, group, batch;
  std::string sched;
  std::vector<int> pages, tails;
};

// Which kernel SvdqAttention should take: the warp-stream kernel, the block mma kernel
// (rope_inv_freq given), the WMMA one (tables only), or the CUDA-core one.
// kWarp: the warp-stream kernel as dispatched (its warpgroup rebuild at head dim 128 from 6
// k-steps on); kWarpSync: the same kernel with mma.sync rebuilds only.
enum class Path { kWarp, kWarpSync, kMma, kWmma, kCudaCores };

// Values in pages of format vf read in place, the tail's from a page of its own (the server's
// layout); kBf16 with in_place false: the bf16 value pages and a gathered bf16 tail.
struct InPlaceValues {
  bool on = false;
  KvFormat format = KvFormat::kBf16;
};

// Sparse attention (issue 17): each (sequence, KV head) attends to `keep` random pages below
// its last `recent` pages (ascending), then the recent ones and the tail.
struct SparsePages {
  bool on = false;
  int keep = 0, recent = 0;
  bool overlap_setup = false;  // launched as a programmatic dependent (SvdqAttentionParams::overlap_setup)
  bool prompt_row0 = false;    // sequence 0 a prompt row: no selection, every page (past the planned split)
};

void RunAttention(const AttnCase& ac, uint32_t seed, int pages_per_split = 0, Path path = Path::kMma,
                  InPlaceValues in_place = {}, SparsePages sparse = {}) {
  const bool tensor_cores = path != Path::kCudaCores;
  const SvdqLayout l = Layout(ac.width, ac.P, ac.sched);
  const int W = ac.width, P = ac.P, kv = ac.kv, heads = kv * ac.group, B = ac.batch;
  int max_pages = 0, pool_pages = 0;
  for (int b = 0; b < B; ++b) {
    max_pages = std::max(max_pages, ac.pages[b]);
    pool_pages += ac.pages[b];
  }
  std::vector<float> cos_t, sin_t;
  MakeRope((max_pages + 1) * P + 1, W, 10000.0, &cos_t, &sin_t);
  std::vector<float> inv_freq(W / 2);
  for (int i = 0; i < W / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / W));
  std::vector<uint8_t> pool(static_cast<size_t>(std::max(pool_pages, 1)) * kv * l.page_bytes, 0);
  std::vector<int32_t> table(static_cast<size_t>(B) * std::max(max_pages, 1), 0), np(ac.pages.begin(), ac.pages.end()),
      tl(ac.tails.begin(), ac.tails.end());
  std::vector<float> means, bases;
  // Pool pages are handed out from the end, so page ids are not in sequence order.
  int next = pool_pages - 1;
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < kv; ++h) {
      auto keys = MakeKeys(std::max(ac.pages[b] * P, 2), W, seed + 31 * b + h);
      SvdqBasis basis;
      ASSERT_TRUE(ComputeBasisRef(keys.data(), std::max(ac.pages[b] * P, 2), W, true, &basis).ok());
      means.insert(means.end(), basis.mean.begin(), basis.mean.end());
      bases.insert(bases.end(), basis.vectors.begin(), basis.vectors.end());
    }
    for (int p = 0; p < ac.pages[b]; ++p) table[static_cast<size_t>(b) * std::max(max_pages, 1) + p] = next--;
  }
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < kv; ++h) {
      auto keys = MakeKeys(std::max(ac.pages[b] * P, 2), W, seed + 31 * b + h);
      for (int p = 0; p < ac.pages[b]; ++p) {
        int pid = table[static_cast<size_t>(b) * std::max(max_pages, 1) + p];
        SvdqEncodeParams e{l, 1, 1, &keys[static_cast<size_t>(p) * P * W], &means[(static_cast<size_t>(b) * kv + h) * W],
                           &bases[(static_cast<size_t>(b) * kv + h) * W * W],
                           &pool[(static_cast<size_t>(pid) * kv + h) * l.page_bytes], nullptr};
        ASSERT_TRUE(SvdqEncodeRef(e).ok());
      }
    }
  auto values = svdq::testing::RandomBf16(static_cast<size_t>(std::max(pool_pages, 1)) * kv * P * W, seed + 1);
  // In place: every sequence's tail values sit in page pool_pages + b after the full pages;
  // codes random (finite), scales random.
  const size_t value_rows = static_cast<size_t>(pool_pages + B) * kv * P;
  std::vector<uint8_t> value_bytes(value_rows * KvRowBytes(in_place.format, W));
  std::vector<uint16_t> value_scales(value_rows * (W / 32) + 1);
  std::vector<int64_t> tail_page(B);
  if (in_place.on) {
    std::mt19937 rng(seed + 7);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> unit(0.1f, 1.f);
    for (auto& x : value_bytes) {
      x = static_cast<uint8_t>(byte(rng));
      if (in_place.format == KvFormat::kFp8 && (x & 0x7F) == 0x7F) x ^= 1;
      if (in_place.format == KvFormat::kBf16) x &= 0xBF;  // bf16 bytes: exponent <= 2^(+1), finite
    }
    for (auto& s : value_scales) s = FloatToBf16Bits(unit(rng) / 64.f);
    for (int b = 0; b < B; ++b) tail_page[b] = pool_pages + b;
  }
  auto tail_k = svdq::testing::RandomBf16(static_cast<size_t>(B) * kv * P * W, seed + 2);
  auto tail_v = svdq::testing::RandomBf16(static_cast<size_t>(B) * kv * P * W, seed + 3);
  auto q = svdq::testing::RandomBf16(static_cast<size_t>(B) * heads * W, seed + 4, 0.3f);
  std::vector<float> ref(static_cast<size_t>(B) * heads * W);
  SvdqAttentionParams a;
  a.layout = l;
  a.batch = B;
  a.num_heads = heads;
  a.kv_heads = kv;
  a.max_pages = std::max(max_pages, 1);
  a.sm_scale = 1.f / std::sqrt(float(W));
  a.q = q.data();
  a.key_pages = pool.data();
  a.value_pages = values.data();
  a.page_table = table.data();
  a.num_pages = np.data();
  a.mean = means.data();
  a.basis = bases.data();
  a.tail_keys = tail_k.data();
  a.tail_values = tail_v.data();
  a.tail_len = tl.data();
  a.rope_cos = cos_t.data();
  a.rope_sin = sin_t.data();
  a.out = ref.data();
  if (in_place.on) {
    a.value_pages = value_bytes.data();
    a.value_format = in_place.format;
    a.value_scales = value_scales.data();
    a.tail_value_page = tail_page.data();
  }
  std::vector<int32_t> sp_pages(static_cast<size_t>(B) * kv * std::max(sparse.keep, 1), -1),
      sp_count(static_cast<size_t>(B) * kv, 0), sp_recent(B, 0);
  if (sparse.on) {
    std::mt19937 rng(seed + 9);
    for (int b = 0; b < B; ++b) {
      sp_recent[b] = b == 0 && sparse.prompt_row0 ? 0 : std::max(0, ac.pages[b] - sparse.recent);
      for (int h = 0; h < kv; ++h) {
        std::vector<int32_t> all(sp_recent[b]);
        for (int i = 0; i < sp_recent[b]; ++i) all[i] = i;
        std::shuffle(all.begin(), all.end(), rng);
        const int n = std::min(sparse.keep, sp_recent[b]);
        std::sort(all.begin(), all.begin() + n);
        sp_count[b * kv + h] = n;
        std::copy(all.begin(), all.begin() + n, sp_pages.begin() + (static_cast<size_t>(b) * kv + h) * sparse.keep);
      }
    }
    a.sparse_pages = sp_pages.data();
    a.sparse_count = sp_count.data();
    a.sparse_recent = sp_recent.data();
    a.sparse_stride = std::max(sparse.keep, 1);
    a.sparse_max_pages = sparse.keep + sparse.recent;
  }
  Status st = SvdqAttentionRef(a);
  ASSERT_TRUE(st.ok()) << st.message();

  DeviceBuffer<uint16_t> dq(q), dv(values), dtk(tail_k), dtv(tail_v), dvs(value_scales);
  DeviceBuffer<uint8_t> dvb(value_bytes);
  DeviceBuffer<int64_t> dtp(tail_page);
  DeviceBuffer<uint8_t> dpool(pool);
  DeviceBuffer<int32_t> dtable(table), dnp(np), dtl(tl);
  DeviceBuffer<float> dm(means), db(bases), dc(cos_t), ds(sin_t), dinv(inv_freq);
  DeviceBuffer<float> dout(std::vector<float>(ref.size(), 0.f));
  DeviceBuffer<int32_t> dsp(sp_pages), dsc(sp_count), dsr(sp_recent);
  SvdqAttentionParams g = a;
  g.overlap_setup = sparse.overlap_setup;
  if (sparse.on) {
    g.sparse_pages = dsp.ptr();
    g.sparse_count = dsc.ptr();
    g.sparse_recent = dsr.ptr();
  }
  if (path == Path::kMma) {
    g.rope_inv_freq = dinv.ptr();
    g.kernel = SvdqAttentionParams::Kernel::kBlockMma;
    ASSERT_TRUE(SvdqAttentionMmaSupported(g)) << "the mma kernel should take this shape";
  } else if (path == Path::kWarp || path == Path::kWarpSync) {
    g.kernel = path == Path::kWarp ? SvdqAttentionParams::Kernel::kWarpStreams : SvdqAttentionParams::Kernel::kWarpStreamsSync;
    ASSERT_TRUE(SvdqAttentionWarpSupported(g)) << "the warp-stream kernel should take this shape";
  } else {
    g.kernel = SvdqAttentionParams::Kernel::kBlockMma;  // the WMMA or CUDA-core kernel
  }
  g.q = dq.ptr();
  g.key_pages = dpool.ptr();
  g.value_pages = dv.ptr();
  g.page_table = dtable.ptr();
  g.num_pages = dnp.ptr();
  g.mean = dm.ptr();
  g.basis = db.ptr();
  g.tail_keys = dtk.ptr();
  g.tail_values = dtv.ptr();
  g.tail_len = dtl.ptr();
  if (in_place.on) {
    g.value_pages = dvb.ptr();
    g.value_scales = dvs.ptr();
    g.tail_value_page = dtp.ptr();
  }
  g.rope_cos = dc.ptr();
  g.rope_sin = ds.ptr();
  g.out = dout.ptr();
  g.pages_per_split = pages_per_split;
  g.use_tensor_cores = tensor_cores;
  DeviceBuffer<float> ws(std::vector<float>(std::max<size_t>(SvdqAttentionWorkspaceFloats(g), 1), 0.f));
  g.workspace = pages_per_split > 0 ? ws.ptr() : nullptr;
  st = SvdqAttention(g, nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  auto got = dout.Download();
  EXPECT_TRUE(dout.GuardsIntact());
  // Tolerance: CUDA-core path 2e-3 absolute + 1e-2 relative (fast exp, fp32 vs fp64
  // accumulation); tensor-core paths 5e-3 + 2e-2, as the key rebuild takes TF32 (WMMA) or
  // fp16 (mma) inputs, 10-bit mantissas, for the latents and the basis; the mma kernel
  // also rotates and scores in fp16 and computes its rotations instead of reading tables.
  const float tol_abs = tensor_cores ? 5e-3f : 2e-3f, tol_rel = tensor_cores ? 2e-2f : 1e-2f;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << i;
    ASSERT_NEAR(got[i], ref[i], tol_abs + tol_rel * std::abs(ref[i]))
        << ac.sched << " width " << W << " P " << P << " group " << ac.group << " split " << pages_per_split << " at " << i;
  }
  if (path == Path::kWarp || path == Path::kWarpSync) {
    // V_r's fp16 copy (basis_half), half the bytes, gives the same output bit for bit.
    std::vector<uint16_t> half(static_cast<size_t>(B) * kv * W * l.retained);
    PackAttentionBasisHalf(l, bases.data(), static_cast<int64_t>(B) * kv, half.data());
    DeviceBuffer<uint16_t> dh(half);
    DeviceBuffer<float> dout_half(std::vector<float>(ref.size(), 0.f));
    g.basis_half = dh.ptr();
    g.out = dout_half.ptr();
    st = SvdqAttention(g, nullptr);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    auto got_half = dout_half.Download();
    EXPECT_TRUE(dh.GuardsIntact());
    ASSERT_EQ(std::memcmp(got_half.data(), got.data(), got.size() * sizeof(float)), 0)
        << ac.sched << " width " << W << " P " << P << " group " << ac.group << " split " << pages_per_split
        << ": the fp16 basis changed the output";
  }
}

TEST(SvdqKernels, AttentionMatchesReference) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 1000;
  for (int width : {64, 128})
    for (int group : {1, 2, 4, 8})
      for (const char* s : {"8,4,2,1,1,0,0,0", "8,2,0,0,0,0,0,0", "3,3,3,0,0,0,0,0", "0,0,4,0,2,0,0,1"})
        for (int split : {0, 2, 4})
          for (Path path : {Path::kWarp, Path::kMma, Path::kWmma, Path::kCudaCores}) {
            RunAttention({width, 16, 2, group, 3, s, {1, 9, 4}, {0, 1, 15}}, seed++, split, path);
          }
}

// The warp-stream kernel: head dims 128 and 64, pages of 16, 32 and 64 tokens, tails of 0, 1, 15
// and P - 1 tokens (several tiles of tail), GQA 1-8, schedules from 0.5 to 8 bits, splits whose
// ranges end mid-sequence, a long context (positions past 38k), and in-place tail values.
TEST(SvdqKernels, AttentionWarpStreams) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 5000;
  for (int P : {16, 32, 64})
    for (const char* s : {"8,4,2,1,1,0,0,0", "8,2,0,0,0,0,0,0", "3,3,1,0,0,0,0,3", "8,8,8,8,4,4,4,4"})
      for (int split : {0, 3}) {
        RunAttention({128, P, 2, 4, 4, s, {1, 9, 4, 0}, {0, 1, 15, P - 1}}, seed++, split, Path::kWarp);
        RunAttention({128, P, 1, 8, 2, s, {6, 2}, {P - 1, 3}}, seed++, split, Path::kWarp);
      }
  RunAttention({128, 16, 8, 1, 2, "8,2,0,0,0,0,0,0", {33, 0}, {5, 9}}, seed++, 4, Path::kWarp);
  RunAttention({128, 64, 2, 4, 1, "8,4,2,1,1,0,0,0", {600}, {33}}, seed++, 0, Path::kWarp);
  RunAttention({128, 64, 2, 4, 1, "8,2,0,0,0,0,0,0", {600}, {33}}, seed++, 37, Path::kWarp);
  RunAttention({128, 16, 2, 4, 3, "8,4,2,1,1,0,0,0", {5, 0, 9}, {3, 7, 0}}, seed++, 0, Path::kWarp, {true, KvFormat::kBf16});
  RunAttention({128, 16, 2, 4, 3, "8,2,0,0,0,0,0,0", {40, 1, 8}, {15, 0, 1}}, seed++, 4, Path::kWarp, {true, KvFormat::kBf16});
  // Head dim 64: two 8-channel schedule groups per k-step, each lane on its own group's bits; an
  // odd count of retained groups (5, 1) pads the last k-step.
  for (int P : {16, 32, 64})
    for (const char* s : {"4,2,2,1,1,0,0,0", "8,4,2,1,1,0,0,0", "8,2,0,0,0,0,0,0", "3,0,4,0,0,0,0,0", "0,0,0,0,0,0,0,8",
                          "8,8,8,8,8,8,8,8"})
      for (int split : {0, 3}) {
        RunAttention({64, P, 3, 3, 4, s, {1, 9, 4, 0}, {0, 1, 15, P - 1}}, seed++, split, Path::kWarp);
        RunAttention({64, P, 1, 8, 2, s, {6, 2}, {P - 1, 3}}, seed++, split, Path::kWarp);
      }
  RunAttention({64, 64, 2, 4, 1, "4,2,2,1,1,0,0,0", {600}, {33}}, seed++, 37, Path::kWarp);
  // Head dim 128, 5 k-steps whose pair-mode stages do not fit (8 bits each): the 4-warp instance.
  RunAttention({128, 16, 2, 4, 3, "8,8,8,8,8,0,0,0", {9, 1, 4}, {0, 15, 3}}, seed++, 3, Path::kWarp);
  // The warpgroup rebuild at 6, 7 and 8 k-steps (the tail-keeping schedules), with step counts
  // that leave some of the 4 warps without a tile, tails of several tiles, and a long context;
  // and the same kernel with mma.sync rebuilds at 8 k-steps.
  for (const char* s : {"4,2,2,2,2,2,1,1", "8,4,2,2,2,2,1,0", "4,2,2,2,2,2,0,0"})
    for (int split : {0, 3}) {
      RunAttention({128, 16, 2, 4, 3, s, {9, 1, 4}, {0, 15, 3}}, seed++, split, Path::kWarp);
      RunAttention({128, 64, 1, 8, 2, s, {5, 2}, {63, 17}}, seed++, split, Path::kWarp);
    }
  RunAttention({128, 64, 2, 4, 1, "4,2,2,2,2,2,1,1", {600}, {33}}, seed++, 37, Path::kWarp);
  RunAttention({128, 16, 2, 4, 3, "4,2,2,2,2,2,1,1", {9, 1, 4}, {0, 15, 3}}, seed++, 3, Path::kWarpSync);
  // The server's layout at the default schedule: tail values read in place.
  RunAttention({128, 16, 2, 4, 3, "4,2,2,2,2,2,1,1", {5, 0, 9}, {3, 7, 0}}, seed++, 0, Path::kWarp, {true, KvFormat::kBf16});
  RunAttention({128, 64, 2, 4, 3, "4,2,2,2,2,2,1,1", {40, 1, 8}, {15, 0, 63}}, seed++, 4, Path::kWarp, {true, KvFormat::kBf16});
  RunAttention({64, 16, 3, 3, 3, "4,2,2,1,1,0,0,0", {40, 1, 8}, {15, 0, 1}}, seed++, 4, Path::kWarp, {true, KvFormat::kBf16});
}

// Sparse attention: the warp-stream kernel attends to listed pages (positions their own) and
// the recent ones, as the reference does; with splits, pages of 16 and 64, GQA 4 and 8, lists
// shorter than the context, empty lists, and a sequence with no pages.
TEST(SvdqKernels, AttentionSparsePages) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 7000;
  for (int P : {16, 64})
    for (int split : {0, 2, 5}) {
      RunAttention({128, P, 2, 4, 4, "4,2,2,1,1,0,0,0", {40, 3, 9, 0}, {0, 5, P - 1, 7}}, seed++, split, Path::kWarp, {},
                   {true, 6, 2});
      RunAttention({128, P, 1, 8, 2, "8,4,2,1,1,0,0,0", {700, 12}, {P - 2, 0}}, seed++, split, Path::kWarp, {},
                   {true, 20, 3});
      RunAttention({64, P, 3, 3, 2, "4,2,2,1,1,0,0,0", {30, 2}, {1, 3}}, seed++, split, Path::kWarp, {}, {true, 5, 1});
    }
  // The default schedule (8 k-steps: the warpgroup rebuild) over page lists, with in-place tails,
  // launched plainly and as a programmatic dependent (the server's launch).
  for (int P : {16, 64})
    for (bool overlap : {false, true})
      RunAttention({128, P, 2, 4, 4, "4,2,2,2,2,2,1,1", {40, 3, 9, 0}, {0, 5, P - 1, 7}}, seed++, 2, Path::kWarp,
                   {true, KvFormat::kBf16}, {true, 6, 2, overlap});
  // A prompt row (sequence 0: every one of its 40 pages and its tail) in a step whose split is
  // planned for lists of 8 pages: the last split takes the overflow.
  for (int split : {2, 3})
    RunAttention({128, 16, 2, 4, 3, "4,2,2,1,1,0,0,0", {40, 30, 9}, {5, 3, 0}}, seed++, split, Path::kWarp, {},
                 {true, 6, 2, true, true});
  // In-place tail values and no recent pages at all (recent 0).
  RunAttention({128, 16, 2, 4, 3, "8,2,0,0,0,0,0,0", {40, 1, 8}, {15, 0, 1}}, seed++, 4, Path::kWarp,
               {true, KvFormat::kBf16}, {true, 7, 0});
}

TEST(SvdqKernels, AttentionAwkwardShapes) {
  SKIP_WITHOUT_GPU();
  RunAttention({64, 1, 1, 3, 1, "8,8,8,8,8,8,8,8", {97}, {0}}, 1);      // page size 1, 97 pages
  RunAttention({64, 16, 3, 3, 1, "8,2,0,0,0,0,0,0", {0}, {7}}, 2);      // tail only
  RunAttention({128, 16, 8, 4, 5, "4,2,2,1,1,0,0,0", {1, 2, 3, 0, 17}, {15, 0, 1, 14, 3}}, 3);
  RunAttention({128, 32, 1, 8, 2, "8,4,2,1,1,0,0,0", {64, 1}, {31, 0}}, 4);  // 2k tokens
  RunAttention({128, 16, 2, 4, 3, "8,4,2,1,1,0,0,0", {64, 8, 0}, {0, 5, 9}}, 5, 8);  // split boundary = tail
  RunAttention({64, 1, 1, 3, 1, "8,2,0,0,0,0,0,0", {97}, {0}}, 6, 16);
  // Tensor-core path: pages of 32 and 64 tokens, chunks that end mid-split.
  RunAttention({128, 32, 2, 4, 2, "8,4,2,1,1,0,0,0", {7, 3}, {31, 2}}, 7, 3);
  RunAttention({128, 64, 2, 8, 2, "8,2,0,0,0,0,0,0", {5, 1}, {0, 63}}, 8, 2);
  RunAttention({64, 16, 3, 2, 3, "0,0,4,0,2,0,0,1", {13, 5, 0}, {3, 0, 1}}, 9, 5);
  // mma kernel: GQA 16 (both row halves of the fragments), pages of 8, more pages than its
  // page-id window (1,200 > 512, refilled twice), long contexts (positions past 38k, where
  // the rotations are advanced chunk to chunk), an odd batch with a split boundary at a tail.
  RunAttention({128, 16, 1, 16, 2, "8,4,2,1,1,0,0,0", {6, 3}, {5, 15}}, 11, 0);
  RunAttention({128, 8, 2, 4, 3, "8,8,4,4,2,2,1,1", {17, 8, 1}, {7, 0, 3}}, 12, 4);
  RunAttention({64, 1, 1, 4, 1, "8,4,0,0,0,0,0,0", {1200}, {0}}, 13, 0);
  RunAttention({128, 64, 2, 4, 1, "8,4,2,1,1,0,0,0", {600}, {33}}, 14, 0);
  RunAttention({128, 64, 2, 4, 1, "8,4,2,1,1,0,0,0", {600}, {33}}, 15, 37);
  RunAttention({128, 16, 2, 4, 3, "8,2,0,0,0,0,0,0", {64, 8, 0}, {0, 5, 9}}, 16, 8);
}

TEST(SvdqKernels, AttentionValuesInPlaceEveryFormat) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 3000;
  for (KvFormat f : {KvFormat::kBf16, KvFormat::kFp8, KvFormat::kInt8, KvFormat::kInt4})
    for (int width : {64, 128}) {
      RunAttention({width, 16, 2, 4, 3, "8,4,2,1,1,0,0,0", {5, 0, 9}, {3, 7, 0}}, seed++, 0, Path::kMma, {true, f});
      RunAttention({width, 16, 2, 4, 3, "8,2,0,0,0,0,0,0", {40, 1, 8}, {15, 0, 1}}, seed++, 4, Path::kMma, {true, f});
    }
  // Quantized values need the mma kernel: the others refuse rather than misread them.
  SvdqAttentionParams p;
  p.layout = Layout(128, 16, "8,4,2,1,1,0,0,0");
  p.batch = 1;
  p.num_heads = p.kv_heads = 1;
  p.value_format = KvFormat::kInt4;
  uint16_t dummy16 = 0;
  float dummyf = 0;
  int32_t dummy32 = 0;
  uint8_t dummy8 = 0;
  p.q = &dummy16;
  p.out = &dummyf;
  p.page_table = p.num_pages = p.tail_len = &dummy32;
  p.mean = p.basis = p.rope_cos = p.rope_sin = &dummyf;
  p.value_scales = &dummy16;
  p.key_pages = &dummy8;
  p.value_pages = &dummy8;
  p.max_pages = 1;
  EXPECT_FALSE(SvdqAttention(p, nullptr).ok());  // no rope_inv_freq: not the mma kernel
}

}  // namespace

namespace {

// Centred Gram matrix (row-major n x n) of `tokens` keys of width n.
std::vector<float> GramOf(const std::vector<float>& keys, int64_t tokens, int n) {
  std::vector<double> mean(n, 0.0), g(static_cast<size_t>(n) * n, 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int c = 0; c < n; ++c) mean[c] += keys[t * n + c] / tokens;
  for (int64_t t = 0; t < tokens; ++t)
    for (int r = 0; r < n; ++r)
      for (int c = 0; c < n; ++c) g[r * n + c] += (keys[t * n + r] - mean[r]) * (keys[t * n + c] - mean[c]);
  return std::vector<float>(g.begin(), g.end());
}

}  // namespace

// The batched Jacobi eigensolver (the SVDq prefill basis on the device) against the fp64
// reference: the Gram matrices of realistic keys (a decaying spectrum), rank-deficient ones
// (fewer keys than channels), a diagonal matrix and one with a repeated eigenvalue, at n = 64
// and 128. Every result must be an eigendecomposition (A V = V diag(values), V orthonormal,
// values descending) with the reference's eigenvalues, to 1e-4 of the largest (fp32 Jacobi
// against fp64: the codec needs an orthonormal basis, not eigenvalues to the last bit);
// eigenvectors whose eigenvalue is separated from its neighbours must equal the reference's,
// sign included.
TEST(SvdqKernels, SymEigMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (int n : {64, 128}) {
    std::vector<float> all;
    auto add = [&](const std::vector<float>& m) { all.insert(all.end(), m.begin(), m.end()); };
    add(GramOf(MakeKeys(512, n, 11), 512, n));
    add(GramOf(MakeKeys(1400, n, 12, 0.2f), 1400, n));
    add(GramOf(MakeKeys(20, n, 13), 20, n));  // rank 19
    std::vector<float> diag(static_cast<size_t>(n) * n, 0.f), repeated(diag.size(), 0.f);
    std::mt19937 rng(14);
    std::normal_distribution<float> n01(0.f, 1.f);
    std::vector<float> u(n);
    for (float& x : u) x = n01(rng);
    for (int i = 0; i < n; ++i) {
      diag[i * n + i] = static_cast<float>((i * 37) % n);
      for (int j = 0; j < n; ++j) repeated[i * n + j] = (i == j ? 3.f : 0.f) + 0.1f * u[i] * u[j];
    }
    add(diag);
    add(repeated);
    const int batch = static_cast<int>(all.size() / (static_cast<size_t>(n) * n));
    std::vector<float> ref_vec(all.size()), ref_val(static_cast<size_t>(batch) * n);
    SymEigParams r;
    r.matrices = all.data();
    r.vectors = ref_vec.data();
    r.values = ref_val.data();
    r.batch = batch;
    r.n = n;
    ASSERT_TRUE(SymEigDescendingRef(r).ok());
    DeviceBuffer<float> m(all), vec(std::vector<float>(all.size(), 0.f)), val(std::vector<float>(ref_val.size(), 0.f));
    SymEigParams p = r;
    p.matrices = m.ptr();
    p.vectors = vec.ptr();
    p.values = val.ptr();
    Status st = SymEigDescending(p, nullptr);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ASSERT_TRUE(vec.GuardsIntact() && val.GuardsIntact());
    const std::vector<float> gv = vec.Download(), ge = val.Download();
    for (int b = 0; b < batch; ++b) {
      const std::string what = "n " + std::to_string(n) + " matrix " + std::to_string(b);
      const float* A = all.data() + static_cast<size_t>(b) * n * n;
      const float* V = gv.data() + static_cast<size_t>(b) * n * n;
      const float* R = ref_vec.data() + static_cast<size_t>(b) * n * n;
      const float* e = ge.data() + static_cast<size_t>(b) * n;
      const float* re = ref_val.data() + static_cast<size_t>(b) * n;
      double norm = 0;
      for (int i = 0; i < n * n; ++i) norm += static_cast<double>(A[i]) * A[i];
      norm = std::sqrt(norm);
      const double scale = std::max(std::abs(re[0]), std::abs(re[n - 1]));
      double resid = 0;
      for (int j = 0; j < n; ++j) {
        if (j > 0) ASSERT_GE(e[j - 1], e[j]) << what << " values not descending at " << j;
        ASSERT_NEAR(e[j], re[j], 1e-4 * scale) << what << " value " << j;
        for (int k = 0; k <= j; ++k) {
          double dot = 0;
          for (int i = 0; i < n; ++i) dot += static_cast<double>(V[i * n + j]) * V[i * n + k];
          ASSERT_NEAR(dot, j == k ? 1.0 : 0.0, 1e-4) << what << " columns " << j << ", " << k;
        }
        for (int i = 0; i < n; ++i) {
          double av = 0;
          for (int k = 0; k < n; ++k) av += static_cast<double>(A[i * n + k]) * V[k * n + j];
          resid += (av - e[j] * V[i * n + j]) * (av - e[j] * V[i * n + j]);
        }
        const double gap = std::min(j > 0 ? re[j - 1] - re[j] : 1e30, j + 1 < n ? re[j] - re[j + 1] : 1e30);
        if (gap > 1e-2 * scale) {
          double dot = 0;
          for (int i = 0; i < n; ++i) dot += static_cast<double>(V[i * n + j]) * R[i * n + j];
          ASSERT_GT(dot, 1.0 - 1e-4) << what << " eigenvector " << j << " (gap " << gap / scale << ")";
        }
      }
      ASSERT_LE(std::sqrt(resid), 1e-4 * norm) << what << " residual";
    }
  }
}
