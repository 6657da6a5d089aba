// The scheduler's rules on a real KV cache manager (no model): first-come-first-served
// admission that nobody overtakes, one lane per running sequence, the step plan (decodes first,
// then prompt chunks in arrival order under the token budget; a chunk that ends its prompt
// samples), preemption of the newest sequence when a decode needs a block, a sequence that
// holds the whole cache reported stuck, prompt-logprob sequences prefilled alone without
// prefix-cache hits, blocks and lanes given back on release, and room reserved ahead of an
// unread token (overlapped steps: all or none, no preemption; the token set before it is
// committed). Cache invariants after every operation.
#include "server/engine/scheduler.h"

#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <vector>

using namespace svdq;
using engine::SchedSeq;
using engine::Scheduler;

namespace {

struct TestSeq : SchedSeq {
  std::vector<int32_t> prompt_tokens;
};

class SchedulerTest : public ::testing::Test {
 protected:
  // 8 blocks of 4 tokens; up to 2 running; 6 tokens per step.
  void Make(int blocks = 8, int max_running = 2, int64_t budget = 6, bool prefix_caching = false) {
    kv::KvCacheConfig c;
    c.num_blocks = blocks;
    c.block_size = 4;
    c.prefix_caching = prefix_caching;
    kv_ = std::make_unique<kv::KvCacheManager>(c);
    sched_ = std::make_unique<Scheduler>(kv_.get(), max_running, budget, max_running);
    sched_->on_lane_released = [this](int lane) { released_.push_back(lane); };
  }
  TestSeq* Add(int64_t id, int prompt_len, int32_t first = 1) {
    auto s = std::make_unique<TestSeq>();
    s->id = id;
    for (int i = 0; i < prompt_len; ++i) s->prompt_tokens.push_back(first + i);
    s->prompt = &s->prompt_tokens;
    TestSeq* raw = s.get();
    sched_->Enqueue(std::move(s));
    return raw;
  }
  // Runs the plan as the engine would: every item's tokens computed, samplers get token 7.
  void RunPlan(const engine::StepPlan& plan) {
    for (const auto& it : plan.items) {
      sched_->Advance(it.seq, static_cast<int64_t>(it.tokens.size()));
      if (it.samples) {
        it.seq->prefilled = true;
        it.seq->output.push_back(7);
      }
    }
    EXPECT_EQ(kv_->CheckInvariants(), "");
  }
  std::unique_ptr<kv::KvCacheManager> kv_;
  std::unique_ptr<Scheduler> sched_;
  std::vector<int> released_;
};

TEST_F(SchedulerTest, AdmitsInOrderWhileLanesAndBlocksLast) {
  Make();
  TestSeq* a = Add(1, 5);
  TestSeq* b = Add(2, 5);
  TestSeq* c = Add(3, 1);
  auto admitted = sched_->Admit();
  ASSERT_EQ(admitted.size(), 2u);  // max_running 2: c waits although it would fit
  EXPECT_EQ(admitted[0], a);
  EXPECT_EQ(admitted[1], b);
  EXPECT_NE(a->lane, b->lane);
  EXPECT_GE(a->lane, 0);
  EXPECT_EQ(sched_->free_lanes(), 0);
  EXPECT_EQ(sched_->waiting().size(), 1u);
  EXPECT_EQ(sched_->waiting().front().get(), c);
  EXPECT_EQ(kv_->CheckInvariants(), "");
}

TEST_F(SchedulerTest, TheHeadOfTheQueueIsNotOvertaken) {
  Make(/*blocks=*/4, /*max_running=*/2);
  TestSeq* big = Add(1, 9);  // 3 of the 4 blocks
  ASSERT_EQ(sched_->Admit().size(), 1u);
  TestSeq* next = Add(2, 9);   // 3 blocks: must wait
  TestSeq* small = Add(3, 1);  // 1 block would fit, but it must not pass `next`
  EXPECT_TRUE(sched_->Admit().empty());
  EXPECT_EQ(small->lane, -1);
  sched_->Release(big);
  sched_->TakeRunning(big);
  auto admitted = sched_->Admit();
  ASSERT_EQ(admitted.size(), 2u);
  EXPECT_EQ(admitted[0], next);
  EXPECT_EQ(admitted[1], small);
  EXPECT_EQ(kv_->num_free_blocks(), 0);
  EXPECT_EQ(kv_->CheckInvariants(), "");
}

TEST_F(SchedulerTest, PlanPutsDecodesFirstThenChunksUnderTheBudget) {
  Make(/*blocks=*/8, /*max_running=*/2, /*budget=*/6);
  TestSeq* a = Add(1, 3);
  TestSeq* b = Add(2, 9);
  sched_->Admit();
  engine::StepPlan p1 = sched_->Plan();
  ASSERT_EQ(p1.items.size(), 2u);
  EXPECT_EQ(p1.items[0].seq, a);
  EXPECT_EQ(p1.items[0].tokens.size(), 3u);
  EXPECT_TRUE(p1.items[0].samples);  // a's whole prompt
  EXPECT_EQ(p1.items[1].seq, b);
  EXPECT_EQ(p1.items[1].tokens.size(), 3u);  // the rest of the budget
  EXPECT_FALSE(p1.items[1].samples);
  RunPlan(p1);
  std::vector<SchedSeq*> preempted;
  EXPECT_TRUE(sched_->ReserveDecodes(&preempted).empty());
  EXPECT_TRUE(preempted.empty());
  engine::StepPlan p2 = sched_->Plan();
  ASSERT_EQ(p2.items.size(), 2u);
  EXPECT_EQ(p2.items[0].seq, a);  // a decodes first: one token, its last output
  EXPECT_EQ(p2.items[0].tokens, std::vector<int32_t>{7});
  EXPECT_EQ(p2.items[1].seq, b);
  EXPECT_EQ(p2.items[1].tokens, std::vector<int32_t>({4, 5, 6, 7, 8}));  // b's next chunk: 5 of 9
  EXPECT_FALSE(p2.items[1].samples);
  EXPECT_EQ(p2.items[1].tokens.front(), b->prompt_tokens[3]);
}

TEST_F(SchedulerTest, AFirstChunkBelowItsMinimumWaitsForRoom) {
  // An SVDq prefill-basis sequence's first forward covers min(prompt, min_first_chunk) tokens
  // whole, however the budget is shared; later chunks are as usual.
  Make(/*blocks=*/8, /*max_running=*/2, /*budget=*/6);
  TestSeq* a = Add(1, 3);
  TestSeq* b = Add(2, 9);
  b->min_first_chunk = 5;
  sched_->Admit();
  engine::StepPlan p1 = sched_->Plan();
  ASSERT_EQ(p1.items.size(), 1u);  // a takes 3 of 6: b's 3 would be below its 5
  EXPECT_EQ(p1.items[0].seq, a);
  RunPlan(p1);
  std::vector<SchedSeq*> preempted;
  sched_->ReserveDecodes(&preempted);
  engine::StepPlan p2 = sched_->Plan();  // a decodes (1), b gets 5 of its 9
  ASSERT_EQ(p2.items.size(), 2u);
  EXPECT_EQ(p2.items[1].seq, b);
  EXPECT_EQ(p2.items[1].tokens.size(), 5u);
  RunPlan(p2);
  sched_->ReserveDecodes(&preempted);
  engine::StepPlan p3 = sched_->Plan();  // after the first chunk, any size goes
  ASSERT_EQ(p3.items.size(), 2u);
  EXPECT_EQ(p3.items[1].tokens.size(), 4u);
  // A minimum above the step budget or the prompt is capped by them, never waits forever.
  Make(/*blocks=*/8, /*max_running=*/2, /*budget=*/6);
  TestSeq* c = Add(3, 9);
  c->min_first_chunk = 100;
  TestSeq* d = Add(4, 2);
  d->min_first_chunk = 100;
  sched_->Admit();
  engine::StepPlan q = sched_->Plan();
  ASSERT_EQ(q.items.size(), 1u);
  EXPECT_EQ(q.items[0].seq, c);
  EXPECT_EQ(q.items[0].tokens.size(), 6u);  // the whole budget; d (2 tokens) waits for 2 whole
  // The minimum is capped at what a step leaves after max_running decodes (6 - 2 = 4): a
  // sequence behind a decoding one still starts.
  Make(/*blocks=*/8, /*max_running=*/2, /*budget=*/6);
  TestSeq* e = Add(5, 1);
  TestSeq* f = Add(6, 9);
  f->min_first_chunk = 6;
  sched_->Admit();
  RunPlan(sched_->Plan());  // e prefills (1 token); f's 5 meet its capped minimum of 4
  EXPECT_EQ(f->computed, 5);
  EXPECT_TRUE(e->prefilled);
}

TEST_F(SchedulerTest, TheNewestGivesWayAndComesBackFirst) {
  Make(/*blocks=*/3, /*max_running=*/2, /*budget=*/16);
  TestSeq* a = Add(1, 4);  // fills block 0 exactly: its first decode needs a new block
  TestSeq* b = Add(2, 8);  // blocks 1 and 2
  ASSERT_EQ(sched_->Admit().size(), 2u);
  RunPlan(sched_->Plan());
  ASSERT_TRUE(a->prefilled && b->prefilled);
  std::vector<SchedSeq*> preempted;
  auto stuck = sched_->ReserveDecodes(&preempted);
  EXPECT_TRUE(stuck.empty());
  ASSERT_EQ(preempted.size(), 1u);
  EXPECT_EQ(preempted[0], b);  // the newest gave way
  EXPECT_EQ(b->computed, 0);
  EXPECT_FALSE(b->prefilled);
  EXPECT_EQ(b->preempted, 1);
  EXPECT_EQ(b->lane, -1);
  ASSERT_EQ(sched_->waiting().size(), 1u);
  EXPECT_EQ(sched_->waiting().front().get(), b);  // at the head of the queue
  EXPECT_EQ(released_.size(), 1u);
  EXPECT_EQ(kv_->NumTokens(a->id), 5);  // a got its token's room
  // b recomputes prompt + output when blocks allow: its tokens now include its output.
  EXPECT_EQ(b->AllTokens().size(), 9u);
  EXPECT_EQ(kv_->CheckInvariants(), "");
}

TEST_F(SchedulerTest, ASequenceHoldingTheWholeCacheIsStuck) {
  Make(/*blocks=*/2, /*max_running=*/1, /*budget=*/16);
  TestSeq* a = Add(1, 8);  // both blocks, full
  ASSERT_EQ(sched_->Admit().size(), 1u);
  RunPlan(sched_->Plan());
  std::vector<SchedSeq*> preempted;
  auto stuck = sched_->ReserveDecodes(&preempted);
  ASSERT_EQ(stuck.size(), 1u);
  EXPECT_EQ(stuck[0], a);
  EXPECT_TRUE(preempted.empty());
  sched_->Release(a);
  EXPECT_NE(sched_->TakeRunning(a), nullptr);
  EXPECT_TRUE(sched_->running().empty());
  EXPECT_EQ(kv_->num_free_blocks(), 2);
  EXPECT_EQ(sched_->free_lanes(), 1);
}

TEST_F(SchedulerTest, PromptLogprobSequencesArePrefilledAloneWithoutPrefixHits) {
  Make(/*blocks=*/16, /*max_running=*/2, /*budget=*/64, /*prefix_caching=*/true);
  TestSeq* a = Add(1, 9);
  ASSERT_EQ(sched_->Admit().size(), 1u);
  RunPlan(sched_->Plan());  // a's blocks become cached prefixes
  TestSeq* b = Add(2, 9);   // the same prompt
  b->no_prefix_cache = b->prefill_alone = true;
  ASSERT_EQ(sched_->Admit().size(), 1u);
  EXPECT_EQ(b->computed, 0);        // no hit used
  EXPECT_EQ(b->cached_tokens, 0);
  engine::StepPlan p = sched_->Plan();
  ASSERT_EQ(p.alone.size(), 1u);
  EXPECT_EQ(p.alone[0], b);
  for (const auto& it : p.items) EXPECT_NE(it.seq, b);  // not in the batch
  // Once its logprobs are made it decodes like the others.
  b->prefill_alone = false;
  b->prefilled = true;
  b->computed = 9;
  b->output.push_back(3);
  engine::StepPlan q = sched_->Plan();
  EXPECT_TRUE(q.alone.empty());
  EXPECT_EQ(q.items.size(), 2u);
  // And a plain sequence with the same prompt does use the cache.
  TestSeq* c = Add(3, 9);
  sched_->Release(a);
  sched_->TakeRunning(a);
  ASSERT_EQ(sched_->Admit().size(), 1u);
  EXPECT_EQ(c->computed, 8);  // two whole blocks of a's prompt
  EXPECT_EQ(c->cached_tokens, 8);
}

TEST_F(SchedulerTest, ReserveAheadTakesRoomForAllOrNoneAndNeverPreempts) {
  Make(/*blocks=*/3, /*max_running=*/2, /*budget=*/16);
  TestSeq* a = Add(1, 4);  // block 0, full
  TestSeq* b = Add(2, 3);  // block 1, one slot left
  ASSERT_EQ(sched_->Admit().size(), 2u);
  RunPlan(sched_->Plan());
  std::vector<SchedSeq*> preempted;
  ASSERT_TRUE(sched_->ReserveDecodes(&preempted).empty());  // a takes block 2, b its last slot
  ASSERT_TRUE(preempted.empty());
  sched_->Advance(a, 1);
  sched_->Advance(b, 1);
  ASSERT_EQ(kv_->num_free_blocks(), 0);
  // b's next token needs a block and none is free: nobody gets room, nobody is preempted.
  EXPECT_FALSE(sched_->ReserveAhead({a, b}));
  EXPECT_EQ(kv_->NumTokens(a->id), 5);
  EXPECT_EQ(kv_->NumTokens(b->id), 4);
  EXPECT_EQ(sched_->running().size(), 2u);
  // a alone fits in its block 2: room taken, its token unknown until set.
  EXPECT_TRUE(sched_->ReserveAhead({a}));
  EXPECT_EQ(kv_->NumTokens(a->id), 6);
  kv_->SetLastToken(a->id, 11);
  EXPECT_EQ(kv_->CheckInvariants(), "");
  // A queued request that cannot be admitted (no lane) is not admitted by WouldAdmit's word.
  Add(3, 2);
  EXPECT_FALSE(sched_->WouldAdmit());
  sched_->Release(b);
  sched_->TakeRunning(b);
  EXPECT_TRUE(sched_->WouldAdmit());
  EXPECT_EQ(sched_->Admit().size(), 1u);
  EXPECT_FALSE(sched_->WouldAdmit());  // the queue is empty
}

TEST_F(SchedulerTest, ATokenSetAheadIsWhatThePrefixCacheHashes) {
  Make(/*blocks=*/8, /*max_running=*/2, /*budget=*/16, /*prefix_caching=*/true);
  TestSeq* a = Add(1, 3, /*first=*/1);  // tokens 1 2 3
  ASSERT_EQ(sched_->Admit().size(), 1u);
  RunPlan(sched_->Plan());  // a's output: 7
  std::vector<SchedSeq*> preempted;
  sched_->ReserveDecodes(&preempted);  // token 7 at position 3
  sched_->Advance(a, 1);               // block 0 = 1 2 3 7, committed
  EXPECT_THROW(kv_->SetLastToken(a->id, 5), std::logic_error);  // committed: cannot change
  ASSERT_TRUE(sched_->ReserveAhead({a}));  // position 4, token unknown
  kv_->SetLastToken(a->id, 9);
  for (int i = 0; i < 3; ++i) {  // positions 5-7, then block 1 = 9 x x x is committed
    sched_->Advance(a, 1);
    ASSERT_TRUE(sched_->ReserveAhead({a}));
    kv_->SetLastToken(a->id, 20 + i);
  }
  sched_->Advance(a, 1);
  EXPECT_EQ(a->computed, 8);
  EXPECT_EQ(kv_->CheckInvariants(), "");
  // A prompt of exactly those tokens finds both blocks (one token is always computed).
  auto c = std::make_unique<TestSeq>();
  c->id = 3;
  c->prompt_tokens = {1, 2, 3, 7, 9, 20, 21, 22, 5};
  c->prompt = &c->prompt_tokens;
  TestSeq* craw = c.get();
  sched_->Enqueue(std::move(c));
  ASSERT_EQ(sched_->Admit().size(), 1u);
  EXPECT_EQ(craw->computed, 8);
}

TEST_F(SchedulerTest, RejectsImpossibleLimits) {
  kv::KvCacheConfig c;
  c.num_blocks = 4;
  kv::KvCacheManager kv(c);
  EXPECT_THROW(Scheduler(&kv, 0, 16, 1), std::invalid_argument);
  EXPECT_THROW(Scheduler(&kv, 4, 16, 2), std::invalid_argument);  // fewer lanes than running
  EXPECT_THROW(Scheduler(&kv, 4, 2, 4), std::invalid_argument);   // budget below the decodes
}

}  // namespace
