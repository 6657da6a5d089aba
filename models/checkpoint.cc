#include "models/checkpoint.h"

#include <sys/stat.h>

#include "models/gguf.h"
#include "models/hf_config.h"
#include "models/safetensors.h"

namespace svdq::models {
namespace {

constexpr const char* kSyntheticPrefix = "synthetic:";
constexpr uint64_t kSyntheticSeed = 20260101;

struct Shape {
  const char* name;
  const char* arch;
  int layers, hidden, heads, kv_heads, ffn, vocab, context;
  double theta;
  bool tied, qkv_bias;
};

// Shapes of the published configs (config.json of each model), context capped at 8192, but for
// llama-3.1-8b: Llama-3-8B's shape at Llama 3.1's 128k context (its RoPE scaling is not applied:
// the weights are random anyway), for long-context serving benchmarks.
const Shape kShapes[] = {
    {"llama-3-8b", "llama", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0, false, false},
    {"llama-3.1-8b", "llama", 32, 4096, 32, 8, 14336, 128256, 131072, 500000.0, false, false},
    {"llama-3.2-1b", "llama", 16, 2048, 32, 8, 8192, 128256, 8192, 500000.0, true, false},
    {"mistral-7b", "mistral", 32, 4096, 32, 8, 14336, 32768, 8192, 1000000.0, false, false},
    {"qwen2.5-7b", "qwen2", 28, 3584, 28, 4, 18944, 152064, 8192, 1000000.0, false, true},
    {"smollm2-135m", "llama", 30, 576, 9, 3, 1536, 49152, 8192, 100000.0, true, false},
    {"tiny", "llama", 2, 128, 4, 2, 256, 512, 1024, 10000.0, false, false},
};

bool IsDirectory(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

SourceKind SourceKindOf(const std::string& path) {
  if (path.rfind(kSyntheticPrefix, 0) == 0) return SourceKind::kSynthetic;
  return IsDirectory(path) ? SourceKind::kHuggingFace : SourceKind::kGguf;
}

bool SyntheticConfig(const std::string& name, ModelConfig* out) {
  for (const Shape& s : kShapes) {
    if (name != s.name) continue;
    ModelConfig c;
    c.architecture = s.arch;
    c.name = std::string(kSyntheticPrefix) + s.name + " (random weights)";
    c.n_layers = s.layers;
    c.hidden = s.hidden;
    c.n_heads = s.heads;
    c.n_kv_heads = s.kv_heads;
    c.head_dim = s.hidden / s.heads;
    c.ffn_hidden = s.ffn;
    c.vocab_size = s.vocab;
    c.max_context = s.context;
    c.rope_theta = s.theta;
    c.rms_eps = 1e-5;
    c.tied_embeddings = s.tied;
    c.qkv_bias = s.qkv_bias;
    c.synthetic = true;
    *out = c;
    return true;
  }
  return false;
}

std::string SyntheticNames() {
  std::string out;
  for (const Shape& s : kShapes) out += (out.empty() ? "" : ", ") + std::string(s.name);
  return out;
}

std::unique_ptr<LlamaModel> LoadModel(const std::string& path, at::Device device, at::ScalarType dtype,
                                      std::string* note) {
  switch (SourceKindOf(path)) {
    case SourceKind::kSynthetic: {
      const std::string name = path.substr(std::string(kSyntheticPrefix).size());
      ModelConfig c;
      if (!SyntheticConfig(name, &c))
        throw FormatError("unknown synthetic model '" + name + "' (" + SyntheticNames() + ")");
      return LlamaModel::Synthetic(c, kSyntheticSeed, device, dtype);
    }
    case SourceKind::kHuggingFace: {
      ModelConfig c = ReadHfConfig(path, note);
      auto ckpt = SafetensorsCheckpoint::Open(path);
      return LlamaModel::LoadHuggingFace(c, *ckpt, device, dtype);
    }
    case SourceKind::kGguf: break;
  }
  auto f = GgufFile::Open(path);
  return LlamaModel::LoadGguf(*f, device, dtype);
}

std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& path, const ModelConfig& config) {
  switch (SourceKindOf(path)) {
    case SourceKind::kSynthetic: return Tokenizer::ByteLevel(config.vocab_size);
    case SourceKind::kHuggingFace: return Tokenizer::FromHuggingFace(path);
    case SourceKind::kGguf: break;
  }
  return Tokenizer::FromGguf(*GgufFile::Open(path));
}

const char* SourceKindName(SourceKind k) {
  switch (k) {
    case SourceKind::kGguf: return "gguf";
    case SourceKind::kHuggingFace: return "huggingface";
    case SourceKind::kSynthetic: return "synthetic";
  }
  return "?";
}

}  // namespace svdq::models
