// Launchers of the SVDq CUDA kernels. Each checks its parameters, launches on `stream`,
// and returns the launch status; none synchronizes.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/common/status.h"
#include "kernels/svdq/svdq_params.h"

namespace svdq::kernels {

Status SvdqEncode(const SvdqEncodeParams& p, cudaStream_t stream);
Status SvdqDecode(const SvdqDecodeParams& p, cudaStream_t stream);
// One thread block per (sequence, KV head, split of pages), partial results merged by a
// second kernel. Dispatch: the warp-stream kernel where it takes the shape (head dim 128,
// bf16 values); the mma kernel (keys rebuilt on tensor cores in fp16, RoPE in registers) when
// p.rope_inv_freq is set and the shape allows; else the WMMA/TF32 kernel;
// else (or use_tensor_cores false) the CUDA-core kernel, the first correct version.
Status SvdqAttention(const SvdqAttentionParams& p, cudaStream_t stream);
// Whether SvdqAttention runs the mma kernel (svdq_attention_mma.cu) for p: rope_inv_freq set,
// width 64 or 128, page size dividing 64, and its shared-memory plan fits. Only that kernel
// and the warp-stream one read tail values in place (tail_value_page), and only it quantized
// values (value_format).
bool SvdqAttentionMmaSupported(const SvdqAttentionParams& p);
// Whether the warp-stream kernel (svdq_attention_warp.cu) takes p: head dim 128, pages of a
// multiple of 16 tokens, at most 8 query heads per KV head, bf16 values. SvdqAttention
// prefers it to the mma kernel.
bool SvdqAttentionWarpSupported(const SvdqAttentionParams& p);
// Whether that kernel, as dispatched (kAuto / kWarpStreams), rebuilds p's keys on the warpgroup
// (wgmma: head dim 128 from 6 k-steps on, sm_90a); kWarpStreamsSync then differs from it.
bool SvdqAttentionWarpGroupRebuild(const SvdqAttentionParams& p);
// A pages_per_split for SvdqAttention, planned by waves of resident blocks (0: no split), with
// blocks_per_sm of them resident on each of num_sms multiprocessors (SvdqAttentionBlocksPerSm).
// Planned once per step from the longest sequence (or list of attended pages).
int SvdqAttentionPagesPerSplit(int batch, int kv_heads, int max_pages, int page_size, int num_sms, int blocks_per_sm = 2);
// Blocks of the kernel SvdqAttention runs for p that one multiprocessor holds (the occupancy
// API on the warp-stream kernel's instance: 1 in its pair mode, 2 otherwise; 2 for the others).
int SvdqAttentionBlocksPerSm(const SvdqAttentionParams& p);
// Floats of workspace SvdqAttention needs for p's shape and split (0 without a split).
size_t SvdqAttentionWorkspaceFloats(const SvdqAttentionParams& p);

// Eigenvectors of a batch of symmetric n x n matrices (n = 64 or 128), in descending order of
// eigenvalue: the SVDq prefill basis of every KV head of every layer in one launch
// (kernels/svdq/sym_eig.cu; one block per matrix, cyclic Jacobi in fp32). Reference:
// SymEigDescendingRef (svdq_ref.h).
Status SymEigDescending(const SymEigParams& p, cudaStream_t stream);

}  // namespace svdq::kernels
