// Where a model comes from, in one place: a GGUF file, a Hugging Face directory (config.json +
// *.safetensors), or "synthetic:NAME" (a real model's shape with random weights, for measuring
// throughput and memory on hosts without weights). The server, the tools and the benchmarks
// load through here.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "models/llama.h"
#include "models/tokenizer.h"

namespace svdq::models {

enum class SourceKind { kGguf, kHuggingFace, kSynthetic };
SourceKind SourceKindOf(const std::string& path);

// The named synthetic shapes: "llama-3-8b", "llama-3.2-1b", "mistral-7b", "qwen2.5-7b",
// "smollm2-135m", "tiny". False for an unknown name.
bool SyntheticConfig(const std::string& name, ModelConfig* out);
std::string SyntheticNames();  // "llama-3-8b, ..." for messages

// Loads the model's weights onto `device` in `dtype`. Throws FormatError naming the file and
// the tensor (or the unknown synthetic name). *note receives what the loader changed (e.g. a
// context capped to a sliding window); may be null.
std::unique_ptr<LlamaModel> LoadModel(const std::string& path, at::Device device, at::ScalarType dtype,
                                      std::string* note = nullptr);

// The tokenizer that goes with the model at `path`: GGUF metadata, the directory's
// tokenizer.json (+ tokenizer_config.json, generation_config.json), or a byte-level tokenizer of
// the model's vocabulary size for a synthetic model. Throws FormatError.
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& path, const ModelConfig& config);
const char* SourceKindName(SourceKind k);  // "gguf", "huggingface", "synthetic"

}  // namespace svdq::models
