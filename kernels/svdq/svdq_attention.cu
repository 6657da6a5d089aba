// Decode attention over SVDq-encoded key pages, first correct version: one thread block
// per (sequence, KV head, split) walks its pages in order; each page's keys are dequantized,
// rebuilt (mean + V_r z) and rotated in shared memory, scored against the GQA group's
// queries, and folded into an online softmax with the page's bf16 values.
#include <cuda_bf16.h>

#include "kernels/attention/split_merge.h"
#include "kernels/common/cuda_launch.h"
#include "kernels/svdq/svdq_attention_tc.h"
#include "kernels/svdq/svdq_cuda.h"
#include "kernels/svdq/svdq_device.cuh"
#include "kernels/svdq/svdq_ref.h"

namespace svdq::kernels {
namespace {

constexpr int kThreads = 256;

// Shared memory: q [G, W] | keys [P, W] | z [P, r] | scores [G, P] | acc [G, W] | m [G] | l [G].
__global__ void AttentionKernel(SvdqAttentionParams p) {
  extern __shared__ float smem[];
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, W = l.width, G = p.num_heads / p.kv_heads;
  const int b = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  float* q = smem;
  float* keys = q + G * W;
  float* z = keys + P * W;
  float* scores = z + P * l.retained;
  float* acc = scores + G * P;
  float* m = acc + G * W;
  float* lsum = m + G;
  const __nv_bfloat16* qg = reinterpret_cast<const __nv_bfloat16*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h * G) * W;
  for (int idx = threadIdx.x; idx < G * W; idx += blockDim.x) {
    q[idx] = __bfloat162float(qg[idx]);
    acc[idx] = 0.f;
  }
  if (threadIdx.x < G) {
    m[threadIdx.x] = -INFINITY;
    lsum[threadIdx.x] = 0.f;
  }
  __syncthreads();
  const int64_t bh = static_cast<int64_t>(b) * p.kv_heads + h;
  const int64_t brow = static_cast<int64_t>(p.basis_index ? p.basis_index[b] : b) * p.kv_heads + h;
  const float* mean = p.mean + brow * W;
  const float* basis = p.basis + brow * W * W;
  const int np = p.num_pages[b];
  const SplitSlice slice = SplitPages(np, p.pages_per_split, split, gridDim.z);
  const int first = slice.first, last = slice.last;
  for (int pg = first; pg < last; ++pg) {
    const int64_t pool = p.page_table[static_cast<int64_t>(b) * p.max_pages + pg];
    device::DequantLatent(l, p.key_pages + (pool * p.kv_heads + h) * l.page_bytes, z);
    __syncthreads();
    device::RebuildKeys(l, mean, basis, z, keys);
    __syncthreads();
    device::ApplyRope(keys, P, W, pg * P, p.rope_cos, p.rope_sin);
    __syncthreads();
    const auto* vals = reinterpret_cast<const __nv_bfloat16*>(p.value_pages) + (pool * p.kv_heads + h) * P * W;
    device::Fold(P, G, W, p.sm_scale, q, keys, [&](int t) { return vals + t * W; }, scores, P, m, lsum, acc);
  }
  const int tail = slice.tail ? p.tail_len[b] : 0;
  if (tail > 0) {
    device::LoadTailKeys(p, bh, tail, keys);
    __syncthreads();
    const auto* tv = reinterpret_cast<const __nv_bfloat16*>(p.tail_values) + bh * P * W;
    device::Fold(tail, G, W, p.sm_scale, q, keys, [&](int t) { return tv + t * W; }, scores, P, m, lsum, acc);
  }
  device::WriteAttentionResult(p, b, h, split, G, acc, m, lsum);
}

int Splits(const SvdqAttentionParams& p) {
  const int pages = p.sparse_pages && p.sparse_max_pages > 0 ? p.sparse_max_pages : p.max_pages;
  return SplitCount(pages, p.pages_per_split);
}

}  // namespace

int SvdqAttentionBlocksPerSm(const SvdqAttentionParams& p) {
  using K = SvdqAttentionParams::Kernel;
  if (p.use_tensor_cores && p.kernel != K::kBlockMma && SvdqAttentionWarpSupported(p)) {
    const int n = SvdqAttentionWarpBlocksPerSm(p);
    if (n > 0) return n;
  }
  return 2;
}

size_t SvdqAttentionWorkspaceFloats(const SvdqAttentionParams& p) {
  if (p.pages_per_split <= 0) return 0;
  return static_cast<size_t>(p.batch) * p.num_heads * Splits(p) * (p.layout.width + 2);
}

Status SvdqAttention(const SvdqAttentionParams& p, cudaStream_t stream) {
  Status st = ValidateAttention(p);
  if (!st.ok()) return st;
  if (p.batch == 0) return Status::Ok();
  const SvdqLayout& l = p.layout;
  const int G = p.num_heads / p.kv_heads;
  size_t smem = sizeof(float) * (static_cast<size_t>(G) * l.width * 2 + static_cast<size_t>(l.page_size) * l.width +
                                 static_cast<size_t>(l.page_size) * l.retained + static_cast<size_t>(G) * l.page_size + 2 * G);
  st = AllowSmem(reinterpret_cast<const void*>(AttentionKernel), smem);
  if (!st.ok()) return st;
  if (p.pages_per_split < 0) return Status::Invalid("pages_per_split must be >= 0");
  if (p.pages_per_split > 0 && !p.workspace) return Status::Invalid("a split attention needs a workspace");
  const int splits = Splits(p);
  using K = SvdqAttentionParams::Kernel;
  const bool warp = p.use_tensor_cores && p.kernel != K::kBlockMma && SvdqAttentionWarpSupported(p);
  const bool forced_warp = p.kernel == K::kWarpStreams || p.kernel == K::kWarpStreamsSync;
  const bool mma = !warp && p.use_tensor_cores && !forced_warp && SvdqAttentionMmaSupported(p);
  if (p.use_tensor_cores && forced_warp && !warp)
    return Status::Invalid("the warp-stream SVDq kernel does not take this shape");
  if (p.sparse_pages && !warp)
    return Status::Invalid("sparse SVDq attention needs the warp-stream kernel (head dim 64 or 128, bf16 values)");
  if (!warp && !mma && (p.value_format != KvFormat::kBf16 || p.tail_value_page))
    return Status::Invalid("quantized values and in-place tail values need the mma kernel (rope_inv_freq, width 64 or 128)");
  if (warp) {
    st = SvdqAttentionWarpLaunch(p, splits, stream);
    if (!st.ok()) return st;
  } else if (mma) {
    st = SvdqAttentionMmaLaunch(p, splits, stream);
    if (!st.ok()) return st;
  } else if (p.use_tensor_cores && SvdqAttentionTcSupported(p)) {
    st = SvdqAttentionTcLaunch(p, splits, stream);
    if (!st.ok()) return st;
  } else {
    AttentionKernel<<<dim3(p.batch, p.kv_heads, splits), kThreads, smem, stream>>>(p);
  }
  if (Status s = LaunchStatus("SvdqAttention"); !s.ok()) return s;
  if (p.pages_per_split == 0) return Status::Ok();
  return MergeSplits(p.workspace, p.out, p.batch * p.num_heads, splits, p.layout.width, stream);
}

}  // namespace svdq::kernels
