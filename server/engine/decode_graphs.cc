#include "server/engine/decode_graphs.h"

#include <algorithm>
#include <stdexcept>

#include "models/llama.h"
#include "server/kv/paged_storage.h"

#ifdef SVDQ_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/attention/paged_decode.h"
#endif

namespace svdq::engine {
namespace {

// The largest captured batch: beyond it a step's logits alone would pin gigabytes for large
// vocabularies, and such steps are bandwidth-bound anyway.
constexpr int64_t kMaxGraphBatch = 128;

// The ids the step reads, overwritten on the device after Fill's copies (same stream).
void SetDeviceIds(const at::Tensor& dst, const at::Tensor& ids, const std::vector<int64_t>& from) {
  const int64_t n = dst.size(0);
  at::Tensor src;
  if (from.empty()) {
    src = ids.narrow(0, 0, n);
  } else {
    at::Tensor idx = at::tensor(from, at::kLong);
    src = ids.index_select(0, ids.is_cuda() ? idx.pin_memory().to(ids.device(), /*non_blocking=*/true) : idx);
  }
  dst.copy_(src.clamp_min(0));
}

}  // namespace

struct DecodeGraphs::Graph {
  int64_t batch = 0;
  // Every per-step input lives in two device buffers (int64, int32), filled from two pinned
  // host blocks of the same layout by one copy each; the tensors below are views of them.
  //   int64: ids [B] | positions [B] | block [B] | offset [B] | lane [B] | tail block [B] | tail positions [B * P]
  //   int32: lengths [B] | tail lengths [B] | basis rows [B] | page table [B, max_pages] | sparse from [B]
  at::Tensor host64, host32, dev64, dev32;
  at::Tensor ids, pos;
  kv::DecodeWrites writes;
  kv::DecodeTables tables;
  at::Tensor logits;  // output of the captured step
#ifdef SVDQ_WITH_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::cuda::CUDAEvent copied;  // the last copies out of the host blocks
#endif
};

DecodeGraphs::~DecodeGraphs() = default;

int DecodeGraphs::max_batch() const { return graphs_.empty() ? 0 : static_cast<int>(graphs_.back()->batch); }

std::string DecodeGraphs::sizes() const {
  std::string s;
  for (const auto& g : graphs_) s += (s.empty() ? "" : ", ") + std::to_string(g->batch);
  return s;
}

at::Tensor DecodeGraphs::Forward(Graph& g) {
  models::StaticDecodeKv kv;
  kv.write = [&](int layer, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v) {
    storage_->WriteDecode(layer, k_pre, k, v, g.writes);
  };
  kv.attend = [&](int layer, const at::Tensor& q) { return storage_->AttendDecode(layer, q, g.tables); };
  return model_->DecodeStatic(g.ids, g.pos, kv);
}

DecodeGraphs::Graph& DecodeGraphs::Pick(size_t rows) {
  for (auto& c : graphs_)
    if (c->batch >= static_cast<int64_t>(rows) && rows > 0) return *c;
  throw std::logic_error("decode graph: no graph for a batch of " + std::to_string(rows));
}

std::unique_ptr<DecodeGraphs::Graph> DecodeGraphs::NewGraph(int64_t B) const {
  const auto& sp = storage_->spec();
  const int64_t P = sp.shape.block_size, n64 = 6 * B + B * P, n32 = 4 * B + B * max_pages_;
  auto g = std::make_unique<Graph>();
  g->batch = B;
  const bool cuda = sp.device.is_cuda();
  g->host64 = at::zeros({n64}, at::TensorOptions().dtype(at::kLong).pinned_memory(cuda));
  g->host32 = at::zeros({n32}, at::TensorOptions().dtype(at::kInt).pinned_memory(cuda));
  g->dev64 = at::zeros({n64}, at::TensorOptions().dtype(at::kLong).device(sp.device));
  g->dev32 = at::zeros({n32}, at::TensorOptions().dtype(at::kInt).device(sp.device));
  auto v64 = [&](int64_t i, int64_t n) { return g->dev64.narrow(0, i * B, n); };
  auto v32 = [&](int64_t i, int64_t n) { return g->dev32.narrow(0, i * B, n); };
  g->ids = v64(0, B);
  g->pos = v64(1, B);
  g->writes.block = v64(2, B);
  g->writes.offset = v64(3, B);
  g->writes.lanes = g->tables.lanes = v64(4, B);
  g->tables.tail_block = v64(5, B);
  g->tables.tail_pos = v64(6, B * P);
  g->tables.len = v32(0, B);
  g->tables.tail_len = v32(1, B);
  g->writes.basis_index = g->tables.basis_index = v32(2, B);
  g->tables.table = v32(3, B * max_pages_).view({B, max_pages_});
  if (storage_->sparse()) g->tables.sparse_from = g->dev32.narrow(0, 3 * B + B * max_pages_, B);
  g->tables.max_pages = max_pages_;
  g->tables.max_len = max_len_;
  return g;
}

void DecodeGraphs::Fill(Graph& g, const std::vector<DecodeRow>& rows) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const auto& sp = storage_->spec();
  const int64_t P = sp.shape.block_size, B = g.batch, max_pos = sp.rope_cos.size(0) - 1;
  for (int64_t b = 0; b < n; ++b) {
    const DecodeRow& r = rows[b];
    if (r.position < 0 || r.position >= max_len_ || r.position / P >= static_cast<int64_t>(r.blocks->size()))
      throw std::out_of_range("decode graph: position " + std::to_string(r.position) +
                              " is outside the sequence's blocks or the model's context");
    if (r.lane < 0 || r.lane >= sp.lanes || r.lane == scratch_lane_)
      throw std::out_of_range("decode graph: lane " + std::to_string(r.lane) + " is not a sequence's lane");
  }
#ifdef SVDQ_WITH_CUDA
  g.copied.synchronize();  // the host blocks are free again (at once unless a step is still queued)
#endif
  int64_t* h = g.host64.data_ptr<int64_t>();
  int32_t* h32 = g.host32.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    const bool real = b < n;
    const std::vector<kv::BlockId>* blocks = real ? rows[b].blocks : nullptr;
    const int64_t pos = real ? rows[b].position : 0, len = pos + 1;
    const int lane = real ? rows[b].lane : scratch_lane_;
    auto block_at = [&](int64_t page) { return real ? (*blocks)[page] : scratch_; };
    h[b] = real ? rows[b].token : 0;
    h[B + b] = pos;
    h[2 * B + b] = block_at(pos / P);
    h[3 * B + b] = pos % P;
    h[4 * B + b] = lane;
    int32_t* table = h32 + 3 * B + b * max_pages_;
    for (int64_t p = 0; p <= pos / P; ++p) table[p] = static_cast<int32_t>(block_at(p));
    if (!coded_) {
      h32[b] = static_cast<int32_t>(len);
      continue;
    }
    const int64_t full = len / P;  // encoded pages; the rest is in the lane's tail
    h32[b] = static_cast<int32_t>(full);
    h32[B + b] = static_cast<int32_t>(len - full * P);
    h32[2 * B + b] = storage_->BasisSlot(lane);
    h[5 * B + b] = len > full * P ? block_at(full) : block_at(0);
    h32[3 * B + B * max_pages_ + b] = storage_->sparse() ? storage_->SparseFrom(full, /*prompt=*/false) : 0;
    for (int64_t i = 0; i < P; ++i) h[6 * B + b * P + i] = std::min(full * P + i, max_pos);
  }
  // Pinned, so that the copies queue behind the previous step instead of waiting for it.
  g.dev64.copy_(g.host64, /*non_blocking=*/true);
  g.dev32.copy_(g.host32, /*non_blocking=*/true);
