// Decode attention over SVDq key pages at the speed of its bytes: the key rebuild, the
// scores and the values all on tensor cores (mma.sync m16n8k16), RoPE in registers.
//
// One thread block (4 warps) per (sequence, KV head, split of pages) walks its range in
// chunks of 64 tokens, two chunks in flight (cp.async into shared memory):
//   1. dequantize the chunk's latent codes into Z [64, r] (fp16, shared memory);
//   2. rebuild keys K = mean + Z V_r^T on tensor cores, fp16 in, fp32 accumulation. Each
//      warp owns D/4 key columns, chosen as pairs (i, i + D/2) so that the rotate-half RoPE
//      pairs sit in one thread's accumulators; its slice of V_r^T stays in registers for the
//      whole block (read once per block, not once per page);
//   3. RoPE without tables: with t = t0 + d (t0 the chunk's first position, d < 64),
//      q . R_t k = (R_t0^T q) . (R_d k). R_d (64 fixed rotations) lives in registers as fp16
//      pairs, computed once per block; R_t0^T q is a per-chunk rotation of the G query rows,
//      advanced by a fixed 64-token rotation from chunk to chunk;
//   4. scores S = q' K^T straight from the rebuild's accumulators (the C fragment of the
//      rebuild is the B fragment of the score product), partial per warp over its columns;
//      the four partials are summed in shared memory, where one warp per query row runs the
//      online softmax (exp2, scale folded into q) and writes the probabilities in bf16;
//   5. O += P V on tensor cores (bf16), V from the staged chunk by ldmatrix.trans; quantized
//      values (fp8, int8, int4 with bf16 scales per 32 channels) are staged as stored and
//      dequantized by the block into one bf16 tile at the start of their chunk.
// The bf16 tail (< P tokens, already rotated) is one more chunk whose keys come from memory
// and meet the unrotated q. Splits end in kernels/attention/split_merge.cu.
//
// Bytes per token and KV head: the key codes and scales (52 B at 8,4,2,1,1 / 16-token
// pages) and the values (2 D in bf16, D + D / 16 in fp8 / int8, D / 2 + D / 16 in int4); the
// basis is read once per block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>

#include "kernels/attention/split_merge.h"
#include "kernels/common/cuda_launch.h"
#include "kernels/common/mma.cuh"
#include "kernels/common/warp.cuh"
#include "kernels/svdq/svdq_attention_tc.h"
#include "kernels/svdq/svdq_device.cuh"

namespace svdq::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kChunk = 64;        // tokens per step
constexpr int kStages = 2;        // chunks in flight
constexpr int kPidWindow = 512;   // page ids staged in shared memory at a time
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int Align16(int x) { return (x + 15) / 16 * 16; }

// Byte offsets into dynamic shared memory.
struct MmaSmem {
  int recs_bytes;   // one stage's key records (padded: the code reader may touch one word past)
  int stage_bytes;  // records + values: bf16 [64, D + 8], or codes [64, row bytes] + scales [64, D / 32]
  int z_ld;         // halves per Z row
  int vtile;        // quantized values: their bf16 tile [64, D + 8] (0: values are bf16)
  int z, sp, pm, pids, gtab, cj, state, total;
};

