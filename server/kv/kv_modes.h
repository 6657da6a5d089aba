// The KV cache's modes: how keys and values are stored in the pages, and what that costs
// in bytes. Torch-free arithmetic, shared by the storage (paged_storage.h), the engine's
// budget, the metrics and the info RPCs.
//
// Key modes:
//   bf16   unquantized, in the model's dtype (bf16 on the GPU, fp32 on the CPU by default)
//   fp8    e4m3 per token, one bf16 scale per group of 32 channels (post-RoPE)
//   int4   direct per-channel int4 per page (KIVI-style, the paper's baseline): the SVDq page
//   int2   codec with an identity basis, no mean, and 4 or 2 bits on every channel (pre-RoPE)
//   svdq   pre-RoPE keys projected on an SVD basis, latent channels quantized by the schedule
// Page-coded keys (int4, int2, svdq) keep each sequence's unfilled tail page unquantized, in
// a per-sequence slot ("lane"), and encode it when it fills.
// Value modes: bf16 (the model's dtype), fp8, int8, int4 (per token, bf16 scale per group of 32).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/svdq/schedule.h"

namespace svdq::kv {

enum class KeyMode { kFull, kFp8, kInt4, kInt2, kSvdq };
enum class ValueMode { kFull, kFp8, kInt8, kInt4 };
enum class BasisSource { kPrefill, kCalibrated };
// SVDq basis per layer and KV head (width head_dim), or per layer over the KV heads
// concatenated (width kv_heads * head_dim, the paper's setting).
enum class BasisScope { kHead, kLayer };

struct KvModes {
  KeyMode key = KeyMode::kFull;
  ValueMode value = ValueMode::kFull;
  kernels::Schedule schedule;  // svdq only
  BasisSource basis = BasisSource::kPrefill;
  BasisScope scope = BasisScope::kHead;
  // Sparse decode attention (issue 17): > 0, the tokens a decode step attends to per sequence
  // and KV head (the sink page, the best-scored pages, the recent pages and the tail); every
  // page then also stores a landmark (its mean post-RoPE key, int8 + an fp16 scale). 0: dense.
  int sparse_budget = 0;
  // Sparse attention's landmarks. 0 (the default): a page's landmark is its mean key over the
  // head dim (D + 2 bytes a page and KV head). R > 0 (below the head dim, at most 128): its R
  // int8 coordinates in a basis of each sequence, layer and KV head, the R leading eigenvectors
  // of the post-RoPE keys of the sequence's first forward (R + 2 bytes a page, and D x R fp32
  // a running sequence); pages then differ between sequences (no prefix sharing).
  int sparse_landmark_rank = 0;
  // With R > 0: the basis is fitted on the first min(T, N) keys of the sequence's first forward
  // of T tokens, so that it depends on the prompt alone, not on how much of it a shared step took
  // (the engine makes that forward cover min(prompt, N) where the step budget allows).
  int sparse_landmark_basis_tokens = 8192;
  // Landmarks a page (1: the page's own). S > 1: the landmarks of the page's S equal slices
  // (P / S tokens each), S x W int8 coordinates under one fp16 scale (S W + 2 bytes a page and KV
  // head, W = R or D), and the page scores as its best slice: a few needle tokens are diluted by
  // P / S keys instead of P. S divides the block size, at most 8.
  int sparse_landmark_subs = 1;
  // Layers [0, N) attend densely under a sparse budget (Quest leaves the first two dense: their
  // attention is spread, where the selection finds little to skip); their pages hold no landmarks.
  int sparse_dense_layers = 0;

