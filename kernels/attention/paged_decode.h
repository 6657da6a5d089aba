// Paged decode attention over per-token pages (kv_format.h): the baseline mode's kernel
// (bf16 keys and values) and the quantized-value and fp8-key modes'. One query token per sequence; keys and values come from the pool's pages through
// the sequence's page table. Its references: a float loop over the gathered pages
// (tests/gpu/paged_decode_test.cc) and ATen's SDPA through the server's storage
// (tests/unit/kv_storage_test.cc), both on the GPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/attention/kv_format.h"
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
  // Pages [pool_pages, kv_heads, page_size, row] (keys post-RoPE), rows in key_format /
  // value_format; quantized formats also have scales bf16 [pool_pages, kv_heads, page_size,
  // head_dim / 32]. Keys are bf16 or fp8; values any format. Quantized formats need the
  // tensor-core kernel (head dim 64 or 128).
  KvFormat key_format = KvFormat::kBf16, value_format = KvFormat::kBf16;
  const void* key_pages = nullptr;
  const void* value_pages = nullptr;
  const uint16_t* key_scales = nullptr;
  const uint16_t* value_scales = nullptr;
  const int32_t* page_table = nullptr;  // [batch, max_pages]
  const int32_t* seq_len = nullptr;     // [batch]: tokens to attend over (>= 1, <= max_seq_len)
  int max_seq_len = 0;                  // bound on seq_len: sizes the split plan
  // Split-KV: each sequence's own length is cut into num_splits ranges (multiples of 64
  // tokens; ranges past its end are empty), scored by separate blocks and merged
  // (kernels/attention/split_merge.h). 0 or 1: one range. PagedDecodeNumSplits plans it.
  int num_splits = 0;
  float* workspace = nullptr;           // PagedDecodeWorkspaceFloats(p) floats where split
  float* out = nullptr;                 // fp32 [batch, num_heads, head_dim]
};

// Head dims 64 and 128 run on tensor cores: one block of 4 warps per (split, KV head, group
// of up to 16 query heads, sequence); each warp streams its own 16-token chunks of keys and
// values into shared memory (cp.async, three in flight; quantized rows are dequantized to a
// bf16 tile in shared memory), scores them against the group's queries and folds them into an
// online softmax with P V, all with mma.sync; the warps then merge in shared memory. Other head dims use a CUDA-core kernel that keeps a sequence's
// scores in shared memory (max_seq_len up to about 55k tokens).
Status PagedDecodeAttention(const PagedDecodeParams& p, cudaStream_t stream);

// Whether p's head dim takes the tensor-core kernel (no bound on the sequence length).
bool PagedDecodeTensorCores(int head_dim);

// The split count for p's shape (batch, heads, head dim, formats, max_seq_len) on a GPU of
// num_sms multiprocessors, planned by waves: the count that minimises (waves of blocks) x
// (tokens per block + a fixed cost per block), with the blocks per SM the kernel really keeps
// resident (the occupancy API). Depends only on the shape (capturable in a graph).
int PagedDecodeNumSplits(const PagedDecodeParams& p, int num_sms);

// Floats of workspace p needs (0 without a split).
size_t PagedDecodeWorkspaceFloats(const PagedDecodeParams& p);

}  // namespace svdq::kernels