__host__ __device__ inline MmaSmem PlanSmem(const SvdqLayout& l, int D, int G, int ks, KvFormat vf) {
  MmaSmem s{};
  s.recs_bytes = Align16((kChunk / l.page_size) * l.page_bytes + 16);
  const bool raw = vf != KvFormat::kBf16;
  s.stage_bytes = s.recs_bytes + (raw ? kChunk * (KvRowBytes(vf, D) + D / kKvScaleGroup * 2) : kChunk * (D + 8) * 2);
  s.z_ld = ks * 16 + 8;
  int o = kStages * s.stage_bytes;
  s.vtile = 0;
  if (raw) {
    s.vtile = o;
    o += kChunk * (D + 8) * 2;
  }
  s.z = o;     o += Align16(kChunk * s.z_ld * 2);        // Z [64, ks*16 (+8)] fp16
  s.sp = o;    o += Align16(kWarps * G * (kChunk + 4) * 4);  // partial scores [warp, G, 64 (+4)]
  s.pm = o;    o += Align16(16 * (kChunk + 8) * 2);      // probabilities [16, 64 (+8)] bf16
  s.pids = o;  o += kPidWindow * 4;
  s.gtab = o;  o += Align16(kSvdqGroups * 4);              // per retained group: offset | bits | first index
  s.cj = o;    o += Align16(D * 4);                      // latent channel of each padded retained index
  s.state = o; o += 3 * 16 * 4;                          // m (log2 units), l, correction per query row
  s.total = o;
  return s;
}

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// kRawV: values in a quantized format (staged as stored, dequantized into a tile); the bf16
// path is compiled apart so that it keeps its registers.
template <int D, int KS, bool kRawV>
__global__ void __launch_bounds__(kThreads, 2) AttentionMmaKernel(SvdqAttentionParams p) {
  constexpr int NT = D / 32;  // 8-column tiles a warp owns: NH low ones, their NH partners D/2 higher
  constexpr int NH = NT / 2;
  constexpr int RV = D / 8;   // 16-byte pieces per value row
  constexpr int kGs = D / 8;  // latent channels per group
  constexpr int kPpg = kGs / 2, kTpi = 32 / kPpg;      // dequantization: pairs per token, tokens per warp step
  constexpr int kTokSteps = kChunk / kTpi / kWarps;    // warp steps per group and chunk
  extern __shared__ __align__(128) uint8_t smem[];
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, G = p.num_heads / p.kv_heads, r = l.retained;
  const int log2p = __ffs(P) - 1;
  const MmaSmem s = PlanSmem(l, D, G, KS, p.value_format);
  const int b = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g8 = lane / 4, q4 = lane % 4;
  const int dq_pair = lane % kPpg, dq_tok = lane / kPpg;
  const __half2 k1024 = __float2half2_rn(1024.f);
  auto gtile = [&](int lt) { return lt < NH ? warp * NH + lt : D / 16 + warp * NH + (lt - NH); };

  __half* zs = reinterpret_cast<__half*>(smem + s.z);
  float* sp = reinterpret_cast<float*>(smem + s.sp);
  __nv_bfloat16* pm = reinterpret_cast<__nv_bfloat16*>(smem + s.pm);
  int* pids = reinterpret_cast<int*>(smem + s.pids);
  int* gtab = reinterpret_cast<int*>(smem + s.gtab);
  int* cj = reinterpret_cast<int*>(smem + s.cj);
  float* m_s = reinterpret_cast<float*>(smem + s.state);
  float* l_s = m_s + 16;
  float* corr_s = m_s + 32;

  const int np = p.num_pages[b];
  const SplitSlice slice = SplitPages(np, p.pages_per_split, split, gridDim.z);
  const int first = slice.first, last = slice.last;
  const int tail = slice.tail ? p.tail_len[b] : 0;
  const int ppc = kChunk / P;
  const int nfull = max(0, last - first);
  const int page_chunks = (nfull + ppc - 1) / ppc;
  const int nchunks = page_chunks + (tail > 0 ? 1 : 0);
  const int64_t bh = static_cast<int64_t>(b) * p.kv_heads + h;
  const int64_t brow = static_cast<int64_t>(p.basis_index ? p.basis_index[b] : b) * p.kv_heads + h;
  const int64_t table_row = static_cast<int64_t>(b) * p.max_pages;

  // ---- Block setup: tables, zeroed pads, page ids, softmax state.
  for (int j = tid; j < KS * 16; j += kThreads) cj[j] = j < r ? device::RetainedChannel(l, j) : -1;
  int ngroups = 0;  // retained groups, in order: byte offset | bits << 16 | first retained index << 20
  for (int g = 0; g < kSvdqGroups; ++g) {
    if (l.bits[g] == 0) continue;
    if (tid == 0) gtab[ngroups] = l.group_offset[g] | (l.bits[g] << 16) | (l.retained_before[g] << 20);
    ++ngroups;
  }
  for (int idx = tid; idx < kChunk * (KS * 16 - r); idx += kThreads) {
    const int t = idx / (KS * 16 - r), c = r + idx % (KS * 16 - r);
    zs[t * s.z_ld + c] = __float2half(0.f);
  }
  for (int idx = tid; idx < 16 * (kChunk + 8); idx += kThreads) pm[idx] = __float2bfloat16(0.f);
  if (tid < 16) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
    corr_s[tid] = 1.f;
  }
  int win0 = first;  // page index held by pids[0]
  for (int i = tid; i < min(nfull, kPidWindow); i += kThreads) pids[i] = p.page_table[table_row + first + i];
  __syncthreads();

  // ---- Per-thread constants: V_r^T fragments, mean, q, rotations.
  uint32_t bv[NT][KS][2];
  float2 mean2[NT];
  {
    const float* basis = p.basis + brow * D * D;
    const float* mean = p.mean + brow * D;
#pragma unroll
    for (int lt = 0; lt < NT; ++lt) {
      const float* row = basis + (gtile(lt) * 8 + g8) * D;  // B[k = j][n = column] = basis[column][c_j]
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const int j0 = ks * 16 + 2 * q4;
        auto v = [&](int j) { return cj[j] >= 0 ? row[cj[j]] : 0.f; };
        bv[lt][ks][0] = mma::PackHalf2(v(j0), v(j0 + 1));
        bv[lt][ks][1] = mma::PackHalf2(v(j0 + 8), v(j0 + 9));
      }
      const int i = gtile(lt) * 8 + 2 * q4;
      mean2[lt] = make_float2(mean[i], mean[i + 1]);
    }
  }
  // q rows g8 and g8 + 8 at this thread's columns, with sm_scale * log2(e) folded in.
  float qf[2][NT][2];
  {
    const auto* qg = reinterpret_cast<const __nv_bfloat16*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h * G) * D;
    const float qs = p.sm_scale * kLog2e;
