#include "server/engine/decode_graphs.h"

#include <stdexcept>

#include "models/llama.h"
#include "server/kv/paged_storage.h"

#ifdef SVDQ_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
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

}  // namespace

struct DecodeGraphs::Graph {
  int64_t batch = 0;
  at::Tensor ids, pos, rows, table, lens;  // inputs, on the device
  at::Tensor logits;                       // output of the captured step
#ifdef SVDQ_WITH_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
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
  kv.write = [&](int layer, const at::Tensor& k, const at::Tensor& v) { storage_->WriteRows(layer, g.rows, k, v); };
  kv.attend = [&](int layer, const at::Tensor& q) { return storage_->AttendRows(layer, q, g.table, g.lens, max_len_); };
  return model_->DecodeStatic(g.ids, g.pos, kv);
}

DecodeGraphs::Graph& DecodeGraphs::Pick(size_t rows) {
  for (auto& c : graphs_)
    if (c->batch >= static_cast<int64_t>(rows) && rows > 0) return *c;
  throw std::logic_error("decode graph: no graph for a batch of " + std::to_string(rows));
}

void DecodeGraphs::Fill(Graph& gr, const std::vector<DecodeRow>& rows) {
  Graph* g = &gr;
  const int64_t n = static_cast<int64_t>(rows.size());
  const auto& sp = storage_->spec();
  const int64_t KV = sp.shape.kv_heads, P = sp.shape.block_size, B = g->batch;
  // One pinned host block holds every input; rows past n point at the scratch block.
  at::Tensor host = at::zeros({B * (3 + KV)}, at::kLong), host32 = at::zeros({B * (max_pages_ + 1)}, at::kInt);
  int64_t* h = host.data_ptr<int64_t>();
  int32_t* h32 = host32.data_ptr<int32_t>();
  for (int64_t b = 0; b < n; ++b)
    if (rows[b].position < 0 || rows[b].position >= max_len_ ||
        rows[b].position / P >= static_cast<int64_t>(rows[b].blocks->size()))
      throw std::out_of_range("decode graph: position " + std::to_string(rows[b].position) +
                              " is outside the sequence's blocks or the model's context");
  for (int64_t b = 0; b < B; ++b) {
    const bool real = b < n;
    const int64_t pos = real ? rows[b].position : 0;
    const int64_t block = real ? (*rows[b].blocks)[pos / P] : scratch_;
    h[b] = real ? rows[b].token : 0;
    h[B + b] = pos;
    for (int64_t k = 0; k < KV; ++k) h[2 * B + b * KV + k] = (block * KV + k) * P + pos % P;
    int32_t* t = h32 + b * max_pages_;
    const int64_t pages = real ? pos / P + 1 : 1;
    for (int64_t p = 0; p < pages; ++p) t[p] = static_cast<int32_t>(real ? (*rows[b].blocks)[p] : scratch_);
    h32[B * max_pages_ + b] = static_cast<int32_t>(pos + 1);
  }
  // Pinned, so that the copies queue behind the previous step instead of waiting for it.
  const bool cuda = sp.device.is_cuda();
  at::Tensor dev = cuda ? host.pin_memory().to(sp.device, /*non_blocking=*/true) : host;
  at::Tensor dev32 = cuda ? host32.pin_memory().to(sp.device, /*non_blocking=*/true) : host32;
  g->ids.copy_(dev.narrow(0, 0, B));
  g->pos.copy_(dev.narrow(0, B, B));
  g->rows.copy_(dev.narrow(0, 2 * B, B * KV));
  g->table.copy_(dev32.narrow(0, 0, B * max_pages_).view({B, max_pages_}));
  g->lens.copy_(dev32.narrow(0, B * max_pages_, B));
}

at::Tensor DecodeGraphs::RunEager(const std::vector<DecodeRow>& rows) {
  Graph& g = Pick(rows.size());
  Fill(g, rows);
  return Forward(g).narrow(0, 0, static_cast<int64_t>(rows.size()));
}

#ifdef SVDQ_WITH_CUDA

std::unique_ptr<DecodeGraphs> DecodeGraphs::Create(models::LlamaModel* model, kv::PagedKvStorage* storage,
                                                   kv::BlockId scratch_block, int max_batch, std::string* why) {
  if (!storage->StaticDecodeCapable()) {
    *why = "only bf16 keys and values on CUDA are captured";
    return nullptr;
  }
  const auto& c = model->config();
  const auto& sp = storage->spec();
  // The CUDA-core paged decode kernel (head dims other than 64 and 128) keeps a sequence's
  // scores in shared memory.
  if (!kernels::PagedDecodeTensorCores(static_cast<int>(c.head_dim)) &&
      (c.head_dim + 4 + static_cast<int64_t>(c.max_context)) * 4 > 200 * 1024) {
    *why = "the context of " + std::to_string(c.max_context) + " tokens exceeds the paged decode kernel's bound";
    return nullptr;
  }
  std::unique_ptr<DecodeGraphs> d(new DecodeGraphs());
  d->model_ = model;
  d->storage_ = storage;
  d->scratch_ = scratch_block;
  d->max_len_ = c.max_context;
  d->max_pages_ = (c.max_context + sp.shape.block_size - 1) / sp.shape.block_size;
  auto o = at::TensorOptions().device(sp.device);
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
    auto g = std::make_unique<Graph>();
    g->batch = B;
    g->ids = at::zeros({B}, o.dtype(at::kLong));
    g->pos = at::zeros({B}, o.dtype(at::kLong));
    g->rows = at::zeros({B * sp.shape.kv_heads}, o.dtype(at::kLong));
    g->table = at::zeros({B, d->max_pages_}, o.dtype(at::kInt));
    g->lens = at::ones({B}, o.dtype(at::kInt));
    d->Fill(*g, {});  // every row at the scratch block
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

at::Tensor DecodeGraphs::Run(const std::vector<DecodeRow>& rows) {
  Graph& g = Pick(rows.size());
  Fill(g, rows);
  g.graph->replay();
  return g.logits.narrow(0, 0, static_cast<int64_t>(rows.size()));
}

#else

std::unique_ptr<DecodeGraphs> DecodeGraphs::Create(models::LlamaModel*, kv::PagedKvStorage*, kv::BlockId, int,
                                                   std::string* why) {
  *why = "built without CUDA";
  return nullptr;
}

at::Tensor DecodeGraphs::Run(const std::vector<DecodeRow>& rows) { return RunEager(rows); }

#endif

}  // namespace svdq::engine
