// Launchers of the SVDq CUDA kernels. Each checks its parameters, launches on `stream`,
// and returns the launch status; none synchronizes.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/common/status.h"
#include "kernels/svdq/svdq_params.h"

namespace svdq::kernels {

Status SvdqEncode(const SvdqEncodeParams& p, cudaStream_t stream);
Status SvdqDecode(const SvdqDecodeParams& p, cudaStream_t stream);
// First correct version: one thread block per (sequence, KV head), pages in order, keys
// rebuilt in shared memory with CUDA cores. The fast tensor-core kernel replaces it later.
Status SvdqAttention(const SvdqAttentionParams& p, cudaStream_t stream);

}  // namespace svdq::kernels
