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
//     vectors [.., U, W, W] fp32 (and their retained columns in fp16 [.., U, W, r], which
//     the CUDA decode attention reads), one per lane (prefill basis) or one shared. U x W is
//     kv x D (head scope, direct codecs) or 1 x kv*D (SVDq layer scope: RoPE is applied per
//     head after decoding, and attention reads decoded keys).
// Sparse attention (modes.sparse_budget > 0) adds each page's landmark (kernels/sparse).
// Used by the engine thread only.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
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
  const at::Tensor& data() const { return data_; }    // [blocks, kv, P, X]
  const at::Tensor& scale() const { return scale_; }  // bf16 [blocks, kv, P, D / 32]; undefined for kFull
  Kind kind() const { return kind_; }
  int64_t bytes() const;

 private:
  Kind kind_;
  at::ScalarType dtype_;
  int head_dim_;
  at::Tensor data_, scale_;
};

// One decode step's tables, on the device (B sequences, one query token each).
struct DecodeTables {
  int64_t max_pages = 0, max_len = 0;  // the table's row stride; a bound on every length
  at::Tensor table, len;               // int32 [B, max_pages] block ids; [B] tokens (bf16 keys) or full pages
  at::Tensor tail_len, basis_index;    // int32 [B]: tokens in the tail page, basis row (page-coded keys)
  at::Tensor lanes, tail_block, tail_pos;  // int64 [B], [B] (the tail's value block), [B * P] (its positions)
  // Sparse attention: int32 [B], each row's pages before its recent window (what selection
  // chooses from); 0 where a row attends to every page (a prompt row). PagedKvStorage::SparseFrom.
  at::Tensor sparse_from;
};

// Where one decode step's new keys and values go, on the device.
struct DecodeWrites {
  at::Tensor block, offset;  // int64 [B]: the block each new token goes to, and its row there
  at::Tensor lanes;          // int64 [B]: the lane whose tail takes the key (page-coded keys)
  at::Tensor basis_index;    // int32 [B]: the basis row that encodes the tail page (page-coded keys)
};

class PagedKvStorage {
 public:
  explicit PagedKvStorage(StorageSpec spec);
  const StorageSpec& spec() const { return spec_; }
  int32_t block_size() const { return spec_.shape.block_size; }
  // A sequence left `lane`: its prefill bases no longer count as computed, so that the next
  // sequence on the lane must compute its own (and cannot silently use the last one's).
  void ReleaseLane(int lane);
  // Lanes whose keys included a NaN or infinity since they were last released (page-coded
  // keys: such a page cannot be encoded and is stored as zeros, so the sequence must end with
  // an error). One small device-to-host read; empty for other modes.
  std::vector<int> NonFiniteLanes() const;
  // The flags themselves (int32 [lanes] on the device, non-zero: non-finite; undefined for
  // other modes), for a copy that does not wait.
  const at::Tensor& nonfinite_flags() const { return nonfinite_; }
  // Whether `lane` holds a prefill basis for `layer` (for tests).
  bool LaneHasBasis(int lane, int layer) const {
    return lane_basis_set_[static_cast<size_t>(lane) * spec_.shape.layers + layer] != 0;
  }
  int64_t bytes() const;  // every tensor allocated
  const kernels::SvdqLayout& layout() const { return layout_; }

