// SVDq decode attention with one independent stream per warp (head dim 64 or 128, bf16 values).
//
// Why another kernel: the block kernel (svdq_attention_mma.cu) splits the head dimension
// over its four warps, so every 64-token chunk needs the warps to meet four times (latents
// in shared memory, partial scores summed in shared memory, a softmax warp, then P V), and
// with two blocks per multiprocessor those barriers and the shared-memory round trips are
// what its time is made of (ncu: 12% occupancy, issue slots half idle). Here each warp owns
// whole 16-token tiles and carries a tile from codes to output alone, like the bf16 paged
// kernel (kernels/attention/paged_decode.cu); the block meets once, at the end.
//
// One block of W warps per (sequence, KV head, split) (W = 4, or 8 in pair mode). Warp w takes
// the 16-token tiles w, w + W, w + 2W, ... of the block's range; two tiles in flight per warp
// beyond the one or two it works on (cp.async of the tile's key codes, its page's scales and
// zeros, the RoPE row of its first position, and its bf16 value rows). Per tile, tokens are
// the rows (M) of every product:
//   1. latents Z [16 tok, r] straight into mma A fragments: lane q of a k-step takes the four
//      consecutive codes 4q..4q+3 of the step's 16 channels (one load; the k order inside the
//      step is permuted, and V_r^T's rows with it, so that they are consecutive). At head dim
//      128 a step is one schedule group; at 64 (8-channel groups) it is two, each lane reading
//      its own group's bits, and an odd count of retained groups pads the last step with zeros;
//   2. keys K = mean + Z V_r^T on tensor cores (fp16 in, fp32 accumulation, the mean as the
//      accumulator's start), two 8-column tiles at a time: columns i and i + D/2, the RoPE
//      pair, land in the same thread;
//   3. RoPE split as q . R_t k = (R_T0^T q) . (R_d k) with T0 the tile's first position and
//      d = t - T0 < 16: R_d for the thread's two rows is a table built once per block in
//      shared memory; R_T0 is the staged table row, applied to the query once per tile;
//   4. scores S^T [16 tok, 8 heads] = K q^T with the rotated keys as the A operand (the
//      rebuild's accumulators are the score product's A fragments) and the group's queries
//      as the B operand (n = 8: GQA groups up to 8);
//   5. online softmax per head in registers (exp2, scale and log2 e folded into q);
//   6. O^T [D, 8 heads] += V^T P^T: V^T by ldmatrix.trans from the staged rows, P^T from S's
//      accumulators transposed in registers (movmatrix).
// The bf16 tail (fewer than P tokens, already rotated) is a tile or more whose keys come from
// memory and meet the unrotated query. At the end the warps' states are merged in shared
// memory and written out, or to the split workspace for kernels/attention/split_merge.cu.
//
// V_r^T (r <= 16 KS retained channels) is held in registers when KS D <= 256 (at head dim 128
// up to 2 k-steps, 32 channels; at 64 every schedule), otherwise in shared memory and
// read by ldmatrix per tile.
// When read from shared memory, a warp scores two of its tiles per pass over V_r^T (pair mode,
// 8 warps a block; see WarpsFor below): the fragments are read once for 32 tokens. Past 5
// k-steps (head dim 128) pair mode's registers spill, and step 2 runs on the warpgroup instead:
// the 4 warps' tiles, 64 tokens, are the rows of one wgmma m64n128k16 per k-step, A (the
// latents) from each warp's registers as before, B (V_r^T) read by the tensor cores from shared
// memory; each warp then rotates and scores its own 16 rows as in step 3.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <utility>

#include "kernels/attention/split_merge.h"
#include "kernels/common/cuda_launch.h"
#include "kernels/common/mma.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/svdq/svdq_attention_tc.h"

