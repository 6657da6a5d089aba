#include "server/kv/paged_storage.h"

#include <stdexcept>
#include <string>

namespace svdq::kv {

PagedKvStorage::PagedKvStorage(int layers, int32_t num_blocks, int32_t block_size, int kv_heads, int head_dim,
                               at::Device device, at::ScalarType dtype)
    : block_size_(block_size), device_(device) {
  auto opts = at::TensorOptions().device(device).dtype(dtype);
  const int64_t slots = static_cast<int64_t>(num_blocks) * block_size;
  for (int l = 0; l < layers; ++l) {
    k_.push_back(at::empty({slots, kv_heads, head_dim}, opts));
    v_.push_back(at::empty({slots, kv_heads, head_dim}, opts));
  }
}

int64_t PagedKvStorage::bytes() const {
  int64_t b = 0;
  for (size_t l = 0; l < k_.size(); ++l) b += (k_[l].numel() + v_[l].numel()) * k_[l].element_size();
  return b;
}

void PagedSeqView::Reserve(int64_t n) {
  const int64_t have = static_cast<int64_t>(blocks_.size()) * storage_->block_size();
  if (n > have)
    throw std::logic_error("paged KV view needs " + std::to_string(n) + " tokens but its blocks hold " +
                           std::to_string(have));
}

at::Tensor PagedSeqView::Slots(int64_t from, int64_t to) {
  const int64_t bs = storage_->block_size();
  std::vector<int64_t> slots(static_cast<size_t>(to - from));
  for (int64_t p = from; p < to; ++p) slots[p - from] = static_cast<int64_t>(blocks_[p / bs]) * bs + p % bs;
  return at::tensor(slots, at::kLong).to(storage_->device());
}

void PagedSeqView::Write(int layer, int64_t pos0, const at::Tensor& k, const at::Tensor& v) {
  const int64_t to = pos0 + k.size(0);
  if (pos0 != write_from_ || to != write_to_) {
    write_slots_ = Slots(pos0, to);
    write_from_ = pos0;
    write_to_ = to;
  }
  storage_->keys(layer).index_copy_(0, write_slots_, k);
  storage_->values(layer).index_copy_(0, write_slots_, v);
}

std::pair<at::Tensor, at::Tensor> PagedSeqView::Read(int layer, int64_t n) {
  if (n != read_to_) {
    read_slots_ = Slots(0, n);
    read_to_ = n;
  }
  return {storage_->keys(layer).index_select(0, read_slots_).transpose(0, 1),
          storage_->values(layer).index_select(0, read_slots_).transpose(0, 1)};
}

}  // namespace svdq::kv
