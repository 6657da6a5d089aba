// Engine loop. Each step: take new requests from the inbox, admit waiting sequences up
// to max_running (first come, first served), then advance every running sequence by
// one forward (its prefill, or one decode token), sample, and emit events.
// The contiguous per-sequence cache of this slice is replaced by the paged cache later.
#include "server/engine/engine.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#if __has_include(<cuda_runtime_api.h>)
#include <cuda_runtime_api.h>
#define SVDQ_HAVE_CUDA_RUNTIME 1
#endif

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <list>
#include <mutex>
#include <random>
#include <thread>

#include "models/gguf.h"
#include "models/llama.h"
#include "models/tokenizer.h"
#include "server/engine/sampler.h"
#include "server/kv/kv_cache_manager.h"
#include "server/kv/paged_storage.h"
#include "server/metrics/metrics.h"

namespace svdq::engine {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Sequence {
  kv::SeqId id = 0;
  Request req;
  std::shared_ptr<RequestStream> stream;
  Clock::time_point arrival, first_token, last_token;
  int64_t computed = 0;  // tokens whose keys and values are in the cache
  std::vector<int32_t> output;
  std::unique_ptr<models::IncrementalDetokenizer> detok;
  std::mt19937_64 rng;
  bool prefilled = false;  // false: the next step runs prompt + output (after preemption, a recompute)
  std::vector<float> prompt_logprobs;
  bool prompt_logprobs_sent = false;
  std::string text;        // generated text so far (complete UTF-8 characters)
  size_t emitted = 0;      // bytes of `text` sent; the rest may still turn out to be a stop string
  size_t max_stop = 0;     // longest stop string
  std::string stop_reason;
  int32_t preempted = 0;
};

const char* MetricReason(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "abort";
    default: return "error";
  }
}

}  // namespace

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "unknown";
}

struct Engine::Impl {
  EngineOptions opts;
  metrics::Metrics* metrics;
  std::unique_ptr<models::GgufFile> file;
  std::unique_ptr<models::Tokenizer> tokenizer;
  std::unique_ptr<models::LlamaModel> model;
  std::atomic<bool> ready{false};
  std::unique_ptr<kv::KvCacheManager> kv;
  std::unique_ptr<kv::PagedKvStorage> storage;
  int64_t element_size = 4;
  int64_t bytes_per_token = 0;
  kv::SeqId next_id = 1;
  std::atomic<bool> stopping{false};

  std::mutex mu;  // guards inbox only
  std::condition_variable cv;
  std::deque<std::unique_ptr<Sequence>> inbox;
  std::atomic<size_t> queued{0};  // inbox + waiting, for the queue bound

  // Owned by the engine thread.
  std::deque<std::unique_ptr<Sequence>> waiting;
  std::list<std::unique_ptr<Sequence>> running;
  std::thread thread;

  void Loop();
  void Step();
  // Returns true if the sequence finished.
  bool Advance(Sequence* s);
  // Sends the final event and frees the sequence's cache.
  void Finish(Sequence* s, FinishReason reason, const std::string& error);
  // Frees the newest running sequence's cache and puts it back at the head of the queue,
  // to be recomputed (prompt + output so far) when blocks allow. False if none can go.
  bool PreemptNewest(const Sequence* keep);
  std::vector<int32_t> AllTokens(const Sequence& s) const {
    std::vector<int32_t> t = s.req.prompt;
    t.insert(t.end(), s.output.begin(), s.output.end());
    return t;
  }
  void ReportKv() {
    if (!metrics) return;
    const int32_t used = kv->num_blocks() - kv->num_free_blocks();
    metrics->SetKvBlocks(used, kv->num_blocks());
    // Keys and values are stored uncompressed in the model's dtype for now; "full
    // precision" means bf16, so fp32 pages report a key compression ratio of 0.5.
    const double tokens = static_cast<double>(used) * kv->block_size();
    const double stored = tokens * static_cast<double>(bytes_per_token) / 2;
    const double full = stored * 2.0 / static_cast<double>(element_size);
    metrics->SetKvBytes(stored, full, stored, full);
#ifdef SVDQ_HAVE_CUDA_RUNTIME
    if (model->device().is_cuda()) {
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
        metrics->SetGpuMemory(static_cast<double>(total_b - free_b), static_cast<double>(total_b));
    }
#endif
  }
};