#pragma unroll
    for (int rs = 0; rs < 2; ++rs)
#pragma unroll
      for (int lt = 0; lt < NT; ++lt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int g = g8 + 8 * rs;
          qf[rs][lt][e] = g < G ? __bfloat162float(qg[g * D + gtile(lt) * 8 + 2 * q4 + e]) * qs : 0.f;
        }
  }
  auto pack_q = [&](const float (&v)[2][NT][2], uint32_t (&qa)[NH][4]) {
#pragma unroll
    for (int s2 = 0; s2 < NH; ++s2) {
      qa[s2][0] = mma::PackHalf2(v[0][2 * s2][0], v[0][2 * s2][1]);
      qa[s2][1] = mma::PackHalf2(v[1][2 * s2][0], v[1][2 * s2][1]);
      qa[s2][2] = mma::PackHalf2(v[0][2 * s2 + 1][0], v[0][2 * s2 + 1][1]);
      qa[s2][3] = mma::PackHalf2(v[1][2 * s2 + 1][0], v[1][2 * s2 + 1][1]);
    }
  };
  // Rotation of the first chunk (angle t0 * theta, reduced in double) and of 64 tokens.
  float cb[NH][2], sb[NH][2], c64[NH][2], s64[NH][2];
  uint32_t dcos[4][2][NH], dsin[4][2][NH];  // R_d for d = 16 mt + g8 + 8 rs, as fp16 pairs
