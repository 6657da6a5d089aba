// One warp per (token, KV head, tensor): lane l holds channels [E l, E l + E), E = D / 32, so
// a scale group of 32 channels is 32 / E neighbouring lanes and its absmax is a few shuffles.
#include "kernels/attention/kv_write.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/common/cuda_launch.h"

namespace svdq::kernels {
namespace {

constexpr int kWarpsPerBlock = 4;

template <int E>
__device__ void StoreRow(const __nv_bfloat16* x, KvFormat f, void* pages, uint16_t* scales, int64_t row, int D) {
  const int lane = threadIdx.x % 32, c0 = lane * E;
  float v[E];
#pragma unroll
  for (int e = 0; e < E; ++e) v[e] = __bfloat162float(x[c0 + e]);
  if (f == KvFormat::kBf16) {
    auto* out = static_cast<__nv_bfloat16*>(pages) + row * D + c0;
#pragma unroll
    for (int e = 0; e < E; ++e) out[e] = x[c0 + e];
    return;
  }
  float amax = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) amax = fmaxf(amax, fabsf(v[e]));
#pragma unroll
  for (int s = 1; s < 32 / E; s *= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, s));
  const float qmax = KvFormatMax(f);
  // ATen divides by a scalar as a product with its reciprocal; the ATen chain is the reference.
  const __nv_bfloat16 sb = __float2bfloat16_rn(fmaxf(amax * (1.f / qmax), 1e-30f));
  const float scale = __bfloat162float(sb);
  if (lane % (32 / E) == 0) reinterpret_cast<__nv_bfloat16*>(scales)[row * (D / kKvScaleGroup) + c0 / kKvScaleGroup] = sb;
  float y[E];
#pragma unroll
  for (int e = 0; e < E; ++e) y[e] = fminf(fmaxf(v[e] / scale, -qmax), qmax);
  if (f == KvFormat::kFp8) {
    auto* out = static_cast<__nv_fp8_storage_t*>(pages) + row * D + c0;
#pragma unroll
    for (int e = 0; e < E; ++e) out[e] = __nv_cvt_float_to_fp8(y[e], __NV_SATFINITE, __NV_E4M3);
  } else if (f == KvFormat::kInt8) {
    auto* out = static_cast<int8_t*>(pages) + row * D + c0;
#pragma unroll
    for (int e = 0; e < E; ++e) out[e] = static_cast<int8_t>(rintf(y[e]));
  } else {
    auto* out = static_cast<uint8_t*>(pages) + row * (D / 2) + c0 / 2;
#pragma unroll
    for (int e = 0; e < E; e += 2) {
      const int lo = static_cast<int>(rintf(y[e])) + 8, hi = static_cast<int>(rintf(y[e + 1])) + 8;
      out[e / 2] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

template <int E>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) KvWriteKernel(KvWriteParams p) {
  const int tensors = p.k_pre ? 3 : 2;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (w >= static_cast<int64_t>(p.rows) * p.kv_heads * tensors) return;
  const int which = static_cast<int>(w % tensors), h = static_cast<int>(w / tensors % p.kv_heads);
  const int i = static_cast<int>(w / tensors / p.kv_heads);
  const int D = p.head_dim, KV = p.kv_heads, P = p.page_size;
  if (which == 2) {  // the pre-RoPE key into the lane's tail page
    const auto* x = reinterpret_cast<const __nv_bfloat16*>(p.k_pre) + i * p.k_pre_stride + h * D;
    const int64_t row = (p.lanes[i] * P + p.offset[i]) * KV + h;
    StoreRow<E>(x, KvFormat::kBf16, p.tail, nullptr, row, D);
    return;
  }
  if (which == 0 && !p.key_pages) return;
  const int64_t row = (p.block[i] * KV + h) * P + p.offset[i];
  if (which == 0)
    StoreRow<E>(reinterpret_cast<const __nv_bfloat16*>(p.k) + i * p.k_stride + h * D, p.key_format, p.key_pages,
                p.key_scales, row, D);
  else
    StoreRow<E>(reinterpret_cast<const __nv_bfloat16*>(p.v) + i * p.v_stride + h * D, p.value_format, p.value_pages,
                p.value_scales, row, D);
}

}  // namespace

Status KvWrite(const KvWriteParams& p, cudaStream_t stream) {
  if (p.rows < 0 || p.kv_heads < 1 || p.page_size < 1) return Status::Invalid("KV write: bad shape");
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256)
    return Status::Invalid("KV write: head_dim must be 64, 128 or 256");
  if (p.rows == 0) return Status::Ok();
  if (!p.v || !p.value_pages || !p.block || !p.offset || (p.key_pages && !p.k) ||
      (p.k_pre && (!p.lanes || !p.tail)))
    return Status::Invalid("KV write: a pointer is null");
  if ((p.key_pages && p.key_format != KvFormat::kBf16 && !p.key_scales) ||
      (p.value_format != KvFormat::kBf16 && !p.value_scales))
    return Status::Invalid("KV write: a quantized format needs its scales");
  const int64_t warps = static_cast<int64_t>(p.rows) * p.kv_heads * (p.k_pre ? 3 : 2);
  const unsigned blocks = static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
  switch (p.head_dim / 32) {
    case 2: KvWriteKernel<2><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(p); break;
    case 4: KvWriteKernel<4><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(p); break;
    default: KvWriteKernel<8><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(p); break;
  }
  return LaunchStatus("KV write");
}

}  // namespace svdq::kernels
