// KV cache bookkeeping: allocation, growth, prefix sharing and freeing, with every
// invariant checked after every operation; a long random run ends with the pool full.
// Built twice: in svdq_unit_tests, and alone under AddressSanitizer (svdq_kv_asan_tests).
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "server/kv/kv_cache_manager.h"

using namespace svdq::kv;

namespace {

#define EXPECT_INVARIANTS(m) EXPECT_EQ((m).CheckInvariants(), "")

std::vector<int32_t> Tokens(int n, int32_t start) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = start + i;
  return v;
}

TEST(KvCache, AllocateAppendFree) {
  KvCacheManager m({8, 4, false, 0});
  ASSERT_TRUE(m.CanAllocate(Tokens(9, 0)));
  EXPECT_EQ(m.Allocate(1, Tokens(9, 0)), 0);
  EXPECT_EQ(m.Blocks(1).size(), 3u);  // 9 tokens in blocks of 4
  EXPECT_EQ(m.num_free_blocks(), 5);
  EXPECT_INVARIANTS(m);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(m.CanAppend(1));
    m.Append(1, 100 + i);
  }
  EXPECT_EQ(m.Blocks(1).size(), 3u);  // 12 tokens still fit
  m.Append(1, 200);
  EXPECT_EQ(m.Blocks(1).size(), 4u);
  EXPECT_INVARIANTS(m);
  m.Free(1);
  m.Free(1);  // a second free of the same id is ignored
  EXPECT_EQ(m.num_free_blocks(), 8);
  EXPECT_INVARIANTS(m);
}

TEST(KvCache, ExhaustionIsAnAnswerNotAnError) {
  KvCacheManager m({3, 4, false, 0});
  EXPECT_FALSE(m.CanAllocate(Tokens(13, 0)));  // needs 4 blocks
  ASSERT_TRUE(m.CanAllocate(Tokens(12, 0)));
  m.Allocate(1, Tokens(12, 0));
  EXPECT_FALSE(m.CanAppend(1));  // the next token needs a fourth block
  EXPECT_FALSE(m.CanAllocate(Tokens(1, 0)));
  EXPECT_EQ(m.num_free_blocks(), 0);
  EXPECT_DOUBLE_EQ(m.usage(), 1.0);
  EXPECT_INVARIANTS(m);
  m.Free(1);
  EXPECT_TRUE(m.CanAllocate(Tokens(12, 0)));
}

TEST(KvCache, PrefixBlocksAreSharedAfterCommit) {
  KvCacheManager m({10, 4, true, 7});
  auto a = Tokens(10, 0);  // blocks [0..3] [4..7] [8,9]
  m.Allocate(1, a);
  EXPECT_INVARIANTS(m);
  auto b = Tokens(10, 0);
  b[9] = 99;  // same first 8 tokens
  EXPECT_EQ(m.Allocate(2, b), 0);  // nothing committed yet: no sharing
  m.Free(2);
  m.Commit(1, 10);
  EXPECT_EQ(m.Allocate(2, b), 8);  // two full blocks reused
  EXPECT_EQ(m.Blocks(2)[0], m.Blocks(1)[0]);
  EXPECT_EQ(m.Blocks(2)[1], m.Blocks(1)[1]);
  EXPECT_NE(m.Blocks(2)[2], m.Blocks(1)[2]);
  EXPECT_INVARIANTS(m);
  // A prompt of exactly two blocks reuses only the first: one token must be computed.
  EXPECT_EQ(m.Allocate(3, Tokens(8, 0)), 4);
  EXPECT_INVARIANTS(m);
  // Freed cached blocks stay findable until their slot is taken again.
  m.Free(1);
  m.Free(2);
  m.Free(3);
  EXPECT_EQ(m.num_free_blocks(), 10);
  EXPECT_EQ(m.Allocate(4, a), 8);
  EXPECT_INVARIANTS(m);
}

