// Plain bf16 paged decode attention: the baseline mode's kernel (bf16 keys and values in
// pages). One query token per sequence; keys and values come from the pool's pages through
// the sequence's page table. Its references: a float loop over the gathered pages
// (tests/gpu/paged_decode_test.cc) and ATen's SDPA through the server's storage
// (tests/unit/kv_storage_test.cc), both on the GPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/status.h"

namespace svdq::kernels {

struct PagedDecodeParams {
  int batch = 0;
  int num_heads = 0;  // query heads; num_heads / kv_heads share each KV head
  int kv_heads = 0;
  int head_dim = 0;   // at most 256
  int page_size = 0;
  int max_pages = 0;  // row stride of page_table
  float sm_scale = 0.f;
  const uint16_t* q = nullptr;         // bf16 [batch, num_heads, head_dim], post-RoPE
  const uint16_t* key_pages = nullptr;  // bf16 [pool_pages, kv_heads, page_size, head_dim], post-RoPE
  const uint16_t* value_pages = nullptr;  // bf16, same layout
  const int32_t* page_table = nullptr;  // [batch, max_pages]
  const int32_t* seq_len = nullptr;     // [batch]: tokens to attend over (>= 1, <= max_seq_len)
  int max_seq_len = 0;                  // bound on seq_len: sizes the split plan
  // Split-KV: each sequence's keys are cut into ranges of tokens_per_split tokens (a multiple
  // of 64), scored by separate blocks and merged (kernels/attention/split_merge.h). 0: one
  // range per sequence. PagedDecodeTokensPerSplit picks it for the GPU.
  int tokens_per_split = 0;
  float* workspace = nullptr;           // PagedDecodeWorkspaceFloats(p) floats where split
  float* out = nullptr;                 // fp32 [batch, num_heads, head_dim]
};

// Head dims 64 and 128 run on tensor cores: one block of 4 warps per (split, KV head, group
// of up to 16 query heads, sequence); each warp streams its own 16-token chunks of keys and
// values into shared memory (cp.async, three in flight), scores them against the group's
// queries and folds them into an online softmax with P V, all with mma.sync; the warps then
// merge in shared memory. Other head dims use a CUDA-core kernel that keeps a sequence's
// scores in shared memory (max_seq_len up to about 55k tokens).
Status PagedDecodeAttention(const PagedDecodeParams& p, cudaStream_t stream);

// Whether p's head dim takes the tensor-core kernel (no bound on the sequence length).
bool PagedDecodeTensorCores(int head_dim);

// A split size that gives the GPU about four blocks per SM for this batch; 0 where the
// batch alone fills it. The result depends only on its arguments (capturable in a graph).
int PagedDecodeTokensPerSplit(int batch, int num_heads, int kv_heads, int max_seq_len, int num_sms);

// Floats of workspace p needs (0 without a split).
size_t PagedDecodeWorkspaceFloats(const PagedDecodeParams& p);

}  // namespace svdq::kernels
