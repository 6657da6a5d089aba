// Decode attention over SVDq key pages with the key rebuild on tensor cores.
//
// One thread block per (sequence, KV head, split of pages), as in svdq_attention.cu, but:
//   - the retained basis V_r (transposed, [r, W]) and the mean are staged in shared
//     memory once per block;
//   - pages are processed 64 tokens at a time: the latent codes are dequantized to fp32,
//     and K = Z V_r^T is a [64 x r] x [r x W] product on tensor cores (WMMA, TF32 inputs,
//     fp32 accumulation), then mean and RoPE are applied in shared memory;
//   - scores are warp-cooperative dot products, and the online softmax and P V update
//     follow as before, with each token's value row read from its own pool page.
// Requires page_size in {16, 32, 64} and width % 16 == 0; the launcher falls back to the
// CUDA-core kernel otherwise.
#include <cuda_bf16.h>
#include <mma.h>

#include "kernels/common/cuda_launch.h"
#include "kernels/svdq/svdq_attention_tc.h"
#include "kernels/svdq/svdq_device.cuh"

namespace svdq::kernels {
namespace {

using namespace nvcuda;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 64;  // tokens rebuilt per step
constexpr int kMaxGroup = 16;

struct TcSmem {
  // Offsets in floats into dynamic shared memory.
  int vt, mean, z, keys, q, acc, scores, m, l, pids, total;
};

__host__ __device__ inline TcSmem Plan(int W, int r, int G) {
  TcSmem s;
  int o = 0;
  s.vt = o; o += r * W;
  s.mean = o; o += W;
  s.z = o; o += kChunk * r;
  s.keys = o; o += kChunk * W;
  s.q = o; o += G * W;
  s.acc = o; o += G * W;
  s.scores = o; o += G * kChunk;
  s.m = o; o += kMaxGroup;
  s.l = o; o += kMaxGroup;
  s.pids = o; o += kChunk;  // int pool page ids of the chunk's pages
  s.total = o;
  return s;
}

__global__ void __launch_bounds__(kThreads) AttentionTcKernel(SvdqAttentionParams p) {
  extern __shared__ float smem[];
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, W = l.width, r = l.retained, G = p.num_heads / p.kv_heads;
  const int b = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const TcSmem s = Plan(W, r, G);
  float* vt = smem + s.vt;
  float* mean = smem + s.mean;
  float* z = smem + s.z;
  float* keys = smem + s.keys;
  float* q = smem + s.q;
  float* acc = smem + s.acc;
  float* scores = smem + s.scores;
  float* m = smem + s.m;
  float* lsum = smem + s.l;
  int* pids = reinterpret_cast<int*>(smem + s.pids);
  const int64_t bh = static_cast<int64_t>(b) * p.kv_heads + h;

  const int np = p.num_pages[b];
  const int pps = p.pages_per_split > 0 ? p.pages_per_split : np + 1;
  const int first = split * pps, last = min(np, first + pps);
  const int tail = (np / pps == split) ? p.tail_len[b] : 0;

  const auto* qg = reinterpret_cast<const __nv_bfloat16*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h * G) * W;
  for (int idx = threadIdx.x; idx < G * W; idx += blockDim.x) {
    q[idx] = __bfloat162float(qg[idx]);
    acc[idx] = 0.f;
  }
  if (threadIdx.x < G) {
    m[threadIdx.x] = -INFINITY;
    lsum[threadIdx.x] = 0.f;
  }
  if (last > first) {
    const float* basis = p.basis + bh * W * W;
    for (int idx = threadIdx.x; idx < r * W; idx += blockDim.x) {
      int j = idx / W, i = idx - j * W;
      vt[idx] = wmma::__float_to_tf32(basis[i * W + device::RetainedChannel(l, j)]);
    }
    for (int i = threadIdx.x; i < W; i += blockDim.x) mean[i] = p.mean[bh * W + i];
  }
  __syncthreads();

