// KV cache bookkeeping for the engine: per-sequence block tables over a BlockPool, with
// prefix caching of full blocks through chained hashes. Decides what fits
// (CanAllocate / CanAppend, which never change state) apart from taking it
// (Allocate / Append), so the scheduler can ask before it commits. Running out of
// blocks is a normal answer (false), not an error. No tensors, no CUDA, no locks.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "server/kv/block_pool.h"

namespace svdq::kv {

using SeqId = int64_t;

struct KvCacheConfig {
  int32_t num_blocks = 0;
  int32_t block_size = 16;     // tokens per block
  bool prefix_caching = true;  // only where sharing is sound (bf16 keys, SVDq with a calibrated basis)
  uint64_t mode_key = 0;       // identity of the cache mode and basis: part of every block hash
};

class KvCacheManager {
 public:
  explicit KvCacheManager(const KvCacheConfig& cfg);

  // Whether a new sequence with this prompt fits now (prefix hits counted).
  // use_prefix_cache = false ignores cached blocks (for a prompt that must be computed in full).
  bool CanAllocate(const std::vector<int32_t>& prompt, bool use_prefix_cache = true) const;
  // Gives a new sequence the blocks of its prompt, reusing cached full blocks of an
  // identical prefix. Returns how many prompt tokens are already cached (whole blocks,
  // always fewer than the prompt, so at least one token is computed).
  // Call only if CanAllocate(prompt) and id is not allocated.
  int32_t Allocate(SeqId id, const std::vector<int32_t>& prompt, bool use_prefix_cache = true);
  // Whether one more token fits (it may need a new block).
  bool CanAppend(SeqId id) const;
  // Adds one token to the sequence. Call only if CanAppend(id).
  void Append(SeqId id, int32_t token);
  // Whether the next Append takes a new block.
  bool AppendTakesBlock(SeqId id) const { return seqs_.at(id).tokens.size() % cfg_.block_size == 0; }
  // Sets the last token's id: one appended before it was known (the engine launches a decode
  // step before reading the token the step before chose). Call before Commit covers it.
  void SetLastToken(SeqId id, int32_t token);
  // Declares the first `computed` tokens' KV written, so that full blocks among them can
  // be found by later identical prefixes.
  void Commit(SeqId id, int32_t computed);
  // Releases every block of the sequence at once. Unknown ids are ignored.
  void Free(SeqId id);

  bool Has(SeqId id) const { return seqs_.count(id) != 0; }
  const std::vector<BlockId>& Blocks(SeqId id) const { return seqs_.at(id).blocks; }
  int32_t NumTokens(SeqId id) const { return static_cast<int32_t>(seqs_.at(id).tokens.size()); }
  int32_t num_blocks() const { return pool_.num_blocks(); }
  int32_t num_free_blocks() const { return pool_.num_free(); }
  int32_t block_size() const { return cfg_.block_size; }
  double usage() const { return num_blocks() ? 1.0 - static_cast<double>(num_free_blocks()) / num_blocks() : 0.0; }
  int64_t prefix_query_tokens() const { return prefix_queries_; }
  int64_t prefix_hit_tokens() const { return prefix_hits_; }

  // Empty if the pool's invariants hold and every block's ref count equals the number of
  // block tables holding it; else what is broken. For tests, after every operation.
  std::string CheckInvariants() const;

 private:
  struct Seq {
    std::vector<int32_t> tokens;
    std::vector<BlockId> blocks;
    std::vector<BlockHash> hashes;  // of the committed full blocks, in order
  };
  // Leading full blocks of `prompt` found in the cache (at most (n - 1) / block_size).
  std::vector<BlockId> PrefixHits(const std::vector<int32_t>& prompt, bool use_prefix_cache) const;

  KvCacheConfig cfg_;
  BlockPool pool_;
  std::unordered_map<SeqId, Seq> seqs_;
  int64_t prefix_queries_ = 0, prefix_hits_ = 0;
};

}  // namespace svdq::kv