#pragma unroll
  for (int lt = 0; lt < NH; ++lt) {
    float th[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      th[e] = p.rope_inv_freq[gtile(lt) * 8 + 2 * q4 + e];
      double a = static_cast<double>(first) * P * th[e];
      a -= rint(a * 0.15915494309189535) * 6.283185307179586;
      sincosf(static_cast<float>(a), &sb[lt][e], &cb[lt][e]);
      sincosf(64.f * th[e], &s64[lt][e], &c64[lt][e]);
    }
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int rs = 0; rs < 2; ++rs) {
        const float d = static_cast<float>(16 * mt + g8 + 8 * rs);
        float s0, c0, s1, c1;
        sincosf(d * th[0], &s0, &c0);
        sincosf(d * th[1], &s1, &c1);
        dcos[mt][rs][lt] = mma::PackHalf2(c0, c1);
        dsin[mt][rs][lt] = mma::PackHalf2(s0, s1);
      }
  }

  // ---- Staging of chunk c into its stage: key records (a warp per page) and values: bf16 rows
  //      by a thread per 16-byte column piece, rows 128 / RV apart, or quantized rows as stored
  //      (codes by 16-byte pieces, then the rows' scales). Rows past n are zeros.
  constexpr int kRowStep = kThreads / RV;
  const int v_row0 = tid / RV, v_piece = tid % RV;
  const KvFormat vf = p.value_format;
  constexpr bool vraw = kRawV;
  const int v_row_bytes = KvRowBytes(vf, D), v_pieces = v_row_bytes / 16;
  constexpr int kScaleBytes = D / kKvScaleGroup * 2;
  const auto* vbytes = static_cast<const uint8_t*>(p.value_pages);
  auto issue = [&](int c) {
    uint8_t* recs = smem + (c % kStages) * s.stage_bytes;
    const bool paged_chunk = c < page_chunks;
    const int pg0 = first + c * ppc;
    const int n = paged_chunk ? min(ppc, last - pg0) * P : tail;
    const int* pid_c = pids + (pg0 - win0);
    if (paged_chunk) {
      const int npg = min(ppc, last - pg0);
      const int rv = l.page_bytes / 16;
      for (int k = warp; k < npg; k += kWarps) {
        const uint8_t* src = p.key_pages + (static_cast<int64_t>(pid_c[k]) * p.kv_heads + h) * l.page_bytes;
        for (int piece = lane; piece < rv; piece += 32) mma::CpAsync16(recs + k * l.page_bytes + piece * 16, src + piece * 16, 16);
      }
    }
    if constexpr (vraw) {
      // The value row of chunk token t (t < n): a page's row, or the tail page's.
      auto vrow = [&](int t) -> int64_t {
        if (paged_chunk) return (static_cast<int64_t>(pid_c[t >> log2p]) * p.kv_heads + h) * P + (t & (P - 1));
        return (static_cast<int64_t>(p.tail_value_page[b]) * p.kv_heads + h) * P + t;
      };
      uint8_t* codes = recs + s.recs_bytes;
      for (int idx = tid; idx < kChunk * v_pieces; idx += kThreads) {
        const int t = idx / v_pieces, piece = idx % v_pieces;
        const uint8_t* src = t < n ? vbytes + vrow(t) * v_row_bytes + piece * 16 : vbytes;
        mma::CpAsync16(codes + t * v_row_bytes + piece * 16, src, t < n ? 16 : 0);
      }
      if (tid < kChunk) {
        const uint8_t* src = reinterpret_cast<const uint8_t*>(p.value_scales);
        mma::CpAsyncSmall<kScaleBytes>(codes + kChunk * v_row_bytes + tid * kScaleBytes,
                                       tid < n ? src + vrow(tid) * kScaleBytes : src, tid < n);
      }
      return;
    } else {
    auto* vals = reinterpret_cast<__nv_bfloat16*>(recs + s.recs_bytes) + v_row0 * (D + 8) + v_piece * 8;
    if (paged_chunk) {
#pragma unroll
      for (int k = 0; k < kChunk / kRowStep; ++k) {
        const int t = v_row0 + k * kRowStep;
        const uint16_t* src = static_cast<const uint16_t*>(p.value_pages);
        if (t < n) src += ((static_cast<int64_t>(pid_c[t >> log2p]) * p.kv_heads + h) * P + (t & (P - 1))) * D + v_piece * 8;
        mma::CpAsync16(vals + k * kRowStep * (D + 8), src, t < n ? 16 : 0);
      }
    } else {
      // The tail's rows: in their value page, or in the gathered bf16 copy.
      const uint16_t* tv = p.tail_value_page
                               ? static_cast<const uint16_t*>(p.value_pages) + (p.tail_value_page[b] * p.kv_heads + h) * P * D
                               : p.tail_values + bh * P * D;
      tv += v_piece * 8;
#pragma unroll
      for (int k = 0; k < kChunk / kRowStep; ++k) {
        const int t = v_row0 + k * kRowStep;
        mma::CpAsync16(vals + k * kRowStep * (D + 8), t < tail ? tv + t * D : tv, t < tail ? 16 : 0);
      }
    }
    }
  };
  // Quantized values of the stage -> the bf16 tile, value = bf16(code * scale) (block-wide).
  auto dequantize_values = [&](const uint8_t* codes) {
    const auto* scales = reinterpret_cast<const __nv_bfloat16*>(codes + kChunk * v_row_bytes);
    auto* tile = reinterpret_cast<__nv_bfloat16*>(smem + s.vtile);
    const int per_piece = vf == KvFormat::kInt4 ? 32 : 16;
    for (int idx = tid; idx < kChunk * v_pieces; idx += kThreads) {
      const int t = idx / v_pieces, piece = idx % v_pieces, c0 = piece * per_piece;
      const uint4 w = *reinterpret_cast<const uint4*>(codes + t * v_row_bytes + piece * 16);
      const float scale = __bfloat162float(scales[t * (D / kKvScaleGroup) + c0 / kKvScaleGroup]);
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
      uint4* dst = reinterpret_cast<uint4*>(tile + t * (D + 8) + c0);
      if (vf == KvFormat::kInt4) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t o[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const uint32_t byte = (words[i] >> (8 * k)) & 0xffu;
            o[k] = mma::PackBf162(static_cast<float>(static_cast<int>(byte & 0xfu) - 8) * scale,
                                  static_cast<float>(static_cast<int>(byte >> 4) - 8) * scale);
          }
          dst[i] = make_uint4(o[0], o[1], o[2], o[3]);
        }
      } else {
        uint32_t o[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t x = words[i];
          float f[4];
          if (vf == KvFormat::kFp8) {
            const float2 a = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(x & 0xffffu), __NV_E4M3)));
            const float2 c2 = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(x >> 16), __NV_E4M3)));
            f[0] = a.x, f[1] = a.y, f[2] = c2.x, f[3] = c2.y;
          } else {
            const int32_t sx = static_cast<int32_t>(x);
            f[0] = static_cast<float>((sx << 24) >> 24), f[1] = static_cast<float>((sx << 16) >> 24);
            f[2] = static_cast<float>((sx << 8) >> 24), f[3] = static_cast<float>(sx >> 24);
          }
          o[2 * i] = mma::PackBf162(f[0] * scale, f[1] * scale);
          o[2 * i + 1] = mma::PackBf162(f[2] * scale, f[3] * scale);
        }
        dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
        dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
      }
    }
  };
  // Keeps the page ids of chunk c in the window (block-wide; call with every thread).
  auto ensure_window = [&](int c) {
    if (c >= page_chunks) return;
    const int pg0 = first + c * ppc;
    if (pg0 + ppc <= win0 + kPidWindow) return;
    __syncthreads();
    win0 = pg0;
    for (int i = tid; i < min(last - win0, kPidWindow); i += kThreads) pids[i] = p.page_table[table_row + win0 + i];
    __syncthreads();
  };

  float o[NT][4];
