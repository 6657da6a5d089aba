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
//   5. O += P V on tensor cores (bf16), V from the staged chunk by ldmatrix.trans.
// The bf16 tail (< P tokens, already rotated) is one more chunk whose keys come from memory
// and meet the unrotated q. Splits end in the merge kernel of svdq_attention.cu.
//
// Bytes per token and KV head: the key codes and scales (52 B at 8,4,2,1,1 / 16-token
// pages) and the bf16 values (2 D); the basis is read once per block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

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
  int stage_bytes;  // records + values [64, D + 8] bf16
  int vt_ld;        // halves per row of V_r^T
  int vt, qbuf, qorig, mean, pids, gtab, cj, total;
};

__host__ __device__ inline MmaSmem PlanSmem(const SvdqLayout& l, int D, int G, int ks) {
  MmaSmem s{};
  s.recs_bytes = Align16((kChunk / l.page_size) * l.page_bytes + 16);
  s.stage_bytes = s.recs_bytes + kChunk * (D + 8) * 2;
  s.vt_ld = ks * 16 + 8;
  int o = kStages * s.stage_bytes;
  s.vt = o;    o += Align16(D * s.vt_ld * 2);        // V_r^T as [column, retained index] fp16
  s.qbuf = o;  o += Align16(2 * 16 * (D + 8) * 2);   // rotated q of two chunks [2, 16, D (+8)] fp16
  s.qorig = o; o += Align16(G * D * 4);              // q * sm_scale * log2(e), fp32
  s.mean = o;  o += Align16(D * 4);
  s.pids = o;  o += kPidWindow * 4;
  s.gtab = o;  o += Align16(kSvdqGroups * 4);        // per retained group: offset | bits | first index
  s.cj = o;    o += Align16(D * 4);                  // latent channel of each padded retained index
  s.total = o;
  return s;
}

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <int D, int KS>
__global__ void __launch_bounds__(kThreads, 2) AttentionMmaKernel(SvdqAttentionParams p) {
  constexpr int NC = D / 32;   // column groups: low tiles 2cg, 2cg+1 and their partners D/2 higher
  constexpr int NT = D / 8;    // 8-column tiles of the output
  constexpr int RV = D / 8;    // 16-byte pieces per value row
  constexpr int kGs = D / 8;   // latent channels per group
  extern __shared__ __align__(128) uint8_t smem[];
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, G = p.num_heads / p.kv_heads, r = l.retained;
  const int log2p = __ffs(P) - 1;
  const MmaSmem s = PlanSmem(l, D, G, KS);
  const int b = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g8 = lane / 4, q4 = lane % 4;
  const __half2 k1024 = __float2half2_rn(1024.f);

  __half* vt = reinterpret_cast<__half*>(smem + s.vt);
  __half* qbuf = reinterpret_cast<__half*>(smem + s.qbuf);
  float* qorig = reinterpret_cast<float*>(smem + s.qorig);
  float* mean_s = reinterpret_cast<float*>(smem + s.mean);
  int* pids = reinterpret_cast<int*>(smem + s.pids);
  int* gtab = reinterpret_cast<int*>(smem + s.gtab);
  int* cj = reinterpret_cast<int*>(smem + s.cj);

  const int np = p.num_pages[b];
  const int pps = p.pages_per_split > 0 ? p.pages_per_split : np + 1;
  const int first = split * pps, last = min(np, first + pps);
  const int tail = (np / pps == split) ? p.tail_len[b] : 0;
  const int ppc = kChunk / P;
  const int nfull = max(0, last - first);
  const int page_chunks = (nfull + ppc - 1) / ppc;
  const int nchunks = page_chunks + (tail > 0 ? 1 : 0);
  const int64_t bh = static_cast<int64_t>(b) * p.kv_heads + h;
  const int64_t brow = static_cast<int64_t>(p.basis_index ? p.basis_index[b] : b) * p.kv_heads + h;
  const int64_t table_row = static_cast<int64_t>(b) * p.max_pages;

  // ---- Block setup: tables, V_r^T, mean, q, page ids.
  for (int j = tid; j < KS * 16; j += kThreads) cj[j] = j < r ? device::RetainedChannel(l, j) : -1;
  int ngroups = 0;  // retained groups, in order: byte offset | bits << 16 | first retained index << 20
  for (int g = 0; g < kSvdqGroups; ++g) {
    if (l.bits[g] == 0) continue;
    if (tid == 0) gtab[ngroups] = l.group_offset[g] | (l.bits[g] << 16) | (l.retained_before[g] << 20);
    ++ngroups;
  }
  {
    const float* mean = p.mean + brow * D;
    const auto* qg = reinterpret_cast<const __nv_bfloat16*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h * G) * D;
    const float qs = p.sm_scale * kLog2e;
    for (int i = tid; i < D; i += kThreads) mean_s[i] = mean[i];
    for (int i = tid; i < G * D; i += kThreads) qorig[i] = __bfloat162float(qg[i]) * qs;
    for (int i = tid; i < 2 * 16 * (D + 8); i += kThreads) qbuf[i] = __float2half(0.f);  // rows >= G stay zero
  }
  int win0 = first;  // page index held by pids[0]
  for (int i = tid; i < min(nfull, kPidWindow); i += kThreads) pids[i] = p.page_table[table_row + first + i];
  __syncthreads();
  {
    const float* basis = p.basis + brow * D * D;  // B[k = j][n = i] = basis[i][c_j]
    for (int idx = tid; idx < D * KS * 16; idx += kThreads) {
      const int i = idx / (KS * 16), j = idx - i * (KS * 16);
      vt[i * s.vt_ld + j] = __float2half(cj[j] >= 0 ? basis[i * D + cj[j]] : 0.f);
    }
  }

  // R_d for this thread's two tokens (d = 16 warp + g8, + 8) and the frequencies of its
  // accumulator columns, as fp16 pairs: [column group][token half][low tile].
  uint32_t dcos[NC][2][2], dsin[NC][2][2];
