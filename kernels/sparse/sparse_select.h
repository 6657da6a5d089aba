// Chunk selection for sparse decode attention (issue 17). Per sequence and KV head, the context
// before the recent window is cut into chunks (a few pages each), each with compact metadata; a
// decode step scores every chunk by the largest score over the KV head's query heads, keeps
// chunk 0 (the attention sink) and the `keep` best of the others, and writes their indices in
// ascending order for the attention kernel to read. Two scores:
//   kLandmark  the chunk's mean post-RoPE key as R int8 coordinates times a per-chunk scale in a
//              per-KV-head basis: q . (scale * basis @ coords). Bytes: (S R + 2) per chunk: with
//              S sub-chunk landmarks (S > 1), the chunk holds the means of its S equal slices
//              (S x R coordinates under one scale) and scores as the best of them: a few needle
//              tokens weigh S times more in a slice's mean than in the chunk's. The
//              query's coordinates qr = basis^T q are quantized too (int8, a scale per query
//              head), so that a score is an exact integer dot product (dp4a on the device) times
//              the two scales: qscale * scale * sum_r q8_r coords_r.
//   kBound     Quest's bound: per-channel min and max of the chunk's post-RoPE keys in int8 (rounded
//              outward) times a per-chunk scale: scale * sum_d max(q_d lo_d, q_d hi_d) >= q . k for
//              every key of the chunk (where the stored scale was rounded up to fp16 before the
//              codes were made with it). Bytes: (2 D + 2) per chunk. The query is quantized as
//              below, so the bound holds for that query (q8 * qscale, within half a step of q),
//              and the sum is exact in integers: q8+ . hi + q8- . lo (q8+ = max(q8, 0),
//              q8- = min(q8, 0); equal to the max form where lo <= hi), two dp4a streams.
// bench/sparse_selection_study.py (Qwen2.5-Coder-0.5B, 4k tokens): landmarks keep as much attention
// mass on prose as the bound at a quarter of the bytes, but lose passkeys that the bound finds (a
// few needle tokens vanish in a chunk's mean): the bound is the one that retrieves.
//
// Exactness: the reference and the kernel compute every score with the same operations (the
// query's quantization, an exact integer sum, then the same two fp32 products), so they choose
// the same chunks bit for bit. Ranking is by score (as an orderable 32-bit key: -0 below +0, NaN
// lowest), ties to the lower chunk index. A NaN query coordinate quantizes to 0; an infinite one
// makes the row's scale infinite and its scores NaN (ranked lowest).
#pragma once

#include <cstdint>

#include "kernels/common/half.h"
#include "kernels/common/status.h"

#if __has_include(<cuda_runtime_api.h>)
#include <cuda_runtime_api.h>
#define SVDQ_SPARSE_HAVE_CUDA 1
#endif
#ifdef __CUDACC__
#include <cuda_fp16.h>
#endif

namespace svdq::kernels {

// The largest chunk count per sequence the kernel takes (scores live in shared memory).
constexpr int kSparseMaxChunks = 8192;

enum class SparseScore { kLandmark, kBound };

struct SparseSelectParams {
  SparseScore score = SparseScore::kLandmark;
  const float* q = nullptr;        // [B, H, D] the step's queries, post-RoPE
  // kLandmark: [KV, D, R], landmark = scale * basis @ coords; null: the identity (R = D, the
  // coordinates are the landmark itself). kBound: unused.
  const float* basis = nullptr;
  // Optional, with a basis: one basis per sequence (the serving path's per-lane landmark bases):
  // sequence b's is row basis_row[b] of basis [rows, KV, D, R]. Null: every sequence shares basis.
  const int64_t* basis_row = nullptr;  // [B]
  const int8_t* coords = nullptr;  // [B, KV, max_chunks, W]: W = S R (kLandmark) or 2 D (lo then hi, kBound)
  const uint16_t* scales = nullptr;  // [B, KV, max_chunks] fp16 (bits): the chunks' scales
  // Optional, the serving layout: chunk c of sequence b is row table[b * max_chunks + c] of
  // coords [rows, KV, W] and scales [rows, KV] (rows: the KV pool's pages, whose metadata is
  // written with the page). Null: the dense layout above.
  const int32_t* table = nullptr;  // [B, max_chunks]
  const int32_t* chunks = nullptr; // [B] chunks to choose from (those before the recent window)
  int32_t* selected = nullptr;     // [B, KV, keep + 1] out: chunk ids ascending, then -1
  int32_t* count = nullptr;        // [B, KV] out: ids written (min(chunks, keep + 1))
  int B = 0, H = 0, KV = 0, D = 0, R = 0, max_chunks = 0, keep = 0;
  int S = 1;  // kLandmark: landmarks a chunk (sub-chunk means), 1 .. kSparseMaxSubs; kBound: 1
};

// The most sub-chunk landmarks a chunk holds.
constexpr int kSparseMaxSubs = 8;

// Checks shapes and limits (H a multiple of KV, R <= 128, S R <= 256, H / KV <= 16, D <= 256, chunks <= max_chunks
// <= kSparseMaxChunks is checked per sequence by the reference only).
Status CheckSparseSelect(const SparseSelectParams& p);

// CPU reference (host pointers).
Status SparseSelectRef(const SparseSelectParams& p);

// One query row's coordinates qr [R] as int8: returns qscale = max |qr| / 127 (NaN skipped) and
// writes q8 = rint(qr / qscale), clamped to +-127, 0 where that is NaN (all zero for a zero row). The kernel computes the
// same IEEE operations (a max, a division, round to nearest even).
float SparseQuantizeQuery(const float* qr, int R, int8_t* q8);
// A page's landmark values x [n] as int8 under one fp16 scale (returns its bits): s = max |x| / 127
// (NaN skipped), capped at 65504 and rounded to fp16; q8 = rint(x / s), clamped to +-127, 0 where
// that is NaN (all zero where s is 0). The landmark kernel computes the same.
uint16_t SparseQuantizeLandmark(const float* x, int n, int8_t* q8);
// One chunk's score for quantized query rows q8 [G, R] with scales qscale [G] and the chunk's S
// landmarks coords [S, R]: max over rows h and landmarks s of
// (float(sum_r q8[h][r] * coords[s][r]) * qscale[h]) * scale. The integer sum is exact
// (|sum| < 2^24), so any order gives it; the two products are the kernel's.
float SparseChunkScore(const int8_t* q8, const float* qscale, int G, int R, const int8_t* coords, float scale,
                       int S = 1);
// The bound's: quantized query rows q8 [G, D] with scales qscale [G], coords [2, D] (lo, then hi):
// max over rows of (float(sum_d max(q8_d, 0) hi_d + min(q8_d, 0) lo_d) * qscale) * scale.
float SparseBoundScore(const int8_t* q8, const float* qscale, int G, int D, const int8_t* coords, float scale);
// A chunk's stored fp16 scale as the scores use it.
#ifdef __CUDACC__
__host__ __device__
#endif
inline float SparseScaleValue(uint16_t h) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(h));
#else
  return HalfBitsToFloat(h);
