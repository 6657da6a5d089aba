// The shape of a Llama-family model, read from checkpoint metadata. No torch here, so
// the API layer can describe a model without pulling in tensor headers.
#pragma once

#include <cstdint>
#include <string>

namespace svdq::models {

struct ModelConfig {
  std::string architecture;  // e.g. "llama"
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
};

}  // namespace svdq::models