#pragma unroll
  for (int cg = 0; cg < NC; ++cg)
#pragma unroll
    for (int tt = 0; tt < 2; ++tt) {
      const int i = (2 * cg + tt) * 8 + 2 * q4;
      const float th0 = p.rope_inv_freq[i], th1 = p.rope_inv_freq[i + 1];
#pragma unroll
      for (int rs = 0; rs < 2; ++rs) {
        const float d = static_cast<float>(16 * warp + g8 + 8 * rs);
        float s0, c0, s1, c1;
        sincosf(d * th0, &s0, &c0);
        sincosf(d * th1, &s1, &c1);
        dcos[cg][rs][tt] = mma::PackHalf2(c0, c1);
        dsin[cg][rs][tt] = mma::PackHalf2(s0, s1);
      }
    }
  // q rotated by -t0 (the chunk's first position) for one frequency per thread, advanced
  // by 64 tokens a chunk; a thread writes rows tid / (D/2) + k (128 / (D/2)) of it.
  const int qi = tid % (D / 2);
  float qc, qsn, q64c, q64s;
  {
    const float th = p.rope_inv_freq[qi];
    double a = static_cast<double>(first) * P * th;
    a -= rint(a * 0.15915494309189535) * 6.283185307179586;
    sincosf(static_cast<float>(a), &qsn, &qc);
    sincosf(64.f * th, &q64s, &q64c);
  }
  auto write_q = [&](int c) {
    __half* qb = qbuf + (c & 1) * 16 * (D + 8);
    const bool paged = c < page_chunks;
    for (int g = tid / (D / 2); g < G; g += kThreads / (D / 2)) {
      const float x = qorig[g * D + qi], y = qorig[g * D + qi + D / 2];
      qb[g * (D + 8) + qi] = __float2half(paged ? x * qc + y * qsn : x);
      qb[g * (D + 8) + qi + D / 2] = __float2half(paged ? y * qc - x * qsn : y);
    }
    if (paged) {
      const float c2 = qc * q64c - qsn * q64s;
      qsn = qsn * q64c + qc * q64s;
      qc = c2;
    }
  };

  // ---- Staging of chunk c into its stage: key records (a warp per page) and values (a
  //      thread per 16-byte column piece, rows 128 / RV apart; rows past n zero).
  constexpr int kRowStep = kThreads / RV;
  const int v_row0 = tid / RV, v_piece = tid % RV;
  auto issue = [&](int c) {
    uint8_t* recs = smem + (c % kStages) * s.stage_bytes;
    auto* vals = reinterpret_cast<__nv_bfloat16*>(recs + s.recs_bytes) + v_row0 * (D + 8) + v_piece * 8;
    if (c < page_chunks) {
      const int pg0 = first + c * ppc, npg = min(ppc, last - pg0), n = npg * P;
      const int* pid_c = pids + (pg0 - win0);
      const int rv = l.page_bytes / 16;
      for (int k = warp; k < npg; k += kWarps) {
        const uint8_t* src = p.key_pages + (static_cast<int64_t>(pid_c[k]) * p.kv_heads + h) * l.page_bytes;
        for (int piece = lane; piece < rv; piece += 32) mma::CpAsync16(recs + k * l.page_bytes + piece * 16, src + piece * 16, 16);
      }
#pragma unroll
      for (int k = 0; k < kChunk / kRowStep; ++k) {
        const int t = v_row0 + k * kRowStep;
        const uint16_t* src = p.value_pages;
        if (t < n) src += ((static_cast<int64_t>(pid_c[t >> log2p]) * p.kv_heads + h) * P + (t & (P - 1))) * D + v_piece * 8;
        mma::CpAsync16(vals + k * kRowStep * (D + 8), src, t < n ? 16 : 0);
      }
    } else {
      const uint16_t* tv = p.tail_values + bh * P * D + v_piece * 8;
#pragma unroll
      for (int k = 0; k < kChunk / kRowStep; ++k) {
        const int t = v_row0 + k * kRowStep;
        mma::CpAsync16(vals + k * kRowStep * (D + 8), t < tail ? tv + t * D : tv, t < tail ? 16 : 0);
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

  // Per-warp softmax state of rows g8 and g8 + 8 (log2 units; l is this thread's share).
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.f, 0.f};
  float o[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;

  if (nchunks > 0) {
    write_q(0);
    issue(0);
  }
  mma::CpAsyncCommit();
  const int tok0 = 16 * warp + g8;  // this thread's tokens in a chunk: tok0, tok0 + 8
  for (int c = 0; c < nchunks; ++c) {
    mma::CpAsyncWait<0>();
    __syncthreads();  // chunk c and its q landed; every warp is done with chunk c - 1
    if (c + 1 < nchunks) {
      ensure_window(c + 1);
      issue(c + 1);
      write_q(c + 1);
    }
    mma::CpAsyncCommit();
    const bool paged = c < page_chunks;
    const int n = paged ? min(ppc, last - (first + c * ppc)) * P : tail;
    const uint8_t* recs = smem + (c % kStages) * s.stage_bytes;
    const auto* vals = reinterpret_cast<const __nv_bfloat16*>(recs + s.recs_bytes);
    const __half* qb = qbuf + (c & 1) * 16 * (D + 8);
    if (16 * warp >= n) continue;  // this warp's tokens are all past the end (no barrier below)

    // 1. Latents of this thread's two tokens, straight into the A fragments of the rebuild:
    //    za[ks] = Z[tokens][16 ks + 2 q4 (+1, +8, +9)].
    uint32_t za[KS][4];
    if (paged) {
      const uint8_t* rec[2];
      int code0[2];
#pragma unroll
      for (int rs = 0; rs < 2; ++rs) {
        const int t = tok0 + 8 * rs;
        rec[rs] = recs + (t >> log2p) * l.page_bytes;
        code0[rs] = (t & (P - 1)) * kGs;
      }
#pragma unroll
      for (int ks = 0; ks < KS; ++ks)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int gi = D == 128 ? ks : 2 * ks + hh;  // retained group of these columns
          const int cl = D == 128 ? 8 * hh + 2 * q4 : 2 * q4;
          if (gi >= ngroups) {
            za[ks][2 * hh] = za[ks][2 * hh + 1] = 0u;
            continue;
          }
          const int e = gtab[gi], go = e & 0xffff, bits = (e >> 16) & 0xf;
          const int j = ks * 16 + 8 * hh + 2 * q4;
          const uint32_t mask = (1u << bits) - 1u, mask_hi = mask << 16;
#pragma unroll
          for (int rs = 0; rs < 2; ++rs) {
            const int bit = (code0[rs] + cl) * bits;
            const uint32_t* w = reinterpret_cast<const uint32_t*>(rec[rs] + go) + (bit >> 5);
            const uint32_t v = __funnelshift_r(w[0], w[1], bit & 31);
            const uint32_t packed = (v & mask) | ((v << (16 - bits)) & mask_hi) | 0x64006400u;  // 1024 + code, fp16
            const __half2 sc = *reinterpret_cast<const __half2*>(rec[rs] + l.scale_offset + 2 * j);
            const __half2 zr = *reinterpret_cast<const __half2*>(rec[rs] + l.zero_offset + 2 * j);
            za[ks][2 * hh + rs] = mma::AsU32(__hfma2(__hsub2(mma::AsHalf2(packed), k1024), sc, zr));
          }
        }
    }

    // 2-4. Keys of this warp's 16 tokens, four tiles at a time (two low, their partners),
    //      rotated by R_d, scored against the chunk's rotated q.
    float sacc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int cg = 0; cg < NC; ++cg) {
      uint32_t kb[4][2];  // [low0, low1, high0, high1][token half] as fp16 pairs
      if (paged) {
        float acc[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int tile = (u < 2 ? 0 : D / 16) + 2 * cg + (u & 1);
          const float2 m2 = *reinterpret_cast<const float2*>(mean_s + tile * 8 + 2 * q4);
          acc[u][0] = acc[u][2] = m2.x;
          acc[u][1] = acc[u][3] = m2.y;
        }
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          uint32_t lo[4], hi[4];
          const int row = (2 * cg + (lane >> 4)) * 8 + (lane & 7), col = ks * 16 + ((lane >> 3) & 1) * 8;
          mma::LdMatrixX4(lo, vt + row * s.vt_ld + col);
          mma::LdMatrixX4(hi, vt + (row + D / 2) * s.vt_ld + col);
          mma::MmaF16(acc[0], za[ks], lo[0], lo[1]);
          mma::MmaF16(acc[1], za[ks], lo[2], lo[3]);
          mma::MmaF16(acc[2], za[ks], hi[0], hi[1]);
          mma::MmaF16(acc[3], za[ks], hi[2], hi[3]);
        }
#pragma unroll
        for (int tt = 0; tt < 2; ++tt)
#pragma unroll
          for (int rs = 0; rs < 2; ++rs) {
            const __half2 x = __floats2half2_rn(acc[tt][2 * rs], acc[tt][2 * rs + 1]);
            const __half2 y = __floats2half2_rn(acc[2 + tt][2 * rs], acc[2 + tt][2 * rs + 1]);
            const __half2 cs = mma::AsHalf2(dcos[cg][rs][tt]), sn = mma::AsHalf2(dsin[cg][rs][tt]);
            kb[tt][rs] = mma::AsU32(__hfma2(__hneg2(y), sn, __hmul2(x, cs)));
            kb[2 + tt][rs] = mma::AsU32(__hfma2(x, sn, __hmul2(y, cs)));
          }
      } else {
        const auto* tk = reinterpret_cast<const __nv_bfloat16*>(p.tail_keys) + bh * P * D;
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
          for (int rs = 0; rs < 2; ++rs) {
            const int t = tok0 + 8 * rs, tile = (u < 2 ? 0 : D / 16) + 2 * cg + (u & 1);
            float2 k2 = make_float2(0.f, 0.f);
            if (t < tail) k2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(tk + t * D + tile * 8 + 2 * q4));
            kb[u][rs] = mma::PackHalf2(k2.x, k2.y);
          }
      }
      uint32_t qlo[4], qhi[4];
      mma::LdMatrixX4(qlo, qb + (lane & 15) * (D + 8) + 16 * cg + (lane >> 4) * 8);
      mma::LdMatrixX4(qhi, qb + (lane & 15) * (D + 8) + D / 2 + 16 * cg + (lane >> 4) * 8);
#pragma unroll
      for (int rs = 0; rs < 2; ++rs) {
        mma::MmaF16(sacc[rs], qlo, kb[0][rs], kb[1][rs]);
        mma::MmaF16(sacc[rs], qhi, kb[2][rs], kb[3][rs]);
      }
    }

    // Online softmax over this warp's 16 tokens, rows g8 (sacc[.][0..1]) and g8 + 8 ([2..3]).
    uint32_t pa[4];
    bool rescale = false;
    float corr[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float sv[4];
#pragma unroll
      for (int tt = 0; tt < 2; ++tt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int t = 16 * warp + 8 * tt + 2 * q4 + e;
          sv[2 * tt + e] = t < n ? sacc[tt][2 * hr + e] : -INFINITY;
        }
      float mx = fmaxf(fmaxf(sv[0], sv[1]), fmaxf(sv[2], sv[3]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_row[hr], mx);
      corr[hr] = 1.f;
      float pv[4] = {0.f, 0.f, 0.f, 0.f};
      if (m_new != -INFINITY) {
        corr[hr] = FastExp2(m_row[hr] - m_new);
#pragma unroll
        for (int k = 0; k < 4; ++k) pv[k] = FastExp2(sv[k] - m_new);
      }
      m_row[hr] = m_new;
      rescale |= corr[hr] != 1.f;
      const __nv_bfloat162 p0 = __floats2bfloat162_rn(pv[0], pv[1]), p1 = __floats2bfloat162_rn(pv[2], pv[3]);
      // The rounded weights P V uses.
      l_row[hr] = l_row[hr] * corr[hr] + __low2float(p0) + __high2float(p0) + __low2float(p1) + __high2float(p1);
      pa[hr] = *reinterpret_cast<const uint32_t*>(&p0);      // tokens 2q4.. of tile 0
      pa[2 + hr] = *reinterpret_cast<const uint32_t*>(&p1);  // tokens 8 + 2q4.. of tile 1
    }
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        o[t][0] *= corr[0];
        o[t][1] *= corr[0];
        o[t][2] *= corr[1];
        o[t][3] *= corr[1];
      }
    }
    // 5. O += P V over this warp's 16 tokens.
