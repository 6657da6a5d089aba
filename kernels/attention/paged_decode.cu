// bf16 paged decode attention. The tensor-core kernel (head dims 64, 128):
//
// One block of 4 warps per (split, KV head, group of <= 16 query heads, sequence). The
// group's query rows are the A operand of every score product (rows past the group are
// zero), kept in registers for the whole block. Each warp owns the 16-token chunks
// w, w + 4, w + 8, ... of the block's range and streams them on its own: keys and values of a
// chunk go to the warp's shared memory by cp.async, three chunks in flight, with no block-wide
// barrier until the end. Per chunk:
//   S [16 rows, 16 tokens] = Q K^T     (mma.sync m16n8k16 bf16, K by ldmatrix: K rows are
//                                       the B operand's columns as stored)
//   online softmax in registers        (exp2, the scale and log2 e applied to S in fp32)
//   O [16, D] += P V                   (P from S's accumulators repacked as bf16 A fragments,
//                                       V by ldmatrix.trans)
// Then the four warps' (m, l, O) are merged in shared memory and written out, or to the
// split workspace for kernels/attention/split_merge.cu.
//
// Quantized rows (fp8 keys; fp8, int8, int4 values) are staged as they are stored (codes and
// their bf16 scales, cp.async) and dequantized by the warp into a bf16 tile in its shared
// memory just before use, with TokenStore::Read's rounding; the rest is the same.
//
// Bytes: 4 D bytes per token and KV head in bf16 (key and value), each read once; fp8 / int8
// rows are D + D / 16 bytes, int4 D / 2 + D / 16. The queries and page table are noise. The
// bound is HBM bandwidth, as for SDPA over a contiguous cache.
#include "kernels/attention/paged_decode.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <map>
#include <mutex>
#include <string>

#include "kernels/attention/split_merge.h"
#include "kernels/common/cuda_launch.h"
#include "kernels/common/mma.cuh"
#include "kernels/common/warp.cuh"

namespace svdq::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTok = 16;         // tokens per warp chunk
constexpr int kStages = 3;       // chunks in flight per warp
constexpr int kSplitAlign = 64;  // split sizes are multiples of this many tokens
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// One tensor's share of a warp's shared memory: per stage, bf16 rows padded for ldmatrix, or
// quantized rows as stored (codes, then the chunk's scales) plus one bf16 tile they are
// dequantized into.
template <int D, KvFormat F>
struct Part {
  static constexpr bool kRaw = F != KvFormat::kBf16;
  static constexpr int kLd = D + 8;  // halves per bf16 row (no bank conflicts for ldmatrix)
  static constexpr int kRowBytes = KvRowBytes(F, D);
  static constexpr int kScaleBytes = D / kKvScaleGroup * 2;
  static constexpr int kStageBytes = kRaw ? kTok * (kRowBytes + kScaleBytes) : kTok * kLd * 2;
  static constexpr int kTileBytes = kRaw ? kTok * kLd * 2 : 0;
};

template <int D, KvFormat KF, KvFormat VF>
struct MmaPlan {
  using K = Part<D, KF>;
  using V = Part<D, VF>;
  static constexpr int kLd = D + 8;
  static constexpr int kStageBytes = K::kStageBytes + V::kStageBytes;  // keys, then values
  static constexpr int kWarpBytes = kStages * kStageBytes + K::kTileBytes + V::kTileBytes;
  static constexpr int kStreamBytes = kWarps * kWarpBytes;
  static constexpr int kMergeBytes = kWarps * 16 * (D + 2) * 4;  // per warp: O [16, D], m [16], l [16]
  static constexpr int kSmemBytes = kStreamBytes > kMergeBytes ? kStreamBytes : kMergeBytes;
};

int NumSplits(const PagedDecodeParams& p) { return p.num_splits > 1 ? p.num_splits : 1; }

int RowGroups(const PagedDecodeParams& p) { return (p.num_heads / p.kv_heads + 15) / 16; }

