// fp16 / bf16 <-> fp32 (and fp8 e4m3 -> fp32) conversions usable from host code (reference ops, tests) with
// the same rounding as the device intrinsics (__float2half_rn, __float2bfloat16_rn).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace svdq::kernels {

inline float HalfBitsToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      exp = 113;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, with overflow to infinity and gradual underflow.
inline uint16_t FloatToHalfBits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7FFFFFFFu;
  if (absx >= 0x7F800000u) return static_cast<uint16_t>(sign | (absx > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (absx >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds past 65504
  if (absx < 0x38800000u) {                                                // subnormal half
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);            // below half of the smallest
    uint32_t exp = absx >> 23, mant = (absx & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - exp;  // 14 + (113 - exp) ... bits to drop to reach 10-bit subnormal
    uint32_t kept = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (kept & 1))) ++kept;
    return static_cast<uint16_t>(sign | kept);
  }
  uint32_t exp = (absx >> 23) - 112, mant = absx & 0x7FFFFFu;
  uint32_t h = (exp << 10) | (mant >> 13), rem = mant & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline float RoundToHalf(float f) { return HalfBitsToFloat(FloatToHalfBits(f)); }

inline float Bf16BitsToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToBf16Bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
  uint32_t rounding = 0x7FFFu + ((x >> 16) & 1);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

// fp8 e4m3 (the "fn" variant: no infinities, 0x7f / 0xff are NaN) to fp32, exactly.
inline float Fp8E4m3BitsToFloat(uint8_t x) {
  const int exp = (x >> 3) & 0xF, mant = x & 7;
  if (exp == 15 && mant == 7) return NAN;
  const float v = exp == 0 ? std::ldexp(static_cast<float>(mant), -9) : std::ldexp(1.f + mant / 8.f, exp - 7);
  return (x & 0x80) ? -v : v;
}

}  // namespace svdq::kernels
