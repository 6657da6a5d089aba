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

  // Valid after Load().
  const models::ModelConfig& model_config() const;
  const models::Tokenizer& tokenizer() const;
  std::string device_name() const;
  std::string dtype_name() const;
  const EngineOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq::engine
