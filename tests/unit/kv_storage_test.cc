// The paged KV storage in every key and value mode: a prefill and decode steps written
// through PagedSeqView, read back and compared with the keys and values written, for two
// sequences in different lanes and scattered blocks. On the CPU (label cpu) and, where a
// GPU is present, on CUDA with the codec's kernels and the SVDq attention kernel (label gpu).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/svdq/svdq_ref.h"
#include "server/kv/paged_storage.h"
#ifdef SVDQ_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/attention/kv_write.h"
#endif

using namespace svdq::kv;

namespace {

constexpr int kLayers = 2, kKv = 2, kDim = 64, kPage = 16, kPrompt = 37, kTotal = 70, kHeads = 4;
// The second sequence runs kLag positions behind the first; its last token (position 63) fills a page.
constexpr int kLag = 6;

struct Case {
  const char* key;
  const char* value;
  const char* schedule;
  double key_tol, value_tol;  // relative Frobenius error of the stored (not fresh) positions
  const char* scope = "head";  // svdq basis scope
};

const Case kCases[] = {
    {"bf16", "bf16", "8,4,2,1,1,0,0,0", 1e-6, 1e-6},
    {"fp8", "fp8", "8,4,2,1,1,0,0,0", 0.06, 0.06},
    {"bf16", "int8", "8,4,2,1,1,0,0,0", 1e-6, 0.02},
    {"bf16", "int4", "8,4,2,1,1,0,0,0", 1e-6, 0.2},
    {"int4", "bf16", "8,4,2,1,1,0,0,0", 0.15, 1e-6},
    {"int2", "bf16", "8,4,2,1,1,0,0,0", 0.6, 1e-6},
    {"svdq", "bf16", "8,8,8,8,8,8,8,8", 0.02, 1e-6},
    {"svdq", "int4", "8,4,2,1,1,0,0,0", 0.25, 0.2},
    {"svdq", "bf16", "8,8,8,8,8,8,8,8", 0.02, 1e-6, "layer"},
    {"svdq", "int4", "8,4,2,1,1,0,0,0", 0.3, 0.2, "layer"},
};

struct Seq {
  std::vector<BlockId> blocks;
  int lane;
  at::Tensor k_pre, k, v;  // [kTotal, kKv, kDim] fp32
};

struct Tables {
  at::Tensor cos, sin, inv_freq;
};

Tables Rope(at::Device d, int64_t positions = 256) {
  at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, kDim, 2, at::kFloat) / static_cast<double>(kDim));
  at::Tensor ang = at::outer(at::arange(0, positions, at::kFloat), inv);
  at::Tensor emb = at::cat({ang, ang}, -1);
  return {emb.cos().to(d), emb.sin().to(d), inv.to(d)};
}

// Keys with a decaying spectrum in a random basis plus a mean: what SVDq is built for.
at::Tensor Keys(int64_t seed) {
  at::manual_seed(seed);
  at::Tensor basis = std::get<0>(at::linalg_qr(at::randn({kKv, kDim, kDim})));
  at::Tensor scale = at::exp(-at::arange(0, kDim, at::kFloat) / 8.0) * 3.0;
  at::Tensor z = at::randn({kTotal, kKv, kDim}) * scale;
  at::Tensor k = at::einsum("tkc,kdc->tkd", {z, basis});
  return k + at::randn({1, kKv, kDim}) * 0.5;
}

double RelErr(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.to(at::kCPU, at::kFloat), w = want.to(at::kCPU, at::kFloat);
  return (g - w).norm().item<double>() / std::max(w.norm().item<double>(), 1e-30);
}

