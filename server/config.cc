#include "server/config.h"

#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>
#include <vector>

#include "kernels/svdq/schedule.h"

namespace svdq::server {
namespace {

struct Flag {
  const char* name;
  const char* help;
  std::function<bool(const std::string&)> set;
};

bool ParseBytes(const std::string& v, int64_t* out) {
  // A byte count with an optional K, M or G suffix (powers of 1024).
  try {
    size_t pos = 0;
    double x = std::stod(v, &pos);
    std::string suffix = v.substr(pos);
    double mult = suffix.empty() ? 1 : suffix == "K" ? 1024.0 : suffix == "M" ? 1048576.0 : suffix == "G" ? 1073741824.0 : -1;
    // NaN, infinities and counts past 2^62 would be an out-of-range cast to int64.
    if (mult < 0 || !std::isfinite(x) || x < 0 || !(x * mult < 0x1p62)) return false;
    *out = static_cast<int64_t>(x * mult);
    return true;
  } catch (...) {
    return false;
  }
}

bool ParseInt(const std::string& v, int lo, int hi, int* out) {
  try {
    size_t pos = 0;
    long x = std::stol(v, &pos);
    if (pos != v.size() || x < lo || x > hi) return false;
    *out = static_cast<int>(x);
    return true;
  } catch (...) {
    return false;
  }
}

std::vector<Flag> Flags(ServerConfig* c) {
  auto str = [](std::string* dst) { return [dst](const std::string& v) { *dst = v; return !v.empty(); }; };
  auto oneof = [](std::string* dst, std::vector<std::string> allowed) {
    return [dst, allowed](const std::string& v) {
      for (const auto& a : allowed)
        if (v == a) {
          *dst = v;
          return true;
        }
      return false;
    };
  };
  auto num = [](int* dst, int lo, int hi) { return [=](const std::string& v) { return ParseInt(v, lo, hi, dst); }; };
  return {
      {"model", "a GGUF file, a Hugging Face directory (config.json, *.safetensors, tokenizer.json) or "
                "synthetic:NAME (random weights: llama-3-8b, llama-3.1-8b (128k context), llama-3.2-1b, mistral-7b, qwen2.5-7b, smollm2-135m, tiny) "
                "(default: the bundled SmolLM2-135M-Instruct)", str(&c->model)},
      {"host", "gRPC listen address (default 127.0.0.1)", str(&c->host)},
      {"port", "gRPC port (default 50051)", num(&c->port, 0, 65535)},
      {"http-host", "OpenAI-compatible HTTP front's listen address (default: the gRPC --host)", str(&c->http_host)},
      {"http-port", "HTTP front's port; 0 turns it off (default 8000)", num(&c->http_port, 0, 65535)},
      {"http-threads", "HTTP connections served at once; a streaming response holds one (default 64)",
       num(&c->http_threads, 1, 4096)},
      {"served-model-name", "the model id the HTTP front answers to (default: the model's name)",
       str(&c->served_model_name)},
      {"tls-cert", "PEM certificate (chain): both fronts serve TLS; needs --tls-key", str(&c->tls_cert)},
      {"tls-key", "PEM private key of --tls-cert", str(&c->tls_key)},
      {"tls-client-ca", "PEM CA: gRPC clients must present a certificate it signed (mutual TLS)",
       str(&c->tls_client_ca)},
      {"api-key", "an API key both fronts require as 'authorization: Bearer <key>' (prefer --api-key-file: "
                  "arguments are visible to other users)", str(&c->api_key)},
      {"api-key-file", "a file of API keys, one per line ('#' comments); health, readiness and metrics stay open",
       str(&c->api_key_file)},
      {"metrics-host", "metrics listen address (default 127.0.0.1)", str(&c->metrics_host)},
      {"metrics-port", "Prometheus metrics port; 0 picks a free one (default 9464)", num(&c->metrics_port, 0, 65535)},
      {"device", "auto | cuda | cpu (default auto: the GPU when there is one)", str(&c->device)},
      {"dtype", "auto | float32 | bfloat16 | float16 (default auto: bf16 on GPU, fp32 on CPU)", str(&c->dtype)},
      {"max-running", "sequences decoded together (default 16)", num(&c->max_running, 1, 4096)},
      {"max-batch-tokens", "tokens per engine step, decodes and prompt chunks together; longer prompts are prefilled in chunks (default 2048)",
       num(&c->max_batch_tokens, 1, 1 << 20)},
      {"max-waiting", "queued requests before RESOURCE_EXHAUSTED (default 256)", num(&c->max_waiting, 1, 1 << 20)},
      {"kv-cache-bytes", "KV cache budget, e.g. 512M or 2G (default: 1G on CPU, 85% of free GPU memory)",
       [c](const std::string& v) { return ParseBytes(v, &c->kv_cache_bytes); }},
      {"block-size", "tokens per KV cache block (default 16)", num(&c->block_size, 1, 1024)},
      {"max-message-bytes", "largest request message accepted, e.g. 4M (default 4M); larger ones get RESOURCE_EXHAUSTED",
       [c](const std::string& v) { return ParseBytes(v, &c->max_message_bytes) && c->max_message_bytes > 0 &&
                                          c->max_message_bytes < (1LL << 31); }},
      {"shutdown-grace-seconds", "on SIGTERM/SIGINT, how long in-flight requests may finish (default 30)",
       num(&c->shutdown_grace_seconds, 0, 3600)},
      {"key-mode", "KV key pages: bf16 | fp8 | int4 | int2 (direct per-channel, per page) | svdq (default bf16)",
       oneof(&c->key_mode, {"bf16", "fp8", "int4", "int2", "svdq"})},
      {"value-mode", "KV value pages: bf16 | fp8 | int8 | int4 (per token, grouped scales) (default bf16)",
       oneof(&c->value_mode, {"bf16", "fp8", "int8", "int4"})},
      {"svdq-schedule", "bits of the 8 latent channel groups, leading first (default 4,2,2,2,2,2,1,1)",
       [c](const std::string& v) {
         kernels::Schedule s;
         if (!kernels::ParseSchedule(v, &s).ok()) return false;
         c->svdq_schedule = v;
         return true;
       }},
      {"svdq-basis", "prefill (per sequence, from its prompt) | calibrated (the basis file) (default prefill)",
       oneof(&c->svdq_basis, {"prefill", "calibrated"})},
      {"svdq-scope", "head (a basis per layer and KV head) | layer (one per layer, KV heads concatenated) (default head)",
       oneof(&c->svdq_scope, {"head", "layer"})},
      {"svdq-basis-tokens", "prefill basis: fitted on the first min(prompt, N) tokens, which a sequence's first "
                            "forward always covers whole (default 256)", num(&c->svdq_basis_tokens, 1, 1 << 20)},
      {"svdq-basis-file", "calibrated basis (tools/svdq_calibrate; default <model>.svdq-basis)", str(&c->svdq_basis_file)},
      {"cuda-graphs", "true | false: replay decode steps from CUDA graphs (a bf16 model on a GPU; every KV mode but layer-scope SVDq) (default true)",
       [c](const std::string& v) {
         if (v != "true" && v != "false") return false;
         c->cuda_graphs = v == "true";
         return true;
       }},
      {"overlap-steps", "true | false: launch each decode step before the host reads the step before's tokens, "
                        "and emit them while the GPU runs (CUDA graph steps and the CPU) (default true)",
       [c](const std::string& v) {
         if (v != "true" && v != "false") return false;
         c->overlap_steps = v == "true";
         return true;
       }},
      {"sparse-budget", "tokens of whole pages each decode step attends to per sequence and KV head: the sink page, "
                        "the pages whose landmarks score best and the recent pages, plus the unfilled tail page "
                        "(SVDq/int4/int2 keys in head scope, CUDA); prefill stays dense; 0: dense attention (default 0)",
       num(&c->sparse_budget, 0, 1 << 24)},
      {"sparse-landmark-rank", "with --sparse-budget: each page's landmark as R int8 coordinates in a basis fitted to "
                               "each sequence's first forward (R + 2 bytes a page and KV head instead of head dim + 2; "
                               "no prefix sharing); below the head dim, at most 128; 0: the page's mean key (default 0)",
       num(&c->sparse_landmark_rank, 0, 128)},
      {"sparse-landmark-subs", "with --sparse-budget: S landmarks a page, the means of its S equal slices under one "
                               "scale, the page scored by the best (S x W + 2 bytes a page and KV head, W the "
                               "landmark's coordinates); S divides the block size, at most 8 (default 1)",
       num(&c->sparse_landmark_subs, 1, 8)},
      {"sparse-landmark-basis-tokens", "with --sparse-landmark-rank: the landmark basis is fitted on a sequence's "
                                       "first min(prompt, N) tokens, which its first forward covers however a step's "
                                       "token budget is shared; N is capped at --max-batch-tokens less --max-running "
                                       "(default 8192)",
       num(&c->sparse_landmark_basis_tokens, 1, 1 << 20)},
      {"sparse-dense-layers", "with --sparse-budget: the first N layers attend to every page and keep no landmarks "
                              "(their attention is spread, where a selection finds little to skip); below the "
                              "model's layer count (default 0)",
       num(&c->sparse_dense_layers, 0, 1 << 16)},
      {"prefix-caching", "true | false: share KV blocks of identical prompt prefixes (default true)",
       [c](const std::string& v) {
         if (v != "true" && v != "false") return false;
         c->prefix_caching = v == "true";
         return true;
       }},
  };
}

std::string EnvName(const std::string& flag) {
  std::string e = "SVDQ_";
  for (char ch : flag) e += ch == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return e;
}

}  // namespace

std::string ConfigUsage() {
  ServerConfig dummy;
  std::ostringstream os;
  os << "usage: svdq-server [--flag=value | --flag value]...\n";
  for (const auto& f : Flags(&dummy)) os << "  --" << f.name << "  (env " << EnvName(f.name) << ")\n      " << f.help << "\n";
  return os.str();
}

bool ParseConfig(int argc, char** argv, const std::string& default_model, ServerConfig* cfg, std::string* error,
                 bool* help) {
  *help = false;
  cfg->model = default_model;
  auto flags = Flags(cfg);
  for (const auto& f : flags) {
    const char* env = std::getenv(EnvName(f.name).c_str());
    if (env && *env && !f.set(env)) {
      *error = "invalid value '" + std::string(env) + "' for " + EnvName(f.name);
      return false;
    }
  }
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      *help = true;
      return true;
    }
    if (a.rfind("--", 0) != 0) {
      *error = "unexpected argument '" + a + "'";
      return false;
    }
    std::string name = a.substr(2), value;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      *error = "flag --" + name + " needs a value";
      return false;
    }
    bool known = false;
    for (const auto& f : flags) {
      if (name != f.name) continue;
      known = true;
      if (!f.set(value)) {
        *error = "invalid value '" + value + "' for --" + name;
        return false;
      }
    }
    if (!known) {
      *error = "unknown flag --" + name + " (see --help)";
      return false;
    }
  }
  // Every step gives each decoding sequence a token: with more running sequences than step
  // tokens, decodes could take every step and starve the prompts already admitted.
  if (cfg->max_running > cfg->max_batch_tokens) {
    *error = "--max-running (" + std::to_string(cfg->max_running) + ") must not exceed --max-batch-tokens (" +
             std::to_string(cfg->max_batch_tokens) + ")";
    return false;
  }
  if (cfg->tls_cert.empty() != cfg->tls_key.empty()) {
    *error = "--tls-cert and --tls-key go together";
    return false;
  }
  if (!cfg->tls_client_ca.empty() && cfg->tls_cert.empty()) {
    *error = "--tls-client-ca needs --tls-cert and --tls-key";
    return false;
  }
  if (cfg->http_host.empty()) cfg->http_host = cfg->host;
  return true;
}

}  // namespace svdq::server
