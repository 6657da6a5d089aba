// Launchers of the SVDq CUDA kernels. Each checks its parameters, launches on `stream`,
// and returns the launch status; none synchronizes.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/common/status.h"
#include "kernels/svdq/svdq_params.h"

namespace svdq::kernels {

Status SvdqEncode(const SvdqEncodeParams& p, cudaStream_t stream);
Status SvdqDecode(const SvdqDecodeParams& p, cudaStream_t stream);
// First correct version: one thread block per (sequence, KV head, split of pages), keys
// rebuilt in shared memory with CUDA cores, partial results merged by a second kernel.
// The fast tensor-core kernel replaces it later.
Status SvdqAttention(const SvdqAttentionParams& p, cudaStream_t stream);
// Floats of workspace SvdqAttention needs for p's shape and split (0 without a split).
size_t SvdqAttentionWorkspaceFloats(const SvdqAttentionParams& p);

}  // namespace svdq::kernels
