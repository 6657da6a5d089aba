// The KV block pool: fixed-size blocks, reference counts, an LRU free list with O(1)
// removal from the middle (a prefix-cache hit revives a free block), and the index of
// full blocks by prefix hash. Bookkeeping only: no tensors, no CUDA; owned by the
// engine thread, so no locks.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace svdq::kv {

using BlockId = int32_t;
using BlockHash = uint64_t;

class BlockPool {
 public:
  explicit BlockPool(int32_t num_blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  int32_t num_free() const { return num_free_; }
  int32_t ref_count(BlockId b) const { return blocks_[b].refs; }

  // Takes the least recently freed block and gives it one reference; its old hash, if
  // any, is forgotten. Call only if num_free() > 0.
  BlockId Take();
  // Adds a reference. A free block (ref count 0, still cached) leaves the free list.
  void Ref(BlockId b);
  // Drops a reference; at zero the block joins the free list's tail, keeping its hash
  // so that a later identical prefix can still find it.
  void Unref(BlockId b);

  // The block registered under `h` whose tokens are `tokens` and whose parent is `parent`
  // (-1 for a prefix's first block) as it was when the block was registered, or -1. The
  // hash only finds a candidate; tokens and parent decide, so that a hash collision can never
  // hand out keys and values computed under another prefix.
  BlockId Lookup(BlockHash h, BlockId parent, const int32_t* tokens, int32_t n) const;
  // Registers a full block under its prefix hash (replacing any older block under it), with
  // the block before it in its sequence (-1 for the first).
  void Register(BlockId b, BlockHash h, BlockId parent, const int32_t* tokens, int32_t n);

  // Empty if every invariant holds, else what is broken: the free list links, its
  // length against the free count, ref counts >= 0, and the hash index.
  std::string CheckInvariants() const;

 private:
  struct Block {
    int32_t refs = 0;
    BlockId prev = -1, next = -1;  // free-list links
    bool in_free_list = false;
    bool hashed = false;
    BlockHash hash = 0;
    std::vector<int32_t> tokens;  // of a registered block, to reject hash collisions
    uint64_t generation = 0;      // counts Takes: a block's contents are those of one generation
    BlockId parent = -1;          // of a registered block, and that parent's generation then
    uint64_t parent_generation = 0;
  };
  void Unlink(BlockId b);
  void PushBack(BlockId b);
  void Forget(BlockId b);

  std::vector<Block> blocks_;
  BlockId head_ = -1, tail_ = -1;
  int32_t num_free_ = 0;
  std::unordered_map<BlockHash, BlockId> by_hash_;
};

// Hash of a full block in a chain: the parent's hash, the cache mode's key (so blocks
// encoded differently never match) and the block's tokens. FNV-1a, 64 bits.
BlockHash ChainHash(BlockHash parent, uint64_t mode_key, const int32_t* tokens, int32_t n);

}  // namespace svdq::kv