// Stages a chunk's key and value rows [t0, t0 + 16) (clipped to t_end; rows past it are zeros):
// lanes take (row, 16-byte piece) pairs of the wider row, and each pair's row address serves
// both tensors; quantized rows then get their scales (a lane per row).
template <int D, KvFormat KF, KvFormat VF>
__device__ __forceinline__ void StageChunk(uint8_t* kdst, uint8_t* vdst, const PagedDecodeParams& p,
                                           const int32_t* table, int t0, int t_end, int kvh, int lane) {
  using KP = Part<D, KF>;
  using VP = Part<D, VF>;
  constexpr int kKPieces = KP::kRowBytes / 16, kVPieces = VP::kRowBytes / 16;
  constexpr int kPieces = kKPieces > kVPieces ? kKPieces : kVPieces;
  static_assert(kTok * kPieces % 32 == 0, "whole warp steps");
  const int P = p.page_size, KV = p.kv_heads;
  const auto* kp = static_cast<const uint8_t*>(p.key_pages);
  const auto* vp = static_cast<const uint8_t*>(p.value_pages);
#pragma unroll
  for (int j = 0; j < kTok * kPieces / 32; ++j) {
    const int idx = lane + 32 * j, row = idx / kPieces, piece = idx % kPieces;
    const int t = t0 + row;
    const bool ok = t < t_end;
    const int64_t prow = ok ? (static_cast<int64_t>(table[t / P]) * KV + kvh) * P + t % P : 0;
    if (kKPieces == kPieces || piece < kKPieces)
      mma::CpAsync16(KP::kRaw ? kdst + row * KP::kRowBytes + piece * 16 : kdst + (row * KP::kLd + piece * 8) * 2,
                     kp + prow * KP::kRowBytes + piece * 16, ok ? 16 : 0);
    if (kVPieces == kPieces || piece < kVPieces)
      mma::CpAsync16(VP::kRaw ? vdst + row * VP::kRowBytes + piece * 16 : vdst + (row * VP::kLd + piece * 8) * 2,
                     vp + prow * VP::kRowBytes + piece * 16, ok ? 16 : 0);
  }
  if constexpr (KP::kRaw || VP::kRaw) {
    if (lane < kTok) {
      const int t = t0 + lane;
      const bool ok = t < t_end;
      const int64_t prow = ok ? (static_cast<int64_t>(table[t / P]) * KV + kvh) * P + t % P : 0;
      if constexpr (KP::kRaw)
        mma::CpAsyncSmall<KP::kScaleBytes>(kdst + kTok * KP::kRowBytes + lane * KP::kScaleBytes,
                                           reinterpret_cast<const uint8_t*>(p.key_scales) + prow * KP::kScaleBytes, ok);
      if constexpr (VP::kRaw)
        mma::CpAsyncSmall<VP::kScaleBytes>(vdst + kTok * VP::kRowBytes + lane * VP::kScaleBytes,
                                           reinterpret_cast<const uint8_t*>(p.value_scales) + prow * VP::kScaleBytes, ok);
    }
  }
}

__device__ __forceinline__ uint32_t ScaledBf162(float a, float b, float scale) {
  return mma::PackBf162(a * scale, b * scale);
}

