// The engine's scheduling decisions, apart from the model, the tensors and the thread: which
// waiting requests are admitted, which running sequence gives way when the cache is full, and
// what one step computes. Pure C++ over the KV cache manager (no torch), so its rules are
// unit-tested on their own (tests/unit/scheduler_test.cc).
//
// A step, as the engine runs it (server/engine/engine.cc):
//   Admit          first come, first served: the head of the queue waits until its blocks fit,
//                  and nobody overtakes it, so no request starves; a lane each (tail page and
//                  basis slot of page-coded keys)
//   ReserveDecodes every prefilled sequence gets room for one more token, oldest first; newer
//                  sequences give way (preemption by recompute: blocks freed, back to the head
//                  of the queue); one that holds the whole cache alone must end (LENGTH)
//   Plan           decodes first (one token each), then prompt chunks in arrival order while the
//                  step's token budget lasts; a chunk that ends its prompt samples; sequences
//                  that want prompt logprobs are prefilled alone, in one piece
//   Advance        after the forward: the step's tokens are in the cache
//   Release        a finished sequence's blocks and lane go back
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <vector>

#include "server/kv/kv_cache_manager.h"

namespace svdq::engine {

// A sequence as the scheduler sees it; the engine's Sequence extends it.
struct SchedSeq {
  virtual ~SchedSeq() = default;
  kv::SeqId id = 0;
  int lane = -1;                                // tail page and basis slot while running
  const std::vector<int32_t>* prompt = nullptr;  // owned by the extending class
  std::vector<int32_t> output;
  int64_t computed = 0;      // tokens whose keys and values are in the cache
  bool prefilled = false;    // false: the next step runs prompt + output (after preemption, a recompute)
  bool no_prefix_cache = false;  // computed in full (prompt logprobs): prefix-cache hits are not used
  bool prefill_alone = false;    // to prefill alone and whole next (until its prompt logprobs are made)
  // Tokens the first forward (from position 0) must cover at least, all at once: an SVDq
  // prefill basis is fitted on them, so it must not depend on how a step's budget was shared.
  int64_t min_first_chunk = 0;
  int32_t preempted = 0;
  int32_t cached_tokens = 0;   // prompt tokens found in the prefix cache at first admission
  bool in_queue_bound = true;  // counted against the queue bound (until first admitted)
  std::vector<int32_t> AllTokens() const;
};

// One step's work.
struct StepPlan {
  struct Item {
    SchedSeq* seq;
    std::vector<int32_t> tokens;  // to compute this step
    bool samples;                 // the last token's logits choose the next token
  };
  std::vector<Item> items;       // decodes first, then prompt chunks
  std::vector<SchedSeq*> alone;  // to prefill alone this step (prompt logprobs)
};

class Scheduler {
 public:
  // `lanes`: lanes 0 .. lanes - 1 are given out (at least max_running of them).
  Scheduler(kv::KvCacheManager* kv, int max_running, int64_t max_batch_tokens, int lanes);

  std::deque<std::unique_ptr<SchedSeq>>& waiting() { return waiting_; }
  std::list<std::unique_ptr<SchedSeq>>& running() { return running_; }
  void Enqueue(std::unique_ptr<SchedSeq> s) { waiting_.push_back(std::move(s)); }

  // Admits from the head of the queue while a lane is free and the head's blocks fit. Returns
  // the admitted sequences, in order.
  std::vector<SchedSeq*> Admit();
  // Room for one more token for every prefilled running sequence, oldest first. Sequences
  // preempted to make room are appended to *preempted (already back in the queue); returns
  // the sequences that could not get room although nothing else was left to give way (the
  // caller ends them; they are still running).
  std::vector<SchedSeq*> ReserveDecodes(std::vector<SchedSeq*>* preempted);
  StepPlan Plan() const;
  // Whether Admit would admit anyone now (changes nothing).
  bool WouldAdmit() const;
  // Room for one more token for each of `seqs` (running and prefilled) whose next token is not
  // known yet (the step that chooses it is still on the GPU): all of them or none, and nobody
  // is preempted. Appends kUnknownToken for each; the engine sets it (KvCacheManager::
  // SetLastToken) once read, before the step after commits it.
  bool ReserveAhead(const std::vector<SchedSeq*>& seqs);
  static constexpr int32_t kUnknownToken = -1;
  // The longest first chunk a sequence's minimum (SchedSeq::min_first_chunk) can hold out for:
  // what every step has left after a full batch of decodes, so that running sequences can never
  // hold it back for longer than the prompt chunks ahead of it.
  static int64_t MaxFirstChunk(int64_t max_batch_tokens, int64_t max_running) {
    return std::max<int64_t>(1, max_batch_tokens - max_running);
  }
  // `tokens` more of s's tokens are in the cache.
  void Advance(SchedSeq* s, int64_t tokens);
  // Gives back s's blocks and lane (s stays where it is in the lists). Idempotent.
  void Release(SchedSeq* s);
  // Removes s from the running list and returns it.
  std::unique_ptr<SchedSeq> TakeRunning(SchedSeq* s);
  // Called with each lane given back (the storage forgets the lane's basis).
  std::function<void(int lane)> on_lane_released;

  int free_lanes() const { return static_cast<int>(free_lanes_.size()); }

 private:
  bool PreemptNewest(const SchedSeq* keep, std::vector<SchedSeq*>* preempted);

  kv::KvCacheManager* kv_;
  int max_running_;
  int64_t max_batch_tokens_;
  std::vector<int> free_lanes_;  // the lowest on top
  std::deque<std::unique_ptr<SchedSeq>> waiting_;
  std::list<std::unique_ptr<SchedSeq>> running_;
};

}  // namespace svdq::engine
