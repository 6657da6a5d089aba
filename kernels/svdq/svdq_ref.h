// CPU reference of the SVDq key codec: basis, encode, decode, decode attention. Simple
// loops in fp32/fp64; the oracle the CUDA kernels are tested against, and the codec the
// CPU serving path and the study tool use.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/common/status.h"
#include "kernels/svdq/svdq_params.h"

namespace svdq::kernels {

struct SvdqBasis {
  int width = 0;
  std::vector<float> mean;              // [width]; zeros when not centred
  std::vector<float> vectors;           // [width, width] row-major: column j is basis vector j
  std::vector<double> singular_values;  // [width], descending
};

// Basis of `tokens` keys [tokens, width] (row-major): eigenvectors of the (centred) Gram
// matrix by descending eigenvalue, each with its largest component positive, so the
// result is deterministic. Cyclic Jacobi in fp64. Fails on non-finite keys.
Status ComputeBasisRef(const float* keys, int64_t tokens, int width, bool center, SvdqBasis* out);

// Code i of a group's bit stream (see svdq_params.h).
uint32_t ReadCode(const uint8_t* group, int64_t index, int bits);
void WriteCode(uint8_t* group, int64_t index, int bits, uint32_t code);

// Rotate-half RoPE of one vector in place; cos/sin rows hold `width` entries (halves duplicated).
void ApplyRopeRef(float* x, int width, const float* cos_row, const float* sin_row);

// SymEigDescending on the host: cyclic Jacobi in fp64 (any n), the same ordering and signs.
Status SymEigDescendingRef(const SymEigParams& p);
Status SvdqEncodeRef(const SvdqEncodeParams& p);
Status SvdqDecodeRef(const SvdqDecodeParams& p);
// The latent coordinates of p's pages, z [num_pages, kv_heads, P, width] (dropped channels 0):
// the first half of SvdqDecodeRef, for a host decode that rebuilds keys with a matrix product.
Status SvdqDequantLatentRef(const SvdqDecodeParams& p, float* z);
Status SvdqAttentionRef(const SvdqAttentionParams& p);
// SvdqAttentionParams::basis_half from `rows` bases [rows, width, width] fp32: out [rows, width,
// l.retained] holds each row's retained columns in channel order, rounded to the nearest fp16.
void PackAttentionBasisHalf(const SvdqLayout& l, const float* basis, int64_t rows, uint16_t* out);

// Checks the shape fields that every implementation relies on; messages name the field.
Status ValidateAttention(const SvdqAttentionParams& p);

}  // namespace svdq::kernels
