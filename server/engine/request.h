// What crosses between gRPC threads and the engine thread: a request, the events it
// produces, and the stream that carries them. No torch, no gRPC.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace svdq::engine {

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };
const char* FinishReasonName(FinishReason r);

struct SamplingParams {
  float temperature = 0.f;  // 0: greedy
  int32_t top_k = 0;        // 0: off
  float top_p = 1.f;        // 1: off
  bool has_seed = false;
  uint64_t seed = 0;
  float min_p = 0.f;               // 0: off
  float repetition_penalty = 1.f;  // 1: off
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  bool NeedsHost() const {
    return temperature > 0.f || min_p > 0.f || repetition_penalty != 1.f || presence_penalty != 0.f ||
           frequency_penalty != 0.f;
  }
};

struct Request {
  std::string id;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int32_t max_tokens = 0;  // 0: up to the context limit
  int32_t min_tokens = 0;
  bool ignore_eos = false;
  std::vector<std::string> stop;        // stop strings, never sent
  std::vector<int32_t> stop_token_ids;
  int32_t logprobs = -1;       // top alternatives per generated token; -1: none
  bool prompt_logprobs = false;
  int32_t prompt_logprobs_chunk = 0;  // 0: exact; N: chunks of N tokens over the stored cache
  int32_t prompt_logprobs_first_chunk = 0;  // with a chunk: the first chunk's length (0: the chunk)
  int32_t prompt_logprobs_top = 0;    // with prompt_logprobs: the most likely tokens per position too
};

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.f;
  std::vector<std::pair<int32_t, float>> top;
};

// One message from the engine: newly generated tokens with their text, or the end.
struct Event {
  std::vector<int32_t> ids;
  std::string text;
  bool final = false;
  FinishReason reason = FinishReason::kNone;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_tokens = 0;      // prompt tokens found in the prefix cache
  int64_t kv_bytes_stored = 0;    // the sequence's pages at its end, and their bf16 equivalent
  int64_t kv_bytes_full = 0;
  double ttft_s = 0;
  double total_s = 0;
  std::string error;
  std::string stop_reason;  // the stop string or stop token id that ended generation
  std::vector<TokenLogprob> logprobs;
  std::vector<float> prompt_logprobs;
  // With Request::prompt_logprobs_top: per scored prompt position, its most likely tokens.
  std::vector<std::vector<std::pair<int32_t, float>>> prompt_top;
};

// A single-producer (engine) single-consumer (gRPC handler) queue of events, plus the
// consumer's cancellation flag, which the engine reads once per step.
class RequestStream {
 public:
  // Waits up to `timeout` for an event; false if none arrived.
  bool Pop(Event* out, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
    *out = std::move(events_.front());
    events_.pop_front();
    return true;
  }
  void Push(Event e) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(std::move(e));
    }
    cv_.notify_one();
  }
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace svdq::engine