namespace svdq::kernels {
namespace {

constexpr int kTok = 16;        // tokens per tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int Align16(int x) { return (x + 15) / 16 * 16; }

// V_r^T's B fragments in registers: 2 KS (D / 8) x 2 words a thread.
__host__ __device__ constexpr bool VrInRegs(int d, int ks) { return ks * d <= 256; }
// Pair mode, where V_r^T is read from shared memory (3 to 5 k-steps) and the stages fit: a warp
// takes its tiles two at a time (one read of each fragment for both), with 8 warps in one block
// per multiprocessor (one copy of V_r^T for the 8) and four stages a warp. Otherwise one tile
// at a time, 4 warps, two blocks per multiprocessor, three stages.
__host__ __device__ constexpr int WarpsFor(bool pair) { return pair ? 8 : 4; }
__host__ __device__ constexpr int StagesFor(bool pair) { return pair ? 4 : 3; }
// The warpgroup rebuild (head dim 128): from 6 k-steps on, where pair mode's registers spill.
constexpr int kWgMinSteps = 6;

// The geometry of head dim D (64 or 128).
template <int D>
struct Geo {
  static constexpr int kHalf = D / 2;            // RoPE pairs (i, i + D / 2)
  static constexpr int kPairs = D / 16;          // 8-column tile pairs (a, a + D / 16), one score k-step each
  static constexpr int kGs = D / kSvdqGroups;    // channels per schedule group: 8 or 16
  static constexpr int kSub = 16 / kGs;          // schedule groups per 16-channel k-step: 2 or 1
  static constexpr int kLdV = D + 8;             // halves per staged value row (ldmatrix without bank conflicts)
  static constexpr int kMaxPieces = kSvdqGroups * 2 * kGs * kSvdqMaxBits / 16 + D / 4;  // 16-byte pieces of a tile's key record
  static constexpr int kRopeBytes = 2 * kHalf * 4;  // a staged RoPE row: cos, sin of the D / 2 frequencies (fp32)
  static constexpr int kRopeLanes = kHalf / 4;   // lanes that stage each of cos and sin (16 bytes each)
  static constexpr int kRowLanes = D / 8;        // lanes per staged value row (16 bytes each)
  static constexpr int kRowsPerPass = 32 / kRowLanes;
};

// Byte offsets into dynamic shared memory.
struct WarpSmem {
  int ks;           // k-steps (retained 16-channel groups)
  int vr, vr_ld;    // V_r^T [D dims][ks*16 + 8] fp16, in the permuted k order (0 bytes when in registers)
  int mean;         // fp32 quads [D / 2]: (mean[2i], mean[2i + 1]) twice, a rebuild accumulator's start
  int rd;           // R_d: [pair][lane] x {cos, sin} at rows g and g + 8, half2 over the pair's two columns
  int ptab;         // int2 [kMaxPieces]: key record piece -> (byte offset in the page record, bytes per 16 tokens)
  int rec_bytes;    // one tile's key record: codes of each group (16 tokens), then scales and zeros of its page
  int stage_bytes;  // record | RoPE row | values [16][kLdV] bf16
  int stages;       // warps x stages tile stages; the merge reuses them
  int total;
};

template <int D>
__host__ __device__ inline WarpSmem PlanWarpSmem(const SvdqLayout& l, bool pair) {
  using Gm = Geo<D>;
  constexpr int kD = D, kPairs = Gm::kPairs, kLdV = Gm::kLdV, kMaxPieces = Gm::kMaxPieces, kRopeBytes = Gm::kRopeBytes;
  WarpSmem s{};
  s.ks = (l.retained + 15) / 16;
  const bool vr_in_regs = VrInRegs(D, s.ks);
  const int warps = WarpsFor(pair), stages = StagesFor(pair);
  int code_bytes = 0;
  for (int g = 0; g < kSvdqGroups; ++g) code_bytes += 2 * Gm::kGs * l.bits[g];  // 16 tokens x kGs codes x b bits
  s.rec_bytes = Align16(code_bytes + 4 * l.retained);
  s.stage_bytes = s.rec_bytes + kRopeBytes + kTok * kLdV * 2;
  int o = 0;
  s.vr_ld = s.ks * 16 + 8;
  s.vr = o;
  if (!vr_in_regs) o += Align16(kD * s.vr_ld * 2);
  s.mean = o;  o += kD * 8;
  s.rd = o;    o += kPairs * 32 * 16;
  s.ptab = o;  o += kMaxPieces * 8;
  s.stages = o;
  const int merge = warps * (kD * 8 + 16) * 4;  // per warp: O^T [D][8] fp32, m [8], l [8]
  o += std::max(warps * stages * s.stage_bytes, merge);
  s.total = o;
  return s;
}

__device__ __forceinline__ uint32_t Transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Latent channel of k slot `slot` (0..15) of a k-step: slots 2q, 2q + 1 hold channels 4q, 4q + 1
// and slots 2q + 8, 2q + 9 hold 4q + 2, 4q + 3, so that an A fragment's four values are the
// four consecutive codes 4q .. 4q + 3 of a token.
__host__ __device__ constexpr int SlotChannel(int slot) { return 4 * ((slot & 7) >> 1) + 2 * (slot >> 3) + (slot & 1); }


// V_r^T (KS k-steps, fp16) into shared memory at `vr`, in the kernel's k order: rows of vr_ld
// halves for ldmatrix, or the warpgroup rebuild's core matrices (8 dims x 8 k, 128 contiguous
// bytes; along K apart by kD / 8 of them, along dims by one). The fp32 columns are copied by
// cp.async into `raw` (the stage region, unused until the stream starts: raw_bytes), every piece
// in flight at once, then converted. Loads through registers (the first version, at most 16 in
// flight a thread) made this setup about 20 us a block at 8 k-steps, as long as a block's whole
// share of a sparse short list. Not inlined, so that it leaves the tile loop's register
// allocation alone (inlined, the 8-k-step loop spilled more and ran 15% slower).
// Staged row dim, column 16 ks + c16 holds channel c16 of k-step ks (in the step's own order:
// retained group kSub ks + c16 / kGs, channel c16 % kGs of it). `packed`: 4 bits per group.
// With `basis_half` (SvdqAttentionParams::basis_half: the retained columns, already fp16, rows of
// `retained` halves) the pieces copied are halves and the conversion is a move: the same fp16
// values as from the fp32 basis, from half the bytes.
template <int D, int KS, bool kWg, int kThreads>
__device__ __noinline__ void StageVrT(const float* __restrict__ basis, const __half* __restrict__ basis_half, int retained,
                                      uint32_t packed, uint8_t* vr_bytes, int vr_ld, float* raw, int raw_bytes, int tid) {
  using Gm = Geo<D>;
  constexpr int kD = D, kGs = Gm::kGs, NR = KS * Gm::kSub;
  constexpr int kCols = KS * 16, kQuads = kGs / 4;  // staged floats per dim; 16-byte pieces per group
  int gch[NR];  // retained groups' first channels (0 for a padding group)
  {
    int r = 0;
#pragma unroll
    for (int k = 0; k < NR; ++k) gch[k] = 0;
#pragma unroll
    for (int g = 0; g < kSvdqGroups; ++g) {
      if (((packed >> (4 * g)) & 15u) == 0 || r >= NR) continue;
#pragma unroll
      for (int k = 0; k < NR; ++k)
        if (k == r) gch[k] = g * kGs;
      ++r;
    }
  }
  __half* vr = reinterpret_cast<__half*>(vr_bytes);
  auto index = [&](int dim, int k) {
    if constexpr (kWg) return ((k >> 3) * (kD / 8) + (dim >> 3)) * 64 + (dim & 7) * 8 + (k & 7);
    else return dim * vr_ld + k;
  };
  if (basis_half) {
    constexpr int kOcts = kGs / 8;  // 16-byte pieces of fp16 per group
    __half* rawh = reinterpret_cast<__half*>(raw);
    const int rows = min(kD, raw_bytes / (2 * kCols));
    for (int d0 = 0; d0 < kD; d0 += rows) {
      const int nd = min(rows, kD - d0);
      for (int i = tid; i < nd * NR * kOcts; i += kThreads) {
        const int dim = i / (NR * kOcts), r = (i / kOcts) % NR, oo = i % kOcts;
        const int col = r * kGs < retained ? r * kGs : 0;  // a padding group reads group 0 (times zero latents)
        mma::CpAsync16(rawh + dim * kCols + r * kGs + 8 * oo, basis_half + (d0 + dim) * retained + col + 8 * oo, 16);
      }
      mma::CpAsyncCommit();
      mma::CpAsyncWait<0>();
      __syncthreads();
      for (int i = tid; i < nd * KS * 4; i += kThreads) {
        const int dim = i / (KS * 4), ks = (i / 4) % KS, q = i % 4;
        const uint2 v = *reinterpret_cast<const uint2*>(rawh + dim * kCols + 16 * ks + 4 * q);
        *reinterpret_cast<uint32_t*>(vr + index(d0 + dim, 16 * ks + 2 * q)) = v.x;
        *reinterpret_cast<uint32_t*>(vr + index(d0 + dim, 16 * ks + 2 * q + 8)) = v.y;
      }
      __syncthreads();
    }
    return;
  }
  const int rows = min(kD, raw_bytes / (4 * kCols));  // dims a pass (all of them at every supported layout)
  for (int d0 = 0; d0 < kD; d0 += rows) {
    const int nd = min(rows, kD - d0);
    for (int i = tid; i < nd * NR * kQuads; i += kThreads) {
      const int dim = i / (NR * kQuads), r = (i / kQuads) % NR, qq = i % kQuads;
      int ch = 0;
#pragma unroll
      for (int kk = 0; kk < NR; ++kk)
        if (kk == r) ch = gch[kk];
      mma::CpAsync16(raw + dim * kCols + r * kGs + 4 * qq, basis + (d0 + dim) * kD + ch + 4 * qq, 16);
    }
    mma::CpAsyncCommit();
    mma::CpAsyncWait<0>();
    __syncthreads();
    // Channels 4 q .. 4 q + 3 of a k-step go to slots 2 q, 2 q + 1 and 2 q + 8, 2 q + 9 (SlotChannel).
    for (int i = tid; i < nd * KS * 4; i += kThreads) {
      const int dim = i / (KS * 4), ks = (i / 4) % KS, q = i % 4;
      const float4 v = *reinterpret_cast<const float4*>(raw + dim * kCols + 16 * ks + 4 * q);
      *reinterpret_cast<__half2*>(vr + index(d0 + dim, 16 * ks + 2 * q)) = __floats2half2_rn(v.x, v.y);
      *reinterpret_cast<__half2*>(vr + index(d0 + dim, 16 * ks + 2 * q + 8)) = __floats2half2_rn(v.z, v.w);
    }
    __syncthreads();  // the stage region is reused by the next pass, then by the stream
  }
}

template <int D, int KS, bool kPair, bool kWg>
__global__ void __launch_bounds__(32 * WarpsFor(kPair), kPair ? 1 : 2) AttentionWarpKernel(SvdqAttentionParams p) {
  using Gm = Geo<D>;
  constexpr int kD = D, kHalf = Gm::kHalf, kPairs = Gm::kPairs, kLdV = Gm::kLdV, kGs = Gm::kGs, kSub = Gm::kSub;
  constexpr int kRopeBytes = Gm::kRopeBytes, kRowLanes = Gm::kRowLanes, kRowsPerPass = Gm::kRowsPerPass;
  constexpr int NR = KS * kSub;  // retained schedule groups, the last k-step's second one possibly padding
  constexpr bool kVrRegs = VrInRegs(D, KS);
  static_assert(!(kPair && kVrRegs), "pair mode is for V_r^T in shared memory");
  static_assert(!kWg || (D == 128 && !kVrRegs && !kPair), "the warpgroup rebuild reads V_r^T from shared memory, 128 columns");
  constexpr int kWarpsT = WarpsFor(kPair), kThreadsT = 32 * kWarpsT, kStagesT = StagesFor(kPair);
  extern __shared__ __align__(128) uint8_t smem[];
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, G = p.num_heads / p.kv_heads, KVH = p.kv_heads;
  const WarpSmem s = PlanWarpSmem<D>(l, kPair);
  const int b = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g8 = lane / 4, q4 = lane % 4;

  const int64_t bh = static_cast<int64_t>(b) * KVH + h;
  const int64_t brow = static_cast<int64_t>(p.basis_index ? p.basis_index[b] : b) * KVH + h;
  const float* basis = p.basis + brow * kD * kD;
  const __half* basis_half = p.basis_half ? reinterpret_cast<const __half*>(p.basis_half) + brow * kD * l.retained : nullptr;

  // Retained groups in order: channel base and bits of each, and its codes' offset in a tile's
  // record (uniform across the block; small arrays the compiler keeps in registers). A k-step
  // covers kSub of them; with 8-channel groups an odd count leaves the last k-step half
  // padding: 0 bits, no codes, latents of zero.
  int gch[NR], gbits[NR], goff[NR];
  int code_bytes_all = 0;
  {
    int r = 0;
#pragma unroll
    for (int g = 0; g < kSvdqGroups; ++g) {
      if (l.bits[g] == 0 || r >= NR) continue;
#pragma unroll
      for (int k = 0; k < NR; ++k)
        if (k == r) gch[k] = g * kGs, gbits[k] = l.bits[g], goff[k] = code_bytes_all;
      code_bytes_all += 2 * kGs * l.bits[g];
      ++r;
    }
#pragma unroll
    for (int k = 0; k < NR; ++k)
      if (k >= r) gch[k] = 0, gbits[k] = 0, goff[k] = code_bytes_all;
  }
  // This lane's channels of a k-step: 4 q4 .. 4 q4 + 3, in retained group `sub` of the step,
  // from its channel cl0.
  const int sub = kSub == 1 ? 0 : (4 * q4) / kGs, cl0 = (4 * q4) % kGs;
  auto mine = [&](const int (&a)[NR], int ks) {
    if constexpr (kSub == 1) return a[ks];
    else return sub ? a[kSub * ks + 1] : a[kSub * ks];
  };
  const int scale_at = code_bytes_all, zero_at = code_bytes_all + 2 * l.retained;
  const int code_pieces = code_bytes_all / 16, npieces = code_pieces + l.retained / 4;

  // ---- Block setup: piece table, mean, R_d, V_r^T (shared memory or registers), queries.
  float4* mean_s = reinterpret_cast<float4*>(smem + s.mean);
  int2* ptab = reinterpret_cast<int2*>(smem + s.ptab);
  for (int i = tid; i < npieces; i += kThreadsT) {
    int2 e;
    if (i < code_pieces) {
      int ch = gch[0], bits = gbits[0], off = goff[0];
#pragma unroll
      for (int k = 1; k < NR; ++k)
        if (16 * i >= goff[k]) ch = gch[k], bits = gbits[k], off = goff[k];
      e = make_int2(l.group_offset[ch / kGs] + 16 * i - off, 2 * kGs * bits);
    } else {
      e = make_int2(l.scale_offset + 16 * (i - code_pieces), 0);
    }
    ptab[i] = e;
  }
  for (int i = tid; i < kHalf; i += kThreadsT) {
    const float2 m = *reinterpret_cast<const float2*>(p.mean + brow * kD + 2 * i);
    mean_s[i] = make_float4(m.x, m.y, m.x, m.y);
  }
  {
    uint4* rd = reinterpret_cast<uint4*>(smem + s.rd);
    for (int idx = tid; idx < kPairs * 32; idx += kThreadsT) {
      const int a = idx / 32, ln = idx % 32, i = 8 * a + 2 * (ln % 4), d0 = ln / 4;
      uint32_t w[4];
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int d = d0 + 8 * rr;
        w[2 * rr] = mma::PackHalf2(p.rope_cos[d * kD + i], p.rope_cos[d * kD + i + 1]);
        w[2 * rr + 1] = mma::PackHalf2(p.rope_sin[d * kD + i], p.rope_sin[d * kD + i + 1]);
      }
      rd[idx] = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
  // V_r^T: B[k][n = dim] with k in the permuted order; thread (g8, q4) of tile n holds dim 8n + g8
  // and channels 4 q4 .. 4 q4 + 3 of each group: two fp16 pairs.
  uint32_t bv[kVrRegs ? 2 * kPairs : 1][KS][2];
  if constexpr (kVrRegs) {
#pragma unroll
    for (int n = 0; n < 2 * kPairs; ++n)
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        if (basis_half) {
          // Retained group k's channels are columns k kGs.. of the fp16 rows; a padding group reads group 0.
          const int k = kSub == 1 ? ks : kSub * ks + sub;
          const int col = k * kGs < l.retained ? k * kGs : 0;
          const uint2 v = *reinterpret_cast<const uint2*>(basis_half + (8 * n + g8) * l.retained + col + cl0);
          bv[n][ks][0] = v.x;
          bv[n][ks][1] = v.y;
        } else {
          const float4 v = *reinterpret_cast<const float4*>(basis + (8 * n + g8) * kD + mine(gch, ks) + cl0);
          bv[n][ks][0] = mma::PackHalf2(v.x, v.y);
          bv[n][ks][1] = mma::PackHalf2(v.z, v.w);
        }
      }
  } else {
    uint32_t packed = 0;  // the schedule's bits, 4 per group
#pragma unroll
    for (int g = 0; g < kSvdqGroups; ++g) packed |= static_cast<uint32_t>(l.bits[g]) << (4 * g);
    StageVrT<D, KS, kWg, kThreadsT>(basis, basis_half, l.retained, packed, smem + s.vr, s.vr_ld, reinterpret_cast<float*>(smem + s.stages),
                                    s.total - s.stages, tid);
    if constexpr (kWg) wgmma::FenceProxyAsync();  // the tensor cores read V_r^T next
  }
  // What the kernel before this one may still be writing (the sparse lists, the KV write's page)
  // is read from here on (overlap_setup: launched as its programmatic dependent).
  pdl::WaitForPrimary();
  // np: the pages attended, as a list (all of the sequence's, or the sparse selection); the
  // block takes entries [first, last) of it.
  const int np = AttendedPages(p, b, h);
  const SplitSlice slice = SplitPages(np, p.pages_per_split, split, gridDim.z);
  const int first = slice.first, last = slice.last;
  const int tail = slice.tail ? p.tail_len[b] : 0;
  const int paged_tiles = max(0, last - first) * P / kTok;
  const int ntiles = paged_tiles + (tail + kTok - 1) / kTok;
  // The query of head g8 (zero for g8 >= G) at columns 8a + 2q4 (+1) and D/2 + 8a + 2q4 (+1),
  // scaled by sm_scale * log2(e).
  __half2 qlo[kPairs], qhi[kPairs];
  {
    const float qs = p.sm_scale * kLog2e;
    const auto* qg = reinterpret_cast<const __nv_bfloat162*>(p.q) + ((static_cast<int64_t>(b) * p.num_heads + h * G + g8) * kD) / 2;
#pragma unroll
    for (int a = 0; a < kPairs; ++a) {
      float2 lo = make_float2(0.f, 0.f), hi = lo;
      if (g8 < G) {
        lo = __bfloat1622float2(qg[(8 * a + 2 * q4) / 2]);
        hi = __bfloat1622float2(qg[(kHalf + 8 * a + 2 * q4) / 2]);
      }
      qlo[a] = __floats2half2_rn(lo.x * qs, lo.y * qs);
      qhi[a] = __floats2half2_rn(hi.x * qs, hi.y * qs);
    }
  }
  __syncthreads();

  // ---- The warp's stream.
  uint8_t* wstages = smem + s.stages + warp * kStagesT * s.stage_bytes;
  const int64_t table_row = static_cast<int64_t>(b) * p.max_pages;
  const auto* vbase = static_cast<const uint16_t*>(p.value_pages);
  // Stages tile j (block-relative) into stage `slot`: key record pieces, RoPE row, values.
  // The pool page of tile j (0 past the paged tiles), loaded two tiles ahead of its staging so
  // that the load's latency overlaps a tile's work.
  // Tiles per page is a power of two (pages of 16 x 2^n tokens): shifts, no divisions.
  const int tile_shift = __ffs(P / kTok) - 1, tile_mask = P / kTok - 1;
  auto logical_of = [&](int j) { return AttendedPage(p, b, h, first + (j >> tile_shift)); };
  auto page_of = [&](int j) { return j < paged_tiles ? p.page_table[table_row + logical_of(j)] : 0; };
  // Each lane stages value rows lane / kRowLanes + kRowsPerPass i, 16-byte piece lane % kRowLanes:
  // fixed offsets.
  const int v_src_lane = (lane / kRowLanes) * kD + (lane % kRowLanes) * 8;
  const int v_dst_lane = ((lane / kRowLanes) * kLdV + (lane % kRowLanes) * 8) * 2;
  constexpr int kRopeLanes = Gm::kRopeLanes;
  const float* rope_lane = (lane < kRopeLanes ? p.rope_cos : p.rope_sin) + 4 * (lane % kRopeLanes);
  const uint8_t* key_head = p.key_pages + static_cast<int64_t>(h) * l.page_bytes;
  const uint16_t* value_head = vbase + static_cast<int64_t>(h) * P * kD;
  auto issue = [&](int j, int slot, int pid) {
    uint8_t* st = wstages + slot * s.stage_bytes;
    uint8_t* vst = st + s.rec_bytes + kRopeBytes + v_dst_lane;
    if (j < paged_tiles) {
      const int tin16 = j & tile_mask;  // the tile's 16-token step inside its page
      const uint8_t* rec = key_head + static_cast<int64_t>(pid) * KVH * l.page_bytes;
      for (int i = lane; i < npieces; i += 32) {
        const int2 e = ptab[i];
        mma::CpAsync16(st + 16 * i, rec + e.x + tin16 * e.y, 16);
      }
      const int t0 = (logical_of(j) << (tile_shift + 4)) + tin16 * kTok;  // the tile's first position
      if (lane < 2 * kRopeLanes) mma::CpAsync16(st + s.rec_bytes + 16 * lane, rope_lane + static_cast<int64_t>(t0) * kD, 16);
      const uint16_t* vsrc = value_head + (static_cast<int64_t>(pid) * KVH * P + tin16 * kTok) * kD + v_src_lane;
#pragma unroll
      for (int i = 0; i < kTok * kD / 8 / 32; ++i)
        mma::CpAsync16(vst + i * kRowsPerPass * kLdV * 2, vsrc + i * kRowsPerPass * kD, 16);
    } else {
      const int t0 = (j - paged_tiles) * kTok, valid = min(kTok, tail - t0);
      const uint16_t* vsrc = (p.tail_value_page ? vbase + ((p.tail_value_page[b] * KVH + h) * P + t0) * kD
                                                : p.tail_values + (bh * P + t0) * kD) + v_src_lane;
#pragma unroll
      for (int i = 0; i < kTok * kD / 8 / 32; ++i) {
        const bool ok = lane / kRowLanes + kRowsPerPass * i < valid;
        mma::CpAsync16(vst + i * kRowsPerPass * kLdV * 2, ok ? vsrc + i * kRowsPerPass * kD : vbase, ok ? 16 : 0);
      }
    }
  };

  float o[kPairs][4];  // O^T [D dims, 8 heads]: tile mt holds dims 16 mt + g8 (+8), heads 2 q4 (+1)
#pragma unroll
  for (int mt = 0; mt < kPairs; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};  // heads 2 q4, 2 q4 + 1 (log2 units)
  const int my_tiles = ntiles > warp ? (ntiles - warp + kWarpsT - 1) / kWarpsT : 0;
  const uint4* rd = reinterpret_cast<const uint4*>(smem + s.rd);
  const __half2 k1024 = __float2half2_rn(1024.f);

  // 1. Latents of the staged tile's tokens g8 and g8 + 8, channels 4 q4 .. 4 q4 + 3 of every k-step.
  auto latents = [&](const uint8_t* st, uint32_t (&zf)[KS][4]) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int bits = mine(gbits, ks);
      const uint32_t* words = reinterpret_cast<const uint32_t*>(st + mine(goff, ks));
      const uint32_t mask = (1u << bits) - 1u, mask_hi = mask << 16;
      const uint2 sc2 = *reinterpret_cast<const uint2*>(st + scale_at + 2 * (16 * ks + 4 * q4));
      const uint2 zr2 = *reinterpret_cast<const uint2*>(st + zero_at + 2 * (16 * ks + 4 * q4));
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int bit = ((g8 + 8 * rr) * kGs + cl0) * bits;
        const uint32_t* w = words + (bit >> 5);
        const int sh = bit & 31;
        const uint32_t v = (bits & (bits - 1)) == 0 ? w[0] >> sh : __funnelshift_r(w[0], w[1], sh);
        const uint32_t v2 = v >> (2 * bits);
        // 1024 + code as fp16 pairs: codes 0, 1 and codes 2, 3.
        const uint32_t pa = (v & mask) | ((v << (16 - bits)) & mask_hi) | 0x64006400u;
        const uint32_t pb = (v2 & mask) | ((v2 << (16 - bits)) & mask_hi) | 0x64006400u;
        zf[ks][rr] = mma::AsU32(__hfma2(__hsub2(mma::AsHalf2(pa), k1024), mma::AsHalf2(sc2.x), mma::AsHalf2(zr2.x)));
        zf[ks][2 + rr] = mma::AsU32(__hfma2(__hsub2(mma::AsHalf2(pb), k1024), mma::AsHalf2(sc2.y), mma::AsHalf2(zr2.y)));
      }
      if (kSub > 1 && bits == 0) zf[ks][0] = zf[ks][1] = zf[ks][2] = zf[ks][3] = 0u;  // padding channels
    }
  };
  // The query rotated back by the staged tile's first position: R_T0^T q, as B fragments.
  auto rotated_query = [&](const uint8_t* st, uint32_t (&qb)[kPairs][2]) {
    const float* rc = reinterpret_cast<const float*>(st + s.rec_bytes);
    const float* rsn = rc + kHalf;
#pragma unroll
    for (int a = 0; a < kPairs; ++a) {
      const float2 c = *reinterpret_cast<const float2*>(rc + 8 * a + 2 * q4);
      const float2 sn = *reinterpret_cast<const float2*>(rsn + 8 * a + 2 * q4);
      const __half2 ch = __floats2half2_rn(c.x, c.y), sh = __floats2half2_rn(sn.x, sn.y);
      qb[a][0] = mma::AsU32(__hfma2(qlo[a], ch, __hmul2(qhi[a], sh)));
      qb[a][1] = mma::AsU32(__hfma2(qhi[a], ch, __hneg2(__hmul2(qlo[a], sh))));
    }
  };
  // V_r^T's B fragments of 8-column tiles a and a + kPairs.
  auto basis_frags = [&](int a, uint32_t (&blo)[KS][2], uint32_t (&bhi)[KS][2]) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      if constexpr (kVrRegs) {
        blo[ks][0] = bv[a][ks][0], blo[ks][1] = bv[a][ks][1];
        bhi[ks][0] = bv[a + kPairs][ks][0], bhi[ks][1] = bv[a + kPairs][ks][1];
      } else {
        // Matrices: (tile a, slots 0-7), (tile a, 8-15), (tile a + kPairs, 0-7), (tile a + kPairs, 8-15).
        const int mi = lane / 8, tile = a + kPairs * (mi >> 1);
        const __half* vr = reinterpret_cast<const __half*>(smem + s.vr);
        uint32_t r4[4];
        mma::LdMatrixX4(r4, vr + (tile * 8 + lane % 8) * s.vr_ld + ks * 16 + 8 * (mi & 1));
        blo[ks][0] = r4[0], blo[ks][1] = r4[1], bhi[ks][0] = r4[2], bhi[ks][1] = r4[3];
      }
    }
  };
  // 3-4. Keys of 8-column tiles (a, a + kPairs), rebuilt as x and y, rotated by R_d, scored into sc.
  auto rotate_score = [&](int a, const float (&x)[4], const float (&y)[4], const uint32_t (&qb)[kPairs][2], float (&sc)[4]) {
    const uint4 r = rd[a * 32 + lane];  // cos, sin at row g8; cos, sin at row g8 + 8
    uint32_t ka[4];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const __half2 xh = __floats2half2_rn(x[2 * rr], x[2 * rr + 1]);
      const __half2 yh = __floats2half2_rn(y[2 * rr], y[2 * rr + 1]);
      const __half2 c = mma::AsHalf2(rr == 0 ? r.x : r.z), sn = mma::AsHalf2(rr == 0 ? r.y : r.w);
      ka[rr] = mma::AsU32(__hfma2(xh, c, __hneg2(__hmul2(yh, sn))));  // x cos - y sin
      ka[2 + rr] = mma::AsU32(__hfma2(yh, c, __hmul2(xh, sn)));       // y cos + x sin
    }
    mma::MmaF16(sc, ka, qb[a][0], qb[a][1]);
  };
  // 2-4. Keys of 8-column tiles (a, a + kPairs) = mean + Z V_r^T, rotated by R_d, scored into sc.
  auto score_pair = [&](int a, const uint32_t (&zf)[KS][4], const uint32_t (&qb)[kPairs][2], const uint32_t (&blo)[KS][2],
                        const uint32_t (&bhi)[KS][2], float (&sc)[4]) {
    const float4 mlo = mean_s[4 * a + q4], mhi = mean_s[kHalf / 2 + 4 * a + q4];
    float x[4] = {mlo.x, mlo.y, mlo.z, mlo.w}, y[4] = {mhi.x, mhi.y, mhi.z, mhi.w};
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      mma::MmaF16(x, zf[ks], blo[ks][0], blo[ks][1]);
      mma::MmaF16(y, zf[ks], bhi[ks][0], bhi[ks][1]);
    }
    rotate_score(a, x, y, qb, sc);
  };
  // 5-6. Online softmax of one tile's scores S^T (tokens g8 (0, 1) and g8 + 8 (2, 3), heads 2 q4,
  // 2 q4 + 1), then O^T += V^T P^T with the staged values.
  auto accumulate = [&](const float (&sc)[4], const __nv_bfloat16* vst) {
    // Max and sums over the 8 lanes of a column.
    float mx[2] = {fmaxf(sc[0], sc[2]), fmaxf(sc[1], sc[3])};
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      mx[0] = fmaxf(mx[0], __shfl_xor_sync(0xffffffffu, mx[0], off));
      mx[1] = fmaxf(mx[1], __shfl_xor_sync(0xffffffffu, mx[1], off));
    }
    float corr[2], ps[4];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float mn = fmaxf(m_run[e], mx[e]);  // finite: every tile has a valid token
      corr[e] = Exp2(m_run[e] - mn);
      m_run[e] = mn;
      ps[e] = Exp2(sc[e] - mn);
      ps[2 + e] = Exp2(sc[2 + e] - mn);
    }
    const __nv_bfloat162 p01 = __floats2bfloat162_rn(ps[0], ps[1]), p23 = __floats2bfloat162_rn(ps[2], ps[3]);
    float sum[2] = {__low2float(p01) + __low2float(p23), __high2float(p01) + __high2float(p23)};  // the weights P V uses
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      sum[0] += __shfl_xor_sync(0xffffffffu, sum[0], off);
      sum[1] += __shfl_xor_sync(0xffffffffu, sum[1], off);
    }
    l_run[0] = l_run[0] * corr[0] + sum[0];
    l_run[1] = l_run[1] * corr[1] + sum[1];
    if (__any_sync(0xffffffffu, corr[0] != 1.f || corr[1] != 1.f)) {
#pragma unroll
      for (int mt = 0; mt < kPairs; ++mt) {
        o[mt][0] *= corr[0];
        o[mt][1] *= corr[1];
        o[mt][2] *= corr[0];
        o[mt][3] *= corr[1];
      }
    }
    // P^T as B fragments: the [token, head] accumulators transposed.
    const uint32_t pb0 = Transpose8x8(*reinterpret_cast<const uint32_t*>(&p01));
    const uint32_t pb1 = Transpose8x8(*reinterpret_cast<const uint32_t*>(&p23));
    const int mi = lane / 8, tok = lane % 8 + 8 * (mi >> 1), col = 8 * (mi & 1);
