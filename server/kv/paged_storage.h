// The KV pool's tensors in every cache mode (kv_modes.h), and a per-sequence view that the
// model writes and reads through (models/kv_view.h). Block b holds the tokens of one page
// of a sequence for every layer; which blocks a sequence has is the KvCacheManager's
// business, which lane (tail page and basis slot) it has is the engine's.
//
// Layouts (per layer, all page-major so kernels can walk pages):
//   per-token codecs (bf16, fp8 keys; every value mode): data [blocks, kv, P, X] and
//     bf16 scales [blocks, kv, P, D / 32] (none for bf16);
//   page-coded keys (int4, int2, svdq): codes [blocks, U, page_bytes] (kernels/svdq/svdq_params.h),
//     tail [lanes, P, kv, D] pre-RoPE in the model's dtype, basis mean [.., U, W] and
//     vectors [.., U, W, W] fp32, one per lane (prefill basis) or one shared. U x W is
//     kv x D (head scope, direct codecs) or 1 x kv*D (SVDq layer scope: RoPE is applied per
//     head after decoding, and attention reads decoded keys).
// Used by the engine thread only.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <vector>

#include "kernels/svdq/svdq_params.h"
#include "models/kv_view.h"
#include "server/kv/block_pool.h"
#include "server/kv/kv_modes.h"

namespace svdq::kv {

struct StorageSpec {
  KvModes modes;
  KvShape shape;
  int32_t num_blocks = 0;
  int lanes = 1;  // sequences that can run at once
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;
  at::Tensor rope_cos, rope_sin;  // [max_pos, head_dim] fp32 on the device (the model's)
  at::Tensor rope_inv_freq;       // [head_dim / 2] fp32 on the device, optional: the SVDq kernel's rotations
  // svdq: the calibrated basis per layer (mean [U, W], vectors [U, W, W], fp32); required
  // for the calibrated source, the fallback for short prompts with the prefill source.
  std::vector<at::Tensor> calibrated_mean, calibrated_vectors;
};

// Per-token quantized pages: one tensor kind of the cache (keys or values) for one layer.
class TokenStore {
 public:
  enum class Kind { kFull, kFp8, kInt8, kInt4 };
  TokenStore(Kind kind, int32_t num_blocks, const KvShape& s, at::ScalarType dtype, at::Device device);
  // x [T, kv, D] goes to (block[i], offset[i]) for token i.
  void Write(const at::Tensor& block, const at::Tensor& offset, const at::Tensor& x);
  // [n, kv, D] in the model's dtype.
  at::Tensor Read(const at::Tensor& block, const at::Tensor& offset) const;
  const at::Tensor& data() const { return data_; }  // [blocks, kv, P, X]
  int64_t bytes() const;

 private:
  Kind kind_;
  at::ScalarType dtype_;
  int head_dim_;
  at::Tensor data_, scale_;
};

class PagedKvStorage {
 public:
  explicit PagedKvStorage(StorageSpec spec);
  const StorageSpec& spec() const { return spec_; }
  int32_t block_size() const { return spec_.shape.block_size; }
  // A sequence left `lane`: its prefill bases no longer count as computed, so that the next
  // sequence on the lane must compute its own (and cannot silently use the last one's).
  void ReleaseLane(int lane);
  // Whether `lane` holds a prefill basis for `layer` (for tests).
  bool LaneHasBasis(int lane, int layer) const {
    return lane_basis_set_[static_cast<size_t>(lane) * spec_.shape.layers + layer] != 0;
  }
  int64_t bytes() const;  // every tensor allocated
  const kernels::SvdqLayout& layout() const { return layout_; }

  // Fixed-shape decode steps (CUDA graphs, server/engine/decode_graphs.h): bf16 keys and
  // values on CUDA only. WriteRows stores k, v [B, kv, D] at flat page rows `rows` [B * kv]
  // int64 ((block * kv + head) * P + offset); AttendRows runs the paged decode kernel over
  // `table` [B, max_pages] int32 and `lens` [B] int32 on the current stream. Neither does
  // host work that depends on the data, so both can be captured.
  bool StaticDecodeCapable() const;
  void WriteRows(int layer, const at::Tensor& rows, const at::Tensor& k, const at::Tensor& v);
  at::Tensor AttendRows(int layer, const at::Tensor& q, const at::Tensor& table, const at::Tensor& lens,
                        int64_t max_len);