#pragma unroll
  for (int lt = 0; lt < NT; ++lt) o[lt][0] = o[lt][1] = o[lt][2] = o[lt][3] = 0.f;

#pragma unroll
  for (int c = 0; c < kStages - 1; ++c) {
    if (c < nchunks) issue(c);
    mma::CpAsyncCommit();
  }
  for (int c = 0; c < nchunks; ++c) {
    mma::CpAsyncWait<kStages - 2>();
    __syncthreads();  // chunk c landed; every warp is done with chunk c - 1
    if (c + kStages - 1 < nchunks) {
      ensure_window(c + kStages - 1);
      issue(c + kStages - 1);
    }
    mma::CpAsyncCommit();
    const bool paged = c < page_chunks;
    const int n = paged ? min(ppc, last - (first + c * ppc)) * P : tail;
    const uint8_t* recs = smem + (c % kStages) * s.stage_bytes;
    const __nv_bfloat16* vals = reinterpret_cast<const __nv_bfloat16*>(recs + s.recs_bytes);
    if constexpr (vraw) {  // the tile of chunk c - 1 is free (the barrier above); barriers follow before step 5
      dequantize_values(recs + s.recs_bytes);
      vals = reinterpret_cast<const __nv_bfloat16*>(smem + s.vtile);
    }

    // 1. Latents. Lanes take (token, channel pair) with kPpg pairs of a group per token and
    //    kTpi consecutive tokens per warp step, so that a step reads consecutive code words
    //    and scale pairs (no bank conflicts); the warp's tokens and their record offsets are
    //    fixed per chunk, and each group's offset and width are uniform.
    if (paged) {
      int rec_off[kTokSteps], code_idx[kTokSteps], z_off[kTokSteps];
#pragma unroll
      for (int k = 0; k < kTokSteps; ++k) {
        const int t = (warp + kWarps * k) * kTpi + dq_tok;
        rec_off[k] = (t >> log2p) * l.page_bytes;
        code_idx[k] = (t & (P - 1)) * kGs + 2 * dq_pair;
        z_off[k] = t * s.z_ld + 2 * dq_pair;
      }
      for (int gi = 0; gi < ngroups; ++gi) {
        const int e = gtab[gi], go = e & 0xffff, bits = (e >> 16) & 0xf, rb = e >> 20;
        const int soff = l.scale_offset + 2 * (rb + 2 * dq_pair), zoff = l.zero_offset + 2 * (rb + 2 * dq_pair);
        const uint32_t mask = (1u << bits) - 1u, mask_hi = mask << 16;
        uint32_t w0[kTokSteps], w1[kTokSteps], sh[kTokSteps];
        __half2 sc[kTokSteps], zr[kTokSteps];
#pragma unroll
        for (int k = 0; k < kTokSteps; ++k) {
          const int bit = code_idx[k] * bits;
          const uint32_t* w = reinterpret_cast<const uint32_t*>(recs + rec_off[k] + go) + (bit >> 5);
          w0[k] = w[0];
          w1[k] = w[1];
          sh[k] = bit & 31;
          sc[k] = *reinterpret_cast<const __half2*>(recs + rec_off[k] + soff);
          zr[k] = *reinterpret_cast<const __half2*>(recs + rec_off[k] + zoff);
        }
#pragma unroll
        for (int k = 0; k < kTokSteps; ++k) {
          const uint32_t v = __funnelshift_r(w0[k], w1[k], sh[k]);
          const uint32_t packed = (v & mask) | ((v << (16 - bits)) & mask_hi) | 0x64006400u;  // 1024 + code, fp16
          *reinterpret_cast<__half2*>(zs + z_off[k] + rb) = __hfma2(__hsub2(mma::AsHalf2(packed), k1024), sc[k], zr[k]);
        }
      }
    }
    __syncthreads();

    // 2-4. Keys and partial scores, 16 tokens at a time.
    uint32_t qa[NH][4];
    if (paged) {
      float qr[2][NT][2];
#pragma unroll
      for (int lt = 0; lt < NH; ++lt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float cs = cb[lt][e], sn = sb[lt][e];
#pragma unroll
          for (int rs = 0; rs < 2; ++rs) {
            const float x = qf[rs][lt][e], y = qf[rs][lt + NH][e];
            qr[rs][lt][e] = x * cs + y * sn;
            qr[rs][lt + NH][e] = y * cs - x * sn;
          }
          cb[lt][e] = cs * c64[lt][e] - sn * s64[lt][e];
          sb[lt][e] = sn * c64[lt][e] + cs * s64[lt][e];
        }
      pack_q(qr, qa);
    } else {
      pack_q(qf, qa);  // the tail's keys are rotated already: unrotated q
    }
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
      uint32_t kb[NT][2];  // B fragments of the score product: [tile][token half]
      if (paged) {
        float acc[NT][4];
#pragma unroll
        for (int lt = 0; lt < NT; ++lt) {
          acc[lt][0] = acc[lt][2] = mean2[lt].x;
          acc[lt][1] = acc[lt][3] = mean2[lt].y;
        }
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          uint32_t a[4];
          mma::LdMatrixX4(a, zs + (mt * 16 + (lane & 15)) * s.z_ld + ks * 16 + (lane >> 4) * 8);
#pragma unroll
          for (int lt = 0; lt < NT; ++lt) mma::MmaF16(acc[lt], a, bv[lt][ks][0], bv[lt][ks][1]);
        }
#pragma unroll
        for (int lt = 0; lt < NH; ++lt)
#pragma unroll
          for (int rs = 0; rs < 2; ++rs) {
            const __half2 x = __floats2half2_rn(acc[lt][2 * rs], acc[lt][2 * rs + 1]);
            const __half2 y = __floats2half2_rn(acc[lt + NH][2 * rs], acc[lt + NH][2 * rs + 1]);
            const __half2 cs = mma::AsHalf2(dcos[mt][rs][lt]), sn = mma::AsHalf2(dsin[mt][rs][lt]);
            kb[lt][rs] = mma::AsU32(__hfma2(__hneg2(y), sn, __hmul2(x, cs)));
            kb[lt + NH][rs] = mma::AsU32(__hfma2(x, sn, __hmul2(y, cs)));
          }
      } else {
        const auto* tk = reinterpret_cast<const __nv_bfloat16*>(p.tail_keys) + bh * P * D;
#pragma unroll
        for (int lt = 0; lt < NT; ++lt)
#pragma unroll
          for (int rs = 0; rs < 2; ++rs) {
            const int t = mt * 16 + g8 + 8 * rs;
            float2 k2 = make_float2(0.f, 0.f);
            if (t < tail) k2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(tk + t * D + gtile(lt) * 8 + 2 * q4));
            kb[lt][rs] = mma::PackHalf2(k2.x, k2.y);
          }
      }