// A registered block is found only under the parent block it was computed after, and only
// while that parent still holds the same contents: a hash collision, or a parent evicted and
// reused, cannot hand out keys computed under another prefix. (Before, the hash and the
// block's own tokens decided.)
TEST(BlockPool, LookupChecksTheParentChain) {
  BlockPool pool(4);
  const std::vector<int32_t> t = Tokens(4, 100);
  const BlockId parent = pool.Take(), child = pool.Take();
  const BlockHash h = 0x1234;  // any hash: the same one stands for a collision
  pool.Register(child, h, parent, t.data(), 4);
  EXPECT_EQ(pool.Lookup(h, parent, t.data(), 4), child);
  EXPECT_EQ(pool.Lookup(h, -1, t.data(), 4), -1);            // as a first block: another prefix
  const BlockId other = pool.Take();
  EXPECT_EQ(pool.Lookup(h, other, t.data(), 4), -1);         // under another parent
  // The parent is freed, then taken again for something else: the child must not match it.
  pool.Unref(parent);
  EXPECT_EQ(pool.Lookup(h, parent, t.data(), 4), child);     // freed but intact: still valid
  pool.Unref(other);
  pool.Take();  // the free list is [never used, parent, other]: this takes the first...
  ASSERT_EQ(pool.Take(), parent);  // ...and this one reuses the parent for new contents
  EXPECT_EQ(pool.Lookup(h, parent, t.data(), 4), -1);
  EXPECT_EQ(pool.CheckInvariants(), "");
}

TEST(KvCache, DifferentModesNeverShare) {
  KvCacheManager bf16({10, 4, true, 1});
  bf16.Allocate(1, Tokens(9, 0));
  bf16.Commit(1, 9);
  EXPECT_EQ(bf16.Allocate(2, Tokens(9, 0)), 8);
  // The same tokens under another mode key hash differently.
  EXPECT_NE(ChainHash(0, 1, Tokens(4, 0).data(), 4), ChainHash(0, 2, Tokens(4, 0).data(), 4));
  EXPECT_NE(ChainHash(0, 1, Tokens(4, 0).data(), 4), ChainHash(5, 1, Tokens(4, 0).data(), 4));
}

TEST(KvCache, RevivingFreeCachedBlocksCountsAgainstTheFreeList) {
  KvCacheManager m({3, 4, true, 0});
  m.Allocate(1, Tokens(9, 0));  // 3 blocks
  m.Commit(1, 9);
  m.Free(1);
  // The prompt hits 2 cached (free) blocks and needs 1 new one: 3 free blocks suffice.
  EXPECT_TRUE(m.CanAllocate(Tokens(9, 0)));
  EXPECT_EQ(m.Allocate(2, Tokens(9, 0)), 8);
  EXPECT_EQ(m.num_free_blocks(), 0);
  EXPECT_INVARIANTS(m);
}

TEST(KvCache, LongRandomRunLeavesThePoolFull) {
  std::mt19937 rng(12345);
  for (bool caching : {false, true}) {
    KvCacheManager m({64, 4, caching, 3});
    std::map<SeqId, int> live;  // id -> tokens
    SeqId next = 1;
    // A few shared prefixes so that prefix hits happen often.
    std::vector<std::vector<int32_t>> stems = {Tokens(12, 0), Tokens(7, 1000), Tokens(20, 5000)};
    for (int step = 0; step < 4000; ++step) {
      int op = rng() % 10;
      if (op < 3) {
        std::vector<int32_t> p = stems[rng() % stems.size()];
        p.resize(1 + rng() % p.size());
        for (int k = rng() % 6; k > 0; --k) p.push_back(static_cast<int32_t>(rng() % 50000));
        if (m.CanAllocate(p)) {
          int32_t cached = m.Allocate(next, p);
          ASSERT_LT(cached, static_cast<int32_t>(p.size()));
          ASSERT_EQ(cached % 4, 0);
          m.Commit(next, static_cast<int32_t>(p.size()));
          live[next++] = static_cast<int>(p.size());
        }
      } else if (op < 8 && !live.empty()) {
        auto it = std::next(live.begin(), rng() % live.size());
        if (m.CanAppend(it->first)) {
          m.Append(it->first, static_cast<int32_t>(rng() % 50000));
          m.Commit(it->first, ++it->second);
        }
      } else if (!live.empty()) {
        auto it = std::next(live.begin(), rng() % live.size());
        m.Free(it->first);
        live.erase(it);
      }
      ASSERT_EQ(m.CheckInvariants(), "") << "after step " << step;
    }
    for (auto& [id, n] : live) m.Free(id);
    EXPECT_EQ(m.num_free_blocks(), 64);
    EXPECT_INVARIANTS(m);
    if (caching) EXPECT_GT(m.prefix_hit_tokens(), 0);
  }
}

}  // namespace
