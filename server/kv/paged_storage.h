// The KV pool's tensors: for each layer, keys and values of every block, stored as
// [num_blocks * block_size, kv_heads, head_dim] (slot = block * block_size + offset), and a
// per-sequence view that maps positions to slots through the sequence's block table.
// (bf16/fp32 pages; SVDq-coded key pages are the next step.) Used by the engine thread only.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "models/kv_view.h"
#include "server/kv/block_pool.h"

namespace svdq::kv {

class PagedKvStorage {
 public:
  PagedKvStorage(int layers, int32_t num_blocks, int32_t block_size, int kv_heads, int head_dim, at::Device device,
                 at::ScalarType dtype);
  int32_t block_size() const { return block_size_; }
  at::Device device() const { return device_; }
  at::Tensor& keys(int layer) { return k_[layer]; }
  at::Tensor& values(int layer) { return v_[layer]; }
  int64_t bytes() const;

 private:
  int32_t block_size_;
  at::Device device_;
  std::vector<at::Tensor> k_, v_;
};

// One sequence's view of the pool for one forward. `blocks` must already cover every
// position the forward writes (KvCacheManager::Allocate / Append).
class PagedSeqView : public models::KvView {
 public:
  PagedSeqView(PagedKvStorage* storage, const std::vector<BlockId>& blocks, int64_t length)
      : storage_(storage), blocks_(blocks), length_(length) {}
  int64_t length() const override { return length_; }
  void Reserve(int64_t n) override;
  void Write(int layer, int64_t pos0, const at::Tensor& k, const at::Tensor& v) override;
  std::pair<at::Tensor, at::Tensor> Read(int layer, int64_t n) override;
  void SetLength(int64_t n) override { length_ = n; }

 private:
  at::Tensor Slots(int64_t from, int64_t to);  // int64 slot ids of positions [from, to), on the device
  PagedKvStorage* storage_;
  const std::vector<BlockId>& blocks_;
  int64_t length_;
  // Slot tensors are the same for every layer of a forward: built once.
  int64_t write_from_ = -1, write_to_ = -1, read_to_ = -1;
  at::Tensor write_slots_, read_slots_;
};

}  // namespace svdq::kv
