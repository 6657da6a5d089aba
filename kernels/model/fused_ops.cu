#include "kernels/model/fused_ops.h"

#include <cuda_bf16.h>

#include "kernels/common/cuda_launch.h"
#include "kernels/common/warp.cuh"

namespace svdq::kernels {
namespace {

__device__ __forceinline__ float Bf(const uint16_t* p, int64_t i) {
  return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
}
__device__ __forceinline__ uint16_t ToBf(float v) {
  __nv_bfloat16 b = __float2bfloat16_rn(v);
  return *reinterpret_cast<uint16_t*>(&b);
}
__device__ __forceinline__ float RoundBf(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

constexpr int kNormThreads = 256;

// One block per row. The row (after the residual add) is kept in registers between the two
// passes for hidden <= kNormThreads * 16, and re-read otherwise.
__global__ void __launch_bounds__(kNormThreads) AddRmsNormKernel(uint16_t* x, const uint16_t* residual, const float* w,
                                                                  float eps, int hidden, uint16_t* out) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  float ss = 0.f;
  for (int i = threadIdx.x; i < hidden; i += kNormThreads) {
    float v = Bf(x, base + i);
    if (residual) {
      v = RoundBf(__fadd_rn(v, Bf(residual, base + i)));
      x[base + i] = ToBf(v);
    }
    ss = fmaf(v, v, ss);
  }
  __shared__ float part[kNormThreads / 32];
  __shared__ float r;
  ss = WarpSum(ss);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int i = 0; i < kNormThreads / 32; ++i) t += part[i];
    r = rsqrtf(t / static_cast<float>(hidden) + eps);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < hidden; i += kNormThreads) {
    const float v = Bf(x, base + i);
    out[base + i] = ToBf(__fmul_rn(w[i], RoundBf(__fmul_rn(v, r))));
  }
}

// One thread per (row, head, pair i < D/2): both halves of the pair.
__global__ void RopeQkKernel(const uint16_t* qkv, int64_t stride, int rows, int heads, int kv_heads, int D,
                             const int64_t* pos, const float* cos, const float* sin, uint16_t* q_out, uint16_t* k_out) {
  const int half = D / 2, all = heads + kv_heads;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(rows) * all * half) return;
  const int i = static_cast<int>(idx % half);
  const int h = static_cast<int>((idx / half) % all);
  const int64_t row = idx / (static_cast<int64_t>(half) * all);
  const uint16_t* src = qkv + row * stride + static_cast<int64_t>(h) * D;
  const float a = Bf(src, i), b = Bf(src, i + half);
  const float* c = cos + pos[row] * D;
  const float* s = sin + pos[row] * D;
  // out[i] = a cos_i - b sin_i, out[i + D/2] = b cos_{i+D/2} + a sin_{i+D/2}: ATen's order of roundings.
  const float lo = __fadd_rn(__fmul_rn(a, c[i]), __fmul_rn(-b, s[i]));
  const float hi = __fadd_rn(__fmul_rn(b, c[i + half]), __fmul_rn(a, s[i + half]));
  uint16_t* dst = h < heads ? q_out + (row * heads + h) * D : k_out + (row * kv_heads + (h - heads)) * D;
  dst[i] = ToBf(lo);
  dst[i + half] = ToBf(hi);
}

__global__ void SiluMulKernel(const uint16_t* gu, int rows, int width, uint16_t* out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(rows) * width) return;
  const int64_t row = idx / width, col = idx % width;
  const float g = Bf(gu, row * 2 * width + col), u = Bf(gu, row * 2 * width + width + col);
  const float silu = RoundBf(g / (1.f + expf(-g)));
  out[idx] = ToBf(__fmul_rn(silu, u));
}

int Blocks(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

}  // namespace

Status AddRmsNorm(uint16_t* x, const uint16_t* residual, const float* w, float eps, int rows, int hidden,
                  uint16_t* out, cudaStream_t stream) {
  if (rows < 0 || hidden < 1) return Status::Invalid("AddRmsNorm: rows >= 0, hidden >= 1");
  if (rows == 0) return Status::Ok();
  if (!x || !w || !out) return Status::Invalid("AddRmsNorm: a pointer is null");
  AddRmsNormKernel<<<rows, kNormThreads, 0, stream>>>(x, residual, w, eps, hidden, out);
  return LaunchStatus("AddRmsNorm");
}

Status RopeQk(const uint16_t* qkv, int64_t row_stride, int rows, int heads, int kv_heads, int head_dim,
              const int64_t* pos, const float* cos, const float* sin, uint16_t* q_out, uint16_t* k_out,
              cudaStream_t stream) {
  if (rows < 0 || heads < 1 || kv_heads < 0 || head_dim < 2 || head_dim % 2 != 0 ||
      row_stride < static_cast<int64_t>(heads + kv_heads) * head_dim)
    return Status::Invalid("RopeQk: bad shape");
  if (rows == 0) return Status::Ok();
  if (!qkv || !pos || !cos || !sin || !q_out || (kv_heads > 0 && !k_out)) return Status::Invalid("RopeQk: a pointer is null");
  const int64_t n = static_cast<int64_t>(rows) * (heads + kv_heads) * (head_dim / 2);
  RopeQkKernel<<<Blocks(n, 256), 256, 0, stream>>>(qkv, row_stride, rows, heads, kv_heads, head_dim, pos, cos, sin,
                                                    q_out, k_out);
  return LaunchStatus("RopeQk");
}

Status SiluMul(const uint16_t* gate_up, int rows, int width, uint16_t* out, cudaStream_t stream) {
  if (rows < 0 || width < 1) return Status::Invalid("SiluMul: rows >= 0, width >= 1");
  if (rows == 0) return Status::Ok();
  if (!gate_up || !out) return Status::Invalid("SiluMul: a pointer is null");
  const int64_t n = static_cast<int64_t>(rows) * width;
  SiluMulKernel<<<Blocks(n, 256), 256, 0, stream>>>(gate_up, rows, width, out);
  return LaunchStatus("SiluMul");
}

}  // namespace svdq::kernels