#ifdef SVDQ_WITH_CUDA
  if (sp.device.is_cuda()) g.copied.record(at::cuda::getCurrentCUDAStream());
#endif
}

DecodeGraphs::Graph& DecodeGraphs::Load(const std::vector<DecodeRow>& rows, const at::Tensor& ids,
                                        const std::vector<int64_t>& from) {
  Graph& g = Pick(rows.size());
  Fill(g, rows);
  if (ids.defined()) SetDeviceIds(g.ids.narrow(0, 0, static_cast<int64_t>(rows.size())), ids, from);
  return g;
}

at::Tensor DecodeGraphs::RunEager(const std::vector<DecodeRow>& rows) {
  return Forward(Load(rows, at::Tensor(), {})).narrow(0, 0, static_cast<int64_t>(rows.size()));
}

#ifdef SVDQ_WITH_CUDA

std::unique_ptr<DecodeGraphs> DecodeGraphs::Create(models::LlamaModel* model, kv::PagedKvStorage* storage,
                                                   kv::BlockId scratch_block, int scratch_lane, int max_batch,
                                                   std::string* why) {
  if (!storage->StaticDecodeCapable()) {
    *why = "no decode kernel serves this KV mode at this shape (layer-scope SVDq, or quantized pages at a head "
           "dim other than 64 or 128)";
    return nullptr;
  }
  const auto& c = model->config();
  const auto& sp = storage->spec();
  const bool coded = sp.modes.page_coded_keys();
  // The CUDA-core paged decode kernel (head dims other than 64 and 128) keeps a sequence's
  // scores in shared memory.
  if (!coded && !kernels::PagedDecodeTensorCores(static_cast<int>(c.head_dim)) &&
      (c.head_dim + 4 + static_cast<int64_t>(c.max_context)) * 4 > 200 * 1024) {
    *why = "the context of " + std::to_string(c.max_context) + " tokens exceeds the paged decode kernel's bound";
    return nullptr;
  }
  if (scratch_lane < 0 || scratch_lane >= sp.lanes) throw std::logic_error("decode graphs: the scratch lane is not a lane");
  std::unique_ptr<DecodeGraphs> d(new DecodeGraphs());
  d->model_ = model;
  d->storage_ = storage;
  d->scratch_ = scratch_block;
  d->scratch_lane_ = scratch_lane;
  d->coded_ = coded;
  d->max_len_ = c.max_context;
  d->max_pages_ = (c.max_context + sp.shape.block_size - 1) / sp.shape.block_size;
  // Padded sizes 1, 2, 4, ... up to max_batch (at most kMaxGraphBatch; larger steps run eagerly).
  std::vector<int64_t> sizes;
  const int64_t cap = std::min<int64_t>(max_batch, kMaxGraphBatch);
  for (int64_t b = 1;; b *= 2) {
    sizes.push_back(std::min(b, cap));
    if (b >= cap) break;
  }
  // Largest first, all in one memory pool: the smaller graphs reuse the largest one's
  // activations (replays never overlap), so the graphs cost about one step's activations.
  const at::cuda::MempoolId_t pool = at::cuda::graph_pool_handle();
  at::cuda::CUDAStream side = at::cuda::getStreamFromPool();
  for (auto it = sizes.rbegin(); it != sizes.rend(); ++it) {
    const int64_t B = *it;
    std::unique_ptr<Graph> g = d->NewGraph(B);
    d->Fill(*g, {});  // every row at the scratch block and lane
    c10::cuda::device_synchronize();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      for (int i = 0; i < 2; ++i) d->Forward(*g);  // warm-up: library handles and workspaces
      side.synchronize();
      g->graph = std::make_unique<at::cuda::CUDAGraph>();
      g->graph->capture_begin(pool);
      try {
        g->logits = d->Forward(*g);
      } catch (...) {
        // End the capture before anything else touches the device, then give up for good:
        // a half-captured stream would break every later CUDA call.
        cudaGraph_t partial = nullptr;
        cudaStreamEndCapture(side.stream(), &partial);
        if (partial) cudaGraphDestroy(partial);
        throw;
      }
      g->graph->capture_end();
    }
    c10::cuda::device_synchronize();
    d->graphs_.insert(d->graphs_.begin(), std::move(g));
  }
  return d;
}