// Quantized rows of a stage -> the warp's bf16 tile [16, D + 8], value = bf16(code * scale).
template <int D, KvFormat F>
__device__ __forceinline__ void Dequantize(const uint8_t* raw, __nv_bfloat16* tile, int lane) {
  using Pt = Part<D, F>;
  constexpr int kPieces = Pt::kRowBytes / 16;
  constexpr int kCodes = F == KvFormat::kInt4 ? 32 : 16;  // codes per 16-byte piece
  const auto* scales = reinterpret_cast<const __nv_bfloat16*>(raw + kTok * Pt::kRowBytes);
#pragma unroll
  for (int j = 0; j < kTok * kPieces / 32; ++j) {
    const int idx = lane + 32 * j, row = idx / kPieces, piece = idx % kPieces;
    const uint4 w = *reinterpret_cast<const uint4*>(raw + row * Pt::kRowBytes + piece * 16);
    const float scale = __bfloat162float(scales[row * (D / kKvScaleGroup) + piece * kCodes / kKvScaleGroup]);
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
    uint32_t out[kCodes / 2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t x = words[i];
      if constexpr (F == KvFormat::kFp8) {
        const __half2 lo = __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(x & 0xffffu), __NV_E4M3));
        const __half2 hi = __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(x >> 16), __NV_E4M3));
        const float2 a = __half22float2(lo), b = __half22float2(hi);
        out[2 * i] = ScaledBf162(a.x, a.y, scale);
        out[2 * i + 1] = ScaledBf162(b.x, b.y, scale);
      } else if constexpr (F == KvFormat::kInt8) {
        const int32_t s = static_cast<int32_t>(x);
        out[2 * i] = ScaledBf162(static_cast<float>((s << 24) >> 24), static_cast<float>((s << 16) >> 24), scale);
        out[2 * i + 1] = ScaledBf162(static_cast<float>((s << 8) >> 24), static_cast<float>(s >> 24), scale);
      } else {
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const int lo = static_cast<int>((x >> (8 * n)) & 0xfu) - 8, hi = static_cast<int>((x >> (8 * n + 4)) & 0xfu) - 8;
          out[4 * i + n] = ScaledBf162(static_cast<float>(lo), static_cast<float>(hi), scale);
        }
      }
    }
    uint4* dst = reinterpret_cast<uint4*>(tile + row * Pt::kLd + piece * kCodes);
#pragma unroll
    for (int i = 0; i < kCodes / 8; ++i) dst[i] = make_uint4(out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3]);
  }
}

