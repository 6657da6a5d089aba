// SVDq encode and decode kernels: one thread block per (page, KV head).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common/cuda_launch.h"
#include "kernels/svdq/svdq_cuda.h"
#include "kernels/svdq/svdq_device.cuh"

namespace svdq::kernels {
namespace {

constexpr int kThreads = 256;

// Shared memory: keys [P, W] | z [P, r] | scale [r] | zero [r] | code words.
__global__ void EncodeKernel(SvdqEncodeParams p) {
  extern __shared__ float smem[];
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, W = l.width, r = l.retained;
  if (p.encode_if_last && p.encode_if_last[blockIdx.x] != l.page_size - 1) return;  // page not complete
  const int64_t ph = static_cast<int64_t>(blockIdx.x) * p.kv_heads + blockIdx.y;
  const int64_t bh = p.basis_index ? static_cast<int64_t>(p.basis_index[blockIdx.x]) * p.kv_heads + blockIdx.y : ph;
  const int64_t oh = p.out_page ? p.out_page[blockIdx.x] * p.kv_heads + blockIdx.y : ph;
  float* keys = smem;
  float* z = keys + P * W;
  float* scale = z + P * r;
  float* zero = scale + r;
  uint32_t* words = reinterpret_cast<uint32_t*>(zero + r);
  const int n_words = l.page_bytes / 4;
  __shared__ int bad;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  const float* mean = p.mean + bh * W;
  for (int idx = threadIdx.x; idx < P * W; idx += blockDim.x) {
    float v;
    if (p.key_lane) {  // a tail page [P, kv_heads, W] of lane key_lane[page]
      const int t = idx / W, i = idx - t * W;
      const int64_t off = ((p.key_lane[blockIdx.x] * P + t) * p.kv_heads + blockIdx.y) * W + i;
      v = p.keys_bf16 ? __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p.keys_bf16)[off]) : p.keys[off];
    } else {
      v = p.keys[ph * P * W + idx];
    }
    if (!isfinite(v)) bad = 1;
    keys[idx] = v - mean[idx % W];
  }
  for (int w = threadIdx.x; w < n_words; w += blockDim.x) words[w] = 0u;
  __syncthreads();
  uint32_t* out = reinterpret_cast<uint32_t*>(p.out + oh * l.page_bytes);
  if (bad) {
    for (int w = threadIdx.x; w < n_words; w += blockDim.x) out[w] = 0u;
    if (threadIdx.x == 0 && p.nonfinite) p.nonfinite[p.key_lane ? p.key_lane[blockIdx.x] : 0] = 1;
    return;
  }
  const float* basis = p.basis + bh * W * W;
  for (int idx = threadIdx.x; idx < P * r; idx += blockDim.x) {
    int t = idx / r, c = device::RetainedChannel(l, idx - t * r);
    float acc = 0.f;
    for (int i = 0; i < W; ++i) acc = fmaf(keys[t * W + i], basis[i * W + c], acc);
    z[idx] = acc;
  }
  __syncthreads();
  __half* scales = reinterpret_cast<__half*>(reinterpret_cast<uint8_t*>(words) + l.scale_offset);
  __half* zeros = reinterpret_cast<__half*>(reinterpret_cast<uint8_t*>(words) + l.zero_offset);
  for (int j = threadIdx.x; j < r; j += blockDim.x) {
    int c = device::RetainedChannel(l, j);
    float mn = z[j], mx = z[j];
    for (int t = 1; t < P; ++t) {
      mn = fminf(mn, z[t * r + j]);
      mx = fmaxf(mx, z[t * r + j]);
    }
    float levels = static_cast<float>((1u << l.bits[c / l.group_size]) - 1u);
    __half hs = __float2half_rn(__fdiv_rn(mx - mn, levels)), hz = __float2half_rn(mn);
    scales[j] = hs;
    zeros[j] = hz;
    scale[j] = __half2float(hs);
    zero[j] = __half2float(hz);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < P * r; idx += blockDim.x) {
    int t = idx / r, j = idx - t * r, c = device::RetainedChannel(l, j), g = c / l.group_size, b = l.bits[g];
    float levels = static_cast<float>((1u << b) - 1u);
    float q = scale[j] > 0.f ? rintf(__fdiv_rn(z[idx] - zero[j], scale[j])) : 0.f;
    uint32_t code = static_cast<uint32_t>(fminf(fmaxf(q, 0.f), levels));
    int bit = (t * l.group_size + (c - g * l.group_size)) * b;
    uint32_t* gw = words + l.group_offset[g] / 4;
    int word = bit >> 5, shift = bit & 31;
    atomicOr(&gw[word], code << shift);
    if (shift + b > 32) atomicOr(&gw[word + 1], code >> (32 - shift));
  }
  __syncthreads();
  for (int w = threadIdx.x; w < n_words; w += blockDim.x) out[w] = words[w];
}

// Decode, one block per (page, KV head). Shared memory: the retained channels' indices [r] |
// V_r [W, r + 1] (the basis's retained columns, padded a column so that the threads of a warp,
// which take consecutive dims, read distinct banks) | z [P, r]. Each thread rebuilds the RoPE
// pair (i, i + W/2) of kTok tokens at a time in registers, each element summed as the reference
// sums it (mean, then fmaf over the retained channels in order), rotates them and writes them
// out: no [P, W] key buffer. The first version (a thread per element, looking up each retained
// channel's column in a loop and reading the basis from global memory) took 4.7 ms a prompt
// chunk's layer at 16k tokens and 8 KV heads, 40% of the SVDq prefill (decode_step_bench
// --profile-prefill, H200, 2026-12-05).
constexpr int kTok = 8;