#pragma unroll
      for (int rs = 0; rs < 2; ++rs) {
        float sc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int s2 = 0; s2 < NH; ++s2) mma::MmaF16(sc, qa[s2], kb[2 * s2][rs], kb[2 * s2 + 1][rs]);
        const int t0 = mt * 16 + rs * 8 + 2 * q4;
        if (g8 < G) *reinterpret_cast<float2*>(sp + (warp * G + g8) * (kChunk + 4) + t0) = make_float2(sc[0], sc[1]);
        if (g8 + 8 < G) *reinterpret_cast<float2*>(sp + (warp * G + g8 + 8) * (kChunk + 4) + t0) = make_float2(sc[2], sc[3]);
      }
    }
    __syncthreads();

    // Online softmax: one warp per query row, two tokens per lane.
    for (int g = warp; g < G; g += kWarps) {
      const int t = 2 * lane;
      float2 sum = make_float2(0.f, 0.f);
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float2 v = *reinterpret_cast<const float2*>(sp + (w * G + g) * (kChunk + 4) + t);
        sum.x += v.x;
        sum.y += v.y;
      }
      const float s0 = t < n ? sum.x : -INFINITY, s1 = t + 1 < n ? sum.y : -INFINITY;
      const float m_old = m_s[g], m_new = fmaxf(m_old, WarpMax(fmaxf(s0, s1)));
      float p0 = 0.f, p1 = 0.f, corr = 1.f;
      if (m_new != -INFINITY) {
        p0 = FastExp2(s0 - m_new);
        p1 = FastExp2(s1 - m_new);
        corr = FastExp2(m_old - m_new);
      }
      const __nv_bfloat162 pb = __floats2bfloat162_rn(p0, p1);
      *reinterpret_cast<__nv_bfloat162*>(pm + g * (kChunk + 8) + t) = pb;
      const float ps = WarpSum(__low2float(pb) + __high2float(pb));  // the rounded weights P V uses
      if (lane == 0) {
        l_s[g] = l_s[g] * corr + ps;
        m_s[g] = m_new;
        corr_s[g] = corr;
      }
    }
    __syncthreads();

    // 5. O = O * corr + P V.
    {
      const float c0 = g8 < G ? corr_s[g8] : 1.f, c1 = g8 + 8 < G ? corr_s[g8 + 8] : 1.f;
#pragma unroll
      for (int lt = 0; lt < NT; ++lt) {
        o[lt][0] *= c0;
        o[lt][1] *= c0;
        o[lt][2] *= c1;
        o[lt][3] *= c1;
      }
#pragma unroll
      for (int ks = 0; ks < kChunk / 16; ++ks) {
        uint32_t a[4];
        mma::LdMatrixX4(a, pm + (lane & 15) * (kChunk + 8) + ks * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int u = 0; u < NH; ++u) {
          uint32_t bq[4];
          const int tile = gtile(lane < 16 ? 2 * u : 2 * u + 1);
          mma::LdMatrixX4Trans(bq, vals + (ks * 16 + (lane & 15)) * (D + 8) + tile * 8);
          mma::MmaBf16(o[2 * u], a, bq[0], bq[1]);
          mma::MmaBf16(o[2 * u + 1], a, bq[2], bq[3]);
        }
      }
    }
  }
  mma::CpAsyncWait<0>();
  __syncthreads();

  // ---- Result: normalized output, or this split's partial state for the merge kernel.
  const int splits = gridDim.z;
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    const int g = g8 + 8 * rs;
    if (g >= G) continue;
    const int64_t head = static_cast<int64_t>(b) * p.num_heads + h * G + g;
    const float inv = l_s[g] > 0.f ? 1.f / l_s[g] : 0.f;