#pragma unroll
    for (int mt = 0; mt < kPairs; ++mt) {
      uint32_t va[4];
      mma::LdMatrixX4Trans(va, vst + tok * kLdV + 16 * mt + col);
      mma::MmaBf16(o[mt], va, pb0, pb1);
    }
  };

  // Tail tokens: keys rotated already, in bf16 rows; the query as it is.
  auto tail_tile = [&](int j, const __nv_bfloat16* vst) {
    const int valid = min(kTok, tail - (j - paged_tiles) * kTok);
    const auto* tk = reinterpret_cast<const __nv_bfloat162*>(p.tail_keys) + (bh * P + (j - paged_tiles) * kTok) * (kD / 2);
    float sc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int a = 0; a < kPairs; ++a) {
      uint32_t ka[4];
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int t = g8 + 8 * rr;
        float2 lo = make_float2(0.f, 0.f), hi = lo;
        if (t < valid) {
          lo = __bfloat1622float2(tk[(t * kD + 8 * a + 2 * q4) / 2]);
          hi = __bfloat1622float2(tk[(t * kD + kHalf + 8 * a + 2 * q4) / 2]);
        }
        ka[rr] = mma::PackHalf2(lo.x, lo.y);
        ka[2 + rr] = mma::PackHalf2(hi.x, hi.y);
      }
      mma::MmaF16(sc, ka, mma::AsU32(qlo[a]), mma::AsU32(qhi[a]));
    }
    if (g8 >= valid) sc[0] = sc[1] = -INFINITY;
    if (g8 + 8 >= valid) sc[2] = sc[3] = -INFINITY;
    accumulate(sc, vst);
  };
  // The warpgroup rebuild (kWg): the 4 warps' tiles of one step, 64 tokens, as the rows of one
  // m64n128k16 product per k-step, V_r^T read by the tensor cores from shared memory. Every warp
  // takes part in every step (a warp without a paged tile feeds zero latents and drops the
  // result), so the loop runs as many steps as warp 0 has tiles.
  constexpr uint32_t kWgSbo = 128, kWgLbo = kD / 8 * 128;  // see VrIndex
  auto rebuild_wg = [&](const uint32_t (&zf)[KS][4], float (&acc)[2 * kPairs][4]) {
    if constexpr (kWg) {
#pragma unroll
      for (int a = 0; a < kPairs; ++a) {
        const float4 mlo = mean_s[4 * a + q4], mhi = mean_s[kHalf / 2 + 4 * a + q4];
        acc[a][0] = mlo.x, acc[a][1] = mlo.y, acc[a][2] = mlo.z, acc[a][3] = mlo.w;
        acc[a + kPairs][0] = mhi.x, acc[a + kPairs][1] = mhi.y, acc[a + kPairs][2] = mhi.z, acc[a + kPairs][3] = mhi.w;
      }
      wgmma::Pin(acc);
      wgmma::Fence();
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const uint64_t desc = wgmma::DescNoSwizzle(smem + s.vr + ks * 2 * kWgLbo, kWgLbo, kWgSbo);
        wgmma::MmaF16M64N128K16(acc, zf[ks], desc);
      }
      wgmma::Commit();
    }
  };

  // The pipeline: kLead tiles are in flight while a step works on one tile, or on two paged
  // tiles at once in the pair mode (V_r^T's fragments, read from shared memory, serve both).
  // One cp.async group per tile; tile t in stage t % kStagesT. Page ids are read two tiles
  // before their staging.
  constexpr int kLead = 2;
  auto tile_of = [&](int k) { return warp + kWarpsT * k; };
  auto stage_of = [&](int k) { return wstages + (k % kStagesT) * s.stage_bytes; };