template <int D, KvFormat KF, KvFormat VF>
__global__ void __launch_bounds__(kThreads, 2) PagedDecodeMmaKernel(PagedDecodeParams p, int row_groups) {
  using Plan = MmaPlan<D, KF, VF>;
  constexpr int KS = D / 16;           // k-steps of the score product
  constexpr int NT = D / 8;            // 8-column tiles of O
  extern __shared__ __align__(16) uint8_t smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g8 = lane / 4, q4 = lane % 4;
  const int split = blockIdx.x, kvh = blockIdx.y / row_groups, rg = blockIdx.y % row_groups, b = blockIdx.z;
  const int G = p.num_heads / p.kv_heads, row0 = rg * 16, nrows = min(16, G - row0);
  const int P = p.page_size, KV = p.kv_heads;
  const int L = min(p.seq_len[b], p.max_pages * P);  // never past the page table's row
  // This sequence's own length over the grid's splits, in ranges of whole 64-token steps.
  const int per = gridDim.x > 1 ? ((L + gridDim.x - 1) / gridDim.x + kSplitAlign - 1) / kSplitAlign * kSplitAlign : L;
  const int t_begin = min(L, split * per), t_end = min(L, t_begin + per);
  const int nchunks = max(0, (t_end - t_begin + kTok - 1) / kTok);
  const int mine = nchunks > warp ? (nchunks - warp + kWarps - 1) / kWarps : 0;

  // Query rows as A fragments: a0 = Q[g][2q..], a1 = Q[g+8][2q..], a2/a3 the same 8 columns on.
  const int head0 = kvh * G + row0;
  const uint32_t* qrow_lo = reinterpret_cast<const uint32_t*>(p.q + (static_cast<int64_t>(b) * p.num_heads + head0 + g8) * D);
  const uint32_t* qrow_hi = reinterpret_cast<const uint32_t*>(p.q + (static_cast<int64_t>(b) * p.num_heads + head0 + g8 + 8) * D);
  uint32_t qa[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    const int c = (ks * 16 + 2 * q4) / 2;
    qa[ks][0] = g8 < nrows ? qrow_lo[c] : 0u;
    qa[ks][1] = g8 + 8 < nrows ? qrow_hi[c] : 0u;
    qa[ks][2] = g8 < nrows ? qrow_lo[c + 4] : 0u;
    qa[ks][3] = g8 + 8 < nrows ? qrow_hi[c + 4] : 0u;
  }

  uint8_t* wsm = smem + warp * Plan::kWarpBytes;
  auto* ktile = reinterpret_cast<__nv_bfloat16*>(wsm + kStages * Plan::kStageBytes);
  auto* vtile = reinterpret_cast<__nv_bfloat16*>(wsm + kStages * Plan::kStageBytes + Plan::K::kTileBytes);
  const int32_t* table = p.page_table + static_cast<int64_t>(b) * p.max_pages;
  auto issue = [&](int i) {  // the warp's i-th chunk into stage i % kStages
    uint8_t* stage = wsm + (i % kStages) * Plan::kStageBytes;
    StageChunk<D, KF, VF>(stage, stage + Plan::K::kStageBytes, p, table, t_begin + (warp + i * kWarps) * kTok, t_end,
                          kvh, lane);
  };

  const float scale = p.sm_scale * kLog2e;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g8, g8 + 8 (log2 units)
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  const int mrow = lane / 8, mr = lane % 8;  // ldmatrix: which 8x8 matrix this lane addresses, and its row

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < mine) issue(s);
    mma::CpAsyncCommit();
  }
  for (int i = 0; i < mine; ++i) {
    if (i + kStages - 1 < mine) issue(i + kStages - 1);
    mma::CpAsyncCommit();
    mma::CpAsyncWait<kStages - 1>();
    __syncwarp();
    const uint8_t* stage = wsm + (i % kStages) * Plan::kStageBytes;
    const __nv_bfloat16* ks = reinterpret_cast<const __nv_bfloat16*>(stage);
    const __nv_bfloat16* vs = reinterpret_cast<const __nv_bfloat16*>(stage + Plan::K::kStageBytes);
    if constexpr (Plan::K::kRaw) {
      Dequantize<D, KF>(stage, ktile, lane);
      ks = ktile;
    }
    if constexpr (Plan::V::kRaw) {
      Dequantize<D, VF>(stage + Plan::K::kStageBytes, vtile, lane);
      vs = vtile;
    }
    if constexpr (Plan::K::kRaw || Plan::V::kRaw) __syncwarp();
    const int t0 = t_begin + (warp + i * kWarps) * kTok;

    float s[2][4] = {};
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      uint32_t r[4];
      mma::LdMatrixX4(r, ks + ((mrow / 2) * 8 + mr) * Plan::kLd + k * 16 + (mrow % 2) * 8);
      mma::MmaBf16(s[0], qa[k], r[0], r[1]);
      mma::MmaBf16(s[1], qa[k], r[2], r[3]);
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int t = t0 + n * 8 + 2 * q4 + (j & 1);
        s[n][j] = t < t_end ? s[n][j] * scale : -INFINITY;
        mx[j / 2] = fmaxf(mx[j / 2], s[n][j]);
      }
    float corr[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);
      base[r] = mn == -INFINITY ? 0.f : mn;
      corr[r] = Exp2(m[r] - base[r]);
      m[r] = mn;
      l[r] *= corr[r];
    }
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[n][j] = Exp2(s[n][j] - base[j / 2]);
        l[j / 2] += s[n][j];
      }
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }
    const uint32_t pa[4] = {mma::PackBf162(s[0][0], s[0][1]), mma::PackBf162(s[0][2], s[0][3]),
                            mma::PackBf162(s[1][0], s[1][1]), mma::PackBf162(s[1][2], s[1][3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t r[4];
      mma::LdMatrixX4Trans(r, vs + ((mrow % 2) * 8 + mr) * Plan::kLd + dp * 16 + (mrow / 2) * 8);
      mma::MmaBf16(o[2 * dp], pa, r[0], r[1]);
      mma::MmaBf16(o[2 * dp + 1], pa, r[2], r[3]);
    }
    __syncwarp();  // every lane has read this stage before it is refilled
  }
  mma::CpAsyncWait<0>();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }

  // Merge the warps: O [warp][16][D], then m and l [warp][16], over the stream buffers.
  __syncthreads();
  float* os = reinterpret_cast<float*>(smem);
  float* ms = os + kWarps * 16 * D;
  float* ls = ms + kWarps * 16;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    float* lo = os + (warp * 16 + g8) * D + n * 8 + 2 * q4;
    lo[0] = o[n][0];
    lo[1] = o[n][1];
    lo[8 * D] = o[n][2];
    lo[8 * D + 1] = o[n][3];
  }
  if (q4 == 0) {
    ms[warp * 16 + g8] = m[0];
    ms[warp * 16 + g8 + 8] = m[1];
    ls[warp * 16 + g8] = l[0];
    ls[warp * 16 + g8 + 8] = l[1];
  }
  __syncthreads();
  const int splits = gridDim.x;
  for (int idx = threadIdx.x; idx < nrows * D; idx += kThreads) {
    const int row = idx / D, col = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, ms[w * 16 + row]);
    float acc = 0.f, sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float e = M == -INFINITY ? 0.f : Exp2(ms[w * 16 + row] - M);
      acc += e * os[(w * 16 + row) * D + col];
      sum += e * ls[w * 16 + row];
    }
    const int64_t head = static_cast<int64_t>(b) * p.num_heads + head0 + row;
    if (splits == 1) {
      p.out[head * D + col] = sum > 0.f ? acc / sum : 0.f;
    } else {
      float* ws = p.workspace + (head * splits + split) * (D + 2);
      ws[col] = acc;
      if (col == 0) {
        ws[D] = M == -INFINITY ? -INFINITY : M * kLn2;
        ws[D + 1] = sum;
      }
    }
  }
}