// Writes both sequences' prompts, then decodes them token by token, alternately; after
// every write, reads back each layer and checks stored positions against the tolerance and
// the forward's own positions for equality. Returns the worst key error seen.
double RunCase(const Case& c, at::Device device, at::ScalarType dtype) {
  const Tables rope = Rope(device);
  StorageSpec spec;
  EXPECT_TRUE(ParseKeyMode(c.key, &spec.modes.key));
  EXPECT_TRUE(ParseValueMode(c.value, &spec.modes.value));
  EXPECT_TRUE(svdq::kernels::ParseSchedule(c.schedule, &spec.modes.schedule).ok());
  EXPECT_TRUE(ParseBasisScope(c.scope, &spec.modes.scope));
  spec.shape = {kLayers, kKv, kDim, kPage, static_cast<int>(c10::elementSize(dtype))};
  spec.num_blocks = 16;
  spec.lanes = 2;
  spec.device = device;
  spec.dtype = dtype;
  spec.rope_cos = rope.cos;
  spec.rope_sin = rope.sin;
  spec.rope_inv_freq = rope.inv_freq;  // the SVDq attention kernel's rotations (the mma kernel)
  PagedKvStorage storage(spec);

  std::vector<Seq> seqs(2);
  seqs[0].blocks = {3, 7, 1, 9, 12};
  seqs[1].blocks = {0, 2, 4, 5, 6};
  for (int i = 0; i < 2; ++i) {
    Seq& s = seqs[i];
    s.lane = 1 - i;
    s.k_pre = Keys(10 + i).to(device);
    s.k = svdq::models::ApplyRotaryHalf(s.k_pre, rope.cos, rope.sin, 0, at::kFloat);
    at::manual_seed(20 + i);
    s.v = at::randn({kTotal, kKv, kDim}).to(device);
  }
  double worst_key = 0;
  auto step = [&](Seq& s, int64_t pos0, int64_t T) {
    PagedSeqView view(&storage, s.blocks, pos0, s.lane);
    view.Reserve(pos0 + T);
    for (int l = 0; l < kLayers; ++l) {
      // Layers get different data (scaled), so a mix-up between layers shows.
      const double f = 1.0 + l;
      view.Write(l, pos0, (s.k_pre.narrow(0, pos0, T) * f).to(dtype), (s.k.narrow(0, pos0, T) * f).to(dtype),
                 (s.v.narrow(0, pos0, T) * f).to(dtype));
      auto [k, v] = view.Read(l, pos0 + T);  // [kKv, n, kDim]
      EXPECT_EQ(k.scalar_type(), dtype);
      at::Tensor kt = k.transpose(0, 1), vt = v.transpose(0, 1);
      // This forward's tokens come back as written.
      EXPECT_LT(RelErr(kt.narrow(0, pos0, T), (s.k.narrow(0, pos0, T) * f).to(dtype)), 1e-6);
      EXPECT_LT(RelErr(vt.narrow(0, pos0, T), (s.v.narrow(0, pos0, T) * f).to(dtype)), 1e-6);
      if (pos0 > 0) {
        // bf16 rounding of the inputs and RoPE in fp32 allow 1% on the GPU.
        const double slack = dtype == at::kFloat ? 1e-5 : 1e-2;
        const double ek = RelErr(kt.narrow(0, 0, pos0), s.k.narrow(0, 0, pos0) * f);
        const double ev = RelErr(vt.narrow(0, 0, pos0), s.v.narrow(0, 0, pos0) * f);
        EXPECT_LT(ek, c.key_tol + slack) << c.key << " keys, layer " << l << ", " << pos0 << " stored";
        EXPECT_LT(ev, c.value_tol + slack) << c.value << " values, layer " << l << ", " << pos0 << " stored";
        worst_key = std::max(worst_key, ek);
      }
      if (T == 1 && device.is_cuda() && (pos0 + 1) % kPage != 0) {
        // Where the storage attends itself (the decode kernels), it must agree with SDPA over
        // what is stored, this token included (a view that has no fresh tokens reads that).
        // (Not when this token completes its page: the kernel then reads the token's key from
        // the freshly encoded page, the stored view from the tail.)
        at::manual_seed(l);
        at::Tensor q = at::randn({1, kHeads, kDim}, k.options());
        at::Tensor o = view.Attend(l, q);
        if (o.defined()) {
          PagedSeqView stored(&storage, s.blocks, pos0 + T, s.lane);
          auto [sk, sv] = stored.Read(l, pos0 + T);
          at::Tensor ref = at::scaled_dot_product_attention(q.transpose(0, 1).to(at::kFloat),
                                                            sk.repeat_interleave(kHeads / kKv, 0).to(at::kFloat),
                                                            sv.repeat_interleave(kHeads / kKv, 0).to(at::kFloat));
          EXPECT_LT(RelErr(o.squeeze(0), ref.squeeze(1)), 0.03) << c.key << " attention at " << pos0;
        }
      }
    }
    view.SetLength(pos0 + T);
  };
  step(seqs[0], 0, kPrompt);
  step(seqs[1], 0, kPrompt - kLag);
  for (int64_t t = kPrompt; t < kTotal - 1; ++t) {
    step(seqs[0], t, 1);
    step(seqs[1], t - kLag, 1);
  }
  // The last token of both in one joint step: AttendMany over the pair equals each view's own
  // Attend (the same kernels, batched), and is taken wherever the storage attends itself.
  const int64_t p0 = kTotal - 1, p1 = kTotal - 1 - kLag;  // p1 fills its page
  PagedSeqView a(&storage, seqs[0].blocks, p0, seqs[0].lane), b(&storage, seqs[1].blocks, p1, seqs[1].lane);
  a.Reserve(p0 + 1);
  b.Reserve(p1 + 1);
  const std::string key(c.key), scope(c.scope);
  // The decode kernels serve every mode but layer-scope SVDq (head dim 64 here).
  const bool batched = device.is_cuda() && dtype == at::kBFloat16 && scope == "head";
  // Both tokens are written by one WriteMany (every mode), then read back as in `step`.
  auto rows = [&](const at::Tensor Seq::*field, double f) {
    return at::cat({(seqs[0].*field).narrow(0, p0, 1), (seqs[1].*field).narrow(0, p1, 1)}, 0) * f;
  };
  for (int l = 0; l < kLayers; ++l) {
    const double f = 1.0 + l;
    if (!a.WriteMany(l, rows(&Seq::k_pre, f).to(dtype), rows(&Seq::k, f).to(dtype), rows(&Seq::v, f).to(dtype),
                     {&a, &b})) {
      ADD_FAILURE() << c.key << "/" << c.value << ": WriteMany refused";
      continue;
    }
    for (auto [view, s, pos] : {std::make_tuple(&a, &seqs[0], p0), std::make_tuple(&b, &seqs[1], p1)}) {
      auto [k, v] = view->Read(l, pos + 1);
      at::Tensor kt = k.transpose(0, 1), vt = v.transpose(0, 1);
      EXPECT_LT(RelErr(kt.narrow(0, pos, 1), (s->k.narrow(0, pos, 1) * f).to(dtype)), 1e-6);
      EXPECT_LT(RelErr(vt.narrow(0, pos, 1), (s->v.narrow(0, pos, 1) * f).to(dtype)), 1e-6);
      const double slack = dtype == at::kFloat ? 1e-5 : 1e-2;
      EXPECT_LT(RelErr(kt.narrow(0, 0, pos), s->k.narrow(0, 0, pos) * f), c.key_tol + slack) << c.key << " WriteMany";
      EXPECT_LT(RelErr(vt.narrow(0, 0, pos), s->v.narrow(0, 0, pos) * f), c.value_tol + slack) << c.value << " WriteMany";
    }
    at::manual_seed(100 + l);
    at::Tensor q = at::randn({2, kHeads, kDim}, at::TensorOptions().device(device).dtype(dtype));
    at::Tensor many = a.AttendMany(l, q, {&a, &b});
    EXPECT_EQ(many.defined(), batched) << c.key << "/" << c.value << " (" << c.scope << " scope)";
    if (!many.defined()) continue;
    at::Tensor oa = a.Attend(l, q.narrow(0, 0, 1)), ob = b.Attend(l, q.narrow(0, 1, 1));
    EXPECT_TRUE(oa.defined() && ob.defined());
    if (!oa.defined() || !ob.defined()) continue;
    EXPECT_LT(RelErr(many[0], oa[0]), 1e-5) << c.key << " batched attention, sequence 0, layer " << l;
    EXPECT_LT(RelErr(many[1], ob[0]), 1e-5) << c.key << " batched attention, sequence 1, layer " << l;
  }
  return worst_key;
}

void RunAll(at::Device device, at::ScalarType dtype) {
  double int2 = 0, svdq_low = 0;
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::string("keys ") + c.key + " (" + c.schedule + "), values " + c.value);
    const double e = RunCase(c, device, dtype);
    std::printf("  keys %-5s (%s, %s scope), values %-5s: worst stored-key error %.4f\n", c.key, c.schedule, c.scope,
                c.value, e);
    if (std::string(c.key) == "int2") int2 = e;
    if (std::string(c.key) == "svdq" && std::string(c.schedule) == "8,4,2,1,1,0,0,0") svdq_low = e;
  }
  // On keys with a decaying spectrum, SVDq at 2.0 equivalent bits beats direct int2.
  EXPECT_LT(svdq_low, int2);
}

