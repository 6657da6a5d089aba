// Fused elementwise kernels of the model's forward (bf16 on CUDA), each replacing a chain of
// five to eight ATen launches with one, with the same roundings as the ATen chain it replaces
// (models/llama.cc keeps that chain as the reference and the CPU path):
//   AddRmsNorm: x += residual (rounded to bf16), out = bf16(w * bf16(x * rsqrt(mean(x^2) + eps)));
//   RopeQk:     rotate-half RoPE of the q and k columns of a fused q|k|v projection, per row at
//               its own position (x * cos + rotate_half(x) * sin in fp32, rounded once);
//   SiluMul:    out = bf16(bf16(silu(gate)) * up) over the two halves of a fused gate|up row.
// Tests: tests/unit/fused_ops_test.cc compares each with the ATen chain on the GPU.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/status.h"

namespace svdq::kernels {

// x, residual, out: bf16 [rows, hidden] contiguous; residual may be null (no add, x untouched);
// w: fp32 [hidden]. out may not alias x.
Status AddRmsNorm(uint16_t* x, const uint16_t* residual, const float* w, float eps, int rows, int hidden,
                  uint16_t* out, cudaStream_t stream);

// qkv: bf16 [rows, row_stride], q in columns [0, heads * D), k in [heads * D, (heads + kv_heads) * D);
// pos: int64 [rows]; cos, sin: fp32 [max_pos, D] (halves duplicated). Writes q_out [rows, heads, D]
// and k_out [rows, kv_heads, D], bf16 contiguous. D even. kv_heads 0 (k_out null) rotates rows
// of `heads` heads alone (the SVDq tail pages).
Status RopeQk(const uint16_t* qkv, int64_t row_stride, int rows, int heads, int kv_heads, int head_dim,
              const int64_t* pos, const float* cos, const float* sin, uint16_t* q_out, uint16_t* k_out,
              cudaStream_t stream);

// gate_up: bf16 [rows, 2 * width] (gate, then up); out: bf16 [rows, width].
Status SiluMul(const uint16_t* gate_up, int rows, int width, uint16_t* out, cudaStream_t stream);

}  // namespace svdq::kernels
