#include "models/hf_config.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "models/gguf.h"  // FormatError

namespace svdq::models {
namespace {

using nlohmann::json;

int GetInt(const json& j, const std::string& path, const char* key, int fallback, bool required) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) throw FormatError(path + ": missing " + key);
    return fallback;
  }
  if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0 || j[key].get<int64_t>() > (1LL << 31) - 1)
    throw FormatError(path + ": " + key + " must be a positive integer");
  return j[key].get<int>();
}

double GetNumber(const json& j, const std::string& path, const char* key, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) throw FormatError(path + ": " + key + " must be a number");
  return j[key].get<double>();
}

// `key` as a bool; absent or null gives the fallback (transformers writes nulls for unset fields).
bool GetBool(const json& j, const std::string& path, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) throw FormatError(path + ": " + key + " must be true or false");
  return j[key].get<bool>();
}

std::string GetString(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}

}  // namespace

ModelConfig ReadHfConfig(const std::string& dir, std::string* note) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path);
  if (!in) throw FormatError(path + ": cannot open (a Hugging Face model directory needs config.json)");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw FormatError(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw FormatError(path + ": not a JSON object");
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    arch = j["architectures"][0].get<std::string>();
  ModelConfig c;
  if (arch == "LlamaForCausalLM") c.architecture = "llama";
  else if (arch == "MistralForCausalLM") c.architecture = "mistral";
  else if (arch == "Qwen2ForCausalLM") c.architecture = "qwen2";
  else
    throw FormatError(path + ": architecture '" + (arch.empty() ? std::string("(none)") : arch) +
                      "' is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");
  c.name = GetString(j, "_name_or_path");
  if (c.name.empty()) c.name = dir.substr(dir.find_last_of('/') + 1);
  c.n_layers = GetInt(j, path, "num_hidden_layers", 0, true);
  c.hidden = GetInt(j, path, "hidden_size", 0, true);
  c.n_heads = GetInt(j, path, "num_attention_heads", 0, true);
  c.n_kv_heads = GetInt(j, path, "num_key_value_heads", c.n_heads, false);
  c.ffn_hidden = GetInt(j, path, "intermediate_size", 0, true);
  c.vocab_size = GetInt(j, path, "vocab_size", 0, true);
  c.max_context = GetInt(j, path, "max_position_embeddings", 2048, false);
  if (c.hidden % c.n_heads != 0 && !(j.contains("head_dim") && !j["head_dim"].is_null()))
    throw FormatError(path + ": hidden_size " + std::to_string(c.hidden) + " is not a multiple of num_attention_heads");
  c.head_dim = GetInt(j, path, "head_dim", c.hidden / c.n_heads, false);
  if (c.n_heads % c.n_kv_heads != 0)
    throw FormatError(path + ": num_attention_heads " + std::to_string(c.n_heads) +
                      " is not a multiple of num_key_value_heads " + std::to_string(c.n_kv_heads));
  if (c.head_dim % 2 != 0) throw FormatError(path + ": head_dim must be even for RoPE");
  // The RoPE tables are built for the whole context at load ([context, head_dim] fp32 twice).
  if (c.max_context > (1 << 20))
    throw FormatError(path + ": max_position_embeddings " + std::to_string(c.max_context) +
                      " is above the supported 1048576");
  c.rms_eps = GetNumber(j, path, "rms_norm_eps", 1e-6);
  if (!(c.rms_eps > 0)) throw FormatError(path + ": rms_norm_eps must be positive");
  c.tied_embeddings = GetBool(j, path, "tie_word_embeddings", false);
  // Recent transformers nest rope_theta / rope_scaling under rope_parameters.
  const json& rope = j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"] : j;
  c.rope_theta = GetNumber(rope, path, "rope_theta", GetNumber(j, path, "rope_theta", 10000.0));
  if (!(c.rope_theta > 0)) throw FormatError(path + ": rope_theta must be positive");
  const json* scaling = nullptr;
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) scaling = &j["rope_scaling"];
  else if (&rope != &j) scaling = &rope;
  if (scaling) {
    std::string type = GetString(*scaling, "rope_type");
    if (type.empty()) type = GetString(*scaling, "type");
    if (type.empty()) type = "default";
    if (type == "llama3") {
      c.rope_scaling.type = "llama3";
      c.rope_scaling.factor = GetNumber(*scaling, path, "factor", 8.0);
      c.rope_scaling.low_freq_factor = GetNumber(*scaling, path, "low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = GetNumber(*scaling, path, "high_freq_factor", 4.0);
      c.rope_scaling.original_max_position = GetInt(*scaling, path, "original_max_position_embeddings", 8192, false);
      if (c.rope_scaling.factor <= 0 || c.rope_scaling.high_freq_factor <= c.rope_scaling.low_freq_factor)
        throw FormatError(path + ": llama3 rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor");
    } else if (type != "default") {
      throw FormatError(path + ": rope scaling type '" + type + "' is not supported (llama3)");
    }
  }
  if (c.architecture == "qwen2") {
    c.qkv_bias = true;
  } else if (GetBool(j, path, "attention_bias", false)) {
    throw FormatError(path + ": attention_bias is not supported for " + arch);
  }
  if (GetBool(j, path, "mlp_bias", false)) throw FormatError(path + ": mlp_bias is not supported");
  if (j.contains("hidden_act") && !j["hidden_act"].is_null() && j["hidden_act"] != "silu")
    throw FormatError(path + ": hidden_act " + j["hidden_act"].dump() + " is not supported (silu)");
  // Sliding-window attention: within the window it is full attention, so the context is
  // capped to the window rather than computing something else past it.
  const bool sliding = c.architecture == "mistral" || GetBool(j, path, "use_sliding_window", false);
  if (sliding && j.contains("sliding_window") && j["sliding_window"].is_number_integer()) {
    const int64_t window = j["sliding_window"].get<int64_t>();
    if (window > 0 && window < c.max_context) {
      if (note)
        *note = "sliding window of " + std::to_string(window) + " tokens: context capped from " +
                std::to_string(c.max_context) + " to " + std::to_string(window);
      c.max_context = static_cast<int>(window);
    }
  }
  return c;
}

}  // namespace svdq::models