  // Decode steps (one new token per sequence) from device tables: the batched path of the
  // views and the fixed-shape steps of server/engine/decode_graphs.h, which fill the tables
  // into persistent buffers and capture the step. Neither call does host work that depends
  // on the data, and both run on the current stream, so both can be captured.
  //
  // WriteDecode stores k_pre, k, v [B, kv, D] (pre- and post-RoPE keys, values): values and
  // per-token-coded keys at (block, offset); page-coded keys in each row's lane tail, whose
  // page is encoded into its block when this token completes it (decided on the device by the
  // codec, so a captured step holds it; the page is final before attention reads it).
  // On CUDA with a bf16 model, all of it is one kernel (kernels/attention/kv_write.h) before
  // the SVDq encode; elsewhere the ATen chains of TokenStore::Write.
  // AttendDecode runs the paged decode kernel (bf16 or fp8 keys) or the SVDq attention kernel
  // (page-coded keys), each reading any value format in place: q [B, heads, D] -> fp32 [B, heads, D].
  // DecodeKernelsFit: whether AttendDecode can serve this storage's mode and shape (CUDA, bf16
  // model, per-token or head-scope page-coded keys; quantized pages need the tensor-core
  // kernels' head dims). StaticDecodeCapable: whether decode steps can be captured (the same).
  bool DecodeKernelsFit() const { return kernels_fit_; }
  bool StaticDecodeCapable() const { return kernels_fit_; }
  void WriteDecode(int layer, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v, const DecodeWrites& w);
  at::Tensor AttendDecode(int layer, const at::Tensor& q, const DecodeTables& t);
  int BasisSlot(int lane) const;  // the basis row a lane's pages use (0 where the basis is shared)
  bool sparse() const { return spec_.modes.sparse_budget > 0; }
  // Whether this layer's decode steps select pages (the first sparse_dense_layers attend densely
  // and keep no landmarks).
  bool sparse_layer(int layer) const { return spec_.modes.sparse_layer(layer); }
  // A decode row's DecodeTables::sparse_from entry: its full pages before the recent window, or 0
  // for a prompt row (dense). Filled on the host with the rest of a step's tables.
  int32_t SparseFrom(int64_t full_pages, bool prompt) const {
    return prompt ? 0 : static_cast<int32_t>(std::max<int64_t>(0, full_pages - sparse_.recent_pages));
  }
  // Page landmarks (sparse attention), for tests; undefined for a dense layer (sparse_layer):
  // int8 [blocks, kv, S W] and fp16 [blocks, kv]
  // (S landmarks a page, W: the landmark rank, or D); with a landmark rank, the lanes' bases fp32
  // [lanes, kv, D, W].
  const at::Tensor& landmarks(int layer) const { return landmarks_[layer]; }
  const at::Tensor& landmark_scales(int layer) const { return landmark_scales_[layer]; }
  const at::Tensor& landmark_basis(int layer) const { return landmark_basis_[layer]; }
  // Page-coded keys: the basis per layer, fp32 [rows, units, W, W] (rows: lanes, or 1 where
  // shared), and the copy the CUDA decode attention reads, fp16 [rows, units, W, retained]: the
  // retained columns (SvdqAttentionParams::basis_half), refreshed wherever the basis is set.
  const at::Tensor& basis(int layer) const { return vectors_[layer]; }
  const at::Tensor& basis_half(int layer) const { return vectors_half_[layer]; }
  // Whether the decode attention reads the fp16 copy for a model with `num_heads` query heads:
  // on CUDA where the warp-stream kernel takes the shape (the others read the fp32 basis).
  bool AttentionReadsHalfBasis(int num_heads) const;