#pragma unroll
    for (int lt = 0; lt < NT; ++lt) {
      const int col = gtile(lt) * 8 + 2 * q4;
      if (p.pages_per_split == 0) {
        *reinterpret_cast<float2*>(p.out + head * D + col) = make_float2(o[lt][2 * rs] * inv, o[lt][2 * rs + 1] * inv);
      } else {
        float* ws = p.workspace + (head * splits + split) * (D + 2);
        ws[col] = o[lt][2 * rs];
        ws[col + 1] = o[lt][2 * rs + 1];
      }
    }
  }
  if (p.pages_per_split > 0 && tid < G) {
    float* ws = p.workspace + ((static_cast<int64_t>(b) * p.num_heads + h * G + tid) * splits + split) * (D + 2);
    ws[D] = m_s[tid] == -INFINITY ? -INFINITY : m_s[tid] * kLn2;  // the merge works in natural-log units
    ws[D + 1] = l_s[tid];
  }
}

int KSteps(const SvdqLayout& l) { return (l.retained + 15) / 16; }

using KernelFn = void (*)(SvdqAttentionParams);

template <int D, int KS, bool kRawV>
KernelFn PickKs(int ks) {
  if constexpr (KS > D / 16) {
    return nullptr;
  } else {
    return ks == KS ? AttentionMmaKernel<D, KS, kRawV> : PickKs<D, KS + 1, kRawV>(ks);
  }
}