TEST(KvStorageCpu, EveryModeStoresWhatWasWritten) { RunAll(at::Device(at::kCPU), at::kFloat); }

// A key that is NaN or infinite cannot be encoded: its page is stored as zeros and its lane is
// flagged (the engine ends that sequence with an error), through the prefill path (Write) and
// the decode path (WriteMany), for that lane only; releasing the lane clears the flag. (Before,
// the CPU codec threw out of the whole step and the CUDA one zeroed the page silently.)
void RunNonFiniteKeys(at::Device device, at::ScalarType dtype) {
  const Tables rope = Rope(device);
  StorageSpec spec;
  ASSERT_TRUE(ParseKeyMode("int4", &spec.modes.key));
  ASSERT_TRUE(ParseValueMode("bf16", &spec.modes.value));
  spec.shape = {kLayers, kKv, kDim, kPage, 4};
  spec.num_blocks = 8;
  spec.lanes = 3;
  spec.device = device;
  spec.dtype = dtype;
  spec.shape.dtype_bytes = static_cast<int>(c10::elementSize(dtype));
  spec.rope_cos = rope.cos;
  spec.rope_sin = rope.sin;
  PagedKvStorage storage(spec);
  at::Tensor k_pre = Keys(4).to(device), k = svdq::models::ApplyRotaryHalf(k_pre, rope.cos, rope.sin, 0, at::kFloat);
  at::Tensor v = at::randn({kTotal, kKv, kDim}).to(device);
  k_pre = k_pre.to(dtype), k = k.to(dtype), v = v.to(dtype);
  at::Tensor bad_pre = k_pre.clone();
  bad_pre[3][1][7] = std::numeric_limits<float>::quiet_NaN();   // in the first page
  bad_pre[25][0][2] = std::numeric_limits<float>::infinity();    // in the second page
  const std::vector<BlockId> blocks_a = {0, 1}, blocks_b = {2, 3}, blocks_c = {4, 5};
  EXPECT_TRUE(storage.NonFiniteLanes().empty());
  {
    PagedSeqView a(&storage, blocks_a, 0, /*lane=*/0), b(&storage, blocks_b, 0, /*lane=*/1);
    a.Reserve(20);
    b.Reserve(20);
    for (int l = 0; l < kLayers; ++l) {
      a.Write(l, 0, bad_pre.narrow(0, 0, 20), k.narrow(0, 0, 20), v.narrow(0, 0, 20));  // page 0 encoded
      b.Write(l, 0, k_pre.narrow(0, 0, 20), k.narrow(0, 0, 20), v.narrow(0, 0, 20));
    }
  }
  EXPECT_EQ(storage.NonFiniteLanes(), std::vector<int>({0}));
  storage.ReleaseLane(0);
  EXPECT_TRUE(storage.NonFiniteLanes().empty());
  // Decode steps: lane 2 meets the infinity at position 25; the page encodes when position 31
  // is written, in a joint step with lane 1 (finite keys).
  {
    PagedSeqView c(&storage, blocks_c, 0, /*lane=*/2);
    c.Reserve(20);
    for (int l = 0; l < kLayers; ++l) c.Write(l, 0, k_pre.narrow(0, 0, 20), k.narrow(0, 0, 20), v.narrow(0, 0, 20));
  }
  for (int64_t pos = 20; pos < 32; ++pos) {
    PagedSeqView b(&storage, blocks_b, pos, 1), c(&storage, blocks_c, pos, 2);
    b.Reserve(pos + 1);
    c.Reserve(pos + 1);
    for (int l = 0; l < kLayers; ++l) {
      at::Tensor kp = at::cat({k_pre.narrow(0, pos, 1), bad_pre.narrow(0, pos, 1)});
      at::Tensor kk = at::cat({k.narrow(0, pos, 1), k.narrow(0, pos, 1)}), vv = at::cat({v.narrow(0, pos, 1), v.narrow(0, pos, 1)});
      ASSERT_TRUE(b.WriteMany(l, kp, kk, vv, {&b, &c}));
    }
    EXPECT_EQ(storage.NonFiniteLanes(), pos == 31 ? std::vector<int>({2}) : std::vector<int>()) << "position " << pos;
  }
}

TEST(KvStorageCpu, NonFiniteKeysFlagTheirLane) { RunNonFiniteKeys(at::Device(at::kCPU), at::kFloat); }

// A storage with SVDq keys on the prefill basis (bf16 values), 8 blocks, 2 lanes.
StorageSpec SvdqPrefillSpec(const Tables& rope, at::Device device, const char* schedule) {
  StorageSpec spec;
  EXPECT_TRUE(ParseKeyMode("svdq", &spec.modes.key));
  EXPECT_TRUE(ParseValueMode("bf16", &spec.modes.value));
  EXPECT_TRUE(svdq::kernels::ParseSchedule(schedule, &spec.modes.schedule).ok());
  spec.shape = {kLayers, kKv, kDim, kPage, 4};
  spec.num_blocks = 8;
  spec.lanes = 2;
  spec.device = device;
  spec.rope_cos = rope.cos;
  spec.rope_sin = rope.sin;
  spec.rope_inv_freq = rope.inv_freq;
  return spec;
}

