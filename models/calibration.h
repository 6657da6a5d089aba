// Calibration of SVDq bases: run the model over a text, capture the pre-RoPE keys of
// every layer, and compute one basis per layer and KV head ("head" scope) or per layer
// ("layer" scope, KV heads concatenated). Used by tools/svdq_calibrate and the study tool.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "models/basis_file.h"

namespace svdq::models {

class LlamaModel;
class Tokenizer;

// Tokenizes the file at `text_path`, keeps at most `max_tokens` tokens (a multiple of
// `multiple`), runs one forward and returns the captured pre-RoPE keys per layer,
// [T, kv_heads, head_dim] fp32 CPU. Throws std::runtime_error on I/O problems.
std::vector<at::Tensor> CaptureKeys(LlamaModel& model, const Tokenizer& tok, const std::string& text_path,
                                    int max_tokens, int multiple = 1);

// Bases of captured keys; scope "head" or "layer". Throws std::runtime_error on failure.
BasisSet ComputeBases(const std::vector<at::Tensor>& keys, const std::string& scope, bool center);

}  // namespace svdq::models
