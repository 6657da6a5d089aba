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
  // Stores the keys (pre-RoPE k_pre and post-RoPE k) and values v, each [T, kv_heads,
  // head_dim], of positions pos0 .. pos0 + T - 1 in `layer`. Storage that codes keys before
  // RoPE (SVDq) keeps k_pre; the others keep k.
  virtual void Write(int layer, int64_t pos0, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v) = 0;
  // Keys (post-RoPE) and values of positions 0 .. n - 1 of `layer`, each [kv_heads, n, head_dim],
  // in the model's dtype. Positions written by this forward come back as written.
  virtual std::pair<at::Tensor, at::Tensor> Read(int layer, int64_t n) = 0;
  // Decode attention of one new token straight from the stored form, if this storage has a
  // kernel for it: q [1, heads, head_dim] post-RoPE, after Write of the token; returns
  // [1, heads, head_dim], or an undefined tensor to have the model Read and run SDPA.
  virtual at::Tensor Attend(int layer, const at::Tensor& q) { return {}; }
  // Write of one new token for each of several sequences at once: called on views[0], every
  // view of the same storage; k_pre, k, v [B, kv_heads, head_dim], row b at views[b]->length().
  // Returns false (nothing written) where the storage cannot, to have the caller write per view.
  virtual bool WriteMany(int layer, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v,
                         const std::vector<KvView*>& views) {
    return false;
  }
  // Decode attention for several sequences in one launch: called on views[0], every view of the same
  // storage and each after Write of one new token of `layer`; q [B, heads, head_dim]. Returns
  // [B, heads, head_dim], or undefined to have the caller attend per sequence.
  virtual at::Tensor AttendMany(int layer, const at::Tensor& q, const std::vector<KvView*>& views) { return {}; }
  // Called once a forward has written every layer up to `n` tokens.
  virtual void SetLength(int64_t n) = 0;
};

// Small host-built index lists (positions, page ids) to `device` as int64. To a GPU they go
// through pinned memory without blocking, so that building them never waits for queued work.
at::Tensor IndexToDevice(const std::vector<int64_t>& v, at::Device device);

// Contiguous storage: per layer a [kv_heads, capacity, head_dim] tensor, grown by doubling.
// Rotate-half RoPE of x [T, heads, head_dim] at positions pos0 ..; cos/sin [max_pos, head_dim]
// fp32 (halves duplicated). Computed in fp32, returned in `out`.
at::Tensor ApplyRotaryHalf(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t pos0,
                           at::ScalarType out);
// The same with each row's own table rows: cos_rows/sin_rows [T, head_dim] (rows of different sequences).
at::Tensor ApplyRotaryHalfRows(const at::Tensor& x, const at::Tensor& cos_rows, const at::Tensor& sin_rows,
                               at::ScalarType out);

class SequenceKv : public KvView {
 public:
  int64_t length() const override { return length_; }
  void Reserve(int64_t n) override { needed_ = std::max(needed_, n); }
  void Write(int layer, int64_t pos0, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v) override;
  std::pair<at::Tensor, at::Tensor> Read(int layer, int64_t n) override;
  void SetLength(int64_t n) override { length_ = n; }

 private:
  void Grow(int layer, const at::Tensor& like);
  std::vector<at::Tensor> k_, v_;
  int64_t length_ = 0, needed_ = 0;
};

}  // namespace svdq::models