// Sparse attention's page landmarks (kv_modes.h sparse_budget): every page that fills holds the
// int8 mean of its post-RoPE keys (within a step of kernels::QuantizeLandmark of the exact sum,
// which is summed in another order) and its scale, whether the page filled in a prompt written
// in chunks that end mid-page (PagedSeqView::Write) or in decode steps (WriteMany: the CUDA
// kernel on the GPU, ATen ops on the CPU); pages that did not fill keep what they held. Budgets
// too small for a chosen page and layer scope are refused.
// With a landmark rank R (kv_modes.h sparse_landmark_rank), a landmark is the int8 of the
// mean's R coordinates in the lane's basis instead, and that basis (fitted by the first
// forward) has orthonormal columns holding as much of those keys' energy as their R leading
// eigenvectors do; another lane's basis is untouched; a rank of the head dim or above is refused.
// With S landmarks a page (kv_modes.h sparse_landmark_subs), a page holds the S means of its
// slices of P / S keys (or their coordinates) under one scale, the slices that prompt chunks end
// in (mid-slice and at a slice's end) included; S that does not divide the page is refused.
void RunLandmarks(at::Device device, at::ScalarType dtype, int rank = 0, int subs = 1, int basis_tokens = 8192) {
  const Tables rope = Rope(device);
  StorageSpec spec = SvdqPrefillSpec(rope, device, "4,2,2,1,1,0,0,0");
  spec.dtype = dtype;
  spec.shape.dtype_bytes = static_cast<int>(c10::elementSize(dtype));
  spec.modes.sparse_budget = 100;  // pages of 16: the sink, 8 recent pages and one chosen need 160
  EXPECT_THROW(PagedKvStorage bad(spec), std::invalid_argument);
  spec.modes.sparse_budget = 256;
  spec.modes.scope = BasisScope::kLayer;
  EXPECT_THROW(PagedKvStorage bad(spec), std::invalid_argument);
  spec.modes.scope = BasisScope::kHead;
  spec.modes.sparse_landmark_rank = kDim;
  EXPECT_THROW(PagedKvStorage bad(spec), std::invalid_argument);
  spec.modes.sparse_landmark_rank = rank;
  spec.modes.sparse_landmark_subs = 3;  // does not divide the page
  EXPECT_THROW(PagedKvStorage bad(spec), std::invalid_argument);
  spec.modes.sparse_landmark_subs = subs;
  spec.modes.sparse_landmark_basis_tokens = basis_tokens;
  PagedKvStorage storage(spec);
  ASSERT_TRUE(storage.sparse());
  const int64_t W = rank > 0 ? rank : kDim, L = kPage / subs;
  ASSERT_EQ(storage.landmarks(0).size(-1), subs * W);
  for (int l = 0; l < kLayers; ++l) storage.landmarks(l).fill_(77);  // unfilled pages keep this
  at::Tensor k_pre = Keys(9).to(device), k = svdq::models::ApplyRotaryHalf(k_pre, rope.cos, rope.sin, 0, at::kFloat);
  at::Tensor v = at::randn({kTotal, kKv, kDim}).to(device);
  const std::vector<BlockId> blocks = {6, 2, 7, 0, 4};
  auto forward = [&](int64_t pos0, int64_t T) {
    PagedSeqView view(&storage, blocks, pos0, /*lane=*/1);
    view.Reserve(pos0 + T);
    for (int l = 0; l < kLayers; ++l) {
      const double f = 1.0 + l;
      auto part = [&](const at::Tensor& x) { return (x.narrow(0, pos0, T) * f).to(dtype); };
      if (T == 1 && pos0 > 0) ASSERT_TRUE(view.WriteMany(l, part(k_pre), part(k), part(v), {&view}));
      else view.Write(l, pos0, part(k_pre), part(k), part(v));
    }
  };
  forward(0, 21);   // ends mid-page 1
  forward(21, 3);   // ends at offset 8 of page 1 (a slice's end where S is 2 or 4)
  forward(24, 13);  // fills page 1, ends mid-page 2
  for (int64_t t = 37; t < kTotal; ++t) forward(t, 1);  // fills pages 2 and 3 by decode steps
  for (int l = 0; l < kLayers; ++l) {
    at::Tensor codes = storage.landmarks(l).to(at::kCPU), scales = storage.landmark_scales(l).to(at::kCPU);
    at::Tensor basis;  // [kKv, kDim, R] fp64: lane 1's
    if (rank > 0) {
      basis = storage.landmark_basis(l)[1].to(at::kCPU, at::kDouble);
      EXPECT_EQ(storage.landmark_basis(l)[0].abs().max().item<double>(), 0.0) << "lane 0 was not used";
      // The first forward's 21 keys, or the first basis_tokens of them.
      const int64_t fitted = std::min<int64_t>(21, basis_tokens);
      at::Tensor first = (k.narrow(0, 0, fitted) * (1.0 + l)).to(dtype).to(at::kCPU, at::kDouble).transpose(0, 1);  // [kKv, n, D]
      at::Tensor gram = first.transpose(1, 2).matmul(first);
      at::Tensor top = std::get<0>(at::linalg_eigh(gram)).flip({-1}).narrow(-1, 0, rank).sum(-1);  // [kKv]
      for (int h = 0; h < kKv; ++h) {
        at::Tensor eye = at::eye(rank, at::kDouble);
        EXPECT_LT((basis[h].transpose(0, 1).matmul(basis[h]) - eye).abs().max().item<double>(), 1e-4) << "layer " << l;
        const double held = first[h].matmul(basis[h]).pow(2).sum().item<double>();
        EXPECT_NEAR(held, top[h].item<double>(), 1e-4 * top[h].item<double>()) << "layer " << l << " head " << h;
      }
    }
    for (int pg = 0; pg < 4; ++pg) {
      // The keys as stored in the model's dtype, summed in fp64.
      at::Tensor keys = (k.narrow(0, pg * kPage, kPage) * (1.0 + l)).to(dtype).to(at::kCPU, at::kDouble);
      at::Tensor mean = keys.view({subs, L, kKv, kDim}).mean(1).transpose(0, 1);  // [kKv, S, kDim]: the slices'
      if (rank > 0) mean = at::matmul(mean, basis);  // [kKv, S, R]: their coordinates
      mean = mean.flatten(1);
      for (int h = 0; h < kKv; ++h) {
        const double want_scale = mean[h].abs().max().item<double>() / 127;
        const double scale = scales[blocks[pg]][h].item<double>();
        EXPECT_NEAR(scale, want_scale, 6e-4 * want_scale) << "page " << pg << " layer " << l;  // an fp16 scale
        at::Tensor got = codes[blocks[pg]][h].to(at::kDouble) * scale;
        EXPECT_LT((got - mean[h]).abs().max().item<double>(), 0.51 * want_scale + 1e-6) << "page " << pg << " layer " << l;
      }
    }
    EXPECT_EQ(codes[blocks[4]].eq(77).all().item<bool>(), true) << "page 4 has not filled";
  }
}

TEST(KvStorageCpu, PageLandmarksHoldEachFilledPagesMeanKey) { RunLandmarks(at::Device(at::kCPU), at::kFloat); }
TEST(KvStorageCpu, RankRLandmarksHoldTheMeansCoordinatesInTheLanesBasis) {
  RunLandmarks(at::Device(at::kCPU), at::kFloat, 16);
}
// A basis fitted on the first 16 of the first forward's 21 keys (sparse_landmark_basis_tokens):
// the R directions that hold most of those 16 keys' energy, whatever came after them.
TEST(KvStorageCpu, LandmarkBasisIsFittedOnTheFirstBasisTokens) {
  RunLandmarks(at::Device(at::kCPU), at::kFloat, 16, 1, /*basis_tokens=*/16);
  RunLandmarks(at::Device(at::kCPU), at::kFloat, 2, 4, /*basis_tokens=*/16);
}
TEST(KvStorageCpu, SubChunkLandmarksHoldEachSlicesMean) {
  RunLandmarks(at::Device(at::kCPU), at::kFloat, 0, 2);
  RunLandmarks(at::Device(at::kCPU), at::kFloat, 4, 4);
}