 private:
  friend class PagedSeqView;
  void PlanKernels();  // sets kernels_fit_ and fused_write_ (constructor)
  StorageSpec spec_;
  kernels::SvdqLayout layout_;  // page-coded keys
  CodecShape codec_;
  std::vector<TokenStore> keys_, values_;  // keys_ empty for page-coded keys
  std::vector<at::Tensor> codes_, tail_, mean_, vectors_, vectors_half_;
  at::Tensor retained_channels_;  // int64 [layout_.retained]: the latent channels pages keep
  void RefreshHalfBasis(int layer, int64_t row);  // vectors_half_[layer][row] from vectors_
  // Whether the warp-stream SVDq kernel takes this layout with `num_heads` query heads (page-coded
  // keys; defined in CUDA builds, where it is used).
  bool WarpKernelTakes(int num_heads) const;
  std::vector<char> lane_basis_set_;  // [lanes * layers]: prefill basis computed
  at::Tensor nonfinite_;              // int32 [lanes] on the device: the codec's non-finite key flags
  // Sparse attention (spec.modes.sparse_budget > 0), per layer: each page's S landmarks, int8
  // [blocks, kv, S W] and fp16 scales [blocks, kv], written when the page fills; the lanes' running
  // sums of their tail page's slices of post-RoPE keys, fp32 [lanes, kv, S, D]; with a landmark rank
  // (W = R < D), the lanes' landmark bases fp32 [lanes, kv, D, R], fitted by a sequence's first
  // forward (PagedSeqView::WriteLandmarks). Empty without one.
  SparsePlan sparse_;
  std::vector<at::Tensor> landmarks_, landmark_scales_, landmark_sums_, landmark_basis_;
  std::vector<char> landmark_basis_set_;  // [lanes * layers]: fitted by the sequence on the lane
  void AppendLandmarks(int layer, const at::Tensor& k, const DecodeWrites& w);  // WriteDecode's rows
  // The sparse step's page lists (kernels/sparse): the kernel on CUDA, its reference on the host.
  void SelectPages(int layer, const at::Tensor& q, const DecodeTables& t, at::Tensor* pages, at::Tensor* count);
  bool kernels_fit_ = false;
  bool fused_write_ = false;  // WriteDecode runs kernels::KvWrite
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
  // Sparse attention: this view's rows are prompt tokens (the last chunk of a prompt, of one
  // token, reaches decode attention), which attend to every page: prefill stays dense.
  void set_prompt(bool prompt) { prompt_ = prompt; }
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
  at::Tensor BasisIndex(int64_t pages) const;  // int32 [pages] on the device: BasisSlot() each
  // The SVDq prefill basis of a sequence's first forward: BeginBasis sets the layer's mean and
  // keeps its Gram matrix (false: too few keys, the calibrated basis was copied instead);
  // FinishBasis, after the last layer's Write, solves every kept layer in one batch and encodes
  // the pages that waited for it.
  bool BeginBasis(int layer, const at::Tensor& k_pre);
  void FinishBasis();
  void EncodePages(int layer, int64_t first_page, const at::Tensor& keys_pre);  // [pages * P, kv, D]
  // Sparse attention: the landmarks of the pages that keys k [T, kv, D] (post-RoPE, positions
  // pos0 ..) complete, and the lane's running sum of its unfilled page.
  void WriteLandmarks(int layer, int64_t pos0, const at::Tensor& k);
  // Post-RoPE keys of this view's pages `ids` (ascending indices into its blocks, each encoded):
  // [ids * P, kv, D] fp32.
  at::Tensor DecodePages(int layer, const std::vector<int64_t>& ids);
  // Sparse decode attention in ATen ops, where no kernel serves the step (the CPU): q [1, heads,
  // D] of this view's one fresh token -> [1, heads, D]. The kernels' selection (kernels::
  // SparseSelectRef over the page landmarks: the pages the device would choose), then per KV
  // head attention over the chosen pages, the recent ones and the tail, read as stored.
  at::Tensor AttendSparse(int layer, const at::Tensor& q);
  at::Tensor StoredKeys(int layer, int64_t start, int64_t n);  // post-RoPE keys of positions [start, n), dtype
  // Read's keys and values of positions [start, n) (start: a page boundary, not past the stored
  // positions), [kv, n - start, D].
  std::pair<at::Tensor, at::Tensor> ReadFrom(int layer, int64_t start, int64_t n);

  PagedKvStorage* st_;
  const std::vector<BlockId>& blocks_;
  int64_t length_;
  int lane_;
  bool prompt_ = false;
  // The current forward's tokens, as written (attention sees them unquantized).
  int64_t fresh_pos0_ = -1;
  at::Tensor fresh_k_, fresh_v_;
  int fresh_layer_ = -1;
  // Per layer, while a first forward's basis is pending: its Gram matrices [units, W, W] fp64
  // and its full pages' pre-RoPE keys, to encode once the basis is known.
  std::vector<at::Tensor> pending_gram_, pending_keys_;
  // Index tensors are the same for every layer of a forward: built once per view.
  mutable std::map<std::pair<int64_t, int64_t>, std::pair<at::Tensor, at::Tensor>> where_cache_;
  mutable std::map<std::pair<int64_t, int64_t>, at::Tensor> block_cache_;
  // AttendMany's and WriteMany's per-step tables (the same for every layer), held by the
  // batch's first view.
  struct BatchTables : DecodeTables {
    std::vector<models::KvView*> views;
  };
  std::unique_ptr<BatchTables> batch_;
  const BatchTables& Tables(const std::vector<models::KvView*>& views);
  struct WriteTables : DecodeWrites {
    std::vector<models::KvView*> views;
  };
  std::unique_ptr<WriteTables> writes_;
  const WriteTables& Writes(const std::vector<models::KvView*>& views);
};

}  // namespace svdq::kv
