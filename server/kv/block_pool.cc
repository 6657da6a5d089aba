#include "server/kv/block_pool.h"

#include <cstring>

namespace svdq::kv {

BlockPool::BlockPool(int32_t num_blocks) : blocks_(num_blocks > 0 ? num_blocks : 0) {
  for (BlockId b = 0; b < this->num_blocks(); ++b) PushBack(b);
}

void BlockPool::Unlink(BlockId b) {
  Block& k = blocks_[b];
  if (k.prev >= 0) blocks_[k.prev].next = k.next;
  else head_ = k.next;
  if (k.next >= 0) blocks_[k.next].prev = k.prev;
  else tail_ = k.prev;
  k.prev = k.next = -1;
  k.in_free_list = false;
  --num_free_;
}

void BlockPool::PushBack(BlockId b) {
  Block& k = blocks_[b];
  k.prev = tail_;
  k.next = -1;
  if (tail_ >= 0) blocks_[tail_].next = b;
  else head_ = b;
  tail_ = b;
  k.in_free_list = true;
  ++num_free_;
}

void BlockPool::Forget(BlockId b) {
  Block& k = blocks_[b];
  if (!k.hashed) return;
  auto it = by_hash_.find(k.hash);
  if (it != by_hash_.end() && it->second == b) by_hash_.erase(it);
  k.hashed = false;
  k.tokens.clear();
}

BlockId BlockPool::Take() {
  BlockId b = head_;
  Unlink(b);
  Forget(b);
  blocks_[b].refs = 1;
  ++blocks_[b].generation;  // new contents: blocks registered after it no longer match
  return b;
}

void BlockPool::Ref(BlockId b) {
  Block& k = blocks_[b];
  if (k.in_free_list) Unlink(b);
  ++k.refs;
}

void BlockPool::Unref(BlockId b) {
  Block& k = blocks_[b];
  if (--k.refs == 0) PushBack(b);
}

BlockId BlockPool::Lookup(BlockHash h, BlockId parent, const int32_t* tokens, int32_t n) const {
  auto it = by_hash_.find(h);
  if (it == by_hash_.end()) return -1;
  const Block& k = blocks_[it->second];
  if (static_cast<int32_t>(k.tokens.size()) != n || std::memcmp(k.tokens.data(), tokens, n * sizeof(int32_t)) != 0)
    return -1;
  // The same parent block, still holding what it held when this block was computed.
  if (k.parent != parent || (parent >= 0 && blocks_[parent].generation != k.parent_generation)) return -1;
  return it->second;
}

void BlockPool::Register(BlockId b, BlockHash h, BlockId parent, const int32_t* tokens, int32_t n) {
  auto it = by_hash_.find(h);
  if (it != by_hash_.end() && it->second != b) {
    blocks_[it->second].hashed = false;  // the older block stays valid but is no longer found
    blocks_[it->second].tokens.clear();
  }
  Forget(b);
  Block& k = blocks_[b];
  k.hashed = true;
  k.hash = h;
  k.tokens.assign(tokens, tokens + n);
  k.parent = parent;
  k.parent_generation = parent >= 0 ? blocks_[parent].generation : 0;
  by_hash_[h] = b;
}

std::string BlockPool::CheckInvariants() const {
  int32_t count = 0;
  BlockId prev = -1;
  for (BlockId b = head_; b >= 0; b = blocks_[b].next) {
    if (++count > num_blocks()) return "free list has a cycle";
    if (blocks_[b].prev != prev) return "free list back link broken at block " + std::to_string(b);
    if (!blocks_[b].in_free_list || blocks_[b].refs != 0) return "block " + std::to_string(b) + " in the free list is in use";
    prev = b;
  }
  if (prev != tail_) return "free list tail is wrong";
  if (count != num_free_) return "free count " + std::to_string(num_free_) + " but " + std::to_string(count) + " blocks in the free list";
  for (BlockId b = 0; b < num_blocks(); ++b) {
    const Block& k = blocks_[b];
    if (k.refs < 0) return "block " + std::to_string(b) + " has a negative ref count";
    if ((k.refs == 0) != k.in_free_list) return "block " + std::to_string(b) + " ref count disagrees with the free list";
    if (k.hashed) {
      auto it = by_hash_.find(k.hash);
      if (it == by_hash_.end() || it->second != b) return "block " + std::to_string(b) + " is hashed but not indexed";
    }
  }
  for (const auto& [h, b] : by_hash_) {
    if (b < 0 || b >= num_blocks() || !blocks_[b].hashed || blocks_[b].hash != h) return "hash index entry is stale";
  }
  return "";
}

BlockHash ChainHash(BlockHash parent, uint64_t mode_key, const int32_t* tokens, int32_t n) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* p, size_t len) {
    const auto* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < len; ++i) h = (h ^ c[i]) * 1099511628211ull;
  };
  mix(&parent, sizeof(parent));
  mix(&mode_key, sizeof(mode_key));
  mix(tokens, static_cast<size_t>(n) * sizeof(int32_t));
  return h;
}

}  // namespace svdq::kv