// Sparse decode attention where no kernel serves the step (PagedSeqView::Attend on the CPU):
// pages of 16, a 256-token budget (the sink, 7 chosen pages, the 8 recent ones). Each KV head
// has its own 7 pages whose post-RoPE keys lean on its query's direction (so that which pages
// the landmarks choose is beyond doubt), different pages for the two heads. The output must be
// attention over exactly the sink, those pages, the recent window and the tail (keys and values
// as stored, computed here in fp64), and differ from dense attention: with the fresh token
// starting page 25 and with it completing page 24 (encoded by its own write). A context shorter
// than the recent window, and a budget that covers the context, must give dense attention. The
// same with rank-16 landmarks (coordinates in the lane's basis: the keys' leading directions hold
// the hot pages' lean, so the same pages win). With the first layer dense (sparse_dense_layers),
// that layer keeps no landmarks and leaves its attention to the dense path (no sparse output),
// and the second chooses the same pages as before.
TEST(KvStorageCpu, SparseAttentionAttendsToTheChosenPagesOnly) {
  constexpr int64_t kMax = 25 * kPage + 1;
  const Tables rope = Rope(at::Device(at::kCPU), 512);
  at::manual_seed(17);
  at::Tensor w = at::randn({kKv, kDim});
  w = w / w.norm(2, -1, true);
  const std::vector<std::vector<int64_t>> hot = {{2, 4, 6, 9, 11, 13, 16}, {1, 3, 5, 8, 10, 14, 15}};
  at::Tensor k = at::randn({kMax, kKv, kDim}) * 0.5;
  for (int64_t g = 0; g < kKv; ++g)
    for (int64_t pg : hot[g]) k.narrow(0, pg * kPage, kPage).select(1, g).add_(w[g] * 4.0);
  // Pre-RoPE keys: the post-RoPE ones rotated back (sin negated).
  at::Tensor k_pre = svdq::models::ApplyRotaryHalf(k, rope.cos, -rope.sin, 0, at::kFloat);
  at::Tensor v = at::randn({kMax, kKv, kDim});
  at::Tensor q = (w.repeat_interleave(kHeads / kKv, 0) * 5.0).unsqueeze(0);  // [1, heads, D]
  int rank = 0;  // the landmarks' (kv_modes.h sparse_landmark_rank)
  int dense_layers = 0, layer = 0;  // kv_modes.h sparse_dense_layers; the layer that attends
  int64_t storage_bytes = 0;
  // A prompt of L - 1 tokens, then one decode step: its attention and the keys and values as stored.
  auto attend = [&](int64_t L, int budget, at::Tensor* keys, at::Tensor* values) {
    StorageSpec spec = SvdqPrefillSpec(rope, at::Device(at::kCPU), "8,8,8,8,8,8,8,8");
    spec.num_blocks = 32;
    spec.modes.sparse_budget = budget;
    spec.modes.sparse_landmark_rank = rank;
    spec.modes.sparse_dense_layers = dense_layers;
    PagedKvStorage storage(spec);
    storage_bytes = storage.bytes();
    for (int l = 0; l < kLayers; ++l) EXPECT_EQ(storage.landmarks(l).defined(), l >= dense_layers) << l;
    std::vector<BlockId> blocks;
    for (int64_t i = 0; i * kPage < L; ++i) blocks.push_back(static_cast<BlockId>((i * 7 + 3) % 32));  // scattered
    {
      PagedSeqView prompt(&storage, blocks, 0, /*lane=*/1);
      prompt.Reserve(L - 1);
      for (int l = 0; l < kLayers; ++l) prompt.Write(l, 0, k_pre.narrow(0, 0, L - 1), k.narrow(0, 0, L - 1), v.narrow(0, 0, L - 1));
    }
    PagedSeqView step(&storage, blocks, L - 1, /*lane=*/1);
    step.Reserve(L);
    at::Tensor out;
    for (int l = 0; l <= layer; ++l) {
      step.Write(l, L - 1, k_pre.narrow(0, L - 1, 1), k.narrow(0, L - 1, 1), v.narrow(0, L - 1, 1));
      out = step.Attend(l, q);
    }
    auto [rk, rv] = step.Read(layer, L);  // [kv, L, D] as stored
    *keys = rk.to(at::kDouble);
    *values = rv.to(at::kDouble);
    return out;
  };
  // Attention of the query heads over `positions` of each KV head, in fp64.
  auto reference = [&](const at::Tensor& keys, const at::Tensor& values, const std::vector<std::vector<int64_t>>& pos) {
    std::vector<at::Tensor> outs;
    for (int64_t h = 0; h < kHeads; ++h) {
      const int64_t g = h / (kHeads / kKv);
      at::Tensor idx = at::tensor(pos[g], at::kLong);
      at::Tensor kg = keys[g].index_select(0, idx), vg = values[g].index_select(0, idx);
      at::Tensor logits = kg.matmul(q[0][h].to(at::kDouble)) / std::sqrt(static_cast<double>(kDim));
      outs.push_back(at::softmax(logits, 0).matmul(vg));
    }
    return at::stack(outs).unsqueeze(0);  // [1, heads, D]
  };
  for (int r : {0, 16})
  for (int64_t L : {kMax, kMax - 1}) {
    rank = r;
    const int64_t full = L / kPage;  // 25 either way
    std::vector<std::vector<int64_t>> all(kKv), chosen(kKv);
    for (int64_t g = 0; g < kKv; ++g) {
      for (int64_t t = 0; t < L; ++t) all[g].push_back(t);
      std::vector<int64_t> pages = {0};  // the sink
      pages.insert(pages.end(), hot[g].begin(), hot[g].end());
      for (int64_t t = 0; t < L; ++t)
        if (t >= (full - 8) * kPage || std::find(pages.begin(), pages.end(), t / kPage) != pages.end())
          chosen[g].push_back(t);  // the chosen pages, the 8 recent ones and the tail
    }
    at::Tensor keys, values;
    at::Tensor sparse = attend(L, 256, &keys, &values);
    ASSERT_TRUE(sparse.defined()) << "no sparse attention on the CPU";
    EXPECT_LT(RelErr(sparse, reference(keys, values, chosen)), 1e-5) << L << " rank " << r;
    EXPECT_GT(RelErr(sparse, reference(keys, values, all)), 0.05) << L << ": the pages left out made no difference";
    at::Tensor covering = attend(L, 4096, &keys, &values);
    ASSERT_TRUE(covering.defined());
    EXPECT_LT(RelErr(covering, reference(keys, values, all)), 1e-5) << L << " rank " << r;
  }
  // The first layer dense: no landmarks, no sparse output; the second chooses as before.
  {
    std::vector<std::vector<int64_t>> chosen(kKv);
    for (int64_t g = 0; g < kKv; ++g)
      for (int64_t t = 0; t < kMax; ++t)
        if (t >= 17 * kPage || t < kPage || std::find(hot[g].begin(), hot[g].end(), t / kPage) != hot[g].end())
          chosen[g].push_back(t);
    rank = 0;
    at::Tensor keys, values;
    ASSERT_TRUE(attend(kMax, 256, &keys, &values).defined());
    const int64_t all_sparse_bytes = storage_bytes;
    dense_layers = 1;
    EXPECT_FALSE(attend(kMax, 256, &keys, &values).defined()) << "a dense layer attended sparsely";
    EXPECT_LT(storage_bytes, all_sparse_bytes);
    layer = 1;
    at::Tensor second = attend(kMax, 256, &keys, &values);
    ASSERT_TRUE(second.defined());
    EXPECT_LT(RelErr(second, reference(keys, values, chosen)), 1e-5);
    dense_layers = 0;
    layer = 0;
  }
  // 100 tokens: 6 full pages, all in the recent window, none to choose from.
  std::vector<std::vector<int64_t>> short_all(kKv);
  for (int64_t g = 0; g < kKv; ++g)
    for (int64_t t = 0; t < 100; ++t) short_all[g].push_back(t);
  at::Tensor keys, values;
  at::Tensor out = attend(100, 256, &keys, &values);
  ASSERT_TRUE(out.defined());
  EXPECT_LT(RelErr(out, reference(keys, values, short_all)), 1e-5);
}

