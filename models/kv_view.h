// Where one sequence's keys and values live during a forward. The model writes the new
// tokens' post-RoPE keys and values and reads back all of them per layer; the storage
// behind it is either one contiguous tensor per layer (SequenceKv, for tools) or pages of
// the server's KV pool (server/kv/paged_storage.h).
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace svdq::models {

class KvView {
 public:
  virtual ~KvView() = default;
  // Tokens already stored: the next forward's first position.
  virtual int64_t length() const = 0;
  // Makes room for `n` tokens in total; throws if the storage cannot hold them.
  virtual void Reserve(int64_t n) = 0;
  // Stores k, v [T, kv_heads, head_dim] of positions pos0 .. pos0 + T - 1 in `layer`.
  virtual void Write(int layer, int64_t pos0, const at::Tensor& k, const at::Tensor& v) = 0;
  // Keys and values of positions 0 .. n - 1 of `layer`, each [kv_heads, n, head_dim].
  virtual std::pair<at::Tensor, at::Tensor> Read(int layer, int64_t n) = 0;
  // Called once a forward has written every layer up to `n` tokens.
  virtual void SetLength(int64_t n) = 0;
};

// Contiguous storage: per layer a [kv_heads, capacity, head_dim] tensor, grown by doubling.
class SequenceKv : public KvView {
 public:
  int64_t length() const override { return length_; }
  void Reserve(int64_t n) override { needed_ = std::max(needed_, n); }
  void Write(int layer, int64_t pos0, const at::Tensor& k, const at::Tensor& v) override;
  std::pair<at::Tensor, at::Tensor> Read(int layer, int64_t n) override;
  void SetLength(int64_t n) override { length_ = n; }

 private:
  void Grow(int layer, const at::Tensor& like);
  std::vector<at::Tensor> k_, v_;
  int64_t length_ = 0, needed_ = 0;
};

}  // namespace svdq::models