Engine::Engine(EngineOptions opts, metrics::Metrics* metrics) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->metrics = metrics;
}

Engine::~Engine() { Stop(); }

void Engine::Load() {
  Impl& m = *impl_;
  at::Device device(at::kCPU);
  if (m.opts.device == "cuda" || (m.opts.device == "auto" && at::hasCUDA())) {
    if (!at::hasCUDA()) throw std::runtime_error("--device cuda was asked for, but no CUDA device is available");
    device = at::Device(at::kCUDA, 0);
  } else if (m.opts.device != "cpu" && m.opts.device != "auto") {
    throw std::runtime_error("unknown device '" + m.opts.device + "' (auto, cpu, cuda)");
  }
  at::ScalarType dtype;
  if (m.opts.dtype == "auto") dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  else if (m.opts.dtype == "float32") dtype = at::kFloat;
  else if (m.opts.dtype == "bfloat16") dtype = at::kBFloat16;
  else if (m.opts.dtype == "float16") dtype = at::kHalf;
  else throw std::runtime_error("unknown dtype '" + m.opts.dtype + "' (auto, float32, bfloat16, float16)");

  m.file = models::GgufFile::Open(m.opts.model_path);
  m.tokenizer = models::Tokenizer::FromGguf(*m.file);
  m.model = models::LlamaModel::LoadGguf(*m.file, device, dtype);
  if (m.tokenizer->vocab_size() > m.model->config().vocab_size)
    throw std::runtime_error(m.opts.model_path + ": tokenizer vocabulary is larger than the embedding table");
  // KV capacity in blocks from the byte budget; the pool's tensors are allocated now.
  const auto& c = m.model->config();
  m.element_size = static_cast<int64_t>(c10::elementSize(dtype));
  m.bytes_per_token = 2LL * c.n_layers * c.n_kv_heads * c.head_dim * m.element_size;
  int64_t budget = m.opts.kv_cache_bytes;
  if (budget <= 0) {
    budget = 1LL << 30;
#ifdef SVDQ_HAVE_CUDA_RUNTIME
    if (device.is_cuda()) {
      size_t free_b = 0, total_b = 0;
      // 85% of what is free after the weights: the rest is for activations and the
      // per-layer gathers of attention.
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) budget = static_cast<int64_t>(free_b * 0.85);
    }
#endif
  }
  if (m.opts.block_size < 1 || m.opts.block_size > 1024) throw std::runtime_error("block size must be in [1, 1024]");
  const int64_t blocks = budget / (m.bytes_per_token * m.opts.block_size);
  if (blocks < 1) throw std::runtime_error("the KV cache budget holds no block; raise --kv-cache-bytes");
  kv::KvCacheConfig kc;
  kc.num_blocks = static_cast<int32_t>(std::min<int64_t>(blocks, 1 << 30));
  kc.block_size = m.opts.block_size;
  // Sharing is sound: a block's keys and values depend only on the tokens before it and
  // the model, whose identity (dtype, block size) is in every block hash.
  kc.prefix_caching = m.opts.prefix_caching;
  kc.mode_key = (static_cast<uint64_t>(dtype) << 32) ^ static_cast<uint64_t>(kc.block_size) ^ 0x6266313670616765ull;
  m.kv = std::make_unique<kv::KvCacheManager>(kc);
  m.storage = std::make_unique<kv::PagedKvStorage>(c.n_layers, kc.num_blocks, kc.block_size, c.n_kv_heads,
                                                   c.head_dim, device, dtype);
  if (m.metrics) {
    const std::string dt = dtype == at::kFloat ? "fp32" : dtype == at::kHalf ? "fp16" : "bf16";
    m.metrics->SetCacheConfig(kc.block_size, dt, "none", dt);
  }
  m.ReportKv();
  m.ready = true;
}

void Engine::Start() {
  if (!impl_->ready) throw std::logic_error("Engine::Start before Load");
  impl_->thread = std::thread([this] { impl_->Loop(); });
}

