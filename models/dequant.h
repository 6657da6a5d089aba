// Dequantizers for GGML block formats: bytes of one tensor -> fp32 values, CPU only.
#pragma once

#include <cstddef>
#include <cstdint>

#include "models/gguf.h"

namespace svdq::models {

struct GgmlTypeTraits {
  int64_t block_elems;  // elements per block (1 for plain float types)
  size_t block_bytes;   // bytes per block
  bool supported;       // a dequantizer exists
};
GgmlTypeTraits TypeTraits(GgmlType t);  // throws FormatError on an unknown type

// Bytes needed for n elements of type t; throws FormatError if n is not a whole number of blocks.
size_t RowBytes(GgmlType t, int64_t n);

// Dequantizes n elements (a multiple of the block size) from src into dst.
// Throws FormatError for unsupported types.
void Dequantize(GgmlType t, const uint8_t* src, float* dst, int64_t n);

float HalfToFloat(uint16_t h);
float BF16ToFloat(uint16_t h);

}  // namespace svdq::models