// Any head dim up to 256: one block per (sequence, query head), scores in shared memory.
constexpr int kScalarThreads = 128;

__device__ float BlockReduce(float v, float* scratch, bool is_max) {
  v = is_max ? WarpMax(v) : WarpSum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kScalarThreads / 32; ++w) v = is_max ? fmaxf(v, scratch[w]) : v + scratch[w];
  return v;
}

__global__ void __launch_bounds__(kScalarThreads) PagedDecodeScalarKernel(PagedDecodeParams p) {
  extern __shared__ float fsmem[];
  const int b = blockIdx.x / p.num_heads, h = blockIdx.x % p.num_heads;
  const int kvh = h / (p.num_heads / p.kv_heads);
  const int D = p.head_dim, P = p.page_size, L = min(p.seq_len[b], p.max_seq_len);
  float* q = fsmem;                             // [D]
  float* scratch = q + D;                       // [kScalarThreads / 32]
  float* score = scratch + kScalarThreads / 32;  // [max_seq_len]
  const auto* qb = reinterpret_cast<const __nv_bfloat16*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h) * D;
  for (int d = threadIdx.x; d < D; d += kScalarThreads) q[d] = __bfloat162float(qb[d]) * p.sm_scale;
  __syncthreads();
  auto row = [&](const void* pages, int t) {
    const int64_t page = p.page_table[static_cast<int64_t>(b) * p.max_pages + t / P];
    return reinterpret_cast<const __nv_bfloat16*>(pages) + ((page * p.kv_heads + kvh) * P + t % P) * D;
  };
  float m = -FLT_MAX;
  for (int t = threadIdx.x; t < L; t += kScalarThreads) {
    const __nv_bfloat16* k = row(p.key_pages, t);
    float s = 0.f;
    for (int d = 0; d < D; ++d) s += q[d] * __bfloat162float(k[d]);
    score[t] = s;
    m = fmaxf(m, s);
  }
  m = BlockReduce(m, scratch, true);
  float sum = 0.f;
  for (int t = threadIdx.x; t < L; t += kScalarThreads) {
    const float e = __expf(score[t] - m);
    score[t] = e;
    sum += e;
  }
  sum = BlockReduce(sum, scratch, false);
  __syncthreads();
  float* out = p.out + (static_cast<int64_t>(b) * p.num_heads + h) * D;
  for (int d = threadIdx.x; d < D; d += kScalarThreads) {
    float acc = 0.f;
    for (int t = 0; t < L; ++t) acc += score[t] * __bfloat162float(row(p.value_pages, t)[d]);
    out[d] = sum > 0.f ? acc / sum : 0.f;
  }
}

