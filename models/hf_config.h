// Hugging Face config.json -> ModelConfig, for the architectures the runtime implements:
// LlamaForCausalLM (Llama 2, 3, 3.1, 3.2, SmolLM2; llama3 RoPE scaling), MistralForCausalLM
// and Qwen2ForCausalLM (q/k/v biases). Anything else is refused with a message naming it.
#pragma once

#include <string>

#include "models/model_config.h"

namespace svdq::models {

// Reads dir/config.json. Throws FormatError naming the file and the field on anything missing,
// inconsistent or unsupported (an architecture, a RoPE scaling type, a sliding window shorter
// than the context, which is then capped to the window, is reported by *note).
ModelConfig ReadHfConfig(const std::string& dir, std::string* note = nullptr);

}  // namespace svdq::models
