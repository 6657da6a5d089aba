// Device helpers shared by the SVDq kernels: code extraction, latent dequantization and
// key rebuild into shared memory, RoPE. Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/svdq/svdq_params.h"

namespace svdq::kernels::device {

__device__ __forceinline__ uint32_t ReadCode(const uint8_t* group, int index, int bits) {
  // Groups start 4-byte aligned, so 32-bit word loads are aligned; a code may straddle two words.
  const uint32_t* w = reinterpret_cast<const uint32_t*>(group);
  int bit = index * bits, word = bit >> 5, shift = bit & 31;
  uint32_t v = w[word] >> shift;
  if (shift + bits > 32) v |= w[word + 1] << (32 - shift);
  return v & ((1u << bits) - 1u);
}

// Latent channel of the j-th retained channel.
__device__ __forceinline__ int RetainedChannel(const SvdqLayout& l, int j) {
  for (int g = 0; g < kSvdqGroups; ++g) {
    if (l.bits[g] == 0) continue;
    if (j < l.retained_before[g] + l.group_size) return g * l.group_size + (j - l.retained_before[g]);
  }
  return -1;
}

// z[t * r + j] = zero_j + code * scale_j for the page record `rec`.
__device__ inline void DequantLatent(const SvdqLayout& l, const uint8_t* rec, float* z) {
  const __half* scales = reinterpret_cast<const __half*>(rec + l.scale_offset);
  const __half* zeros = reinterpret_cast<const __half*>(rec + l.zero_offset);
  const int r = l.retained;
  for (int idx = threadIdx.x; idx < l.page_size * r; idx += blockDim.x) {
    int t = idx / r, j = idx - t * r;
    int c = RetainedChannel(l, j);
    int g = c / l.group_size;
    uint32_t code = ReadCode(rec + l.group_offset[g], t * l.group_size + (c - g * l.group_size), l.bits[g]);
    z[idx] = __half2float(zeros[j]) + static_cast<float>(code) * __half2float(scales[j]);
  }
}

// key[t * W + i] = mean[i] + sum_j basis[i, c_j] z[t, j], for t < P. basis is [W, W] row-major.
__device__ inline void RebuildKeys(const SvdqLayout& l, const float* mean, const float* basis, const float* z, float* key) {
  const int W = l.width, r = l.retained;
  for (int idx = threadIdx.x; idx < l.page_size * W; idx += blockDim.x) {
    int t = idx / W, i = idx - t * W;
    float acc = mean[i];
    for (int j = 0; j < r; ++j) acc = fmaf(basis[i * W + RetainedChannel(l, j)], z[t * r + j], acc);
    key[idx] = acc;
  }
}

// Rotate-half RoPE of `rows` vectors in shared memory, row t at position pos0 + t.
__device__ inline void ApplyRope(float* x, int rows, int W, int pos0, const float* cos_t, const float* sin_t) {
  const int h = W / 2;
  for (int idx = threadIdx.x; idx < rows * h; idx += blockDim.x) {
    int t = idx / h, i = idx - t * h;
    const float* c = cos_t + static_cast<int64_t>(pos0 + t) * W;
    const float* s = sin_t + static_cast<int64_t>(pos0 + t) * W;
    float a = x[t * W + i], b = x[t * W + i + h];
    x[t * W + i] = a * c[i] - b * s[i];
    x[t * W + i + h] = b * c[i + h] + a * s[i + h];
  }
}

}  // namespace svdq::kernels::device