#pragma unroll
    for (int tp = 0; tp < NT / 2; ++tp) {
      uint32_t bq[4];
      mma::LdMatrixX4Trans(bq, vals + (16 * warp + (lane & 15)) * (D + 8) + (2 * tp + (lane >> 4)) * 8);
      mma::MmaBf16(o[2 * tp], pa, bq[0], bq[1]);
      mma::MmaBf16(o[2 * tp + 1], pa, bq[2], bq[3]);
    }
  }
  mma::CpAsyncWait<0>();
  __syncthreads();

  // ---- Merge the four warps' states: M = max of the m's, O = sum 2^(m - M) O_w, same for l.
  float* osum = reinterpret_cast<float*>(smem);      // [16, D], over the stages
  float* wm = osum + 16 * D;                          // [warp, 16]
  float* wl = wm + kWarps * 16;
  for (int i = tid; i < 16 * D; i += kThreads) osum[i] = 0.f;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    l_row[hr] += __shfl_xor_sync(0xffffffffu, l_row[hr], 1);
    l_row[hr] += __shfl_xor_sync(0xffffffffu, l_row[hr], 2);
    if (q4 == 0) {
      wm[warp * 16 + g8 + 8 * hr] = m_row[hr];
      wl[warp * 16 + g8 + 8 * hr] = l_row[hr];
    }
  }
  __syncthreads();
  float big_m[2], big_l[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int g = g8 + 8 * hr;
    float mm = -INFINITY, ll = 0.f;
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, wm[w * 16 + g]);
    if (mm != -INFINITY)
      for (int w = 0; w < kWarps; ++w)
        if (wm[w * 16 + g] != -INFINITY) ll += wl[w * 16 + g] * FastExp2(wm[w * 16 + g] - mm);
    big_m[hr] = mm;
    big_l[hr] = ll;
    const float f = (m_row[hr] == -INFINITY || g >= G) ? 0.f : FastExp2(m_row[hr] - mm);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (f == 0.f) break;
      atomicAdd(osum + g * D + t * 8 + 2 * q4, o[t][2 * hr] * f);
      atomicAdd(osum + g * D + t * 8 + 2 * q4 + 1, o[t][2 * hr + 1] * f);
    }
  }
  __syncthreads();

  // ---- Result: normalized output, or this split's partial state for the merge kernel.
  const int splits = gridDim.z;
  for (int idx = tid; idx < G * D; idx += kThreads) {
    const int g = idx / D, i = idx - g * D;
    const int64_t head = static_cast<int64_t>(b) * p.num_heads + h * G + g;
    if (p.pages_per_split == 0) {
      float ll = 0.f, mm = -INFINITY;
      for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, wm[w * 16 + g]);
      if (mm != -INFINITY)
        for (int w = 0; w < kWarps; ++w)
          if (wm[w * 16 + g] != -INFINITY) ll += wl[w * 16 + g] * FastExp2(wm[w * 16 + g] - mm);
      p.out[head * D + i] = ll > 0.f ? osum[idx] / ll : 0.f;
    } else {
      p.workspace[(head * splits + split) * (D + 2) + i] = osum[idx];
    }
  }
  if (p.pages_per_split > 0 && q4 == 0 && warp == 0) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int g = g8 + 8 * hr;
      if (g >= G) continue;
      float* ws = p.workspace + ((static_cast<int64_t>(b) * p.num_heads + h * G + g) * splits + split) * (D + 2);
      ws[D] = big_m[hr] == -INFINITY ? -INFINITY : big_m[hr] * kLn2;  // the merge works in natural-log units
      ws[D + 1] = big_l[hr];
    }
  }
}

