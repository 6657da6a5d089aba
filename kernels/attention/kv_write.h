// The decode step's KV write in one launch: each new token's key and value rows are
// quantized (kv_format.h) and stored at their (block, offset) in the pages, and, for page-coded
// keys, the pre-RoPE key goes to its lane's tail page (the SVDq codec encodes it from there).
// It replaces the ATen chains of TokenStore::Write (server/kv/paged_storage.cc), bit for bit:
// scale = bf16(max(absmax / qmax, 1e-30)), code = clamp(x / scale, +-qmax) rounded to nearest
// even (fp8: e4m3 with round to nearest even). Test: tests/unit/kv_storage_test.cc, on the GPU.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/attention/kv_format.h"
#include "kernels/common/status.h"

namespace svdq::kernels {

struct KvWriteParams {
  int rows = 0, kv_heads = 0, head_dim = 0, page_size = 0;
  // bf16 rows of kv_heads * head_dim, `stride` elements apart (views into a fused projection work).
  const uint16_t* k = nullptr;
  int64_t k_stride = 0;
  const uint16_t* v = nullptr;
  int64_t v_stride = 0;
  const int64_t* block = nullptr;   // [rows]: the block each token goes to
  const int64_t* offset = nullptr;  // [rows]: its row in the block
  // Pages [blocks, kv_heads, page_size, row], scales bf16 [blocks, kv_heads, page_size, D / 32]
  // (quantized formats). key_pages null: keys are not stored per token (page-coded keys).
  KvFormat key_format = KvFormat::kBf16, value_format = KvFormat::kBf16;
  void* key_pages = nullptr;
  uint16_t* key_scales = nullptr;
  void* value_pages = nullptr;
  uint16_t* value_scales = nullptr;
  // Optional (page-coded keys): pre-RoPE keys k_pre (rows like k) to tail [lanes, P, kv_heads, D]
  // bf16 at (lanes[i], offset[i]).
  const uint16_t* k_pre = nullptr;
  int64_t k_pre_stride = 0;
  const int64_t* lanes = nullptr;
  uint16_t* tail = nullptr;
};

Status KvWrite(const KvWriteParams& p, cudaStream_t stream);

}  // namespace svdq::kernels
