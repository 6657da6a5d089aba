// Internal: the tensor-core SVDq attention kernels, dispatched by SvdqAttention.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/common/status.h"
#include "kernels/svdq/svdq_cuda.h"
#include "kernels/svdq/svdq_params.h"

namespace svdq::kernels {

// Whether the tensor-core kernel handles p's shape (page size 16/32/64, width % 16 == 0,
// and its shared memory plan fits).
bool SvdqAttentionTcSupported(const SvdqAttentionParams& p);
// Launches the page kernel only; partial results go to p.workspace when split.
Status SvdqAttentionTcLaunch(const SvdqAttentionParams& p, int splits, cudaStream_t stream);

// Launches the mma page kernel only; partial results go to p.workspace when split.
Status SvdqAttentionMmaLaunch(const SvdqAttentionParams& p, int splits, cudaStream_t stream);

// Launches the warp-stream kernel only (svdq_attention_warp.cu); partial results go to
// p.workspace when split.
Status SvdqAttentionWarpLaunch(const SvdqAttentionParams& p, int splits, cudaStream_t stream);
// Blocks of the warp-stream kernel's instance for p that one multiprocessor holds (0: none).
int SvdqAttentionWarpBlocksPerSm(const SvdqAttentionParams& p);

}  // namespace svdq::kernels
