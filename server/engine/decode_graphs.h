// Decode steps replayed from CUDA graphs. For each padded batch size (1, 2, 4, ... up to the
// running-sequence cap) one decode step of the model over the paged cache is captured once at
// start, reading every per-step input (token ids, positions, where each new key and value goes,
// page tables, lengths, lanes) from device buffers; a step then writes its inputs into one
// pinned host block, copies it with two copies and replays: one launch instead of thousands.
// Rows beyond the batch write to a scratch block and a scratch lane that no sequence owns.
// Where the storage supports it (kv/paged_storage.h StaticDecodeCapable: every KV mode but
// layer-scope SVDq, in a bf16 model on CUDA; quantized pages at head dims 64 and 128).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/kv/block_pool.h"

namespace svdq::models {
class LlamaModel;
}
namespace svdq::kv {
class PagedKvStorage;
}

namespace svdq::engine {

struct DecodeRow {
  int32_t token = 0;
  int64_t position = 0;  // where the token goes; the sequence attends over positions 0 .. position
  const std::vector<kv::BlockId>* blocks = nullptr;  // covers position
  int lane = 0;          // the sequence's lane (tail page and basis of page-coded keys)
};

// A step's sampled ids and the storage's non-finite-key flags, copied to pinned host memory
// without waiting, so that the host can launch the next step before it reads them. Two slots:
// a copy goes to the slot the step before last used, which has been read by then.
class StepReadback {
 public:
  StepReadback(at::Device device, int64_t max_rows, int64_t lanes);
  ~StepReadback();
  // Queues the copies of ids (int64 [n], n <= max_rows) and flags (int32 [lanes]; undefined:
  // none) on the current stream; returns the slot.
  int Start(const at::Tensor& ids, const at::Tensor& flags);
  // Blocks until the slot's copies are done; then ids(slot) and flags(slot) hold them.
  void Wait(int slot);
  const int64_t* ids(int slot) const { return ids_[slot].data_ptr<int64_t>(); }
  const int32_t* flags(int slot) const { return flags_[slot].data_ptr<int32_t>(); }  // [lanes], zeros if none

 private:
  struct Events;
  at::Tensor ids_[2], flags_[2];
  std::unique_ptr<Events> events_;
  int next_ = 0;
};

class DecodeGraphs {
 public:
  // Captures the graphs, or returns null and says why in *why where they do not apply. Throws
  // if a capture fails (the server then refuses to start; --cuda-graphs false avoids it).
  // `scratch_block` and `scratch_lane` are a block and a lane of the storage that no sequence
  // is ever given.
  static std::unique_ptr<DecodeGraphs> Create(models::LlamaModel* model, kv::PagedKvStorage* storage,
                                              kv::BlockId scratch_block, int scratch_lane, int max_batch,
                                              std::string* why);
  ~DecodeGraphs();

  int max_batch() const;
  std::string sizes() const;  // "1, 2, 4, 8, 16"
  // One decode step for `rows` (at most max_batch()): logits [rows, vocab] fp32, valid until
  // the next call.
  at::Tensor Run(const std::vector<DecodeRow>& rows);
  // The same, with the token ids taken on the device from `ids` (int64, the step before's
  // SampleIds): row b reads ids[from[b]] (from empty: ids[b]); negative ids (rows that could not
  // sample, whose step is discarded) read as 0. rows[b].token is ignored.
  at::Tensor Run(const std::vector<DecodeRow>& rows, const at::Tensor& ids, const std::vector<int64_t>& from);
  // The same step without the graph (for tests): identical inputs, eager kernels.
  at::Tensor RunEager(const std::vector<DecodeRow>& rows);
  // The eager step with CUDA events around every layer's KV write and attention: where the
  // step's GPU time goes (bench/decode_step_bench). Milliseconds, summed over the layers.
  struct StepProfile {
    double write_ms = 0, attend_ms = 0, total_ms = 0;
  };
  StepProfile Profile(const std::vector<DecodeRow>& rows);

 private:
  struct Graph;
  DecodeGraphs() = default;
  Graph& Pick(size_t rows);  // the smallest graph that holds `rows`
  std::unique_ptr<Graph> NewGraph(int64_t batch) const;  // its buffers, not yet captured
  void Fill(Graph& g, const std::vector<DecodeRow>& rows);
  // Pick + Fill, then the ids from the device where `ids` is defined (Run's second form).
  Graph& Load(const std::vector<DecodeRow>& rows, const at::Tensor& ids, const std::vector<int64_t>& from);
  at::Tensor Forward(Graph& g);

  models::LlamaModel* model_ = nullptr;
  kv::PagedKvStorage* storage_ = nullptr;
  kv::BlockId scratch_ = 0;
  int scratch_lane_ = 0;
  bool coded_ = false;  // page-coded keys: lanes, tails and bases take part
  int64_t max_pages_ = 0, max_len_ = 0;
  std::vector<std::unique_ptr<Graph>> graphs_;  // by increasing batch size
};

}  // namespace svdq::engine