template <int D, KvFormat KF, KvFormat VF>
const void* MmaKernel() {
  return reinterpret_cast<const void*>(PagedDecodeMmaKernel<D, KF, VF>);
}

template <int D, KvFormat KF, KvFormat VF>
Status LaunchMma(const PagedDecodeParams& p, cudaStream_t stream) {
  const int smem = MmaPlan<D, KF, VF>::kSmemBytes;
  if (Status s = AllowSmem(MmaKernel<D, KF, VF>(), smem); !s.ok()) return s;
  const int splits = NumSplits(p), groups = RowGroups(p);
  PagedDecodeMmaKernel<D, KF, VF><<<dim3(splits, p.kv_heads * groups, p.batch), kThreads, smem, stream>>>(p, groups);
  if (Status s = LaunchStatus("paged decode attention"); !s.ok()) return s;
  if (splits == 1) return Status::Ok();
  return MergeSplits(p.workspace, p.out, p.batch * p.num_heads, splits, D, stream);
}

// The tensor-core kernel for p's head dim and formats: its launcher, or its address and shared
// memory (for the occupancy query). Keys bf16 or fp8; values any format.
template <int D, KvFormat KF>
Status DispatchValues(const PagedDecodeParams& p, cudaStream_t stream, const void** kernel, int* smem) {
  switch (p.value_format) {
#define SVDQ_PAGED_CASE(VF)                                      \
  case VF:                                                       \
    if (kernel) {                                                \
      *kernel = MmaKernel<D, KF, VF>();                          \
      *smem = MmaPlan<D, KF, VF>::kSmemBytes;                    \
      return Status::Ok();                                       \
    }                                                            \
    return LaunchMma<D, KF, VF>(p, stream);
    SVDQ_PAGED_CASE(KvFormat::kBf16)
    SVDQ_PAGED_CASE(KvFormat::kFp8)
    SVDQ_PAGED_CASE(KvFormat::kInt8)
    SVDQ_PAGED_CASE(KvFormat::kInt4)
#undef SVDQ_PAGED_CASE
  }
  return Status::Invalid("paged decode: unknown value format");
}

template <int D>
Status DispatchKeys(const PagedDecodeParams& p, cudaStream_t stream, const void** kernel, int* smem) {
  if (p.key_format == KvFormat::kBf16) return DispatchValues<D, KvFormat::kBf16>(p, stream, kernel, smem);
  if (p.key_format == KvFormat::kFp8) return DispatchValues<D, KvFormat::kFp8>(p, stream, kernel, smem);
  return Status::Invalid("paged decode: keys must be bf16 or fp8");
}

Status Dispatch(const PagedDecodeParams& p, cudaStream_t stream, const void** kernel = nullptr, int* smem = nullptr) {
  return p.head_dim == 64 ? DispatchKeys<64>(p, stream, kernel, smem) : DispatchKeys<128>(p, stream, kernel, smem);
}

}  // namespace

bool PagedDecodeTensorCores(int head_dim) { return head_dim == 64 || head_dim == 128; }