 private:
  friend class PagedSeqView;
  StorageSpec spec_;
  kernels::SvdqLayout layout_;  // page-coded keys
  CodecShape codec_;
  std::vector<TokenStore> keys_, values_;  // keys_ empty for page-coded keys
  std::vector<at::Tensor> codes_, tail_, mean_, vectors_;
  std::vector<char> lane_basis_set_;  // [lanes * layers]: prefill basis computed
};

// One sequence's view of the pool for one forward. `blocks` must already cover every
// position the forward writes (KvCacheManager::Allocate / Append); `lane` is the
// sequence's slot for its tail page and basis, owned by it while it runs.
class PagedSeqView : public models::KvView {
 public:
  PagedSeqView(PagedKvStorage* storage, const std::vector<BlockId>& blocks, int64_t length, int lane);
  int64_t length() const override { return length_; }
  void Reserve(int64_t n) override;
  void Write(int layer, int64_t pos0, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v) override;
  std::pair<at::Tensor, at::Tensor> Read(int layer, int64_t n) override;
  at::Tensor Attend(int layer, const at::Tensor& q) override;
  at::Tensor AttendMany(int layer, const at::Tensor& q, const std::vector<models::KvView*>& views) override;
  bool WriteMany(int layer, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v,
                 const std::vector<models::KvView*>& views) override;
  void SetLength(int64_t n) override {
    length_ = n;
    batch_.reset();  // the batched tables hold positions: a next forward builds its own
    writes_.reset();
  }

 private:
  // Block ids and in-block offsets of positions [from, to), int64 on the device.
  std::pair<at::Tensor, at::Tensor> Where(int64_t from, int64_t to) const;
  at::Tensor BlockIds(int64_t first_page, int64_t pages) const;  // int64 on the device
  int BasisSlot() const;
  std::pair<at::Tensor, at::Tensor> PageBases(int layer, int64_t pages) const;  // mean, vectors per page
  void ComputeBasis(int layer, const at::Tensor& k_pre);
  void EncodePages(int layer, int64_t first_page, const at::Tensor& keys_pre);  // [pages * P, kv, D]
  void EncodeChunk(int layer, int64_t first_page, const at::Tensor& keys_pre);
  int64_t BasisChunkPages() const;  // pages per codec call, bounding the per-page basis copies
  at::Tensor DecodePages(int layer, int64_t pages);  // post-RoPE [pages * P, kv, D] fp32
  at::Tensor StoredKeys(int layer, int64_t n);       // post-RoPE keys of positions [0, n), dtype

  PagedKvStorage* st_;
  const std::vector<BlockId>& blocks_;
  int64_t length_;
  int lane_;
  // The current forward's tokens, as written (attention sees them unquantized).
  int64_t fresh_pos0_ = -1;
  at::Tensor fresh_k_, fresh_v_;
  int fresh_layer_ = -1;
  // Index tensors are the same for every layer of a forward: built once per view.
  mutable std::map<std::pair<int64_t, int64_t>, std::pair<at::Tensor, at::Tensor>> where_cache_;
  mutable std::map<std::pair<int64_t, int64_t>, at::Tensor> block_cache_;
  // AttendMany's per-step tables (the same for every layer), held by the batch's first view.
  struct BatchTables {
    std::vector<models::KvView*> views;
    int64_t max_pages = 0, max_len = 0;
    at::Tensor table, len;             // int32 [B, max_pages] page ids, [B] lengths (bf16 keys) or full pages
    at::Tensor tail_len, basis_index;  // int32 [B] (page-coded keys)
    at::Tensor lanes, tail_block, tail_pos;  // int64 [B], [B], [B * P]
  };
  std::unique_ptr<BatchTables> batch_;
  const BatchTables& Tables(const std::vector<models::KvView*>& views);
  // WriteMany's per-step indices: where each sequence's new token goes.
  struct WriteTables {
    std::vector<models::KvView*> views;
    at::Tensor block, offset;      // int64 [B]: pool block and in-block offset
    at::Tensor lanes, tail_offset;  // int64 [B] (page-coded keys)
    std::vector<size_t> completing;  // rows whose token fills its page (encoded at once)
  };
  std::unique_ptr<WriteTables> writes_;
  const WriteTables& Writes(const std::vector<models::KvView*>& views);
};

}  // namespace svdq::kv