#pragma unroll
  for (int k = 0; k < kLead; ++k) {
    if (k < my_tiles) issue(tile_of(k), k % kStagesT, page_of(tile_of(k)));
    mma::CpAsyncCommit();
  }
  int pid_a = page_of(tile_of(kLead)), pid_b = page_of(tile_of(kLead + 1));
  const int steps = kWg ? (ntiles + kWarpsT - 1) / kWarpsT : my_tiles;
  for (int k = 0; k < steps;) {
    const int j = tile_of(k);
    const bool pair = kPair && k + 1 < my_tiles && tile_of(k + 1) < paged_tiles;
    const int n = pair ? 2 : 1;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (i < n) {
        const int kk = k + kLead + i;
        if (kk < my_tiles) issue(tile_of(kk), kk % kStagesT, pid_a);
        mma::CpAsyncCommit();
        pid_a = pid_b;
        pid_b = page_of(tile_of(kk + 2));
      }
    }
    mma::CpAsyncWait<kLead>();
    __syncwarp();
    const uint8_t* st = stage_of(k);
    const __nv_bfloat16* vst = reinterpret_cast<const __nv_bfloat16*>(st + s.rec_bytes + kRopeBytes);
    if constexpr (kWg) {
      uint32_t zf[KS][4], qb[kPairs][2];
      if (j < paged_tiles) {
        latents(st, zf);
      } else {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) zf[ks][0] = zf[ks][1] = zf[ks][2] = zf[ks][3] = 0u;
      }
      float acc[2 * kPairs][4];
      rebuild_wg(zf, acc);
      wgmma::Wait<0>();
      wgmma::Pin(acc);
      if (j < paged_tiles) {
        rotated_query(st, qb);
        float sc[4] = {0.f, 0.f, 0.f, 0.f}, sc2[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int a = 0; a < kPairs; ++a) rotate_score(a, acc[a], acc[a + kPairs], qb, a % 2 ? sc2 : sc);
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[e] += sc2[e];
        accumulate(sc, vst);
      } else if (j < ntiles) {
        tail_tile(j, vst);
      }
    } else if (pair) {
      const uint8_t* st2 = stage_of(k + 1);
      uint32_t zf[KS][4], zf2[KS][4], qb[kPairs][2], qb2[kPairs][2];
      latents(st, zf);
      latents(st2, zf2);
      rotated_query(st, qb);
      rotated_query(st2, qb2);
      float sc[4] = {0.f, 0.f, 0.f, 0.f}, sc2[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int a = 0; a < kPairs; ++a) {
        uint32_t blo[KS][2], bhi[KS][2];
        basis_frags(a, blo, bhi);
        score_pair(a, zf, qb, blo, bhi, sc);
        score_pair(a, zf2, qb2, blo, bhi, sc2);
      }
      accumulate(sc, vst);
      accumulate(sc2, reinterpret_cast<const __nv_bfloat16*>(st2 + s.rec_bytes + kRopeBytes));
    } else if (j < paged_tiles) {
      uint32_t zf[KS][4], qb[kPairs][2];
      latents(st, zf);
      rotated_query(st, qb);
      // Two accumulators for the odd and even tile pairs halve the chain of dependent mma.
      float sc[4] = {0.f, 0.f, 0.f, 0.f}, sc2[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int a = 0; a < kPairs; ++a) {
        uint32_t blo[KS][2], bhi[KS][2];
        basis_frags(a, blo, bhi);
        score_pair(a, zf, qb, blo, bhi, a % 2 ? sc2 : sc);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[e] += sc2[e];
      accumulate(sc, vst);
    } else {
      tail_tile(j, vst);
    }
    __syncwarp();
    k += n;
  }
  mma::CpAsyncWait<0>();
  __syncthreads();

  // ---- Merge the warps: each leaves O^T, m, l in shared memory; threads then take (head, dim).
  float* mg = reinterpret_cast<float*>(smem + s.stages) + warp * (kD * 8 + 16);