KernelFn Pick(const SvdqAttentionParams& p) {
  const int ks = KSteps(p.layout);
  const bool raw = p.value_format != KvFormat::kBf16;
  if (p.layout.width == 64) return raw ? PickKs<64, 1, true>(ks) : PickKs<64, 1, false>(ks);
  if (p.layout.width == 128) return raw ? PickKs<128, 1, true>(ks) : PickKs<128, 1, false>(ks);
  return nullptr;
}

size_t SmemBytes(const SvdqAttentionParams& p) {
  return PlanSmem(p.layout, p.layout.width, p.num_heads / p.kv_heads, KSteps(p.layout), p.value_format).total;
}

}  // namespace

bool SvdqAttentionMmaSupported(const SvdqAttentionParams& p) {
  const SvdqLayout& l = p.layout;
  if (!p.rope_inv_freq || l.retained <= 0 || l.retained % 2 != 0 || l.group_size * 8 != l.width) return false;
  if (l.page_size < 1 || l.page_size > kChunk || kChunk % l.page_size != 0 || l.page_bytes % 16 != 0) return false;
  if (l.page_bytes >= (1 << 16) || p.num_heads / p.kv_heads > 16 || !Pick(p)) return false;
  return SmemBytes(p) <= 227 * 1024;
}

Status SvdqAttentionMmaLaunch(const SvdqAttentionParams& p, int splits, cudaStream_t stream) {
  KernelFn kernel = Pick(p);
  const size_t smem = SmemBytes(p);
  Status st = AllowSmem(reinterpret_cast<const void*>(kernel), smem);
  if (!st.ok()) return st;
  kernel<<<dim3(p.batch, p.kv_heads, splits), kThreads, smem, stream>>>(p);
  return LaunchStatus("SvdqAttention (mma)");
}

int SvdqAttentionPagesPerSplit(int batch, int kv_heads, int max_pages, int page_size, int num_sms, int blocks_per_sm) {
  // Planned by waves (split_merge.h) of blocks_per_sm blocks a multiprocessor, on a grid of whole
  // 64-token chunks (the split's ranges are then max_pages / splits, at least two chunks), and a
  // block's fixed cost (setup, merge) counted as four chunks: with no page
  // to attend, a launch of the warp-stream kernel took 16.4 us at 8 k-steps over two waves and
  // 17.6 us in pair mode over three (sparse_attention_bench's "fixed", 2026-12-04), about 3 and
  // 5 chunks of its work.
  const int64_t pairs = static_cast<int64_t>(batch) * kv_heads;
  if (pairs <= 0 || max_pages <= 0 || num_sms <= 0 || page_size <= 0) return 0;
  const int chunk_pages = std::max(1, kChunk / page_size);
  const int64_t slots = static_cast<int64_t>(std::max(1, blocks_per_sm)) * num_sms;
  const int splits = PlanSplitsByWaves(pairs, max_pages, slots, chunk_pages, 4 * chunk_pages, 4096);
  if (splits <= 1) return 0;
  const int pps = std::max(2 * chunk_pages, (max_pages + splits - 1) / splits);
  return pps >= max_pages ? 0 : pps;
}

}  // namespace svdq::kernels
