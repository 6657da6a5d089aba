#include "kernels/attention/split_merge.h"

#include "kernels/common/cuda_launch.h"

namespace svdq::kernels {
namespace {

// One block per row; the split weights are computed once into shared memory.
__global__ void MergeSplitsKernel(const float* ws, float* out, int splits, int W) {
  extern __shared__ float weight[];  // [splits]
  const float* row = ws + static_cast<int64_t>(blockIdx.x) * splits * (W + 2);
  __shared__ float total;
  if (threadIdx.x == 0) {
    float M = -INFINITY;
    for (int s = 0; s < splits; ++s) M = fmaxf(M, row[s * (W + 2) + W]);
    float L = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = row[s * (W + 2) + W];
      weight[s] = ms > -INFINITY ? __expf(ms - M) : 0.f;
      L += weight[s] * row[s * (W + 2) + W + 1];
    }
    total = L;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < W; i += blockDim.x) {
    float a = 0.f;
    for (int s = 0; s < splits; ++s)
      if (weight[s] != 0.f) a += weight[s] * row[s * (W + 2) + i];
    out[static_cast<int64_t>(blockIdx.x) * W + i] = total > 0.f ? a / total : 0.f;
  }
}

}  // namespace

Status MergeSplits(const float* ws, float* out, int rows, int splits, int width, cudaStream_t stream) {
  if (rows < 0 || splits < 1 || width < 1) return Status::Invalid("merge splits: rows >= 0, splits and width >= 1");
  if (rows == 0) return Status::Ok();
  if (!ws || !out) return Status::Invalid("merge splits: a pointer is null");
  const size_t smem = static_cast<size_t>(splits) * sizeof(float);
  if (Status s = AllowSmem(reinterpret_cast<const void*>(MergeSplitsKernel), smem); !s.ok()) return s;
  MergeSplitsKernel<<<rows, 128, smem, stream>>>(ws, out, splits, width);
  return LaunchStatus("merge splits");
}

}  // namespace svdq::kernels
