// Per-token page formats of the KV cache (server/kv/kv_modes.h), as the attention and write
// kernels see them. Plain C++: host code and nvcc both include it.
//
// A page of one KV head holds P token rows. kBf16 rows are D bf16 values. Quantized rows are
// D codes (fp8 e4m3 or int8, one byte each; int4 two per byte, channel 2i in the low nibble as
// code + 8) beside a separate scale array of D / 32 bf16 per row: value = bf16(code * scale),
// the rounding TokenStore::Read does (server/kv/paged_storage.cc).
#pragma once

namespace svdq::kernels {

enum class KvFormat : int { kBf16 = 0, kFp8 = 1, kInt8 = 2, kInt4 = 3 };

constexpr int kKvScaleGroup = 32;  // channels per bf16 scale

// Bytes of one row's codes (no scales).
constexpr int KvRowBytes(KvFormat f, int head_dim) {
  return f == KvFormat::kBf16 ? 2 * head_dim : f == KvFormat::kInt4 ? head_dim / 2 : head_dim;
}

// Largest code magnitude of a quantized format.
constexpr float KvFormatMax(KvFormat f) {
  return f == KvFormat::kFp8 ? 448.f : f == KvFormat::kInt8 ? 127.f : f == KvFormat::kInt4 ? 7.f : 0.f;
}

}  // namespace svdq::kernels
