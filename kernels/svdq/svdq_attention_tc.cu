// Decode attention over SVDq key pages with the matrix work on tensor cores.
//
// One thread block per (sequence, KV head, split of pages), 64 tokens per step:
//   1. dequantize the step's latent codes into z [64, r] (fp32 in shared memory);
//   2. rebuild keys  K = z V_r^T           [64 x r] x [r x W]   WMMA, TF32 in, fp32 acc;
//   3. add the mean and apply RoPE in shared memory;
//   4. scores        S = Q K^T             [16 x W] x [W x 64]  WMMA, TF32 (G query rows used);
//   5. online softmax per query head (one warp each), probabilities to bf16;
//   6. values        O = P V               [16 x 64] x [64 x W] WMMA, bf16 in, fp32 acc,
//      folded into the running output with the softmax correction.
// The bf16 tail (< P tokens) goes through the CUDA-core fold. Requires page_size in
// {16, 32, 64}, width % 16 == 0, r % 8 == 0, and a shared-memory plan that fits; the
// launcher falls back to the CUDA-core kernel otherwise.
#include <cuda_bf16.h>
#include <mma.h>

#include <string>

#include "kernels/common/cuda_launch.h"
#include "kernels/common/warp.cuh"
#include "kernels/svdq/svdq_attention_tc.h"
#include "kernels/svdq/svdq_device.cuh"

namespace svdq::kernels {
namespace {

using namespace nvcuda;

constexpr int kThreads = 512;  // 16 warps: one block fills an SM's shared memory, so it brings its own latency hiding
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 64;  // tokens per step
constexpr int kRows = 16;   // query rows of the score and value products (G <= 16 used)
// Leading dimensions of the shared-memory matrices are padded (4 floats or 8 bf16, i.e.
// 16 bytes) so that the rows of a WMMA fragment fall in different banks.
constexpr int kPadF = 4, kPadH = 8;
constexpr int kLdS = kChunk + kPadF;  // scores [16, 64]
constexpr int kLdP = kChunk + kPadH;  // probabilities, bf16 [16, 64]

struct Smem {
  // Offsets in floats into dynamic shared memory, each 32-byte aligned (WMMA needs it).
  int vt, mean, z, keys, q, scores, p, vals, recs, acc, goff, bits, cl, pids, m, l, corr, total;
};

__host__ __device__ inline int Align8(int x) { return (x + 7) / 8 * 8; }

__host__ __device__ inline Smem Plan(int W, int r, int P, int page_bytes) {
  Smem s;
  int o = 0;
  const int ldw = W + kPadF, ldz = r + kPadF, ldv = W + kPadH;
  s.vt = o;     o = Align8(o + r * ldw);                                 // V_r^T [r, W], tf32
  s.mean = o;   o = Align8(o + W);
  s.z = o;      o = Align8(o + (kChunk * ldz > kRows * ldw ? kChunk * ldz : kRows * ldw));  // z, then P V
  s.keys = o;   o = Align8(o + kChunk * ldw);                            // [64, W]
  s.q = o;      o = Align8(o + kRows * W);                               // [16, W], rows >= G zero
  s.scores = o; o = Align8(o + kRows * kLdS);                            // [16, 64]
  s.p = o;      o = Align8(o + kRows * kLdP / 2);                        // bf16 [16, 64]
  s.vals = o;   o = Align8(o + kChunk * ldv / 2);                        // bf16 [64, W]
  s.recs = o;   o = Align8(o + (kChunk / P) * page_bytes / 4);           // the step's key page records
  s.acc = o;    o = Align8(o + kRows * W);                               // running output [G, W]
  s.goff = o;   o = Align8(o + r);                                       // int per retained channel
  s.bits = o;   o = Align8(o + r);
  s.cl = o;     o = Align8(o + r);
  s.pids = o;   o = Align8(o + kChunk);
  s.m = o;      o = Align8(o + kRows);
  s.l = o;      o = Align8(o + kRows);
  s.corr = o;   o = Align8(o + kRows);
  s.total = o;
  return s;
}

__global__ void __launch_bounds__(kThreads) AttentionTcKernel(SvdqAttentionParams p) {
  extern __shared__ __align__(128) float smem[];
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, W = l.width, r = l.retained, G = p.num_heads / p.kv_heads;
  const int b = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int ldw = W + kPadF, ldz = r + kPadF, ldv = W + kPadH;
  const Smem s = Plan(W, r, P, l.page_bytes);
  float* vt = smem + s.vt;
  float* mean = smem + s.mean;
  float* z = smem + s.z;
  float* pv = smem + s.z;  // reuses z once the keys are rebuilt
  float* keys = smem + s.keys;
  float* q = smem + s.q;
  float* scores = smem + s.scores;
  auto* prob = reinterpret_cast<__nv_bfloat16*>(smem + s.p);
  auto* vals = reinterpret_cast<__nv_bfloat16*>(smem + s.vals);
  uint8_t* recs = reinterpret_cast<uint8_t*>(smem + s.recs);
  float* acc = smem + s.acc;
  int* goff = reinterpret_cast<int*>(smem + s.goff);
  int* cbits = reinterpret_cast<int*>(smem + s.bits);
  int* ccl = reinterpret_cast<int*>(smem + s.cl);
  int* pids = reinterpret_cast<int*>(smem + s.pids);
  float* m = smem + s.m;
  float* lsum = smem + s.l;
  float* corr = smem + s.corr;
  const int64_t bh = static_cast<int64_t>(b) * p.kv_heads + h;
  const int64_t brow = static_cast<int64_t>(p.basis_index ? p.basis_index[b] : b) * p.kv_heads + h;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int np = p.num_pages[b];
  const SplitSlice slice = SplitPages(np, p.pages_per_split, split, gridDim.z);
  const int first = slice.first, last = slice.last;
  const int tail = slice.tail ? p.tail_len[b] : 0;

  const auto* qg = reinterpret_cast<const __nv_bfloat16*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h * G) * W;
  for (int idx = threadIdx.x; idx < kRows * W; idx += blockDim.x) {
    q[idx] = idx < G * W ? wmma::__float_to_tf32(__bfloat162float(qg[idx])) : 0.f;
    acc[idx] = 0.f;
  }
  for (int idx = threadIdx.x; idx < kRows * kLdP; idx += blockDim.x) prob[idx] = __float2bfloat16(0.f);
  if (threadIdx.x < kRows) {
    m[threadIdx.x] = -INFINITY;
    lsum[threadIdx.x] = 0.f;
  }
  if (last > first) {
    const float* basis = p.basis + brow * W * W;
    for (int j = threadIdx.x; j < r; j += blockDim.x) {
      int c = device::RetainedChannel(l, j), g = c / l.group_size;
      goff[j] = l.group_offset[g];
      cbits[j] = l.bits[g];
      ccl[j] = c - g * l.group_size;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < r * W; idx += blockDim.x) {
      int j = idx / W, i = idx - j * W;
      vt[j * ldw + i] = wmma::__float_to_tf32(basis[i * W + device::RetainedChannel(l, j)]);
    }
    for (int i = threadIdx.x; i < W; i += blockDim.x) mean[i] = p.mean[brow * W + i];
  }
  __syncthreads();