#endif
}
// Coordinates per chunk: S R or 2 D.
inline int SparseChunkWidth(const SparseSelectParams& p) { return p.score == SparseScore::kBound ? 2 * p.D : p.S * p.R; }
// Row of chunk c (sequence b, KV head g) in coords (times the width) and scales.
#ifdef __CUDACC__
__host__ __device__
#endif
inline int64_t SparseChunkRow(const SparseSelectParams& p, int b, int g, int c) {
  if (p.table) return static_cast<int64_t>(p.table[static_cast<int64_t>(b) * p.max_chunks + c]) * p.KV + g;
  return (static_cast<int64_t>(b) * p.KV + g) * p.max_chunks + c;
}
// The basis [D, R] of sequence b, KV head g (landmarks with a basis), or null.
#ifdef __CUDACC__
__host__ __device__
#endif
inline const float* SparseBasisOf(const SparseSelectParams& p, int b, int g) {
  if (!p.basis || p.score == SparseScore::kBound) return nullptr;
  const int64_t row = p.basis_row ? p.basis_row[b] * p.KV + g : g;
  return p.basis + row * p.D * p.R;
}

// Page landmarks, the kLandmark metadata of the serving path (a chunk is a page): each decode
// row appends one post-RoPE key at `offset` of the page in `block`; the running sums of the
// page's S slices (P / S tokens each) are kept in its lane's accumulator, and the key that
// completes the page (offset == P - 1) writes the page's S landmarks: x = each slice's mean
// (R = D, no basis) or its R coordinates in the lane's basis (x_r = sum_d basis[d][r] mean_d,
// added in d order), one scale = max |x| / 127 over all S R values, capped at 65504 and rounded to
// fp16, and coords = rint(x / scale), clamped to +-127 (all zero for a zero x). A slice's
// accumulator restarts at its first offset.
struct SparseLandmarkParams {
  int rows = 0, KV = 0, D = 0, P = 0;
  int R = 0;                        // coordinates a landmark with a basis (0 or D without one)
  int S = 1;                        // landmarks a page (slices of P / S tokens), S R <= 256
  const float* basis = nullptr;     // [lanes, KV, D, R] fp32, the lanes' landmark bases; null: the identity
  const uint16_t* k = nullptr;      // bf16 [rows, k_stride]: KV x D post-RoPE keys
  int64_t k_stride = 0;
  const int64_t* block = nullptr;   // [rows]
  const int64_t* offset = nullptr;  // [rows]
  const int64_t* lanes = nullptr;   // [rows]
  float* acc = nullptr;             // [lanes, KV, S, D]
  int8_t* coords = nullptr;         // [blocks, KV, S, R]
  uint16_t* scales = nullptr;       // [blocks, KV] fp16 (bits)
};
// Checks shapes, pointers, R (0 or D without a basis; 1 <= R <= min(D, 128) with one) and S (divides
// P, S x the landmark width at most 256).
Status CheckSparseLandmarks(const SparseLandmarkParams& p);
// Coordinates a landmark: R with a basis, D without.
#ifdef __CUDACC__
__host__ __device__
#endif
inline int SparseLandmarkWidth(const SparseLandmarkParams& p) { return p.basis ? p.R : p.D; }
Status SparseLandmarkAppendRef(const SparseLandmarkParams& p);
// A page's S landmarks from its slices' sums of `count` keys each, sum [S, D], the operations the
// kernel uses: R coordinates each in `basis` [D, R], or (null) the means themselves (R = D), coords
// [S, R] under one fp16 scale (its bits in *scale).
void QuantizeLandmark(const float* sum, int D, int count, int8_t* coords, uint16_t* scale, const float* basis = nullptr,
                      int R = 0, int S = 1);

#ifdef SVDQ_SPARSE_HAVE_CUDA
// The same on the device (device pointers): one block per sequence and KV head.
Status SparseSelect(const SparseSelectParams& p, cudaStream_t stream);
// One block per (row, KV head).
Status SparseLandmarkAppend(const SparseLandmarkParams& p, cudaStream_t stream);
#endif

}  // namespace svdq::kernels