  const int pages_per_chunk = kChunk / P;
  const int warp = threadIdx.x / 32;
  for (int pg0 = first; pg0 < last; pg0 += pages_per_chunk) {
    const int npg = min(pages_per_chunk, last - pg0), n = npg * P;
    if (threadIdx.x < npg) pids[threadIdx.x] = p.page_table[static_cast<int64_t>(b) * p.max_pages + pg0 + threadIdx.x];
    __syncthreads();
    // Dequantize the chunk's latents: z [kChunk, r] (rows past n are zero).
    for (int idx = threadIdx.x; idx < kChunk * r; idx += blockDim.x) {
      int t = idx / r, j = idx - t * r;
      float v = 0.f;
      if (t < n) {
        const uint8_t* rec = p.key_pages + (static_cast<int64_t>(pids[t / P]) * p.kv_heads + h) * l.page_bytes;
        int c = device::RetainedChannel(l, j), g = c / l.group_size, tp = t % P;
        uint32_t code = device::ReadCode(rec + l.group_offset[g], tp * l.group_size + (c - g * l.group_size), l.bits[g]);
        v = __half2float(reinterpret_cast<const __half*>(rec + l.zero_offset)[j]) +
            static_cast<float>(code) * __half2float(reinterpret_cast<const __half*>(rec + l.scale_offset)[j]);
      }
      z[idx] = wmma::__float_to_tf32(v);
    }
    __syncthreads();
    // keys [kChunk, W] = z [kChunk, r] x vt [r, W] on tensor cores.
    const int mt = kChunk / 16, nt = W / 16;
    for (int tile = warp; tile < mt * nt; tile += kWarps) {
      const int ti = tile / nt, tj = tile - ti * nt;
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
      wmma::fill_fragment(c, 0.f);
      for (int k = 0; k < r; k += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> bf;
        wmma::load_matrix_sync(a, z + ti * 16 * r + k, r);
        wmma::load_matrix_sync(bf, vt + k * W + tj * 16, W);
        wmma::mma_sync(c, a, bf, c);
      }
      wmma::store_matrix_sync(keys + ti * 16 * W + tj * 16, c, W, wmma::mem_row_major);
    }
    __syncthreads();
    // Mean, then RoPE at positions pg0 * P + t.
    const int half = W / 2;
    for (int idx = threadIdx.x; idx < n * half; idx += blockDim.x) {
      int t = idx / half, i = idx - t * half;
      int64_t pos = static_cast<int64_t>(pg0) * P + t;
      const float* cs = p.rope_cos + pos * W;
      const float* sn = p.rope_sin + pos * W;
      float a = keys[t * W + i] + mean[i], bb = keys[t * W + i + half] + mean[i + half];
      keys[t * W + i] = a * cs[i] - bb * sn[i];
      keys[t * W + i + half] = bb * cs[i + half] + a * sn[i + half];
    }
    __syncthreads();
    const auto* vbase = reinterpret_cast<const __nv_bfloat16*>(p.value_pages);
    device::Fold(n, G, W, p.sm_scale, q, keys,
         [&](int t) { return vbase + ((static_cast<int64_t>(pids[t / P]) * p.kv_heads + h) * P + t % P) * W; },
         scores, kChunk, m, lsum, acc);
  }
  if (tail > 0) {
    device::LoadTailKeys(p, bh, tail, keys);
    __syncthreads();
    const auto* tv = reinterpret_cast<const __nv_bfloat16*>(p.tail_values) + bh * P * W;
    device::Fold(tail, G, W, p.sm_scale, q, keys, [&](int t) { return tv + t * W; }, scores, kChunk, m, lsum, acc);
  }
  device::WriteAttentionResult(p, b, h, split, G, acc, m, lsum);
}

}  // namespace

bool SvdqAttentionTcSupported(const SvdqAttentionParams& p) {
  const SvdqLayout& l = p.layout;
  if (l.page_size != 16 && l.page_size != 32 && l.page_size != 64) return false;
  if (l.width % 16 != 0 || l.retained % 8 != 0) return false;
  const int G = p.num_heads / p.kv_heads;
  return G <= kMaxGroup && sizeof(float) * Plan(l.width, l.retained, G).total <= 227 * 1024;
}

Status SvdqAttentionTcLaunch(const SvdqAttentionParams& p, int splits, cudaStream_t stream) {
  const int G = p.num_heads / p.kv_heads;
  size_t smem = sizeof(float) * Plan(p.layout.width, p.layout.retained, G).total;
  Status st = AllowSmem(reinterpret_cast<const void*>(AttentionTcKernel), smem);
  if (!st.ok()) return st;
  AttentionTcKernel<<<dim3(p.batch, p.kv_heads, splits), kThreads, smem, stream>>>(p);
  return LaunchStatus("SvdqAttention (tensor cores)");
}

}  // namespace svdq::kernels
