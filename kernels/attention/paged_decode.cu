#include "kernels/attention/paged_decode.h"

#include <cuda_bf16.h>

#include <cfloat>
#include <string>

#include "kernels/common/cuda_launch.h"
#include "kernels/common/warp.cuh"

namespace svdq::kernels {
namespace {

constexpr int kThreads = 128;

__device__ float BlockReduce(float v, float* scratch, bool is_max) {
  v = is_max ? WarpMax(v) : WarpSum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) v = is_max ? fmaxf(v, scratch[w]) : v + scratch[w];
  return v;
}

__global__ void __launch_bounds__(kThreads) PagedDecodeKernel(PagedDecodeParams p) {
  extern __shared__ float smem[];
  const int b = blockIdx.x / p.num_heads, h = blockIdx.x % p.num_heads;
  const int kvh = h / (p.num_heads / p.kv_heads);
  const int D = p.head_dim, P = p.page_size, L = p.seq_len[b];
  float* q = smem;            // [D]
  float* scratch = q + D;     // [kThreads / 32]
  float* score = scratch + kThreads / 32;  // [max_seq_len]
  const auto* qb = reinterpret_cast<const __nv_bfloat16*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h) * D;
  for (int d = threadIdx.x; d < D; d += kThreads) q[d] = __bfloat162float(qb[d]) * p.sm_scale;
  __syncthreads();
  auto row = [&](const uint16_t* pages, int t) {
    const int64_t page = p.page_table[static_cast<int64_t>(b) * p.max_pages + t / P];
    return reinterpret_cast<const __nv_bfloat16*>(pages) + ((page * p.kv_heads + kvh) * P + t % P) * D;
  };
  float m = -FLT_MAX;
  for (int t = threadIdx.x; t < L; t += kThreads) {
    const __nv_bfloat16* k = row(p.key_pages, t);
    float s = 0.f;
    for (int d = 0; d < D; ++d) s += q[d] * __bfloat162float(k[d]);
    score[t] = s;
    m = fmaxf(m, s);
  }
  m = BlockReduce(m, scratch, true);
  float sum = 0.f;
  for (int t = threadIdx.x; t < L; t += kThreads) {
    const float e = __expf(score[t] - m);
    score[t] = e;
    sum += e;
  }
  sum = BlockReduce(sum, scratch, false);
  __syncthreads();
  float* out = p.out + (static_cast<int64_t>(b) * p.num_heads + h) * D;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float acc = 0.f;
    for (int t = 0; t < L; ++t) acc += score[t] * __bfloat162float(row(p.value_pages, t)[d]);
    out[d] = acc / sum;
  }
}

}  // namespace

Status PagedDecodeAttention(const PagedDecodeParams& p, cudaStream_t stream) {
  if (p.batch < 1 || p.num_heads < 1 || p.kv_heads < 1 || p.num_heads % p.kv_heads != 0)
    return Status::Invalid("paged decode: batch, num_heads and kv_heads must be positive, num_heads a multiple of kv_heads");
  if (p.head_dim < 1 || p.head_dim > 256) return Status::Invalid("paged decode: head_dim must be in [1, 256]");
  if (p.page_size < 1 || p.max_pages < 1 || p.max_seq_len < 1 || p.max_seq_len > p.max_pages * p.page_size)
    return Status::Invalid("paged decode: max_seq_len must be in [1, max_pages * page_size]");
  if (!p.q || !p.key_pages || !p.value_pages || !p.page_table || !p.seq_len || !p.out)
    return Status::Invalid("paged decode: a pointer is null");
  const size_t smem = (static_cast<size_t>(p.head_dim) + kThreads / 32 + p.max_seq_len) * sizeof(float);
  if (Status s = AllowSmem(reinterpret_cast<const void*>(PagedDecodeKernel), smem); !s.ok()) return s;
  PagedDecodeKernel<<<p.batch * p.num_heads, kThreads, smem, stream>>>(p);
  return LaunchStatus("paged decode attention");
}

}  // namespace svdq::kernels
