// The engine: one thread that owns the model and every sequence's KV cache, and runs
// steps over the running sequences. gRPC threads only Submit() and read streams.
#pragma once

#include <memory>
#include <string>

#include "models/model_config.h"
#include "server/engine/request.h"

namespace svdq::models {
class Tokenizer;
}
namespace svdq::metrics {
class Metrics;
}

namespace svdq::engine {

struct EngineOptions {
  std::string model_path;
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";   // auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
  size_t max_waiting = 256;     // queue bound; Submit beyond it is refused
  size_t max_running = 16;      // sequences decoded together
  int64_t max_batch_tokens = 2048;  // tokens per step (decodes + prompt chunks); longer prompts are chunked
  int64_t kv_cache_bytes = 0;   // KV budget; 0: 1 GiB on the CPU, 85% of free GPU memory after weights
  int32_t block_size = 16;      // tokens per KV block
  bool prefix_caching = true;   // share full blocks of identical prompt prefixes (where sound)
  std::string key_mode = "bf16";                  // server/kv/kv_modes.h
  std::string value_mode = "bf16";
  std::string svdq_schedule = "4,2,2,2,2,2,1,1";  // svdq key mode
  std::string svdq_basis = "prefill";             // prefill | calibrated
  std::string svdq_scope = "head";                // head | layer
  // Prefill basis: fitted on the keys of a sequence's first min(prompt, svdq_basis_tokens)
  // tokens, which its first forward always covers, however the step budget is shared.
  int64_t svdq_basis_tokens = 256;
  bool cuda_graphs = true;                        // decode steps replayed from CUDA graphs where possible
  // A decode step is launched before the host reads the step before's tokens (engine.cc).
  bool overlap_steps = true;
  // Sparse decode attention: tokens attended per sequence and KV head (kv_modes.h); 0: dense.
  int64_t sparse_budget = 0;
  int64_t sparse_landmark_rank = 0;  // kv_modes.h; 0: landmarks are the pages' mean keys
  int64_t sparse_landmark_subs = 1;  // kv_modes.h; landmarks a page (sub-chunk means)
  // Landmark basis (sparse_landmark_rank > 0): fitted on a sequence's first min(prompt, N) tokens,
  // which its first forward covers however the step budget is shared (up to the scheduler's cap).
  int64_t sparse_landmark_basis_tokens = 8192;
  int64_t sparse_dense_layers = 0;   // kv_modes.h; the first layers attend densely
  std::string svdq_basis_file;                    // empty: <model>.svdq-basis, if it exists
};

// The KV cache's fixed configuration, for info calls (constant after Load()).
struct KvConfigInfo {
  std::string mode;  // summary: "keys <key mode>, values <value mode>"
  std::string key_mode, value_mode, svdq_schedule, svdq_basis, svdq_scope;
  int32_t blocks_total = 0, block_size = 0;
  int64_t bytes_per_token = 0;  // keys + values, rounded up
  double key_bytes_per_token = 0, value_bytes_per_token = 0;
  double key_compression_ratio = 0;  // bf16 key bytes / stored key bytes
  int64_t bytes_per_running_sequence = 0;
  bool prefix_caching = false;  // in effect (off where pages cannot be shared)
  int64_t sparse_budget = 0;    // tokens a decode step attends to per sequence and KV head; 0: dense
  int64_t sparse_landmark_rank = 0;  // int8 coordinates a page landmark holds in its sequence's basis; 0: the mean key
  int64_t sparse_landmark_subs = 1;  // landmarks a page, one per equal slice
  int64_t sparse_landmark_basis_tokens = 0;  // the landmark basis's least first forward; 0: no landmark basis
  int64_t sparse_dense_layers = 0;   // the first layers, which attend densely under the budget
  double attention_key_compression = 0;  // at the model's full context (kv_modes.h DecodeKeyBytesRead)
};

enum class SubmitResult { kOk, kQueueFull, kNotReady, kShuttingDown };

class Engine {
 public:
  Engine(EngineOptions opts, metrics::Metrics* metrics);  // metrics may be null
  ~Engine();
  // Loads the model and tokenizer (seconds); throws std::exception with a message on failure.
  void Load();
  // Starts the engine thread; call after Load().
  void Start();
  // Stops the thread; every unfinished request ends with FinishReason::kCancelled.
  void Stop();

  bool ready() const;
  SubmitResult Submit(Request r, std::shared_ptr<RequestStream>* stream);
  // Tokens the KV cache can hold at most (valid after Load()); a request needing more is refused.
  int64_t kv_capacity_tokens() const;
  KvConfigInfo kv_config() const;

  // Valid after Load().
  const models::ModelConfig& model_config() const;
  const models::Tokenizer& tokenizer() const;
  std::string device_name() const;
  std::string dtype_name() const;
  std::string model_source() const;  // "gguf", "huggingface" or "synthetic"
  const EngineOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq::engine