DecodeGraphs::StepProfile DecodeGraphs::Profile(const std::vector<DecodeRow>& rows) {
  Graph& g = Pick(rows.size());
  Fill(g, rows);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> writes, attends;
  auto event = [&]() {
    cudaEvent_t e;
    cudaEventCreate(&e);
    cudaEventRecord(e, stream);
    return e;
  };
  models::StaticDecodeKv kv;
  kv.write = [&](int layer, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v) {
    cudaEvent_t a = event();
    storage_->WriteDecode(layer, k_pre, k, v, g.writes);
    writes.emplace_back(a, event());
  };
  kv.attend = [&](int layer, const at::Tensor& q) {
    cudaEvent_t a = event();
    at::Tensor o = storage_->AttendDecode(layer, q, g.tables);
    attends.emplace_back(a, event());
    return o;
  };
  cudaEvent_t start = event();
  model_->DecodeStatic(g.ids, g.pos, kv);
  cudaEvent_t end = event();
  cudaEventSynchronize(end);
  StepProfile p;
  auto ms = [](cudaEvent_t a, cudaEvent_t b) {
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return static_cast<double>(t);
  };
  for (auto [a, b] : writes) p.write_ms += ms(a, b);
  for (auto [a, b] : attends) p.attend_ms += ms(a, b);
  p.total_ms = ms(start, end);
  return p;
}

