#include "kernels/attention/split_merge.h"

#include "kernels/common/cuda_launch.h"

namespace svdq::kernels {
namespace {

// One block per row. Every thread rescales the splits itself (their m and l are a few
// cached loads); thread 0 also sums the denominator for the block.
__global__ void MergeSplitsKernel(const float* ws, float* out, int splits, int W) {
  const float* row = ws + static_cast<int64_t>(blockIdx.x) * splits * (W + 2);
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, row[s * (W + 2) + W]);
  __shared__ float total;
  if (threadIdx.x == 0) {
    float L = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = row[s * (W + 2) + W];
      if (ms > -INFINITY) L += __expf(ms - M) * row[s * (W + 2) + W + 1];
    }
    total = L;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < W; i += blockDim.x) {
    float a = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = row[s * (W + 2) + W];
      if (ms > -INFINITY) a += __expf(ms - M) * row[s * (W + 2) + i];
    }
    out[static_cast<int64_t>(blockIdx.x) * W + i] = total > 0.f ? a / total : 0.f;
  }
}

}  // namespace

Status MergeSplits(const float* ws, float* out, int rows, int splits, int width, cudaStream_t stream) {
  if (rows < 0 || splits < 1 || width < 1) return Status::Invalid("merge splits: rows >= 0, splits and width >= 1");
  if (rows == 0) return Status::Ok();
  if (!ws || !out) return Status::Invalid("merge splits: a pointer is null");
  MergeSplitsKernel<<<rows, 128, 0, stream>>>(ws, out, splits, width);
  return LaunchStatus("merge splits");
}

int PlanSplitsByWaves(int64_t units, int64_t work, int64_t slots, int64_t align, int64_t overhead, int max_splits) {
  if (units < 1 || work < 1 || slots < 1 || align < 1 || max_splits < 1) return 1;
  int best = 1;
  int64_t best_cost = -1;
  for (int s = 1; s <= max_splits; ++s) {
    const int64_t per = ((work + s - 1) / s + align - 1) / align * align;
    if (s > 1 && per * (s - 1) >= work) break;  // more splits than the work can fill
    const int64_t waves = (units * s + slots - 1) / slots;
    const int64_t cost = waves * (per + overhead);
    if (best_cost < 0 || cost < best_cost) best = s, best_cost = cost;
  }
  return best;
}

}  // namespace svdq::kernels