void Engine::Stop() {
  {
    // Under the lock, so the engine thread cannot miss the wakeup between testing its
    // wait condition and blocking, and Submit cannot add to a drained inbox.
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stopping.exchange(true)) return;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

bool Engine::ready() const { return impl_->ready.load(); }

KvConfigInfo Engine::kv_config() const {
  KvConfigInfo k;
  k.mode = impl_->model->dtype() == at::kFloat ? "fp32" : impl_->model->dtype() == at::kHalf ? "fp16" : "bf16";
  k.blocks_total = impl_->kv->num_blocks();
  k.block_size = impl_->kv->block_size();
  k.bytes_per_token = impl_->bytes_per_token;
  k.prefix_caching = impl_->opts.prefix_caching;
  return k;
}

int64_t Engine::kv_capacity_tokens() const {
  return static_cast<int64_t>(impl_->kv->num_blocks()) * impl_->kv->block_size();
}

SubmitResult Engine::Submit(Request r, std::shared_ptr<RequestStream>* stream) {
  Impl& m = *impl_;
  if (m.stopping) return SubmitResult::kShuttingDown;
  if (!m.ready) return SubmitResult::kNotReady;
  auto seq = std::make_unique<Sequence>();
  seq->arrival = Clock::now();
  seq->stream = std::make_shared<RequestStream>();
  seq->detok = std::make_unique<models::IncrementalDetokenizer>(*m.tokenizer);
  seq->rng.seed(r.sampling.has_seed ? r.sampling.seed : std::random_device{}());
  seq->req = std::move(r);
  for (const auto& st : seq->req.stop) seq->max_stop = std::max(seq->max_stop, st.size());
  *stream = seq->stream;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.stopping) return SubmitResult::kShuttingDown;  // checked again: Stop() may have drained the inbox
    if (m.queued.load() >= m.opts.max_waiting) return SubmitResult::kQueueFull;
    ++m.queued;
    seq->id = m.next_id++;
    m.inbox.push_back(std::move(seq));
  }
  m.cv.notify_one();
  return SubmitResult::kOk;
}

const models::ModelConfig& Engine::model_config() const { return impl_->model->config(); }
const models::Tokenizer& Engine::tokenizer() const { return *impl_->tokenizer; }
std::string Engine::device_name() const { return impl_->model->device().str(); }
std::string Engine::dtype_name() const { return std::string(c10::toString(impl_->model->dtype())); }
const EngineOptions& Engine::options() const { return impl_->opts; }

void Engine::Impl::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stopping || !inbox.empty() || !running.empty() || !waiting.empty(); });
      while (!inbox.empty()) {
        waiting.push_back(std::move(inbox.front()));
        inbox.pop_front();
      }
    }
    if (stopping) break;
    Step();
  }
  for (auto& s : running) Finish(s.get(), FinishReason::kCancelled, "server shutting down");
  for (auto& s : waiting) Finish(s.get(), FinishReason::kCancelled, "server shutting down");
  std::lock_guard<std::mutex> lock(mu);
  for (auto& s : inbox) Finish(s.get(), FinishReason::kCancelled, "server shutting down");
}

void Engine::Impl::Step() {
  // Admission, first come first served: the head of the queue waits until its blocks
  // fit, and nobody overtakes it, so no request starves. Cancelled waiters leave at once.
  for (auto it = waiting.begin(); it != waiting.end();) {
    if ((*it)->stream->cancelled()) {
      Finish(it->get(), FinishReason::kCancelled, "");
      --queued;
      it = waiting.erase(it);
    } else {
      ++it;
    }
  }
  while (running.size() < opts.max_running && !waiting.empty()) {
    Sequence* s = waiting.front().get();
    std::vector<int32_t> tokens = AllTokens(*s);
    const bool use_cache = !s->req.prompt_logprobs;
    if (!kv->CanAllocate(tokens, use_cache)) break;
    const int64_t q0 = kv->prefix_query_tokens(), h0 = kv->prefix_hit_tokens();
    s->computed = kv->Allocate(s->id, tokens, use_cache);
    if (metrics) metrics->AddPrefixCache(kv->prefix_query_tokens() - q0, kv->prefix_hit_tokens() - h0);
    if (metrics && s->preempted == 0) metrics->ObserveQueueTime(Seconds(s->arrival, Clock::now()));
    running.push_back(std::move(waiting.front()));
    waiting.pop_front();
    --queued;  // the bound is on requests not yet running
  }
  if (metrics) {
    metrics->SetRunning(static_cast<double>(running.size()));
    metrics->SetWaiting(static_cast<double>(waiting.size()));
  }
  c10::InferenceMode no_grad;
  // Step time by phase: a step that prefills any sequence counts as "prefill".
  const auto step_start = Clock::now();
  bool any_prefill = false;
  const int batch = static_cast<int>(running.size());
  for (auto it = running.begin(); it != running.end();) {
    bool done;
    any_prefill = any_prefill || !(*it)->prefilled;
    try {
      done = Advance(it->get());
    } catch (const std::exception& e) {
      Finish(it->get(), FinishReason::kError, e.what());
      done = true;
    }
    if (done) {
      it = running.erase(it);
    } else {
      ++it;
    }
  }
  if (metrics) {
    metrics->SetRunning(static_cast<double>(running.size()));
    metrics->SetWaiting(static_cast<double>(waiting.size()));
    if (batch > 0) metrics->ObserveStep(any_prefill ? "prefill" : "decode", batch, Seconds(step_start, Clock::now()));
  }
  ReportKv();
}

