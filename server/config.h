// Server configuration: command-line flags, each also readable from an environment
// variable (SVDQ_<FLAG>, upper case, dashes as underscores). Flags win over the environment.
#pragma once

#include <string>

namespace svdq::server {

struct ServerConfig {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 50051;
  std::string metrics_host = "127.0.0.1";
  int metrics_port = 9464;  // 0: any free port, printed at start
  std::string device = "auto";
  std::string dtype = "auto";
  int max_running = 16;
  int max_waiting = 256;
  int max_batch_tokens = 2048;
  int64_t kv_cache_bytes = 0;  // 0: automatic
  int block_size = 16;
  bool prefix_caching = true;
  std::string key_mode = "bf16";
  std::string value_mode = "bf16";
  std::string svdq_schedule = "4,2,2,2,2,2,1,1";
  std::string svdq_basis = "prefill";
  std::string svdq_scope = "head";
  int svdq_basis_tokens = 256;
  bool cuda_graphs = true;
  bool overlap_steps = true;  // launch a decode step before reading the one before's tokens
  int sparse_budget = 0;  // tokens a decode step attends to per sequence and KV head; 0: dense
  int sparse_landmark_rank = 0;  // landmark coordinates in a per-sequence basis; 0: the mean key itself
  int sparse_landmark_subs = 1;  // landmarks a page, one per equal slice (sub-chunk); scored by the best
  int sparse_landmark_basis_tokens = 8192;  // the landmark basis's least first forward
  int sparse_dense_layers = 0;  // the first layers attend densely under --sparse-budget
  std::string svdq_basis_file;
  int shutdown_grace_seconds = 30;
  int64_t max_message_bytes = 4 << 20;
  // The OpenAI-compatible HTTP front.
  std::string http_host;  // empty: the gRPC host
  int http_port = 8000;   // 0: no HTTP front
  int http_threads = 64;
  std::string served_model_name;  // the `model` id on HTTP; empty: the model's name
  // TLS for both fronts (PEM files); a client CA makes gRPC require client certificates.
  std::string tls_cert, tls_key, tls_client_ca;
  // API keys for both fronts: one key, and/or a file of keys (one per line).
  std::string api_key, api_key_file;
};

// Parses argv and the environment. Returns false and fills *error on a bad flag or
// value; sets *help when --help was given.
bool ParseConfig(int argc, char** argv, const std::string& default_model, ServerConfig* cfg, std::string* error,
                 bool* help);
std::string ConfigUsage();

}  // namespace svdq::server