// A lane's prefill bases belong to the sequence on it: once it leaves, the next sequence on
// the lane cannot start past position 0 on them (before, the flag stayed set and such a
// sequence would have been encoded with the previous one's basis, silently).
TEST(KvStorageCpu, ReleasedLanesForgetTheirPrefillBasis) {
  const Tables rope = Rope(at::Device(at::kCPU));
  PagedKvStorage storage(SvdqPrefillSpec(rope, at::Device(at::kCPU), "8,4,2,1,1,0,0,0"));
  at::Tensor k_pre = Keys(3), k = svdq::models::ApplyRotaryHalf(k_pre, rope.cos, rope.sin, 0, at::kFloat);
  at::Tensor v = at::randn({kTotal, kKv, kDim});
  const std::vector<BlockId> blocks_a = {0, 1, 2}, blocks_b = {3, 4, 5};  // views keep a reference
  {
    PagedSeqView first(&storage, blocks_a, 0, /*lane=*/1);
    first.Reserve(kPrompt);
    for (int l = 0; l < kLayers; ++l) first.Write(l, 0, k_pre.narrow(0, 0, kPrompt), k.narrow(0, 0, kPrompt), v.narrow(0, 0, kPrompt));
  }
  for (int l = 0; l < kLayers; ++l) EXPECT_TRUE(storage.LaneHasBasis(1, l));
  storage.ReleaseLane(1);
  for (int l = 0; l < kLayers; ++l) EXPECT_FALSE(storage.LaneHasBasis(1, l));
  PagedSeqView next(&storage, blocks_b, kPrompt, /*lane=*/1);
  next.Reserve(kPrompt + 1);
  EXPECT_THROW(next.Write(0, kPrompt, k_pre.narrow(0, kPrompt, 1), k.narrow(0, kPrompt, 1), v.narrow(0, kPrompt, 1)),
               std::logic_error);
}

// A lane's landmark basis (rank-R landmarks) belongs to the sequence that fitted it. With int4
// keys it is the lane's only per-sequence state: the sequence's own decode steps are taken, but
// once the lane is released a sequence that starts past position 0 on it is refused, in Write and
// in WriteMany, instead of scoring its pages in another sequence's basis.
TEST(KvStorageCpu, ReleasedLanesForgetTheirLandmarkBasis) {
  const Tables rope = Rope(at::Device(at::kCPU));
  StorageSpec spec = SvdqPrefillSpec(rope, at::Device(at::kCPU), "8,4,2,1,1,0,0,0");
  ASSERT_TRUE(ParseKeyMode("int4", &spec.modes.key));
  spec.modes.sparse_budget = 256;
  spec.modes.sparse_landmark_rank = 16;
  PagedKvStorage storage(spec);
  at::Tensor k_pre = Keys(4), k = svdq::models::ApplyRotaryHalf(k_pre, rope.cos, rope.sin, 0, at::kFloat);
  at::Tensor v = at::randn({kTotal, kKv, kDim});
  auto row = [&](const at::Tensor& x) { return x.narrow(0, kPrompt, 1); };
  const std::vector<BlockId> blocks_a = {0, 1, 2}, blocks_b = {3, 4, 5};
  {
    PagedSeqView first(&storage, blocks_a, 0, /*lane=*/1);
    first.Reserve(kPrompt);
    for (int l = 0; l < kLayers; ++l) first.Write(l, 0, k_pre.narrow(0, 0, kPrompt), k.narrow(0, 0, kPrompt), v.narrow(0, 0, kPrompt));
    PagedSeqView step(&storage, blocks_a, kPrompt, /*lane=*/1);
    step.Reserve(kPrompt + 1);
    EXPECT_TRUE(step.WriteMany(0, row(k_pre), row(k), row(v), {&step}));
  }
  storage.ReleaseLane(1);
  PagedSeqView next(&storage, blocks_b, kPrompt, /*lane=*/1);
  next.Reserve(kPrompt + 1);
  EXPECT_THROW(next.Write(0, kPrompt, row(k_pre), row(k), row(v)), std::logic_error);
  EXPECT_THROW(next.WriteMany(0, row(k_pre), row(k), row(v), {&next}), std::logic_error);
}

