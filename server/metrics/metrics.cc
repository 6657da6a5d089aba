// prometheus-cpp registry, families and exposer for the svdq_ metric set.
#include "server/metrics/metrics.h"

#include "server/metrics/http_exposer.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <stdexcept>

namespace svdq::metrics {
namespace {

// Latency buckets from milliseconds to minutes, as LLM requests span both.
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0};

}  // namespace

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<HttpExposer> exposer;
  prometheus::Gauge* running;
  prometheus::Gauge* waiting;
  prometheus::Counter* prompt_tokens;
  prometheus::Counter* generation_tokens;
  prometheus::Histogram* ttft;
  prometheus::Histogram* itl;
  prometheus::Histogram* e2e;
  prometheus::Histogram* queue;
  prometheus::Family<prometheus::Counter>* finished;
  prometheus::Family<prometheus::Counter>* api_calls;
  prometheus::Gauge* kv_usage;
  prometheus::Gauge* kv_blocks_used;
  prometheus::Gauge* kv_blocks_total;
  prometheus::Counter* preemptions;
  prometheus::Counter* steps_ahead;
  prometheus::Counter* rows_discarded;
  prometheus::Counter *attn_key_read, *attn_key_bf16;
  prometheus::Gauge* attn_key_ratio;
  prometheus::Counter* prefix_queries;
  prometheus::Counter* prefix_hits;
  prometheus::Family<prometheus::Gauge>* kv_bytes;
  prometheus::Gauge *key_stored, *key_full, *value_stored, *value_full;
  prometheus::Gauge* key_ratio;
  prometheus::Gauge *gpu_used, *gpu_total;
  prometheus::Family<prometheus::Histogram>* step;
  std::map<std::string, prometheus::Histogram*> step_by_label;
  prometheus::Family<prometheus::Gauge>* cache_config;
  std::map<std::string, prometheus::Counter*> finished_by_reason;

  Impl() {
    auto& r = *registry;
    running = &prometheus::BuildGauge().Name("svdq_num_requests_running")
                   .Help("Requests in the running batch").Register(r).Add({});
    waiting = &prometheus::BuildGauge().Name("svdq_num_requests_waiting")
                   .Help("Requests waiting to be scheduled").Register(r).Add({});
    prompt_tokens = &prometheus::BuildCounter().Name("svdq_prompt_tokens_total")
                         .Help("Prompt tokens processed").Register(r).Add({});
    generation_tokens = &prometheus::BuildCounter().Name("svdq_generation_tokens_total")
                             .Help("Tokens generated").Register(r).Add({});
    ttft = &prometheus::BuildHistogram().Name("svdq_time_to_first_token_seconds")
                .Help("Time from arrival to the first generated token").Register(r).Add({}, kLatencyBuckets);
    itl = &prometheus::BuildHistogram().Name("svdq_inter_token_latency_seconds")
               .Help("Time between consecutive generated tokens").Register(r).Add({}, kLatencyBuckets);
    e2e = &prometheus::BuildHistogram().Name("svdq_e2e_request_latency_seconds")
               .Help("Time from arrival to the end of a request").Register(r).Add({}, kLatencyBuckets);
    queue = &prometheus::BuildHistogram().Name("svdq_request_queue_time_seconds")
                 .Help("Time a request waited before its first step").Register(r).Add({}, kLatencyBuckets);
    finished = &prometheus::BuildCounter().Name("svdq_request_success_total")
                    .Help("Finished requests by finish reason").Register(r);
    api_calls = &prometheus::BuildCounter().Name("svdq_api_requests_total")
                     .Help("Generation calls answered, by front (grpc, http) and status").Register(r);
    kv_usage = &prometheus::BuildGauge().Name("svdq_kv_cache_usage_ratio")
                    .Help("Fraction of KV cache blocks in use (1 = full)").Register(r).Add({});
    kv_blocks_used = &prometheus::BuildGauge().Name("svdq_kv_cache_blocks_used")
                          .Help("KV cache blocks held by sequences").Register(r).Add({});
    kv_blocks_total = &prometheus::BuildGauge().Name("svdq_kv_cache_blocks")
                           .Help("KV cache blocks in the pool").Register(r).Add({});
    preemptions = &prometheus::BuildCounter().Name("svdq_num_preemptions_total")
                       .Help("Sequences preempted (cache freed, recomputed later) for lack of KV blocks")
                       .Register(r).Add({});
    steps_ahead = &prometheus::BuildCounter().Name("svdq_decode_steps_ahead_total")
                       .Help("Decode steps launched before the host read the step before's tokens (overlap)")
                       .Register(r).Add({});
    rows_discarded = &prometheus::BuildCounter().Name("svdq_decode_rows_discarded_total")
                          .Help("Rows of steps launched ahead whose sequence ended with the token before (computed, unused)")
                          .Register(r).Add({});
    attn_key_read = &prometheus::BuildCounter().Name("svdq_attention_key_bytes_read_total")
                         .Help("Key bytes decode attention read (pages, scales, tails, basis columns, sparse "
                               "attention's page landmarks), every layer and KV head")
                         .Register(r).Add({});
    attn_key_bf16 = &prometheus::BuildCounter().Name("svdq_attention_key_bytes_bf16_total")
                         .Help("bf16 bytes of every key of the same decode steps' contexts (dense bf16 attention's reads)")
                         .Register(r).Add({});
    attn_key_ratio = &prometheus::BuildGauge().Name("svdq_attention_key_compression")
                          .Help("Last decode step: bf16 key bytes of the contexts / key bytes attention read")
                          .Register(r).Add({});
    prefix_queries = &prometheus::BuildCounter().Name("svdq_prefix_cache_queries_total")
                          .Help("Prompt tokens looked up in the prefix cache").Register(r).Add({});
    prefix_hits = &prometheus::BuildCounter().Name("svdq_prefix_cache_hits_total")
                       .Help("Prompt tokens found in the prefix cache (not recomputed)").Register(r).Add({});
    kv_bytes = &prometheus::BuildGauge().Name("svdq_kv_cache_bytes")
                    .Help("KV cache bytes held (kind=stored) and the same tokens at bf16 (kind=full_precision), by tensor")
                    .Register(r);
    key_stored = &kv_bytes->Add({{"tensor", "key"}, {"kind", "stored"}});
    key_full = &kv_bytes->Add({{"tensor", "key"}, {"kind", "full_precision"}});
    value_stored = &kv_bytes->Add({{"tensor", "value"}, {"kind", "stored"}});
    value_full = &kv_bytes->Add({{"tensor", "value"}, {"kind", "full_precision"}});
    key_ratio = &prometheus::BuildGauge().Name("svdq_key_compression_ratio")
                     .Help("Full-precision (bf16) key bytes over stored key bytes; 1 without compression")
                     .Register(r).Add({});
    auto& gpu = prometheus::BuildGauge().Name("svdq_gpu_memory_bytes")
                    .Help("GPU memory in use on the device and its total (0 when serving on the CPU)")
                    .Register(r);
    gpu_used = &gpu.Add({{"kind", "used"}});
    gpu_total = &gpu.Add({{"kind", "total"}});
    step = &prometheus::BuildHistogram().Name("svdq_step_duration_seconds")
                .Help("Engine step duration by phase and batch size bucket").Register(r);
    cache_config = &prometheus::BuildGauge().Name("svdq_cache_config_info")
                        .Help("KV cache configuration (labels); value 1").Register(r);
    for (const char* reason : {"stop", "length", "abort", "error"})
      finished_by_reason[reason] = &finished->Add({{"finished_reason", reason}});
  }
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

