#include "server/kv/kv_cache_manager.h"

#include <algorithm>
#include <stdexcept>

namespace svdq::kv {

KvCacheManager::KvCacheManager(const KvCacheConfig& cfg) : cfg_(cfg), pool_(cfg.num_blocks) {
  if (cfg_.block_size < 1) cfg_.block_size = 1;
}

std::vector<BlockId> KvCacheManager::PrefixHits(const std::vector<int32_t>& prompt, bool use_prefix_cache) const {
  std::vector<BlockId> hits;
  if (!cfg_.prefix_caching || !use_prefix_cache || prompt.empty()) return hits;
  const int32_t bs = cfg_.block_size;
  const int32_t max_blocks = (static_cast<int32_t>(prompt.size()) - 1) / bs;
  BlockHash h = 0;
  for (int32_t k = 0; k < max_blocks; ++k) {
    h = ChainHash(h, cfg_.mode_key, &prompt[k * bs], bs);
    BlockId b = pool_.Lookup(h, hits.empty() ? -1 : hits.back(), &prompt[k * bs], bs);
    if (b < 0) break;
    hits.push_back(b);
  }
  return hits;
}

bool KvCacheManager::CanAllocate(const std::vector<int32_t>& prompt, bool use_prefix_cache) const {
  const int32_t bs = cfg_.block_size;
  const int32_t needed = (static_cast<int32_t>(prompt.size()) + bs - 1) / bs;
  std::vector<BlockId> hits = PrefixHits(prompt, use_prefix_cache);
  int32_t revived = 0;  // cached blocks that are free now leave the free list when reused
  for (BlockId b : hits) revived += pool_.ref_count(b) == 0;
  return needed - static_cast<int32_t>(hits.size()) + revived <= pool_.num_free();
}

int32_t KvCacheManager::Allocate(SeqId id, const std::vector<int32_t>& prompt, bool use_prefix_cache) {
  const int32_t bs = cfg_.block_size;
  const int32_t needed = (static_cast<int32_t>(prompt.size()) + bs - 1) / bs;
  std::vector<BlockId> hits = PrefixHits(prompt, use_prefix_cache);
  Seq& s = seqs_[id];
  s.tokens = prompt;
  BlockHash h = 0;
  for (BlockId b : hits) {
    pool_.Ref(b);
    s.blocks.push_back(b);
    h = ChainHash(h, cfg_.mode_key, &prompt[s.hashes.size() * bs], bs);
    s.hashes.push_back(h);
  }
  while (static_cast<int32_t>(s.blocks.size()) < needed) s.blocks.push_back(pool_.Take());
  if (cfg_.prefix_caching) {
    prefix_queries_ += static_cast<int64_t>(prompt.size());
    prefix_hits_ += static_cast<int64_t>(hits.size()) * bs;
  }
  return static_cast<int32_t>(hits.size()) * bs;
}

bool KvCacheManager::CanAppend(SeqId id) const {
  return !AppendTakesBlock(id) || pool_.num_free() > 0;
}

void KvCacheManager::Append(SeqId id, int32_t token) {
  Seq& s = seqs_.at(id);
  if (s.tokens.size() % cfg_.block_size == 0) s.blocks.push_back(pool_.Take());
  s.tokens.push_back(token);
}

void KvCacheManager::SetLastToken(SeqId id, int32_t token) {
  Seq& s = seqs_.at(id);
  if (s.tokens.empty()) throw std::logic_error("SetLastToken: the sequence has no token");
  if (static_cast<size_t>(s.hashes.size()) * cfg_.block_size >= s.tokens.size())
    throw std::logic_error("SetLastToken: the last token is already committed");
  s.tokens.back() = token;
}

void KvCacheManager::Commit(SeqId id, int32_t computed) {
  if (!cfg_.prefix_caching) return;
  Seq& s = seqs_.at(id);
  const int32_t bs = cfg_.block_size;
  const int32_t full = std::min<int32_t>(computed, static_cast<int32_t>(s.tokens.size())) / bs;
  BlockHash h = s.hashes.empty() ? 0 : s.hashes.back();
  for (int32_t k = static_cast<int32_t>(s.hashes.size()); k < full; ++k) {
    h = ChainHash(h, cfg_.mode_key, &s.tokens[k * bs], bs);
    s.hashes.push_back(h);
    pool_.Register(s.blocks[k], h, k > 0 ? s.blocks[k - 1] : -1, &s.tokens[k * bs], bs);
  }
}

void KvCacheManager::Free(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  // Tail blocks first: the free list evicts from its head, so a prefix's first blocks,
  // the ones most likely shared, are evicted last.
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) pool_.Unref(*b);
  seqs_.erase(it);
}

std::string KvCacheManager::CheckInvariants() const {
  std::string e = pool_.CheckInvariants();
  if (!e.empty()) return e;
  std::vector<int32_t> refs(pool_.num_blocks(), 0);
  for (const auto& [id, s] : seqs_) {
    const size_t want = (s.tokens.size() + cfg_.block_size - 1) / cfg_.block_size;
    if (s.blocks.size() != want) return "sequence " + std::to_string(id) + " has the wrong number of blocks";
    for (BlockId b : s.blocks) {
      if (b < 0 || b >= pool_.num_blocks()) return "sequence " + std::to_string(id) + " holds an invalid block";
      ++refs[b];
    }
  }
  for (BlockId b = 0; b < pool_.num_blocks(); ++b) {
    if (refs[b] != pool_.ref_count(b))
      return "block " + std::to_string(b) + " has ref count " + std::to_string(pool_.ref_count(b)) + " but " +
             std::to_string(refs[b]) + " block tables hold it";
  }
  return "";
}

}  // namespace svdq::kv
