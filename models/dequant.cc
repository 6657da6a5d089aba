// GGML block dequantizers (the layouts of ggml's quant formats, written from their
// published block definitions). Verified against the `gguf` Python package in tests.
#include "models/dequant.h"

#include <cstring>
#include <string>

#include "kernels/common/half.h"

namespace svdq::models {
namespace {

constexpr int kQK = 32;    // elements per legacy block
constexpr int kQKK = 256;  // elements per K-quant super-block

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

void DequantQ4_0(const uint8_t* b, float* y) {
  float d = HalfToFloat(LoadU16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = ((qs[j] & 0xF) - 8) * d;
    y[j + 16] = ((qs[j] >> 4) - 8) * d;
  }
}

void DequantQ4_1(const uint8_t* b, float* y) {
  float d = HalfToFloat(LoadU16(b)), m = HalfToFloat(LoadU16(b + 2));
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = (qs[j] & 0xF) * d + m;
    y[j + 16] = (qs[j] >> 4) * d + m;
  }
}

void DequantQ5(const uint8_t* b, float* y, bool with_min) {
  float d = HalfToFloat(LoadU16(b));
  float m = with_min ? HalfToFloat(LoadU16(b + 2)) : 0.f;
  const uint8_t* p = b + (with_min ? 4 : 2);
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const uint8_t* qs = p + 4;
  int offset = with_min ? 0 : 16;
  for (int j = 0; j < 16; ++j) {
    int h0 = ((qh >> j) << 4) & 0x10;
    int h1 = (qh >> (j + 12)) & 0x10;
    y[j] = (((qs[j] & 0xF) | h0) - offset) * d + m;
    y[j + 16] = (((qs[j] >> 4) | h1) - offset) * d + m;
  }
}

void DequantQ8_0(const uint8_t* b, float* y) {
  float d = HalfToFloat(LoadU16(b));
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) y[j] = qs[j] * d;
}

// The 6-bit scale and min of sub-block j, packed in the 12 bytes of a Q4_K/Q5_K block.
void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void DequantQ4_K(const uint8_t* b, float* y) {
  float d = HalfToFloat(LoadU16(b)), dmin = HalfToFloat(LoadU16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  int is = 0;
  for (int j = 0; j < kQKK; j += 64) {
    uint8_t sc, mn;
    ScaleMinK4(is, scales, &sc, &mn);
    float d1 = d * sc, m1 = dmin * mn;
    ScaleMinK4(is + 1, scales, &sc, &mn);
    float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

void DequantQ5_K(const uint8_t* b, float* y) {
  float d = HalfToFloat(LoadU16(b)), dmin = HalfToFloat(LoadU16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < kQKK; j += 64) {
    uint8_t sc, mn;
    ScaleMinK4(is, scales, &sc, &mn);
    float d1 = d * sc, m1 = dmin * mn;
    ScaleMinK4(is + 1, scales, &sc, &mn);
    float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    ql += 32;
    is += 2;
    u1 <<= 2;
    u2 <<= 2;
  }
}

void DequantQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  float d = HalfToFloat(LoadU16(b + 208));
  for (int n = 0; n < kQKK; n += 128) {
    for (int l = 0; l < 32; ++l) {
      int is = l / 16;
      int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

}  // namespace

float HalfToFloat(uint16_t h) { return kernels::HalfBitsToFloat(h); }

float BF16ToFloat(uint16_t h) { return kernels::Bf16BitsToFloat(h); }

GgmlTypeTraits TypeTraits(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return {1, 4, true};
    case GgmlType::F16: return {1, 2, true};
    case GgmlType::BF16: return {1, 2, true};
    case GgmlType::Q4_0: return {kQK, 18, true};
    case GgmlType::Q4_1: return {kQK, 20, true};
    case GgmlType::Q5_0: return {kQK, 22, true};
    case GgmlType::Q5_1: return {kQK, 24, true};
    case GgmlType::Q8_0: return {kQK, 34, true};
    case GgmlType::Q8_1: return {kQK, 36, false};
    case GgmlType::Q2_K: return {kQKK, 84, false};
    case GgmlType::Q3_K: return {kQKK, 110, false};
    case GgmlType::Q4_K: return {kQKK, 144, true};
    case GgmlType::Q5_K: return {kQKK, 176, true};
    case GgmlType::Q6_K: return {kQKK, 210, true};
    case GgmlType::Q8_K: return {kQKK, 292, false};
  }
  throw FormatError("unknown GGML tensor type " + std::to_string(static_cast<uint32_t>(t)));
}

size_t RowBytes(GgmlType t, int64_t n) {
  GgmlTypeTraits tr = TypeTraits(t);
  if (n % tr.block_elems != 0)
    throw FormatError(std::string("row of ") + std::to_string(n) + " elements is not a whole number of " +
                      GgmlTypeName(t) + " blocks");
  return static_cast<size_t>(n / tr.block_elems) * tr.block_bytes;
}

void Dequantize(GgmlType t, const uint8_t* src, float* dst, int64_t n) {
  GgmlTypeTraits tr = TypeTraits(t);
  if (!tr.supported) throw FormatError(std::string("no dequantizer for tensor type ") + GgmlTypeName(t));
  if (n % tr.block_elems != 0) throw FormatError("element count is not a whole number of blocks");
  int64_t blocks = n / tr.block_elems;
  for (int64_t k = 0; k < blocks; ++k) {
    const uint8_t* b = src + k * tr.block_bytes;
    float* y = dst + k * tr.block_elems;
    switch (t) {
      case GgmlType::F32: std::memcpy(y, b, 4); break;
      case GgmlType::F16: *y = HalfToFloat(LoadU16(b)); break;
      case GgmlType::BF16: *y = BF16ToFloat(LoadU16(b)); break;
      case GgmlType::Q4_0: DequantQ4_0(b, y); break;
      case GgmlType::Q4_1: DequantQ4_1(b, y); break;
      case GgmlType::Q5_0: DequantQ5(b, y, false); break;
      case GgmlType::Q5_1: DequantQ5(b, y, true); break;
      case GgmlType::Q8_0: DequantQ8_0(b, y); break;
      case GgmlType::Q4_K: DequantQ4_K(b, y); break;
      case GgmlType::Q5_K: DequantQ5_K(b, y); break;
      case GgmlType::Q6_K: DequantQ6_K(b, y); break;
      default: throw FormatError(std::string("no dequantizer for tensor type ") + GgmlTypeName(t));
    }
  }
}

}  // namespace svdq::models