  const int pages_per_step = kChunk / P, gs = l.group_size, half = W / 2;
  for (int pg0 = first; pg0 < last; pg0 += pages_per_step) {
    const int npg = min(pages_per_step, last - pg0), n = npg * P;
    if (threadIdx.x < npg) pids[threadIdx.x] = p.page_table[static_cast<int64_t>(b) * p.max_pages + pg0 + threadIdx.x];
    __syncthreads();
    // Values and key records of the step into shared memory with 16-byte loads, issued
    // together; value rows past n are zero so that 0 * garbage cannot make a NaN in P V.
    {
      const int row_vec = W / 8, rvec = l.page_bytes / 16;  // uint4 per value row, per key record
      const auto* vp = reinterpret_cast<const uint4*>(p.value_pages);
      const auto* kp = reinterpret_cast<const uint4*>(p.key_pages);
      auto* vs = reinterpret_cast<uint4*>(vals);
      auto* rs = reinterpret_cast<uint4*>(recs);
      for (int idx = threadIdx.x; idx < kChunk * row_vec; idx += blockDim.x) {
        int t = idx / row_vec, k = idx - t * row_vec, pg = t / P;
        vs[t * (ldv / 8) + k] =
            t < n ? vp[((static_cast<int64_t>(pids[pg]) * p.kv_heads + h) * P + (t - pg * P)) * row_vec + k]
                  : make_uint4(0, 0, 0, 0);
      }
      for (int idx = threadIdx.x; idx < npg * rvec; idx += blockDim.x) {
        int pg = idx / rvec, k = idx - pg * rvec;
        rs[idx] = kp[(static_cast<int64_t>(pids[pg]) * p.kv_heads + h) * rvec + k];
      }
    }
    __syncthreads();
    // 1. Latents z [64, r]; rows past n are zero.
    for (int idx = threadIdx.x; idx < kChunk * r; idx += blockDim.x) {
      int t = idx / r, j = idx - t * r;
      float v = 0.f;
      if (t < n) {
        const uint8_t* rec = recs + (t / P) * l.page_bytes;
        uint32_t code = device::ReadCode(rec + goff[j], (t % P) * gs + ccl[j], cbits[j]);
        v = __half2float(reinterpret_cast<const __half*>(rec + l.zero_offset)[j]) +
            static_cast<float>(code) * __half2float(reinterpret_cast<const __half*>(rec + l.scale_offset)[j]);
      }
      z[t * ldz + j] = wmma::__float_to_tf32(v);
    }
    __syncthreads();
    // 2. keys [64, W] = z [64, r] x vt [r, W].
    for (int tile = warp; tile < (kChunk / 16) * (W / 16); tile += kWarps) {
      const int ti = tile / (W / 16), tj = tile - ti * (W / 16);
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
      wmma::fill_fragment(c, 0.f);
      for (int k = 0; k < r; k += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> bf;
        wmma::load_matrix_sync(a, z + ti * 16 * ldz + k, ldz);
        wmma::load_matrix_sync(bf, vt + k * ldw + tj * 16, ldw);
        wmma::mma_sync(c, a, bf, c);
      }
      wmma::store_matrix_sync(keys + ti * 16 * ldw + tj * 16, c, ldw, wmma::mem_row_major);
    }
    __syncthreads();
    // 3. Mean and RoPE at positions pg0 * P + t (rows past n zeroed), rounded to TF32.
    //    Four pairs per thread with 16-byte table loads, so the loads are few and overlap.
    for (int idx = threadIdx.x; idx < kChunk * half / 4; idx += blockDim.x) {
      int t = idx / (half / 4), i = (idx - t * (half / 4)) * 4;
      float4 lo = make_float4(0.f, 0.f, 0.f, 0.f), hi = lo;
      if (t < n) {
        int64_t pos = static_cast<int64_t>(pg0) * P + t;
        const float4 c0 = *reinterpret_cast<const float4*>(p.rope_cos + pos * W + i);
        const float4 c1 = *reinterpret_cast<const float4*>(p.rope_cos + pos * W + i + half);
        const float4 s0 = *reinterpret_cast<const float4*>(p.rope_sin + pos * W + i);
        const float4 s1 = *reinterpret_cast<const float4*>(p.rope_sin + pos * W + i + half);
        const float* kr = keys + t * ldw;
        float a0 = kr[i] + mean[i], a1 = kr[i + 1] + mean[i + 1], a2 = kr[i + 2] + mean[i + 2], a3 = kr[i + 3] + mean[i + 3];
        float b0 = kr[i + half] + mean[i + half], b1 = kr[i + half + 1] + mean[i + half + 1];
        float b2 = kr[i + half + 2] + mean[i + half + 2], b3 = kr[i + half + 3] + mean[i + half + 3];
        lo = make_float4(a0 * c0.x - b0 * s0.x, a1 * c0.y - b1 * s0.y, a2 * c0.z - b2 * s0.z, a3 * c0.w - b3 * s0.w);
        hi = make_float4(b0 * c1.x + a0 * s1.x, b1 * c1.y + a1 * s1.y, b2 * c1.z + a2 * s1.z, b3 * c1.w + a3 * s1.w);
      }
      float* kw = keys + t * ldw;
      kw[i] = wmma::__float_to_tf32(lo.x);
      kw[i + 1] = wmma::__float_to_tf32(lo.y);
      kw[i + 2] = wmma::__float_to_tf32(lo.z);
      kw[i + 3] = wmma::__float_to_tf32(lo.w);
      kw[i + half] = wmma::__float_to_tf32(hi.x);
      kw[i + half + 1] = wmma::__float_to_tf32(hi.y);
      kw[i + half + 2] = wmma::__float_to_tf32(hi.z);
      kw[i + half + 3] = wmma::__float_to_tf32(hi.w);
    }
    __syncthreads();
    // 4. scores [16, 64] = q [16, W] x keys^T [W, 64].
    for (int nt = warp; nt < kChunk / 16; nt += kWarps) {
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
      wmma::fill_fragment(c, 0.f);
      for (int k = 0; k < W; k += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> bf;
        wmma::load_matrix_sync(a, q + k, W);
        wmma::load_matrix_sync(bf, keys + nt * 16 * ldw + k, ldw);
        wmma::mma_sync(c, a, bf, c);
      }
      wmma::store_matrix_sync(scores + nt * 16, c, kLdS, wmma::mem_row_major);
    }
    __syncthreads();
    // 5. Online softmax, one warp per query head; probabilities to bf16.
    for (int g = warp; g < G; g += kWarps) {
      float mx = m[g];
      for (int t = lane; t < n; t += 32) mx = fmaxf(mx, scores[g * kLdS + t] * p.sm_scale);
      mx = WarpMax(mx);
      float sum = 0.f;
      for (int t = lane; t < kChunk; t += 32) {
        float e = t < n ? __expf(scores[g * kLdS + t] * p.sm_scale - mx) : 0.f;
        __nv_bfloat16 eb = __float2bfloat16(e);
        prob[g * kLdP + t] = eb;
        sum += __bfloat162float(eb);  // the same rounded weights as P V uses
      }
      sum = WarpSum(sum);
      if (lane == 0) {
        float c = __expf(m[g] - mx);
        lsum[g] = lsum[g] * c + sum;
        m[g] = mx;
        corr[g] = c;
      }
    }
    __syncthreads();
    // 6. pv [16, W] = prob [16, 64] x vals [64, W], then acc = acc * corr + pv.
    for (int nt = warp; nt < W / 16; nt += kWarps) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::fill_fragment(c, 0.f);
      for (int k = 0; k < kChunk; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bf;
        wmma::load_matrix_sync(a, prob + k, kLdP);
        wmma::load_matrix_sync(bf, vals + k * ldv + nt * 16, ldv);
        wmma::mma_sync(c, a, bf, c);
      }
      wmma::store_matrix_sync(pv + nt * 16, c, ldw, wmma::mem_row_major);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * W; idx += blockDim.x) {
      int g = idx / W, i = idx - g * W;
      acc[idx] = acc[idx] * corr[g] + pv[g * ldw + i];
    }
    __syncthreads();
  }
  if (tail > 0) {
    device::LoadTailKeys(p, bh, tail, keys);
    __syncthreads();
    const auto* tv = reinterpret_cast<const __nv_bfloat16*>(p.tail_values) + bh * P * W;
    device::Fold(tail, G, W, p.sm_scale, q, keys, [&](int t) { return tv + t * W; }, scores, kLdS, m, lsum, acc);
  }
  device::WriteAttentionResult(p, b, h, split, G, acc, m, lsum);
}

