// The shape of a Llama-family model, read from checkpoint metadata (GGUF or a Hugging Face
// config.json) or from a named synthetic shape. No torch here, so the API layer can describe a
// model without pulling in tensor headers.
#pragma once

#include <cstdint>
#include <string>

namespace svdq::models {

// RoPE frequency scaling; only Llama 3's ("llama3") is implemented, the others are refused.
struct RopeScaling {
  std::string type;  // "" (none) or "llama3"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int original_max_position = 8192;
};

struct ModelConfig {
  std::string architecture;  // e.g. "llama", "mistral", "qwen2"
  std::string name;
  int n_layers = 0;
  int hidden = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int ffn_hidden = 0;
  int vocab_size = 0;
  int max_context = 0;
  double rope_theta = 10000.0;
  double rms_eps = 1e-5;
  bool tied_embeddings = false;
  bool qkv_bias = false;  // Qwen2: biases on the q, k and v projections
  RopeScaling rope_scaling;
  bool synthetic = false;  // random weights (--model synthetic:NAME), never a real model
};

}  // namespace svdq::models