int KSteps(const SvdqLayout& l) { return (l.retained + 15) / 16; }

using KernelFn = void (*)(SvdqAttentionParams);

template <int D, int KS>
KernelFn PickKs(int ks) {
  if constexpr (KS > D / 16) {
    return nullptr;
  } else {
    return ks == KS ? AttentionMmaKernel<D, KS> : PickKs<D, KS + 1>(ks);
  }
}

KernelFn Pick(const SvdqAttentionParams& p) {
  const int ks = KSteps(p.layout);
  if (p.layout.width == 64) return PickKs<64, 1>(ks);
  if (p.layout.width == 128) return PickKs<128, 1>(ks);
  return nullptr;
}

size_t SmemBytes(const SvdqAttentionParams& p) {
  return PlanSmem(p.layout, p.layout.width, p.num_heads / p.kv_heads, KSteps(p.layout)).total;
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

int SvdqAttentionPagesPerSplit(int batch, int kv_heads, int max_pages, int page_size, int num_sms) {
  // Enough blocks for about four per multiprocessor, but no split shorter than two chunks.
  const int64_t pairs = static_cast<int64_t>(batch) * kv_heads;
  const int64_t want = 4LL * num_sms;
  if (pairs <= 0 || pairs >= want || max_pages <= 0) return 0;
  const int splits = static_cast<int>((want + pairs - 1) / pairs);
  const int min_pages = std::max(1, 2 * kChunk / std::max(1, page_size));
  const int pps = std::max(min_pages, (max_pages + splits - 1) / splits);
  return pps >= max_pages ? 0 : pps;
}

}  // namespace svdq::kernels