#pragma unroll
  for (int mt = 0; mt < kPairs; ++mt) {
    *reinterpret_cast<float2*>(mg + (16 * mt + g8) * 8 + 2 * q4) = make_float2(o[mt][0], o[mt][1]);
    *reinterpret_cast<float2*>(mg + (16 * mt + g8 + 8) * 8 + 2 * q4) = make_float2(o[mt][2], o[mt][3]);
  }
  if (g8 == 0) {
    mg[kD * 8 + 2 * q4] = m_run[0];
    mg[kD * 8 + 2 * q4 + 1] = m_run[1];
    mg[kD * 8 + 8 + 2 * q4] = l_run[0];
    mg[kD * 8 + 8 + 2 * q4 + 1] = l_run[1];
  }
  __syncthreads();
  const float* m0 = reinterpret_cast<const float*>(smem + s.stages);
  const int splits = gridDim.z;
  for (int idx = tid; idx < G * kD; idx += kThreadsT) {
    const int hd = idx / kD, dim = idx % kD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarpsT; ++w) M = fmaxf(M, m0[w * (kD * 8 + 16) + kD * 8 + hd]);
    float acc = 0.f, L = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarpsT; ++w) {
        const float* mw = m0 + w * (kD * 8 + 16);
        const float f = Exp2(mw[kD * 8 + hd] - M);
        acc += f * mw[dim * 8 + hd];
        L += f * mw[kD * 8 + 8 + hd];
      }
    }
    const int64_t head = static_cast<int64_t>(b) * p.num_heads + h * G + hd;
    if (p.pages_per_split == 0) {
      p.out[head * kD + dim] = L > 0.f ? acc / L : 0.f;
    } else {
      float* ws = p.workspace + (head * splits + split) * (kD + 2);
      ws[dim] = acc;
      if (dim == 0) {
        ws[kD] = M == -INFINITY ? -INFINITY : M * kLn2;  // the merge works in natural-log units
        ws[kD + 1] = L;
      }
    }
  }
}

