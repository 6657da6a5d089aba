#include "server/engine/scheduler.h"

#include <algorithm>
#include <stdexcept>

namespace svdq::engine {

std::vector<int32_t> SchedSeq::AllTokens() const {
  std::vector<int32_t> t = prompt ? *prompt : std::vector<int32_t>();
  t.insert(t.end(), output.begin(), output.end());
  return t;
}

Scheduler::Scheduler(kv::KvCacheManager* kv, int max_running, int64_t max_batch_tokens, int lanes)
    : kv_(kv), max_running_(max_running), max_batch_tokens_(max_batch_tokens) {
  if (max_running < 1 || lanes < max_running || max_batch_tokens < max_running)
    throw std::invalid_argument("scheduler: needs max_running >= 1 lanes and max_batch_tokens >= max_running");
  for (int l = lanes - 1; l >= 0; --l) free_lanes_.push_back(l);
}

std::vector<SchedSeq*> Scheduler::Admit() {
  std::vector<SchedSeq*> admitted;
  while (static_cast<int>(running_.size()) < max_running_ && !waiting_.empty() && !free_lanes_.empty()) {
    SchedSeq* s = waiting_.front().get();
    const std::vector<int32_t> tokens = s->AllTokens();
    const bool use_cache = !s->no_prefix_cache;
    if (!kv_->CanAllocate(tokens, use_cache)) break;
    s->computed = kv_->Allocate(s->id, tokens, use_cache);
    if (s->preempted == 0) s->cached_tokens = static_cast<int32_t>(s->computed);
    s->lane = free_lanes_.back();
    free_lanes_.pop_back();
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    admitted.push_back(s);
  }
  return admitted;
}

bool Scheduler::PreemptNewest(const SchedSeq* keep, std::vector<SchedSeq*>* preempted) {
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    SchedSeq* s = it->get();
    if (s == keep) continue;
    Release(s);
    s->computed = 0;
    s->prefilled = false;
    ++s->preempted;
    preempted->push_back(s);
    waiting_.push_front(std::move(*it));
    running_.erase(std::next(it).base());
    return true;
  }
  return false;
}

std::vector<SchedSeq*> Scheduler::ReserveDecodes(std::vector<SchedSeq*>* preempted) {
  std::vector<SchedSeq*> order, stuck;
  for (auto& r : running_) order.push_back(r.get());
  for (SchedSeq* s : order) {
    if (s->lane < 0 || !s->prefilled) continue;  // preempted meanwhile, or still prefilling
    bool room = true;
    while (!kv_->CanAppend(s->id)) {
      if (!PreemptNewest(s, preempted)) {
        room = false;
        break;
      }
    }
    if (room) kv_->Append(s->id, s->output.back());
    else stuck.push_back(s);
  }
  return stuck;
}

StepPlan Scheduler::Plan() const {
  StepPlan plan;
  int64_t budget = max_batch_tokens_;
  for (const auto& r : running_)
    if (r->prefilled) {
      plan.items.push_back({r.get(), {r->output.back()}, true});
      --budget;
    }
  for (const auto& r : running_) {
    SchedSeq* s = r.get();
    if (s->prefilled) continue;
    if (s->prefill_alone) {
      plan.alone.push_back(s);
      continue;
    }
    if (budget <= 0) continue;
    const std::vector<int32_t> tokens = s->AllTokens();
    const int64_t chunk = std::min<int64_t>(budget, static_cast<int64_t>(tokens.size()) - s->computed);
    // A first chunk shorter than the sequence's minimum (capped: MaxFirstChunk) waits for a step
    // with room.
    const int64_t need = std::min({s->min_first_chunk, static_cast<int64_t>(tokens.size()),
                                   MaxFirstChunk(max_batch_tokens_, max_running_)});
    if (s->computed == 0 && chunk < need) continue;
    budget -= chunk;
    plan.items.push_back({s, std::vector<int32_t>(tokens.begin() + s->computed, tokens.begin() + s->computed + chunk),
                          s->computed + chunk == static_cast<int64_t>(tokens.size())});
  }
  return plan;
}

bool Scheduler::WouldAdmit() const {
  if (static_cast<int>(running_.size()) >= max_running_ || waiting_.empty() || free_lanes_.empty()) return false;
  const SchedSeq* s = waiting_.front().get();
  return kv_->CanAllocate(s->AllTokens(), !s->no_prefix_cache);
}

bool Scheduler::ReserveAhead(const std::vector<SchedSeq*>& seqs) {
  int32_t blocks = 0;
  for (const SchedSeq* s : seqs) {
    if (s->lane < 0 || !s->prefilled) throw std::logic_error("ReserveAhead: a sequence that is not decoding");
    blocks += kv_->AppendTakesBlock(s->id) ? 1 : 0;
  }
  if (blocks > kv_->num_free_blocks()) return false;
  for (const SchedSeq* s : seqs) kv_->Append(s->id, kUnknownToken);
  return true;
}

void Scheduler::Advance(SchedSeq* s, int64_t tokens) {
  s->computed += tokens;
  kv_->Commit(s->id, static_cast<int32_t>(s->computed));
}

void Scheduler::Release(SchedSeq* s) {
  kv_->Free(s->id);  // every block at once; unknown ids are ignored
  if (s->lane >= 0) {
    free_lanes_.push_back(s->lane);
    if (on_lane_released) on_lane_released(s->lane);
  }
  s->lane = -1;
}

std::unique_ptr<SchedSeq> Scheduler::TakeRunning(SchedSeq* s) {
  for (auto it = running_.begin(); it != running_.end(); ++it)
    if (it->get() == s) {
      std::unique_ptr<SchedSeq> out = std::move(*it);
      running_.erase(it);
      return out;
    }
  return nullptr;
}

}  // namespace svdq::engine