bool Engine::Impl::PreemptNewest(const Sequence* keep) {
  for (auto it = running.rbegin(); it != running.rend(); ++it) {
    Sequence* s = it->get();
    if (s == keep) continue;
    kv->Free(s->id);
    s->computed = 0;
    s->prefilled = false;
    ++s->preempted;
    if (metrics) metrics->AddPreemption();
    waiting.push_front(std::move(*it));
    ++queued;
    running.erase(std::next(it).base());
    return true;
  }
  return false;
}

bool Engine::Impl::Advance(Sequence* s) {
  if (s->stream->cancelled()) {
    Finish(s, FinishReason::kCancelled, "");
    return true;
  }
  const auto& cfg = model->config();
  at::Tensor logits;
  if (!s->prefilled) {
    // First prefill, or a recompute after preemption: the blocks were allocated at
    // admission, and a prefix-cache hit already holds the first `computed` tokens.
    std::vector<int32_t> tokens = AllTokens(*s);
    kv::PagedSeqView view(storage.get(), kv->Blocks(s->id), s->computed);
    std::vector<int32_t> uncached(tokens.begin() + s->computed, tokens.end());
    if (s->req.prompt_logprobs && s->output.empty() && s->prompt_logprobs.empty()) {
      // Every position's logits: the log-probability of each prompt token given those before it.
      at::Tensor all = model->ForwardAll(uncached, &view);  // [T, vocab], computed = 0 (no cache hits)
      at::Tensor lp = at::log_softmax(all, -1);
      const int64_t T = static_cast<int64_t>(uncached.size());
      if (T > 1) {
        at::Tensor next = at::tensor(std::vector<int64_t>(uncached.begin() + 1, uncached.end()), at::kLong).to(lp.device());
        at::Tensor picked = lp.narrow(0, 0, T - 1).gather(1, next.unsqueeze(1)).squeeze(1).to(at::kCPU).contiguous();
        s->prompt_logprobs.assign(picked.data_ptr<float>(), picked.data_ptr<float>() + picked.numel());
      }
      logits = all[T - 1];
    } else {
      logits = model->Forward(uncached, &view);
    }
    s->computed = static_cast<int64_t>(tokens.size());
    kv->Commit(s->id, static_cast<int32_t>(s->computed));
    s->prefilled = true;
    if (metrics && s->preempted == 0) metrics->AddPromptTokens(static_cast<double>(s->req.prompt.size()));
  } else {
    // One more token needs room; when the pool is exhausted, newer sequences give way.
    while (!kv->CanAppend(s->id)) {
      if (!PreemptNewest(s)) {
        Finish(s, FinishReason::kError, "the KV cache cannot hold this sequence");
        return true;
      }
    }
    kv->Append(s->id, s->output.back());
    kv::PagedSeqView view(storage.get(), kv->Blocks(s->id), s->computed);
    logits = model->Forward({s->output.back()}, &view);
    kv->Commit(s->id, static_cast<int32_t>(++s->computed));
  }
  // Until min_tokens, the end of sequence and the stop token ids cannot be sampled.
  const Request& rq = s->req;
  std::vector<int32_t> banned;
  if (static_cast<int32_t>(s->output.size()) < rq.min_tokens) {
    if (!rq.ignore_eos) banned.push_back(tokenizer->eos_id());
    banned.insert(banned.end(), rq.stop_token_ids.begin(), rq.stop_token_ids.end());
  }
  int32_t tok = SampleToken(logits, rq.sampling, TokenHistory{&rq.prompt, &s->output}, banned, &s->rng);
  auto now = Clock::now();
  if (s->output.empty()) {
    s->first_token = now;
    if (metrics) metrics->ObserveTimeToFirstToken(Seconds(s->arrival, now));
  } else if (metrics) {
    metrics->ObserveInterTokenLatency(Seconds(s->last_token, now));
  }
  s->last_token = now;
  s->output.push_back(tok);
  if (metrics) metrics->AddGenerationTokens(1);

  s->text += s->detok->Push(tok);
  FinishReason reason = FinishReason::kNone;
  std::string stop_reason;
  const bool may_stop = static_cast<int32_t>(s->output.size()) >= rq.min_tokens;
  if (may_stop && !rq.ignore_eos && tok == tokenizer->eos_id()) {
    reason = FinishReason::kStop;
  } else if (may_stop && std::find(rq.stop_token_ids.begin(), rq.stop_token_ids.end(), tok) != rq.stop_token_ids.end()) {
    reason = FinishReason::kStop;
    stop_reason = std::to_string(tok);
  } else if (rq.max_tokens > 0 && static_cast<int32_t>(s->output.size()) >= rq.max_tokens) {
    reason = FinishReason::kLength;
  } else if (s->computed + 1 >= cfg.max_context) {
    reason = FinishReason::kLength;
  }
  if (reason != FinishReason::kNone) s->text += s->detok->Flush();
  // Stop strings: bytes that could still begin one are held back (max_stop - 1 of them),
  // so a match can only start in the unsent part, and neither it nor what follows is sent.
  size_t cut = std::string::npos;
  if (may_stop) {
    for (const auto& st : rq.stop) {
      size_t q = s->text.find(st, s->emitted);
      if (q != std::string::npos && (cut == std::string::npos || q < cut)) {
        cut = q;
        stop_reason = st;
      }
    }
    if (cut != std::string::npos) reason = FinishReason::kStop;
  }
  size_t send_to = s->text.size();
  if (cut != std::string::npos) {
    send_to = cut;
  } else if (reason == FinishReason::kNone && s->max_stop > 1) {
    send_to = s->text.size() > s->max_stop - 1 ? s->text.size() - (s->max_stop - 1) : 0;
    while (send_to > s->emitted && (static_cast<unsigned char>(s->text[send_to]) & 0xC0) == 0x80) --send_to;
  }
  send_to = std::max(send_to, s->emitted);
  Event ev;
  ev.ids = {tok};
  ev.text = s->text.substr(s->emitted, send_to - s->emitted);
  if (rq.logprobs >= 0) {
    at::Tensor lp = at::log_softmax(logits.to(at::kFloat), -1);
    TokenLogprob t;
    t.token_id = tok;
    t.logprob = lp[tok].item<float>();
    if (rq.logprobs > 0) {
      auto [vals, idx] = lp.topk(rq.logprobs);
      at::Tensor v = vals.to(at::kCPU).contiguous(), i = idx.to(at::kCPU).contiguous();
      for (int64_t k = 0; k < v.numel(); ++k)
        t.top.emplace_back(static_cast<int32_t>(i.data_ptr<int64_t>()[k]), v.data_ptr<float>()[k]);
    }
    ev.logprobs.push_back(std::move(t));
  }
  if (!s->prompt_logprobs_sent && rq.prompt_logprobs) {
    ev.prompt_logprobs = s->prompt_logprobs;
    s->prompt_logprobs_sent = true;
  }
  s->emitted = send_to;
  s->stream->Push(std::move(ev));
  if (reason == FinishReason::kNone) return false;
  s->stop_reason = stop_reason;
  Finish(s, reason, "");
  return true;
}

void Engine::Impl::Finish(Sequence* s, FinishReason reason, const std::string& error) {
  auto now = Clock::now();
  Event fin;
  fin.final = true;
  fin.reason = reason;
  fin.error = error;
  fin.stop_reason = s->stop_reason;
  fin.prompt_tokens = static_cast<int32_t>(s->req.prompt.size());
  fin.completion_tokens = static_cast<int32_t>(s->output.size());
  fin.ttft_s = s->output.empty() ? 0 : Seconds(s->arrival, s->first_token);
  fin.total_s = Seconds(s->arrival, now);
  s->stream->Push(std::move(fin));
  kv->Free(s->id);  // every block at once
  if (metrics) {
    metrics->ObserveEndToEnd(fin.total_s);
    metrics->RequestFinished(MetricReason(reason));
  }
}

}  // namespace svdq::engine