using KernelFn = void (*)(SvdqAttentionParams);

// The device's opt-in shared memory per block (227 KB on Hopper; less elsewhere).
int MaxSmem() {
  static const int bytes = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
      return 0;
    return v;
  }();
  return bytes;
}

// The device's compute capability major (0 if unknown).
int ComputeMajor() {
  static const int major = [] {
    int dev = 0, v = 0;
    return cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess ? v : 0;
  }();
  return major;
}

// Whether the device runs wgmma (compute capability 9.0: this build's sm_90a code; a build
// without an sm_90a target defines SVDQ_NO_WGMMA).
bool HasWgmma() {
#ifdef SVDQ_NO_WGMMA
  return false;
#endif
  return ComputeMajor() == 9;
}

// The kernel for a layout: its (D, KS) instance; pair mode where V_r^T is in shared memory and
// that fits (3 to 5 k-steps); at head dim 128 past that, the warpgroup rebuild (unless `wg` is
// false: tests and the benchmark compare); else one tile at a time with mma.sync.
// Measured on the H200 at 8 x 128k (bench/results/attention_bench_2026-12-04_wgmma.txt, one
// run): 8 k-steps 1,379 us with the warpgroup rebuild against 1,576 without; at 5 k-steps it was
// no faster than pair mode (1,083 against 1,067 us), which keeps those.
struct Choice {
  KernelFn fn = nullptr;
  bool pair = false;
  int smem = 0;
};