// A first forward's SVDq bases are solved together, once its last layer is written (one
// batched eigensolve instead of one per layer): before that no layer has its basis, the pages
// wait, and the forward's own attention reads its keys as written; after it every layer has
// its basis and the waiting pages read back within the codec's error.
void RunPrefillBasisBatch(at::Device device) {
  const Tables rope = Rope(device);
  PagedKvStorage storage(SvdqPrefillSpec(rope, device, "8,8,8,8,8,8,8,8"));
  at::Tensor k_pre = Keys(5).to(device), k = svdq::models::ApplyRotaryHalf(k_pre, rope.cos, rope.sin, 0, at::kFloat);
  at::Tensor v = at::randn({kTotal, kKv, kDim}).to(device);
  const std::vector<BlockId> blocks = {4, 1, 6};
  {
    PagedSeqView first(&storage, blocks, 0, /*lane=*/1);
    first.Reserve(kPrompt);
    for (int l = 0; l < kLayers; ++l) {
      const double f = 1.0 + l;
      first.Write(l, 0, k_pre.narrow(0, 0, kPrompt) * f, k.narrow(0, 0, kPrompt) * f, v.narrow(0, 0, kPrompt));
      for (int m = 0; m < kLayers; ++m) EXPECT_EQ(storage.LaneHasBasis(1, m), l == kLayers - 1) << l << " " << m;
      auto [rk, rv] = first.Read(l, kPrompt);  // this forward's own keys: exact
      EXPECT_LT(RelErr(rk.transpose(0, 1), k.narrow(0, 0, kPrompt) * f), 1e-6) << l;
    }
    first.SetLength(kPrompt);
  }
  PagedSeqView later(&storage, blocks, kPrompt, /*lane=*/1);
  later.Reserve(kPrompt + 1);
  for (int l = 0; l < kLayers; ++l) {
    const double f = 1.0 + l;
    later.Write(l, kPrompt, k_pre.narrow(0, kPrompt, 1) * f, k.narrow(0, kPrompt, 1) * f, v.narrow(0, kPrompt, 1));
    auto [rk, rv] = later.Read(l, kPrompt);  // two encoded pages and the tail
    EXPECT_LT(RelErr(rk.transpose(0, 1), k.narrow(0, 0, kPrompt) * f), 0.02) << l;
    EXPECT_GT(RelErr(rk.transpose(0, 1), k.narrow(0, 0, kPrompt) * f), 0.0) << l << ": pages were not encoded";
  }
}

TEST(KvStorageCpu, PrefillBasisIsSolvedOnceEveryLayerIsWritten) { RunPrefillBasisBatch(at::Device(at::kCPU)); }

// The fp16 copy of the basis that the CUDA decode attention reads (SvdqAttentionParams::basis_half):
// after a first forward, each layer's row of the lane holds the retained columns of its fp32
// basis, with groups dropped in the middle of the schedule, rounded to nearest exactly as the
// reference packs them (kernels::PackAttentionBasisHalf); another lane's row stays zero; the
// direct codecs' shared identity is packed too. The attention reads it where the decode kernels
// serve a bf16 model on CUDA (the warp-stream kernel takes this shape), not on the CPU.
void RunHalfBasis(at::Device device) {
  const Tables rope = Rope(device);
  StorageSpec spec = SvdqPrefillSpec(rope, device, "4,0,2,2,0,1,1,0");
  PagedKvStorage storage(spec);
  EXPECT_FALSE(storage.AttentionReadsHalfBasis(kHeads));  // an fp32 model: no decode kernels, none on the CPU
  if (device.is_cuda()) {
    StorageSpec bf16 = spec;
    bf16.dtype = at::kBFloat16;
    bf16.shape.dtype_bytes = 2;
    EXPECT_TRUE(PagedKvStorage(bf16).AttentionReadsHalfBasis(kHeads));
  }
  at::Tensor k_pre = Keys(6).to(device), k = svdq::models::ApplyRotaryHalf(k_pre, rope.cos, rope.sin, 0, at::kFloat);
  at::Tensor v = at::randn({kTotal, kKv, kDim}).to(device);
  const std::vector<BlockId> blocks = {4, 1, 6};
  {
    PagedSeqView first(&storage, blocks, 0, /*lane=*/1);
    first.Reserve(kPrompt);
    for (int l = 0; l < kLayers; ++l) first.Write(l, 0, k_pre.narrow(0, 0, kPrompt), k.narrow(0, 0, kPrompt), v.narrow(0, 0, kPrompt));
  }
  auto expect_packed = [](const PagedKvStorage& st, int layer, int64_t row) {
    at::Tensor fp32 = st.basis(layer)[row].to(at::kCPU).contiguous();
    at::Tensor half = st.basis_half(layer)[row].to(at::kCPU).contiguous();
    ASSERT_EQ(half.size(-1), st.layout().retained);
    std::vector<uint16_t> want(static_cast<size_t>(half.numel()));
    svdq::kernels::PackAttentionBasisHalf(st.layout(), fp32.data_ptr<float>(), fp32.size(0), want.data());
    EXPECT_EQ(std::memcmp(want.data(), half.data_ptr(), want.size() * sizeof(uint16_t)), 0) << "layer " << layer << " row " << row;
    EXPECT_GT(half.to(at::kFloat).abs().sum().item<double>(), 0.0) << "layer " << layer << " row " << row;
  };
  ASSERT_EQ(storage.layout().retained, 40);  // groups 0, 2, 3, 5, 6 of 8 channels
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_TRUE(storage.LaneHasBasis(1, l));
    expect_packed(storage, l, 1);
    EXPECT_EQ(storage.basis_half(l)[0].count_nonzero().item<int64_t>(), 0) << l;
  }
  ASSERT_TRUE(ParseKeyMode("int4", &spec.modes.key));
  PagedKvStorage direct(spec);
  for (int l = 0; l < kLayers; ++l) expect_packed(direct, l, 0);
}

TEST(KvStorageCpu, AttentionsHalfBasisHoldsTheRetainedColumns) { RunHalfBasis(at::Device(at::kCPU)); }