int PagedDecodeNumSplits(const PagedDecodeParams& p, int num_sms) {
  if (p.batch < 1 || p.kv_heads < 1 || p.num_heads < p.kv_heads || p.max_seq_len < 1 || num_sms < 1 ||
      !PagedDecodeTensorCores(p.head_dim))
    return 1;
  const void* kernel = nullptr;
  int smem = 0, per_sm = 0;
  if (!Dispatch(p, nullptr, &kernel, &smem).ok()) return 1;
  {
    // Asked once per kernel (the planner runs every layer of an eager step).
    static std::mutex mu;
    static std::map<const void*, int> resident;
    std::lock_guard<std::mutex> lock(mu);
    auto it = resident.find(kernel);
    if (it == resident.end()) {
      if (!AllowSmem(kernel, smem).ok() ||
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem) != cudaSuccess || per_sm < 1)
        per_sm = 2;
      it = resident.emplace(kernel, per_sm).first;
    }
    per_sm = it->second;
  }
  const int64_t units = static_cast<int64_t>(p.batch) * p.kv_heads * RowGroups(p);
  // A block's fixed cost (query load, pipeline fill, the warps' merge) is worth about two
  // steps of its four warps.
  return PlanSplitsByWaves(units, p.max_seq_len, static_cast<int64_t>(per_sm) * num_sms, kSplitAlign, 2 * kSplitAlign,
                           4096);
}

size_t PagedDecodeWorkspaceFloats(const PagedDecodeParams& p) {
  if (NumSplits(p) == 1 || !PagedDecodeTensorCores(p.head_dim)) return 0;
  return static_cast<size_t>(p.batch) * p.num_heads * NumSplits(p) * (p.head_dim + 2);
}

Status PagedDecodeAttention(const PagedDecodeParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.num_heads < 1 || p.kv_heads < 1 || p.num_heads % p.kv_heads != 0)
    return Status::Invalid("paged decode: batch >= 0, num_heads and kv_heads positive, num_heads a multiple of kv_heads");
  if (p.head_dim < 1 || p.head_dim > 256 || p.head_dim % 8 != 0)
    return Status::Invalid("paged decode: head_dim must be a multiple of 8 in [8, 256]");
  if (p.page_size < 1 || p.max_pages < 1 || p.max_seq_len < 1 ||
      p.max_seq_len > static_cast<int64_t>(p.max_pages) * p.page_size)
    return Status::Invalid("paged decode: max_seq_len must be in [1, max_pages * page_size]");
  if (p.num_splits < 0) return Status::Invalid("paged decode: num_splits must be >= 0");
  const bool quantized = p.key_format != KvFormat::kBf16 || p.value_format != KvFormat::kBf16;
  if (quantized && !PagedDecodeTensorCores(p.head_dim))
    return Status::Invalid("paged decode: quantized pages need head dim 64 or 128");
  if (p.batch == 0) return Status::Ok();
  if (!p.q || !p.key_pages || !p.value_pages || !p.page_table || !p.seq_len || !p.out)
    return Status::Invalid("paged decode: a pointer is null");
  if ((p.key_format != KvFormat::kBf16 && !p.key_scales) || (p.value_format != KvFormat::kBf16 && !p.value_scales))
    return Status::Invalid("paged decode: quantized pages need their scales");
  if (PagedDecodeTensorCores(p.head_dim)) {
    if (NumSplits(p) > 1 && !p.workspace) return Status::Invalid("paged decode: a split needs a workspace");
    return Dispatch(p, stream);
  }
  const size_t smem = (static_cast<size_t>(p.head_dim) + kScalarThreads / 32 + p.max_seq_len) * sizeof(float);
  if (Status s = AllowSmem(reinterpret_cast<const void*>(PagedDecodeScalarKernel), smem); !s.ok()) return s;
  PagedDecodeScalarKernel<<<p.batch * p.num_heads, kScalarThreads, smem, stream>>>(p);
  return LaunchStatus("paged decode attention");
}

}  // namespace svdq::kernels