  bool landmark_basis() const { return sparse_budget > 0 && sparse_landmark_rank > 0; }
  // Whether decode steps of this layer attend to chosen pages only.
  bool sparse_layer(int layer) const { return sparse_budget > 0 && layer >= sparse_dense_layers; }
  bool page_coded_keys() const { return key == KeyMode::kInt4 || key == KeyMode::kInt2 || key == KeyMode::kSvdq; }
  // The schedule the page codec runs: the SVDq schedule, or uniform bits for int4/int2.
  kernels::Schedule CodecSchedule() const;
  // Layer scope codes one latent of width kv_heads * head_dim per layer (svdq only).
  bool layer_scope() const { return key == KeyMode::kSvdq && scope == BasisScope::kLayer; }
  // Per-sequence state (basis) makes pages of equal tokens differ between sequences.
  bool pages_shareable() const { return !(key == KeyMode::kSvdq && basis == BasisSource::kPrefill) && !landmark_basis(); }
  // "svdq(8,4,2,1,1,0,0,0; prefill basis)", "int4", ...: for logs and info calls.
  std::string KeyName() const;
  std::string ValueName() const;
};

// "bf16" | "fp8" | "int4" | "int2" | "svdq"; false on anything else.
bool ParseKeyMode(const std::string& s, KeyMode* out);
// "bf16" | "fp8" | "int8" | "int4".
bool ParseValueMode(const std::string& s, ValueMode* out);
// "prefill" | "calibrated".
bool ParseBasisSource(const std::string& s, BasisSource* out);
// "head" | "layer".
bool ParseBasisScope(const std::string& s, BasisScope* out);

// Channels per scale group of the per-token codecs (fp8 keys, fp8/int8/int4 values).
constexpr int kTokenGroup = 32;

// Byte accounting for one model shape. Per-token figures cover all layers and KV heads.
struct KvShape {
  int layers = 0, kv_heads = 0, head_dim = 0;
  int block_size = 16;
  int dtype_bytes = 2;  // the model's dtype (unquantized modes store in it)
  // Page-coded keys: the decode attention reads the basis's fp16 copy of the retained columns
  // (the CUDA warp-stream kernel: PagedKvStorage::AttentionReadsHalfBasis), not the fp32 basis.
  bool half_basis_read = false;
};

// The page codec's units per layer and latent width: (kv_heads, head_dim) for head scope and
// the direct codecs, (1, kv_heads * head_dim) for layer scope.
struct CodecShape {
  int units = 0, width = 0;
};
CodecShape CodecShapeOf(const KvModes& m, const KvShape& s);

struct KvBytes {
  int64_t key_per_block = 0;    // one block of every layer: codes + scales (+ unquantized data)
  int64_t value_per_block = 0;
  int64_t per_lane = 0;         // per running sequence: tail page (page-coded keys) and basis
  int64_t shared = 0;           // per server: a calibrated or identity basis
  double key_per_token() const;
  double value_per_token() const;
  int block_size = 16;
};

// Fails (returns a message) when the mode does not fit the shape, e.g. a head_dim that is not
// a multiple of 32 for the grouped codecs.
std::string ComputeKvBytes(const KvModes& m, const KvShape& s, KvBytes* out);
// Bytes per token of keys (or values) at full precision (bf16), all layers and heads.
int64_t Bf16BytesPerToken(const KvShape& s);

// Sparse attention's page counts: the recent window is the last ceil(128 / P) full pages (what
// the selection does not score), and `keep` pages besides the sink are chosen, so that sink,
// kept and recent pages hold the budget. Fails (returns a message) where the budget cannot hold
// the sink, one chosen page and the recent window, or the mode has no sparse kernel (page-coded
// keys in head scope only), or the landmark rank is out of range, or no layer is left sparse.
struct SparsePlan {
  int recent_pages = 0, keep = 0;
  int landmark_width = 0;  // int8 coordinates a landmark: the landmark rank, or the head dim
  int landmark_subs = 1;   // landmarks a page
  int sparse_layers = 0;   // the layers that select pages (the rest attend densely)
  int64_t page_landmark_bytes() const { return static_cast<int64_t>(landmark_subs) * landmark_width + 2; }  // int8 + an fp16 scale
};
std::string PlanSparse(const KvModes& m, const KvShape& s, SparsePlan* out);

// Key bytes one decode step reads for a sequence of `len` tokens, every layer and KV head:
// stored keys (pages, scales, the bf16 tail), the basis columns attention uses, and, with
// sparse attention, the scored pages' landmarks and the landmark basis (pages left out are not
// read). And the bf16
// bytes of the same keys (the attention key compression is their ratio).
int64_t DecodeKeyBytesRead(const KvModes& m, const KvShape& s, int64_t len);
int64_t Bf16KeyBytes(const KvShape& s, int64_t len);

}  // namespace svdq::kv