#ifdef SVDQ_WITH_CUDA
// The decode step's one-launch KV write (kernels/attention/kv_write.h) against the ATen chains
// it replaces (TokenStore::Write, the tail's index_put), byte for byte: every format, head dims
// 64 and 128, rows of very different magnitudes (scales from 1e-3 to 1e3), strided input rows.
TEST(KvStorageCuda, FusedWriteMatchesTheAtenChains) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device dev(at::kCUDA, 0);
  for (int D : {64, 128}) {
    const KvShape s{1, 2, D, 16, 2};
    const int64_t T = 24, blocks = 6, lanes = 3;
    at::manual_seed(D);
    at::Tensor mag = at::pow(10.0, at::linspace(-3, 3, T)).reshape({T, 1, 1});
    // Keys and values as column slices of one wider row (as from a fused projection).
    at::Tensor wide = (at::randn({T, 3 * s.kv_heads * D}) * mag.reshape({T, 1})).to(dev, at::kBFloat16);
    at::Tensor k = wide.narrow(1, 0, s.kv_heads * D).view({T, s.kv_heads, D});
    at::Tensor v = wide.narrow(1, s.kv_heads * D, s.kv_heads * D).view({T, s.kv_heads, D});
    // Row i goes to slot idx[i]: offset idx % 16 of the (idx / 16)-th block and lane, so that no
    // (block, offset) or (lane, offset) pair repeats.
    at::Tensor idx = at::randperm(T, at::kLong), slot_block = at::randperm(blocks, at::kLong);
    at::Tensor slot = at::div(idx, 16, "floor");
    at::Tensor block = slot_block.index_select(0, slot).to(dev), offset = (idx % 16).to(dev);
    at::Tensor lane = slot.to(dev);
    auto rows = [&] {  // the step's shape, values and where they go; formats and pages per case
      svdq::kernels::KvWriteParams p;
      p.rows = static_cast<int>(T);
      p.kv_heads = s.kv_heads;
      p.head_dim = D;
      p.page_size = s.block_size;
      p.v = static_cast<const uint16_t*>(v.data_ptr());
      p.v_stride = v.stride(0);
      p.block = block.data_ptr<int64_t>();
      p.offset = offset.data_ptr<int64_t>();
      return p;
    };
    using Kind = TokenStore::Kind;
    for (auto [kind, format] : {std::make_pair(Kind::kFull, svdq::kernels::KvFormat::kBf16),
                                std::make_pair(Kind::kFp8, svdq::kernels::KvFormat::kFp8),
                                std::make_pair(Kind::kInt8, svdq::kernels::KvFormat::kInt8),
                                std::make_pair(Kind::kInt4, svdq::kernels::KvFormat::kInt4)}) {
      SCOPED_TRACE("head dim " + std::to_string(D) + ", format " + std::to_string(static_cast<int>(format)));
      TokenStore ref_k(kind, blocks, s, at::kBFloat16, dev), ref_v(kind, blocks, s, at::kBFloat16, dev);
      TokenStore got_k(kind, blocks, s, at::kBFloat16, dev), got_v(kind, blocks, s, at::kBFloat16, dev);
      ref_k.Write(block, offset, k);
      ref_v.Write(block, offset, v);
      svdq::kernels::KvWriteParams p = rows();
      p.k = static_cast<const uint16_t*>(k.data_ptr());
      p.k_stride = k.stride(0);
      p.key_format = p.value_format = format;
      p.key_pages = got_k.data().data_ptr();
      p.value_pages = got_v.data().data_ptr();
      if (got_k.scale().defined()) {
        p.key_scales = static_cast<uint16_t*>(got_k.scale().data_ptr());
        p.value_scales = static_cast<uint16_t*>(got_v.scale().data_ptr());
      }
      ASSERT_TRUE(svdq::kernels::KvWrite(p, at::cuda::getCurrentCUDAStream()).ok());
      for (auto [got, ref] : {std::make_pair(&got_k, &ref_k), std::make_pair(&got_v, &ref_v)}) {
        at::Tensor a = got->data().view(at::kByte).cpu(), b = ref->data().view(at::kByte).cpu();
        EXPECT_EQ(a.ne(b).sum().item<int64_t>(), 0) << "codes differ";
        if (ref->scale().defined()) {
          at::Tensor sa = got->scale().view(at::kShort).cpu(), sb = ref->scale().view(at::kShort).cpu();
          EXPECT_EQ(sa.ne(sb).sum().item<int64_t>(), 0) << "scales differ";
        }
      }
    }
    // Page-coded keys: values stored as before, pre-RoPE keys into the lanes' tails.
    at::Tensor tail_ref = at::zeros({lanes, 16, s.kv_heads, D}, at::TensorOptions().device(dev).dtype(at::kBFloat16));
    at::Tensor tail_got = tail_ref.clone();
    tail_ref.index_put_({lane, offset}, k);
    TokenStore vals(Kind::kInt4, blocks, s, at::kBFloat16, dev);
    svdq::kernels::KvWriteParams p = rows();
    p.value_format = svdq::kernels::KvFormat::kInt4;
    p.value_pages = vals.data().data_ptr();
    p.value_scales = static_cast<uint16_t*>(vals.scale().data_ptr());
    p.k_pre = static_cast<const uint16_t*>(k.data_ptr());
    p.k_pre_stride = k.stride(0);
    p.lanes = lane.data_ptr<int64_t>();
    p.tail = static_cast<uint16_t*>(tail_got.data_ptr());
    ASSERT_TRUE(svdq::kernels::KvWrite(p, at::cuda::getCurrentCUDAStream()).ok());
    EXPECT_TRUE(at::equal(tail_got, tail_ref));
  }
}
#endif

TEST(KvStorageCuda, PrefillBasisIsSolvedOnceEveryLayerIsWritten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  RunPrefillBasisBatch(at::Device(at::kCUDA, 0));
}

TEST(KvStorageCuda, AttentionsHalfBasisHoldsTheRetainedColumns) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  RunHalfBasis(at::Device(at::kCUDA, 0));
}

TEST(KvStorageCuda, PageLandmarksHoldEachFilledPagesMeanKey) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  try {
    RunLandmarks(at::Device(at::kCUDA, 0), at::kBFloat16);
  } catch (const std::exception& e) {
    FAIL() << "threw: " << e.what();
  }
}

TEST(KvStorageCuda, RankRLandmarksHoldTheMeansCoordinatesInTheLanesBasis) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  try {
    RunLandmarks(at::Device(at::kCUDA, 0), at::kBFloat16, 16);
  } catch (const std::exception& e) {
    FAIL() << "threw: " << e.what();
  }
}

TEST(KvStorageCuda, SubChunkLandmarksHoldEachSlicesMean) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  try {
    RunLandmarks(at::Device(at::kCUDA, 0), at::kBFloat16, 0, 2);
    RunLandmarks(at::Device(at::kCUDA, 0), at::kBFloat16, 4, 4);
  } catch (const std::exception& e) {
    FAIL() << "threw: " << e.what();
  }
}

TEST(KvStorageCuda, NonFiniteKeysFlagTheirLane) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  RunNonFiniteKeys(at::Device(at::kCUDA, 0), at::kBFloat16);
}

TEST(KvStorageCuda, EveryModeStoresWhatWasWritten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  RunAll(at::Device(at::kCUDA, 0), at::kBFloat16);
}

}  // namespace