template <int D, int KS>
Choice ChooseKs(const SvdqLayout& l, int ks, bool wg) {
  if constexpr (KS > D / 16) {
    return {};
  } else {
    if (ks != KS) return ChooseKs<D, KS + 1>(l, ks, wg);
    const int solo = PlanWarpSmem<D>(l, false).total;
    if constexpr (!VrInRegs(D, KS) && KS <= 5) {  // past 5 k-steps the pair's registers spill
      const int smem = PlanWarpSmem<D>(l, true).total;
      if (smem <= MaxSmem()) return {AttentionWarpKernel<D, KS, true, false>, true, smem};
    }
    if constexpr (D == 128 && KS >= kWgMinSteps) {
      if (wg && HasWgmma()) return {AttentionWarpKernel<D, KS, false, true>, false, solo};
    }
    return {AttentionWarpKernel<D, KS, false, false>, false, solo};
  }
}

Choice Choose(const SvdqAttentionParams& p) {
  const SvdqLayout& l = p.layout;
  const int ks = (l.retained + 15) / 16;
  const bool wg = p.kernel != SvdqAttentionParams::Kernel::kWarpStreamsSync;
  return l.width == 64 ? ChooseKs<64, 1>(l, ks, wg) : l.width == 128 ? ChooseKs<128, 1>(l, ks, wg) : Choice{};
}

}  // namespace

