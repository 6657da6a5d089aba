// Device helpers shared by the SVDq kernels: code extraction, latent dequantization and
// key rebuild into shared memory, RoPE. Included by .cu files only.
#pragma once

#include <cuda_bf16.h>

#include "kernels/common/warp.cuh"
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

// Folds n tokens whose keys are in shared memory `keys` [n, W] into the running softmax
// state (m, lsum, acc) of the G queries q [G, W]; value_row(t) points at token t's bf16
// value row. scores [G, score_stride] is scratch. Call with every thread of the block.
template <typename ValueRow>
__device__ void Fold(int n, int G, int W, float sm_scale, const float* q, const float* keys, ValueRow value_row,
                     float* scores, int score_stride, float* m, float* lsum, float* acc) {
  const int warps = blockDim.x / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int pair = warp; pair < G * n; pair += warps) {
    int g = pair / n, t = pair - g * n;
    float s = 0.f;
    for (int i = lane; i < W; i += 32) s = fmaf(q[g * W + i], keys[t * W + i], s);
    s = WarpSum(s);
    if (lane == 0) scores[g * score_stride + t] = s * sm_scale;
  }
  __syncthreads();
  __shared__ float corr[16];  // at most 16 query heads per KV head (ValidateAttention)
  if (warp < G) {
    const int g = warp;
    float mx = m[g];
    for (int t = lane; t < n; t += 32) mx = fmaxf(mx, scores[g * score_stride + t]);
    mx = WarpMax(mx);
    float sum = 0.f;
    for (int t = lane; t < n; t += 32) {
      float e = __expf(scores[g * score_stride + t] - mx);
      scores[g * score_stride + t] = e;
      sum += e;
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
  for (int idx = threadIdx.x; idx < G * W; idx += blockDim.x) {
    int g = idx / W, i = idx - g * W;
    float a = acc[idx] * corr[g];
    for (int t = 0; t < n; ++t) a = fmaf(scores[g * score_stride + t], __bfloat162float(value_row(t)[i]), a);
    acc[idx] = a;
  }
  __syncthreads();
}

// Ends a block of split attention for the G query heads of KV head h in sequence b:
// without a split, the normalized output; with one, the partial state [acc (W) | m | l]
// of each query head at workspace[b][head][split], for the merge kernel.
__device__ inline void WriteAttentionResult(const SvdqAttentionParams& p, int b, int h, int split, int G,
                                            const float* acc, const float* m, const float* lsum) {
  const int W = p.layout.width;
  if (p.pages_per_split == 0) {
    float* out = p.out + (static_cast<int64_t>(b) * p.num_heads + h * G) * W;
    for (int idx = threadIdx.x; idx < G * W; idx += blockDim.x) {
      float denom = lsum[idx / W];
      out[idx] = denom > 0.f ? acc[idx] / denom : 0.f;
    }
    return;
  }
  const int splits = gridDim.z;
  for (int idx = threadIdx.x; idx < G * (W + 2); idx += blockDim.x) {
    int g = idx / (W + 2), i = idx - g * (W + 2);
    float* ws = p.workspace + ((static_cast<int64_t>(b) * p.num_heads + h * G + g) * splits + split) * (W + 2);
    ws[i] = i < W ? acc[g * W + i] : (i == W ? m[g] : lsum[g]);
  }
}

// Loads the sequence's bf16 tail keys [tail, W] into shared memory.
__device__ inline void LoadTailKeys(const SvdqAttentionParams& p, int64_t bh, int tail, float* keys) {
  const int W = p.layout.width;
  const auto* tk = reinterpret_cast<const __nv_bfloat16*>(p.tail_keys) + bh * p.layout.page_size * W;
  for (int idx = threadIdx.x; idx < tail * W; idx += blockDim.x) keys[idx] = __bfloat162float(tk[idx]);
}

}  // namespace svdq::kernels::device