__global__ void DecodeKernel(SvdqDecodeParams p) {
  extern __shared__ float smem[];
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, W = l.width, r = l.retained, h = W / 2, ld = r + 1;
  const int64_t ph = static_cast<int64_t>(blockIdx.x) * p.kv_heads + blockIdx.y;
  const int64_t bh = p.basis_index ? static_cast<int64_t>(p.basis_index[blockIdx.x]) * p.kv_heads + blockIdx.y : ph;
  int* chan = reinterpret_cast<int*>(smem);
  float* vr = smem + r;
  float* z = vr + W * ld;
  for (int j = threadIdx.x; j < r; j += blockDim.x) chan[j] = device::RetainedChannel(l, j);
  device::DequantLatent(l, p.pages + ph * l.page_bytes, z);
  __syncthreads();
  const float* basis = p.basis + bh * W * W;
  for (int idx = threadIdx.x; idx < W * r; idx += blockDim.x) {
    const int i = idx / r, j = idx - i * r;
    vr[i * ld + j] = basis[i * W + chan[j]];
  }
  __syncthreads();
  const float* mean = p.mean + bh * W;
  float* out = p.out + ph * P * W;
  // Work items: (dim pair i < h, run of kTok tokens); consecutive threads take consecutive i.
  const int runs = (P + kTok - 1) / kTok;
  for (int item = threadIdx.x; item < h * runs; item += blockDim.x) {
    const int i = item % h, t0 = (item / h) * kTok;
    float lo[kTok], hi[kTok];
    const float m_lo = mean[i], m_hi = mean[i + h];
#pragma unroll
    for (int k = 0; k < kTok; ++k) lo[k] = m_lo, hi[k] = m_hi;
    int zo[kTok];
#pragma unroll
    for (int k = 0; k < kTok; ++k) zo[k] = min(t0 + k, P - 1) * r;  // past the page: a repeat, not stored
    const int o_lo = i * ld, o_hi = (i + h) * ld;
    for (int j = 0; j < r; ++j) {
      const float a = vr[o_lo + j], b = vr[o_hi + j];
#pragma unroll
      for (int k = 0; k < kTok; ++k) {
        const float zj = z[zo[k] + j];
        lo[k] = fmaf(a, zj, lo[k]);
        hi[k] = fmaf(b, zj, hi[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < kTok; ++k) {
      const int t = t0 + k;
      if (t >= P) break;
      float x = lo[k], y = hi[k];
      if (p.rope_cos) {  // as device::ApplyRope
        const float* c = p.rope_cos + static_cast<int64_t>(p.first_pos[blockIdx.x] + t) * W;
        const float* sn = p.rope_sin + static_cast<int64_t>(p.first_pos[blockIdx.x] + t) * W;
        const float a = x, b = y;
        x = a * c[i] - b * sn[i];
        y = b * c[i + h] + a * sn[i + h];
      }
      out[t * W + i] = x;
      out[t * W + i + h] = y;
    }
  }
}

}  // namespace

Status SvdqEncode(const SvdqEncodeParams& p, cudaStream_t stream) {
  const SvdqLayout& l = p.layout;
  if (p.num_pages < 0 || p.kv_heads <= 0 || l.width <= 0 || l.retained <= 0)
    return Status::Invalid("SvdqEncode: bad shape");
  if (!(p.keys || (p.key_lane && p.keys_bf16)) || !p.mean || !p.basis || !p.out)
    return Status::Invalid("SvdqEncode: null pointer");
  if (p.keys_bf16 && !p.key_lane) return Status::Invalid("SvdqEncode: bf16 keys are read from tail pages (key_lane)");
  if (p.num_pages == 0) return Status::Ok();
  size_t smem = sizeof(float) * (static_cast<size_t>(l.page_size) * (l.width + l.retained) + 2 * l.retained) + l.page_bytes;
  Status st = AllowSmem(reinterpret_cast<const void*>(EncodeKernel), smem);
  if (!st.ok()) return st;
  EncodeKernel<<<dim3(p.num_pages, p.kv_heads), kThreads, smem, stream>>>(p);
  return LaunchStatus("SvdqEncode");
}

Status SvdqDecode(const SvdqDecodeParams& p, cudaStream_t stream) {
  const SvdqLayout& l = p.layout;
  if (p.num_pages < 0 || p.kv_heads <= 0 || l.width <= 0 || l.retained <= 0)
    return Status::Invalid("SvdqDecode: bad shape");
  if (!p.pages || !p.mean || !p.basis || !p.out || (p.rope_cos && (!p.rope_sin || !p.first_pos)))
    return Status::Invalid("SvdqDecode: null pointer");
  if (p.num_pages == 0) return Status::Ok();
  if (l.width % 2 != 0) return Status::Invalid("SvdqDecode: odd width");
  size_t smem = sizeof(float) * (static_cast<size_t>(l.retained) + static_cast<size_t>(l.width) * (l.retained + 1) +
                                 static_cast<size_t>(l.page_size) * l.retained);
  Status st = AllowSmem(reinterpret_cast<const void*>(DecodeKernel), smem);
  if (!st.ok()) return st;
  DecodeKernel<<<dim3(p.num_pages, p.kv_heads), kThreads, smem, stream>>>(p);
  return LaunchStatus("SvdqDecode");
}

}  // namespace svdq::kernels