at::Tensor DecodeGraphs::Run(const std::vector<DecodeRow>& rows) { return Run(rows, at::Tensor(), {}); }

at::Tensor DecodeGraphs::Run(const std::vector<DecodeRow>& rows, const at::Tensor& ids,
                             const std::vector<int64_t>& from) {
  Graph& g = Load(rows, ids, from);
  g.graph->replay();
  return g.logits.narrow(0, 0, static_cast<int64_t>(rows.size()));
}

struct StepReadback::Events {
  at::cuda::CUDAEvent done[2];
};

#else

std::unique_ptr<DecodeGraphs> DecodeGraphs::Create(models::LlamaModel*, kv::PagedKvStorage*, kv::BlockId, int, int,
                                                   std::string* why) {
  *why = "built without CUDA";
  return nullptr;
}

at::Tensor DecodeGraphs::Run(const std::vector<DecodeRow>& rows) { return RunEager(rows); }

at::Tensor DecodeGraphs::Run(const std::vector<DecodeRow>& rows, const at::Tensor& ids,
                             const std::vector<int64_t>& from) {
  return Forward(Load(rows, ids, from)).narrow(0, 0, static_cast<int64_t>(rows.size()));
}

struct StepReadback::Events {};

DecodeGraphs::StepProfile DecodeGraphs::Profile(const std::vector<DecodeRow>&) {
  throw std::logic_error("decode step profiles need CUDA");
}

#endif

StepReadback::StepReadback(at::Device device, int64_t max_rows, int64_t lanes) : events_(std::make_unique<Events>()) {
  const bool cuda = device.is_cuda();
  for (int i = 0; i < 2; ++i) {
    ids_[i] = at::zeros({std::max<int64_t>(max_rows, 1)}, at::TensorOptions().dtype(at::kLong).pinned_memory(cuda));
    flags_[i] = at::zeros({std::max<int64_t>(lanes, 1)}, at::TensorOptions().dtype(at::kInt).pinned_memory(cuda));
  }
}

StepReadback::~StepReadback() = default;

int StepReadback::Start(const at::Tensor& ids, const at::Tensor& flags) {
  const int slot = next_;
  next_ ^= 1;
  const int64_t n = ids.size(0);
  if (n > ids_[slot].size(0)) throw std::logic_error("StepReadback: more rows than it was made for");
  // Non-blocking into pinned memory: queued behind the step; the host goes on at once.
  ids_[slot].narrow(0, 0, n).copy_(ids, /*non_blocking=*/true);
  if (flags.defined()) flags_[slot].narrow(0, 0, flags.size(0)).copy_(flags, /*non_blocking=*/true);
#ifdef SVDQ_WITH_CUDA
  if (ids.is_cuda()) events_->done[slot].record(at::cuda::getCurrentCUDAStream());
#endif
  return slot;
}

void StepReadback::Wait(int slot) {
#ifdef SVDQ_WITH_CUDA
  events_->done[slot].synchronize();
#else
  (void)slot;
#endif
}

}  // namespace svdq::engine
