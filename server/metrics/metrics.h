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
  void AddPrefixCache(double query_tokens, double hit_tokens);
  // reason: "stop", "length", "abort", "error".
  void RequestFinished(const std::string& reason);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace svdq::metrics
