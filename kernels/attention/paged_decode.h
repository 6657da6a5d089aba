// Plain bf16 paged decode attention: the baseline mode's kernel (bf16 keys and values in
// pages). One query token per sequence; keys and values come from the pool's pages through
// the sequence's page table. Its CPU reference is ATen's SDPA over the same keys and values
// gathered from the pages (tests/unit/kv_storage_test.cc compares them on the GPU).
#pragma once

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
  const int32_t* seq_len = nullptr;     // [batch]: tokens to attend over (>= 1)
  int max_seq_len = 0;                  // bound on seq_len, sizes the score buffer
  float* out = nullptr;                 // fp32 [batch, num_heads, head_dim]
};

// One thread block per (sequence, query head): scores in shared memory, softmax in fp32,
// then P.V. Correct first, not tuned. Fails (no launch) where the scores do not fit in
// shared memory (max_seq_len above ~55k tokens).
Status PagedDecodeAttention(const PagedDecodeParams& p, cudaStream_t stream);

}  // namespace svdq::kernels