size_t SmemBytes(const SvdqAttentionParams& p) {
  const SvdqLayout& l = p.layout;
  return sizeof(float) * static_cast<size_t>(Plan(l.width, l.retained, l.page_size, l.page_bytes).total);
}

}  // namespace

bool SvdqAttentionTcSupported(const SvdqAttentionParams& p) {
  const SvdqLayout& l = p.layout;
  if (l.page_size != 16 && l.page_size != 32 && l.page_size != 64) return false;
  // 16-byte loads: page records, RoPE rows (width % 8 keeps each half 16-byte aligned).
  if (l.width % 16 != 0 || l.retained % 8 != 0 || l.page_bytes % 16 != 0) return false;
  if (p.num_heads / p.kv_heads > kRows) return false;
  return SmemBytes(p) + 1024 <= 227 * 1024;  // plus the static shared memory of the tail fold
}

Status SvdqAttentionTcLaunch(const SvdqAttentionParams& p, int splits, cudaStream_t stream) {
  size_t smem = SmemBytes(p);
  Status st = AllowSmem(reinterpret_cast<const void*>(AttentionTcKernel), smem);
  if (!st.ok()) return st;
  AttentionTcKernel<<<dim3(p.batch, p.kv_heads, splits), kThreads, smem, stream>>>(p);
  st = LaunchStatus("SvdqAttention (tensor cores)");
  if (!st.ok()) return Status::Invalid(st.message() + " (" + std::to_string(smem) + " bytes of shared memory)");
  return st;
}

}  // namespace svdq::kernels
