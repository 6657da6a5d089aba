// The Prometheus metric set (prefix svdq_, meanings as vLLM's) and its HTTP exposer.
// Callers update metrics through plain methods; prometheus-cpp stays inside metrics.cc.
#pragma once

#include <memory>
#include <string>

namespace svdq::metrics {

class Metrics {
 public:
  Metrics();
  ~Metrics();
  // Serves /metrics on host:port; port 0 picks a free port. Returns the bound port.
  // Throws std::runtime_error if it cannot bind.
  int Serve(const std::string& host, int port);

  void SetRunning(double n);
  void SetWaiting(double n);
  void AddPromptTokens(double n);
  void AddGenerationTokens(double n);
  void ObserveTimeToFirstToken(double s);
  void ObserveInterTokenLatency(double s);
  void ObserveEndToEnd(double s);
  void ObserveQueueTime(double s);
  void SetKvBlocks(double used, double total);
  void AddPreemption();
  // A decode step launched before the host read the step before's tokens; `discarded`: its rows
  // of sequences that ended with those tokens (computed, never used).
  void AddStepAhead(double discarded);
  // One decode step's attention key bytes: read, and bf16 bytes of the same keys (kv_modes.h).
  void AddAttentionKeyBytes(double read, double bf16);
  void AddPrefixCache(double query_tokens, double hit_tokens);
  // KV bytes held now and what the same tokens take at full precision (bf16), by tensor.
  void SetKvBytes(double key_stored, double key_full, double value_stored, double value_full);
  // Device memory in use (all processes) and the device's total, from the CUDA runtime.
  void SetGpuMemory(double used, double total);
  // phase: "prefill" or "decode"; batch: sequences advanced in the step.
  void ObserveStep(const std::string& phase, int batch, double seconds);
  // One-time: the cache configuration as labels of a gauge with value 1.
  void SetCacheConfig(int block_size, const std::string& key_codec, const std::string& schedule,
                      const std::string& value_dtype);
  // reason: "stop", "length", "abort", "error".
  void RequestFinished(const std::string& reason);
  // A generation call answered by a front: front "grpc" or "http"; code the gRPC status
  // name or the HTTP status. Thread-safe.
  void ApiCall(const std::string& front, const std::string& code);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq::metrics