bool SvdqAttentionWarpSupported(const SvdqAttentionParams& p) {
  const SvdqLayout& l = p.layout;
  if ((l.width != 64 && l.width != 128) || l.group_size * kSvdqGroups != l.width || l.retained <= 0) return false;
  const int tiles_per_page = l.page_size / kTok;
  if (l.page_size % kTok != 0 || tiles_per_page < 1 || (tiles_per_page & (tiles_per_page - 1)) != 0) return false;
  if (l.page_bytes % 16 != 0 || l.scale_offset % 16 != 0) return false;
  for (int g = 0; g < kSvdqGroups; ++g)
    if (l.bits[g] > 0 && l.group_offset[g] % 16 != 0) return false;
  if (l.zero_offset != l.scale_offset + 2 * l.retained) return false;
  if (p.value_format != KvFormat::kBf16 || p.num_heads / p.kv_heads > 8) return false;
  const Choice c = Choose(p);
  return c.fn && c.smem <= MaxSmem();
}

int SvdqAttentionWarpBlocksPerSm(const SvdqAttentionParams& p) {
  const Choice c = Choose(p);
  if (!c.fn || c.smem > MaxSmem()) return 0;
  // Asked once per (instance, shared memory): the server plans every layer's attention each step.
  static std::mutex mu;
  static std::map<std::pair<KernelFn, int>, int> known;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(c.fn, c.smem);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  int n = 0;
  if (!AllowSmem(reinterpret_cast<const void*>(c.fn), c.smem).ok()) return 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, c.fn, 32 * WarpsFor(c.pair), c.smem) != cudaSuccess) {
    cudaGetLastError();  // this query's error: the caller plans for 2 blocks instead
    return 0;
  }
  known.emplace(key, n);
  return n;
}

bool SvdqAttentionWarpGroupRebuild(const SvdqAttentionParams& p) {
  const SvdqLayout& l = p.layout;
  return l.width == 128 && (l.retained + 15) / 16 >= kWgMinSteps && HasWgmma();
}

Status SvdqAttentionWarpLaunch(const SvdqAttentionParams& p, int splits, cudaStream_t stream) {
  const Choice c = Choose(p);
  if (!c.fn) return Status::Invalid("the warp-stream SVDq kernel does not take this layout");
  Status st = AllowSmem(reinterpret_cast<const void*>(c.fn), c.smem);
  if (!st.ok()) return st;
  const dim3 grid(p.batch, p.kv_heads, splits), block(32 * WarpsFor(c.pair));
  if (!p.overlap_setup || ComputeMajor() < 9) {  // programmatic dependent launch: compute capability 9.0 and up
    c.fn<<<grid, block, c.smem, stream>>>(p);
    return LaunchStatus("SvdqAttention (warp streams)");
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = c.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, c.fn, p);
  if (e != cudaSuccess) {
    cudaGetLastError();  // the launch's own error, reported here
    return Status::Invalid(std::string("SvdqAttention (warp streams, overlapped setup): ") + cudaGetErrorString(e));
  }
  return LaunchStatus("SvdqAttention (warp streams, overlapped setup)");
}

}  // namespace svdq::kernels