int Metrics::Serve(const std::string& host, int port) {
  impl_->exposer = std::make_unique<HttpExposer>(host, port, impl_->registry);
  return impl_->exposer->port();
}

void Metrics::SetRunning(double n) { impl_->running->Set(n); }
void Metrics::SetWaiting(double n) { impl_->waiting->Set(n); }
void Metrics::AddPromptTokens(double n) { impl_->prompt_tokens->Increment(n); }
void Metrics::AddGenerationTokens(double n) { impl_->generation_tokens->Increment(n); }
void Metrics::ObserveTimeToFirstToken(double s) { impl_->ttft->Observe(s); }
void Metrics::ObserveInterTokenLatency(double s) { impl_->itl->Observe(s); }
void Metrics::ObserveEndToEnd(double s) { impl_->e2e->Observe(s); }
void Metrics::ObserveQueueTime(double s) { impl_->queue->Observe(s); }
void Metrics::SetKvBlocks(double used, double total) {
  impl_->kv_blocks_used->Set(used);
  impl_->kv_blocks_total->Set(total);
  impl_->kv_usage->Set(total > 0 ? used / total : 0.0);
}
void Metrics::AddPreemption() { impl_->preemptions->Increment(); }
void Metrics::AddStepAhead(double discarded) {
  impl_->steps_ahead->Increment();
  impl_->rows_discarded->Increment(discarded);
}
void Metrics::AddAttentionKeyBytes(double read, double bf16) {
  impl_->attn_key_read->Increment(read);
  impl_->attn_key_bf16->Increment(bf16);
  if (read > 0) impl_->attn_key_ratio->Set(bf16 / read);
}
void Metrics::AddPrefixCache(double query_tokens, double hit_tokens) {
  impl_->prefix_queries->Increment(query_tokens);
  impl_->prefix_hits->Increment(hit_tokens);
}
void Metrics::SetKvBytes(double key_stored, double key_full, double value_stored, double value_full) {
  impl_->key_stored->Set(key_stored);
  impl_->key_full->Set(key_full);
  impl_->value_stored->Set(value_stored);
  impl_->value_full->Set(value_full);
  impl_->key_ratio->Set(key_stored > 0 ? key_full / key_stored : 1.0);
}

void Metrics::SetGpuMemory(double used, double total) {
  impl_->gpu_used->Set(used);
  impl_->gpu_total->Set(total);
}

void Metrics::ObserveStep(const std::string& phase, int batch, double seconds) {
  // Batch sizes in a few buckets, so that label values stay bounded.
  const char* b = batch <= 1 ? "1" : batch <= 4 ? "2-4" : batch <= 16 ? "5-16" : batch <= 64 ? "17-64" : "65+";
  std::string key = phase + "/" + b;
  auto it = impl_->step_by_label.find(key);
  if (it == impl_->step_by_label.end())
    it = impl_->step_by_label.emplace(key, &impl_->step->Add({{"phase", phase}, {"batch", b}}, kLatencyBuckets)).first;
  it->second->Observe(seconds);
}

void Metrics::SetCacheConfig(int block_size, const std::string& key_codec, const std::string& schedule,
                             const std::string& value_dtype) {
  impl_->cache_config
      ->Add({{"block_size", std::to_string(block_size)}, {"key_codec", key_codec}, {"schedule", schedule},
             {"value_dtype", value_dtype}})
      .Set(1);
}

void Metrics::ApiCall(const std::string& front, const std::string& code) {
  impl_->api_calls->Add({{"front", front}, {"code", code}}).Increment();  // Family::Add locks
}

void Metrics::RequestFinished(const std::string& reason) {
  auto it = impl_->finished_by_reason.find(reason);
  if (it != impl_->finished_by_reason.end()) it->second->Increment();
}

}  // namespace svdq::metrics
