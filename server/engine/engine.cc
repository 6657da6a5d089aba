// Engine loop. Each step: take new requests from the inbox; the scheduler (scheduler.h) admits
// waiting sequences, makes room for every decode and plans the step; then one forward (a CUDA
// graph replay for a step of decodes only, decode_graphs.h), one batched sampler call, and
// emission of text, stop checks and final events.
// Overlap: a step of decodes only leaves its sampled ids on the device (pending). While nothing
// else needs the host's decision (no admission, cancellation, logprobs or penalties), the next
// step is launched from those ids first, and the pending step's text, stop checks and events are
// done while the GPU runs it. A sequence that ended with the pending token has its row in the
// launched step discarded.
#include "server/engine/engine.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#if __has_include(<cuda_runtime_api.h>)
#include <cuda_runtime_api.h>
#define SVDQ_HAVE_CUDA_RUNTIME 1
#endif

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <deque>
#include <fstream>
#include <iostream>
#include <list>
#include <mutex>
#include <random>
#include <thread>

#include "models/basis_file.h"
#include "models/checkpoint.h"
#include "models/gguf.h"
#include "models/llama.h"
#include "models/tokenizer.h"
#include "server/engine/decode_graphs.h"
#include "server/engine/sampler.h"
#include "server/engine/scheduler.h"
#include "server/kv/kv_cache_manager.h"
#include "server/kv/paged_storage.h"
#include "server/metrics/metrics.h"

namespace svdq::engine {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// A request in the engine: the scheduler's view of it (scheduler.h: id, lane, output,
// computed, prefilled, preemptions) and what generation needs.
struct Sequence : SchedSeq {
  Request req;
  std::shared_ptr<RequestStream> stream;
  Clock::time_point arrival, first_token, last_token;
  std::unique_ptr<models::IncrementalDetokenizer> detok;
  std::mt19937_64 rng;
  std::vector<float> prompt_logprobs;
  std::vector<std::vector<std::pair<int32_t, float>>> prompt_top;
  bool prompt_logprobs_sent = false;
  std::string text;        // generated text so far (complete UTF-8 characters)
  size_t emitted = 0;      // bytes of `text` sent; the rest may still turn out to be a stop string
  size_t max_stop = 0;     // longest stop string
  std::string stop_reason;
  // The KV cache holds a placeholder for a token a step launched ahead has not read yet
  // (Scheduler::ReserveAhead); its block, if it took one, is not this sequence's to report.
  bool unread_token = false;
};

Sequence* Seq(SchedSeq* s) { return static_cast<Sequence*>(s); }

const char* MetricReason(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "abort";
    default: return "error";
  }
}

constexpr const char* kNonFiniteMessage =
    "the model produced non-finite logits (NaN or infinity) for this sequence; nothing can be sampled";
constexpr const char* kNonFiniteKeyMessage =
    "the model produced a non-finite key (NaN or infinity) for this sequence; its KV page cannot be encoded";

// The chosen tokens' log-probabilities and each row's top `want[i]` (-1: the row asked for
// none; its entry stays empty), for all rows at once: one log-softmax over the rows that asked,
// one top-k with the largest k, one copy to the host (not a sync per sequence).
std::vector<TokenLogprob> TokenLogprobs(const at::Tensor& logits, const std::vector<int32_t>& toks,
                                        const std::vector<int>& want) {
  std::vector<TokenLogprob> out(want.size());
  std::vector<int64_t> rows, ids;
  int k = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (want[i] >= 0) {
      rows.push_back(static_cast<int64_t>(i));
      ids.push_back(toks[i]);
      k = std::max(k, want[i]);
    }
  if (rows.empty()) return out;
  const at::Device d = logits.device();
  at::Tensor lp = at::log_softmax(logits.index_select(0, models::IndexToDevice(rows, d)).to(at::kFloat), -1);
  at::Tensor chosen = lp.gather(1, models::IndexToDevice(ids, d).unsqueeze(1)).squeeze(1).to(at::kCPU).contiguous();
  at::Tensor vals, idx;
  if (k > 0) {
    auto top = lp.topk(std::min<int64_t>(k, lp.size(1)));
    vals = std::get<0>(top).to(at::kCPU).contiguous();
    idx = std::get<1>(top).to(at::kCPU).contiguous();
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    TokenLogprob& t = out[rows[r]];
    t.token_id = static_cast<int32_t>(ids[r]);
    t.logprob = chosen.data_ptr<float>()[r];
    const int kr = std::min<int>(want[rows[r]], k > 0 ? static_cast<int>(vals.size(1)) : 0);
    for (int j = 0; j < kr; ++j)
      t.top.emplace_back(static_cast<int32_t>(idx.data_ptr<int64_t>()[r * vals.size(1) + j]),
                         vals.data_ptr<float>()[r * vals.size(1) + j]);
  }
  return out;
}

}  // namespace

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "unknown";
}

struct Engine::Impl {
  EngineOptions opts;
  metrics::Metrics* metrics;
  std::string source;  // "gguf", "huggingface" or "synthetic"
  std::unique_ptr<DecodeGraphs> graphs;  // null where decode steps are not captured
  // A step of decodes only whose ids are not read yet (overlap; see the file comment).
  struct Pending {
    std::vector<Sequence*> seqs;  // its rows; null: the sequence ended before (the row is discarded)
    at::Tensor ids;               // SampleIds, on the device
    int slot = -1;                // in `readback`
  };
  std::unique_ptr<Pending> pending;
  std::unique_ptr<StepReadback> readback;  // null: steps are not overlapped
  std::unique_ptr<PenaltyState> penalties;  // made for the first request with a penalty
  std::unique_ptr<models::Tokenizer> tokenizer;
  std::unique_ptr<models::LlamaModel> model;
  std::atomic<bool> ready{false};
  std::unique_ptr<kv::KvCacheManager> kv;
  std::unique_ptr<kv::PagedKvStorage> storage;
  kv::KvModes modes;
  kv::KvBytes kv_bytes;
  kv::KvShape kv_shape;
  int64_t bf16_bytes_per_token = 0;  // keys or values, all layers
  bool prefix_caching = false;       // in effect
  kv::SeqId next_id = 1;
  std::atomic<bool> stopping{false};

  std::mutex mu;  // guards inbox only
  std::condition_variable cv;
  std::deque<std::unique_ptr<Sequence>> inbox;
  std::atomic<size_t> queued{0};  // inbox + waiting, for the queue bound

  // Owned by the engine thread: the queues and the scheduling decisions.
  std::unique_ptr<Scheduler> sched;
  std::thread thread;

  void Loop();
  void Step();
  // Runs one step's forward over every running sequence: a decode token each, and prompt
  // chunks in arrival order under the step's token budget.
  void RunBatch();
  // A sequence that asked for prompt logprobs is prefilled alone, in one piece. True if it finished.
  bool PrefillWithPromptLogprobs(Sequence* s);
  // The sampler's row for `s`: its settings, history, banned ids and next draw; `ahead` tokens
  // not yet read count as output (for the step launched before they are).
  SampleRow RowFor(Sequence* s, int ahead = 0);
  // Whether s's steps may run ahead of the host reading its tokens: no token logprobs and no
  // penalties (both need the host's view of every token before the next step).
  static bool Overlappable(const Sequence* s);
  // Launches the decode step after the pending one, from its ids on the device, then emits the
  // pending step's tokens. False (nothing done) where the host must decide first.
  bool LaunchAhead();
  // Reads the pending step's ids and emits them (the sequences that end are appended to
  // *finished). `ahead`: the sequences in the step launched after it, whose last KV token
  // is set to the token read.
  // Empty, or the device error that ended every sequence of the step.
  std::string DrainPending(std::vector<Sequence*>* finished, const std::vector<Sequence*>& ahead);
  // A decode step over `seqs` at their next positions, the ids read on the device from `ids`
  // (rows `from`; empty: 0 .. n-1). Logits [n, vocab].
  at::Tensor ForwardFromIds(const std::vector<Sequence*>& seqs, const at::Tensor& ids, const std::vector<int64_t>& from);
  // The batched eager forward: tokens[i] for seqs[i] at its next positions, over its paged view.
  at::Tensor ForwardEager(const std::vector<SchedSeq*>& seqs, const std::vector<std::vector<int32_t>>& tokens);
  // DrainPending, then the sequences that ended leave the running list.
  void DrainAndRetire();
  // Emits a sampled token, or ends s with the error that prevents it. True if s finished.
  bool EmitSampled(Sequence* s, const TokenLogprob* logprob, int32_t tok, bool nonfinite_key);
  // Emits `tok` (sampled from `logits`, kept for logprobs) and checks the stop conditions. True if
  // the sequence finished.
  bool Emit(Sequence* s, const TokenLogprob* logprob, int32_t tok);
  // Sends the final event and frees the sequence's cache.
  void Finish(Sequence* s, FinishReason reason, const std::string& error);
  // Lanes whose page-coded keys met a NaN or infinity (empty for other modes).
  std::vector<int> NonFiniteKeyLanes() const;
  // The storage's per-lane non-finite-key flags on the device (undefined for other modes).
  at::Tensor KeyFlags() const;
  // A decode step's attention key bytes (svdq_attention_key_bytes_*), from the rows' lengths after
  // their new token: what the kernels read is fixed by the lengths (kv_modes.h DecodeKeyBytesRead).
  void CountKeyBytes(const std::vector<int64_t>& lengths) {
    if (!metrics || lengths.empty()) return;
    double read = 0, bf16 = 0;
    for (int64_t n : lengths) {
      read += static_cast<double>(kv::DecodeKeyBytesRead(modes, kv_shape, n));
      bf16 += static_cast<double>(kv::Bf16KeyBytes(kv_shape, n));
    }
    metrics->AddAttentionKeyBytes(read, bf16);
  }
  void ReportKv() {
    if (!metrics) return;
    const int32_t used = kv->num_blocks() - kv->num_free_blocks();
    metrics->SetKvBlocks(used, kv->num_blocks());
    // Stored bytes of the blocks in use, against bf16 keys and values of the same tokens.
    const double full = static_cast<double>(used) * kv->block_size() * static_cast<double>(bf16_bytes_per_token);
    metrics->SetKvBytes(static_cast<double>(used) * kv_bytes.key_per_block, full,
                        static_cast<double>(used) * kv_bytes.value_per_block, full);
#ifdef SVDQ_HAVE_CUDA_RUNTIME
    if (model->device().is_cuda()) {
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
        metrics->SetGpuMemory(static_cast<double>(total_b - free_b), static_cast<double>(total_b));
    }
#endif
  }
};

Engine::Engine(EngineOptions opts, metrics::Metrics* metrics) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->metrics = metrics;
}

Engine::~Engine() { Stop(); }

void Engine::Load() {
  Impl& m = *impl_;
  at::Device device(at::kCPU);
  if (m.opts.device == "cuda" || (m.opts.device == "auto" && at::hasCUDA())) {
    if (!at::hasCUDA()) throw std::runtime_error("--device cuda was asked for, but no CUDA device is available");
    device = at::Device(at::kCUDA, 0);
  } else if (m.opts.device != "cpu" && m.opts.device != "auto") {
    throw std::runtime_error("unknown device '" + m.opts.device + "' (auto, cpu, cuda)");
  }
  at::ScalarType dtype;
  if (m.opts.dtype == "auto") dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  else if (m.opts.dtype == "float32") dtype = at::kFloat;
  else if (m.opts.dtype == "bfloat16") dtype = at::kBFloat16;
  else if (m.opts.dtype == "float16") dtype = at::kHalf;
  else throw std::runtime_error("unknown dtype '" + m.opts.dtype + "' (auto, float32, bfloat16, float16)");

  std::string note;
  m.model = models::LoadModel(m.opts.model_path, device, dtype, &note);
  if (!note.empty()) std::cout << "svdq-server: " << note << std::endl;
  m.tokenizer = models::LoadTokenizer(m.opts.model_path, m.model->config());
  m.source = models::SourceKindName(models::SourceKindOf(m.opts.model_path));
  if (m.tokenizer->vocab_size() > m.model->config().vocab_size)
    throw std::runtime_error(m.opts.model_path + ": tokenizer vocabulary is larger than the embedding table");
  // The cache modes, their bytes, and the capacity in blocks that the budget leaves.
  const auto& c = m.model->config();
  kv::KvModes& modes = m.modes;
  if (!kv::ParseKeyMode(m.opts.key_mode, &modes.key))
    throw std::runtime_error("unknown key mode '" + m.opts.key_mode + "' (bf16, fp8, int4, int2, svdq)");
  if (!kv::ParseValueMode(m.opts.value_mode, &modes.value))
    throw std::runtime_error("unknown value mode '" + m.opts.value_mode + "' (bf16, fp8, int8, int4)");
  if (!kv::ParseBasisSource(m.opts.svdq_basis, &modes.basis))
    throw std::runtime_error("unknown SVDq basis source '" + m.opts.svdq_basis + "' (prefill, calibrated)");
  if (!kv::ParseBasisScope(m.opts.svdq_scope, &modes.scope))
    throw std::runtime_error("unknown SVDq basis scope '" + m.opts.svdq_scope + "' (head, layer)");
  if (kernels::Status st = kernels::ParseSchedule(m.opts.svdq_schedule, &modes.schedule); !st.ok())
    throw std::runtime_error(st.message());
  if (m.opts.block_size < 1 || m.opts.block_size > 1024) throw std::runtime_error("block size must be in [1, 1024]");
  kv::KvShape shape;
  shape.layers = c.n_layers;
  shape.kv_heads = c.n_kv_heads;
  shape.head_dim = c.head_dim;
  shape.block_size = m.opts.block_size;
  shape.dtype_bytes = static_cast<int>(c10::elementSize(dtype));
  if (m.opts.sparse_budget > 0) {
    // On CUDA sparse attention runs in the decode kernels: the page selection and the
    // warp-stream SVDq kernel (bf16 values, head dim 64 or 128, at most 8 query heads per KV
    // head). On the CPU it runs in ATen ops over the stored keys (PagedSeqView::AttendSparse:
    // the kernels' selection, attention over the chosen pages), any model dtype and value mode.
    const std::string why = !device.is_cuda()
                                ? (c.n_heads / c.n_kv_heads > 16 || c.head_dim > 128
                                       ? "at most 16 query heads per KV head and a head dim of at most 128 (the page "
                                         "selection's limits)"
                                       : "")
                            : dtype != at::kBFloat16 ? "a bf16 model (on a CUDA device; the CPU takes any dtype)"
                            : modes.value != kv::ValueMode::kFull  ? "bf16 values (--value-mode bf16)"
                            : c.head_dim != 64 && c.head_dim != 128 ? "head dim 64 or 128 (the model's is " +
                                                                          std::to_string(c.head_dim) + ")"
                            : c.n_heads / c.n_kv_heads > 8          ? "at most 8 query heads per KV head"
                            : m.opts.block_size % 16 != 0 || ((m.opts.block_size / 16) & (m.opts.block_size / 16 - 1)) != 0
                                ? "a block size of 16 tokens times a power of two (16, 32, 64, ...)"
                                : "";
    if (!why.empty()) throw std::runtime_error("--sparse-budget needs " + why + "; start with --sparse-budget 0");
    modes.sparse_budget = static_cast<int>(std::min<int64_t>(m.opts.sparse_budget, 1 << 24));
    modes.sparse_landmark_rank = static_cast<int>(std::clamp<int64_t>(m.opts.sparse_landmark_rank, -1, 1 << 16));
    modes.sparse_landmark_subs = static_cast<int>(std::clamp<int64_t>(m.opts.sparse_landmark_subs, -1, 1 << 16));
    modes.sparse_dense_layers = static_cast<int>(std::clamp<int64_t>(m.opts.sparse_dense_layers, -1, 1 << 16));
    // A first chunk is held out for at most the scheduler's cap, so a basis is fitted on no more.
    const int64_t first_cap = Scheduler::MaxFirstChunk(m.opts.max_batch_tokens, static_cast<int64_t>(m.opts.max_running));
    modes.sparse_landmark_basis_tokens = static_cast<int>(std::clamp<int64_t>(m.opts.sparse_landmark_basis_tokens, 1, first_cap));
    if (modes.sparse_landmark_rank == 0 && m.opts.sparse_landmark_basis_tokens != EngineOptions{}.sparse_landmark_basis_tokens)
      throw std::runtime_error("--sparse-landmark-basis-tokens needs --sparse-landmark-rank (mean-key landmarks have no basis)");
  } else if (m.opts.sparse_landmark_rank != 0) {
    throw std::runtime_error("--sparse-landmark-rank needs --sparse-budget (it shapes sparse attention's landmarks)");
  } else if (m.opts.sparse_landmark_basis_tokens != EngineOptions{}.sparse_landmark_basis_tokens) {
    throw std::runtime_error("--sparse-landmark-basis-tokens needs --sparse-budget and --sparse-landmark-rank");
  } else if (m.opts.sparse_landmark_subs != 1) {
    throw std::runtime_error("--sparse-landmark-subs needs --sparse-budget (it shapes sparse attention's landmarks)");
  } else if (m.opts.sparse_dense_layers != 0) {
    throw std::runtime_error("--sparse-dense-layers needs --sparse-budget (without it every layer attends densely)");
  }
  if (std::string e = kv::ComputeKvBytes(modes, shape, &m.kv_bytes); !e.empty())
    throw std::runtime_error("KV cache mode: " + e);
  m.kv_shape = shape;
  m.bf16_bytes_per_token = kv::Bf16BytesPerToken(shape);

  kv::StorageSpec spec;
  spec.modes = modes;
  spec.shape = shape;
  spec.lanes = static_cast<int>(m.opts.max_running);
  spec.device = device;
  spec.dtype = dtype;
  spec.rope_cos = m.model->rope_cos();
  spec.rope_sin = m.model->rope_sin();
  spec.rope_inv_freq = m.model->rope_inv_freq();
  uint64_t basis_identity = 0;
  if (modes.key == kv::KeyMode::kSvdq) {
    // The calibrated basis: required for the calibrated source, the short-prompt fallback
    // of the prefill source when its file exists.
    std::string path = m.opts.svdq_basis_file.empty() ? m.opts.model_path + ".svdq-basis" : m.opts.svdq_basis_file;
    const bool need = modes.basis == kv::BasisSource::kCalibrated || !m.opts.svdq_basis_file.empty();
    models::BasisSet b;
    const kv::CodecShape cs = kv::CodecShapeOf(modes, kv::KvShape{c.n_layers, c.n_kv_heads, c.head_dim});
    bool use = need;
    if (need || std::ifstream(path).good()) {
      b = models::ReadBasisFile(path);
      if (b.scope != m.opts.svdq_scope || b.layers != c.n_layers || b.units != cs.units || b.width != cs.width) {
        const std::string why = path + ": basis is for " + std::to_string(b.layers) + " layers x " +
                                std::to_string(b.units) + " units of width " + std::to_string(b.width) + " (" +
                                b.scope + " scope); the server needs " + m.opts.svdq_scope + " scope, " +
                                std::to_string(c.n_layers) + " layers x " + std::to_string(cs.units) +
                                " units of width " + std::to_string(cs.width) + " (run svdq_calibrate --scope " +
                                m.opts.svdq_scope + ")";
        if (need) throw std::runtime_error(why);
        // Only the optional short-prompt fallback: go on without it.
        std::cout << "svdq-server: not using " << why << std::endl;
      } else {
        use = true;
      }
    }
    if (use) {
      const int64_t KV = cs.units, D = cs.width;
      for (int l = 0; l < c.n_layers; ++l) {
        at::Tensor mean = at::empty({KV, D}, at::kFloat), vec = at::empty({KV, D, D}, at::kFloat);
        for (int64_t h = 0; h < KV; ++h) {
          const size_t u = static_cast<size_t>(l) * KV + h;
          std::copy(b.mean[u].begin(), b.mean[u].end(), mean[h].data_ptr<float>());
          std::copy(b.vectors[u].begin(), b.vectors[u].end(), vec[h].data_ptr<float>());
          for (float x : b.vectors[u]) basis_identity = basis_identity * 1099511628211ull ^ std::hash<float>{}(x);
        }
        spec.calibrated_mean.push_back(mean);
        spec.calibrated_vectors.push_back(vec);
      }
      std::cout << "svdq-server: SVDq calibrated basis " << path << " (" << b.tokens << " tokens)" << std::endl;
    }
  }

  int64_t budget = m.opts.kv_cache_bytes;
  if (budget <= 0) {
    budget = 1LL << 30;
#ifdef SVDQ_HAVE_CUDA_RUNTIME
    if (device.is_cuda()) {
      size_t free_b = 0, total_b = 0;
      // 85% of what is free after the weights: the rest is for activations and the
      // per-layer gathers of attention.
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) budget = static_cast<int64_t>(free_b * 0.85);
    }
#endif
  }
  // Per running sequence (tail page, prefill basis) and per server (shared basis) bytes come
  // out of the budget first; blocks take the rest.
  const int64_t fixed = m.kv_bytes.per_lane * spec.lanes + m.kv_bytes.shared;
  const int64_t per_block = m.kv_bytes.key_per_block + m.kv_bytes.value_per_block;
  const int64_t blocks = (budget - fixed) / per_block;
  if (blocks < 1)
    throw std::runtime_error("the KV cache budget of " + std::to_string(budget) + " bytes holds no block (" +
                             std::to_string(fixed) + " bytes go to " + std::to_string(spec.lanes) +
                             " running sequences' tails and bases); raise --kv-cache-bytes or lower --max-running");
  kv::KvCacheConfig kc;
  kc.num_blocks = static_cast<int32_t>(std::min<int64_t>(blocks, 1 << 30));
  kc.block_size = m.opts.block_size;
  // Captured decode steps need one block and one lane that no sequence gets (their padding
  // rows write there): the storage has them beyond the pool's, over the budget by that much.
  // Every mode but layer-scope SVDq has decode kernels; DecodeGraphs::Create says where the
  // shape does not fit them (e.g. quantized pages at a head dim other than 64 or 128).
  const bool graphs = m.opts.cuda_graphs && device.is_cuda() && dtype == at::kBFloat16 && !modes.layer_scope();
  // Sharing is sound where a block's stored form depends only on the tokens before it, the
  // model and the mode: not with a per-sequence basis. The mode, dtype, block size and the
  // basis are in every block hash, so differently coded pages are never shared.
  m.prefix_caching = m.opts.prefix_caching && modes.pages_shareable();
  kc.prefix_caching = m.prefix_caching;
  const std::string mode_text = modes.KeyName() + "|" + modes.ValueName() + "|" + std::to_string(static_cast<int>(dtype));
  kc.mode_key = std::hash<std::string>{}(mode_text) ^ (static_cast<uint64_t>(kc.block_size) << 48) ^ basis_identity;
  m.kv = std::make_unique<kv::KvCacheManager>(kc);
  const int lanes = spec.lanes;
  spec.num_blocks = kc.num_blocks + (graphs ? 1 : 0);
  spec.lanes = lanes + (graphs ? 1 : 0);
  m.storage = std::make_unique<kv::PagedKvStorage>(spec);
  m.kv_shape.half_basis_read = m.storage->AttentionReadsHalfBasis(c.n_heads);  // what the key byte counts assume
  m.sched = std::make_unique<Scheduler>(m.kv.get(), static_cast<int>(m.opts.max_running), m.opts.max_batch_tokens, lanes);
  m.sched->on_lane_released = [&m](int lane) {
    m.storage->ReleaseLane(lane);
    if (m.penalties) m.penalties->Release(lane);
  };
  if (graphs) {
    std::string why;
    try {
      m.graphs = DecodeGraphs::Create(m.model.get(), m.storage.get(), kc.num_blocks, lanes, lanes, &why);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("CUDA graph capture failed (start with --cuda-graphs false to run without): ") +
                               e.what());
    }
    if (m.graphs)
      std::cout << "svdq-server: decode steps from CUDA graphs, batch sizes " << m.graphs->sizes() << std::endl;
    else
      std::cout << "svdq-server: no CUDA graphs: " << why << std::endl;
  } else if (m.opts.cuda_graphs && device.is_cuda()) {
    std::cout << "svdq-server: no CUDA graphs: layer-scope SVDq keys and non-bf16 models run eagerly" << std::endl;
  }
  // Overlapped decode steps need the ids to stay on the device: graph steps (an eager step on
  // CUDA reads them anyway), or the CPU, where overlap changes nothing but runs the same path.
  if (m.opts.overlap_steps && (m.graphs || !device.is_cuda()))
    m.readback = std::make_unique<StepReadback>(device, static_cast<int64_t>(lanes), m.storage->spec().lanes);
  if (m.metrics) {
    const std::string full = dtype == at::kFloat ? "fp32" : dtype == at::kHalf ? "fp16" : "bf16";
    const bool svdq = modes.key == kv::KeyMode::kSvdq;
    m.metrics->SetCacheConfig(kc.block_size,
                              svdq ? "svdq" : modes.key == kv::KeyMode::kFull ? full : modes.KeyName(),
                              svdq ? modes.schedule.ToString() : "none",
                              modes.value == kv::ValueMode::kFull ? full : modes.ValueName());
  }
  m.ReportKv();
  m.ready = true;
}

void Engine::Start() {
  if (!impl_->ready) throw std::logic_error("Engine::Start before Load");
  impl_->thread = std::thread([this] { impl_->Loop(); });
}

void Engine::Stop() {
  {
    // Under the lock, so the engine thread cannot miss the wakeup between testing its
    // wait condition and blocking, and Submit cannot add to a drained inbox.
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stopping.exchange(true)) return;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

bool Engine::ready() const { return impl_->ready.load(); }

KvConfigInfo Engine::kv_config() const {
  const Impl& m = *impl_;
  KvConfigInfo k;
  // Unquantized pages are in the model's dtype: name it (fp32 on the CPU by default).
  const at::ScalarType dt = m.model->dtype();
  const std::string full = dt == at::kFloat ? "fp32" : dt == at::kHalf ? "fp16" : "bf16";
  k.key_mode = m.modes.key == kv::KeyMode::kFull ? full : m.modes.KeyName();
  k.value_mode = m.modes.value == kv::ValueMode::kFull ? full : m.modes.ValueName();
  k.mode = "keys " + k.key_mode + ", values " + k.value_mode;
  if (m.modes.key == kv::KeyMode::kSvdq) {
    k.svdq_schedule = m.modes.schedule.ToString();
    k.svdq_basis = m.modes.basis == kv::BasisSource::kPrefill ? "prefill" : "calibrated";
    k.svdq_scope = m.modes.scope == kv::BasisScope::kHead ? "head" : "layer";
  }
  k.blocks_total = m.kv->num_blocks();
  k.block_size = m.kv->block_size();
  k.key_bytes_per_token = m.kv_bytes.key_per_token();
  k.value_bytes_per_token = m.kv_bytes.value_per_token();
  k.bytes_per_token = static_cast<int64_t>(std::ceil(k.key_bytes_per_token + k.value_bytes_per_token));
  k.key_compression_ratio = static_cast<double>(m.bf16_bytes_per_token) / k.key_bytes_per_token;
  k.bytes_per_running_sequence = m.kv_bytes.per_lane;
  k.prefix_caching = m.prefix_caching;
  k.sparse_budget = m.modes.sparse_budget;
  k.sparse_landmark_rank = m.modes.sparse_landmark_rank;
  k.sparse_landmark_subs = m.modes.sparse_landmark_subs;
  k.sparse_landmark_basis_tokens = m.modes.landmark_basis() ? m.modes.sparse_landmark_basis_tokens : 0;
  k.sparse_dense_layers = m.modes.sparse_dense_layers;
  const int64_t context = m.model->config().max_context;
  if (const int64_t read = kv::DecodeKeyBytesRead(m.modes, m.kv_shape, context); read > 0)
    k.attention_key_compression = static_cast<double>(kv::Bf16KeyBytes(m.kv_shape, context)) / read;
  return k;
}

int64_t Engine::kv_capacity_tokens() const {
  return static_cast<int64_t>(impl_->kv->num_blocks()) * impl_->kv->block_size();
}

SubmitResult Engine::Submit(Request r, std::shared_ptr<RequestStream>* stream) {
  Impl& m = *impl_;
  if (m.stopping) return SubmitResult::kShuttingDown;
  if (!m.ready) return SubmitResult::kNotReady;
  auto seq = std::make_unique<Sequence>();
  seq->arrival = Clock::now();
  seq->stream = std::make_shared<RequestStream>();
  seq->detok = std::make_unique<models::IncrementalDetokenizer>(*m.tokenizer);
  seq->rng.seed(r.sampling.has_seed ? r.sampling.seed : std::random_device{}());
  seq->req = std::move(r);
  seq->prompt = &seq->req.prompt;
  seq->no_prefix_cache = seq->prefill_alone = seq->req.prompt_logprobs;
  // A first forward fits the sequence's bases, however the step's token budget is shared: the
  // SVDq prefill basis on its first min(prompt, --svdq-basis-tokens) tokens, the landmark basis
  // on its first min(prompt, N) (kv_modes.h sparse_landmark_basis_tokens, already capped by what
  // the scheduler can hold a first chunk to), so each depends on the prompt alone.
  if (m.opts.key_mode == "svdq" && m.opts.svdq_basis == "prefill")
    seq->min_first_chunk = m.opts.svdq_basis_tokens;
  if (m.modes.landmark_basis())
    seq->min_first_chunk = std::max<int64_t>(seq->min_first_chunk, m.modes.sparse_landmark_basis_tokens);
  for (const auto& st : seq->req.stop) seq->max_stop = std::max(seq->max_stop, st.size());
  *stream = seq->stream;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.stopping) return SubmitResult::kShuttingDown;  // checked again: Stop() may have drained the inbox
    if (m.queued.load() >= m.opts.max_waiting) return SubmitResult::kQueueFull;
    ++m.queued;
    seq->id = m.next_id++;
    m.inbox.push_back(std::move(seq));
  }
  m.cv.notify_one();
  return SubmitResult::kOk;
}

const models::ModelConfig& Engine::model_config() const { return impl_->model->config(); }
const models::Tokenizer& Engine::tokenizer() const { return *impl_->tokenizer; }
std::string Engine::device_name() const { return impl_->model->device().str(); }
std::string Engine::dtype_name() const { return std::string(c10::toString(impl_->model->dtype())); }
std::string Engine::model_source() const { return impl_->source; }
const EngineOptions& Engine::options() const { return impl_->opts; }

void Engine::Impl::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stopping || !inbox.empty() || !sched->running().empty() || !sched->waiting().empty(); });
      while (!inbox.empty()) {
        sched->Enqueue(std::move(inbox.front()));
        inbox.pop_front();
      }
    }
    if (stopping) break;
    Step();
  }
  if (pending) DrainAndRetire();  // its tokens are sent (as without overlap), then every sequence left is cancelled
  for (auto& s : sched->running()) Finish(Seq(s.get()), FinishReason::kCancelled, "server shutting down");
  for (auto& s : sched->waiting()) Finish(Seq(s.get()), FinishReason::kCancelled, "server shutting down");
  std::lock_guard<std::mutex> lock(mu);
  for (auto& s : inbox) Finish(s.get(), FinishReason::kCancelled, "server shutting down");
}

void Engine::Impl::Step() {
  // Cancelled waiters leave at once; then admission (scheduler.h).
  auto& waiting = sched->waiting();
  auto& running = sched->running();
  for (auto it = waiting.begin(); it != waiting.end();) {
    if (Seq(it->get())->stream->cancelled()) {
      Finish(Seq(it->get()), FinishReason::kCancelled, "");
      if ((*it)->in_queue_bound) --queued;
      it = waiting.erase(it);
    } else {
      ++it;
    }
  }
  c10::InferenceMode no_grad;
  if (pending) {
    const auto t0 = Clock::now();
    const int batch = static_cast<int>(running.size());
    if (LaunchAhead()) {
      if (metrics) {
        metrics->SetRunning(static_cast<double>(running.size()));
        metrics->SetWaiting(static_cast<double>(waiting.size()));
        metrics->ObserveStep("decode", batch, Seconds(t0, Clock::now()));
      }
      ReportKv();
      return;
    }
    DrainAndRetire();
  }
  const int64_t q0 = kv->prefix_query_tokens(), h0 = kv->prefix_hit_tokens();
  for (SchedSeq* a : sched->Admit()) {
    Sequence* s = Seq(a);
    if (metrics && s->preempted == 0) metrics->ObserveQueueTime(Seconds(s->arrival, Clock::now()));
    if (s->in_queue_bound) --queued;  // the bound is on requests not yet admitted
    s->in_queue_bound = false;
  }
  if (metrics) {
    metrics->AddPrefixCache(kv->prefix_query_tokens() - q0, kv->prefix_hit_tokens() - h0);
    metrics->SetRunning(static_cast<double>(running.size()));
    metrics->SetWaiting(static_cast<double>(waiting.size()));
  }
  // Step time by phase: a step that prefills any sequence counts as "prefill".
  const auto step_start = Clock::now();
  bool any_prefill = false;
  for (const auto& r : running) any_prefill = any_prefill || !r->prefilled;
  const int batch = static_cast<int>(running.size());
  RunBatch();
  if (metrics) {
    metrics->SetRunning(static_cast<double>(running.size()));
    metrics->SetWaiting(static_cast<double>(waiting.size()));
    if (batch > 0) metrics->ObserveStep(any_prefill ? "prefill" : "decode", batch, Seconds(step_start, Clock::now()));
  }
  ReportKv();
}

void Engine::Impl::RunBatch() {
  // Cancelled sequences leave first; then every decoding sequence gets room for one more
  // token (scheduler.h ReserveDecodes), then the step's plan.
  auto& running = sched->running();
  for (auto it = running.begin(); it != running.end();) {
    if (Seq(it->get())->stream->cancelled()) {
      Finish(Seq(it->get()), FinishReason::kCancelled, "");
      it = running.erase(it);
    } else {
      ++it;
    }
  }
  std::vector<SchedSeq*> preempted;
  for (SchedSeq* s : sched->ReserveDecodes(&preempted)) {
    // Nothing else is left to give way: this sequence holds the whole cache. Its tokens so
    // far were all sent; it ends at the length the cache allows (admission checked that
    // the prompt, max_tokens and min_tokens fit, so only an unset max_tokens gets here).
    Finish(Seq(s), FinishReason::kLength, "");
    sched->TakeRunning(s);
  }
  if (metrics)
    for (size_t i = 0; i < preempted.size(); ++i) metrics->AddPreemption();
  const StepPlan plan = sched->Plan();
  std::vector<Sequence*> finished;
  for (SchedSeq* a : plan.alone) {
    Sequence* s = Seq(a);
    bool done;
    try {
      done = PrefillWithPromptLogprobs(s);
    } catch (const std::exception& e) {
      Finish(s, FinishReason::kError, e.what());
      done = true;
    }
    if (done) finished.push_back(s);
  }
  const std::vector<StepPlan::Item>& work = plan.items;
  if (!work.empty()) {
    at::Tensor logits;
    std::string error;
    // A step of decodes only, that a captured graph holds, replays it.
    bool decodes_only = graphs && static_cast<int>(work.size()) <= graphs->max_batch();
    for (const StepPlan::Item& w : work) decodes_only = decodes_only && w.seq->prefilled && w.tokens.size() == 1;
    // A step of decodes only may leave its ids on the device: it becomes the pending step.
    bool overlap = readback && (decodes_only || !graphs);
    for (const StepPlan::Item& w : work)
      overlap = overlap && w.seq->prefilled && w.tokens.size() == 1 && Overlappable(Seq(w.seq));
    try {
      if (decodes_only) {
        std::vector<DecodeRow> rows;
        std::vector<int64_t> lengths;
        for (const StepPlan::Item& w : work) {
          rows.push_back({w.tokens[0], w.seq->computed, &kv->Blocks(w.seq->id), w.seq->lane});
          lengths.push_back(w.seq->computed + 1);
        }
        logits = graphs->Run(rows);
        CountKeyBytes(lengths);
      } else {
        std::vector<SchedSeq*> seqs;
        std::vector<std::vector<int32_t>> tokens;
        for (const StepPlan::Item& w : work) {
          seqs.push_back(w.seq);
          tokens.push_back(w.tokens);
        }
        logits = ForwardEager(seqs, tokens);
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    std::vector<size_t> sampling;  // rows of `work` that choose a token this step
    for (size_t i = 0; i < work.size(); ++i) {
      Sequence* s = Seq(work[i].seq);
      if (!error.empty()) {
        Finish(s, FinishReason::kError, error);
        finished.push_back(s);
        continue;
      }
      sched->Advance(s, static_cast<int64_t>(work[i].tokens.size()));
      if (!work[i].samples) continue;
      if (!s->prefilled) {
        s->prefilled = true;
        if (metrics && s->preempted == 0) metrics->AddPromptTokens(static_cast<double>(s->req.prompt.size()));
      }
      sampling.push_back(i);
    }
    if (!sampling.empty()) {
      // One sampler call for the whole batch, on the logits' device.
      std::vector<SampleRow> rows;
      std::vector<int64_t> picked;
      for (size_t i : sampling) {
        rows.push_back(RowFor(Seq(work[i].seq)));
        picked.push_back(static_cast<int64_t>(i));
      }
      at::Tensor sub;
      std::vector<int32_t> toks;
      try {
        // Every row samples in a decode step: then they are the first rows, in order (a view).
        bool prefix = true;
        for (size_t j = 0; j < picked.size(); ++j) prefix = prefix && picked[j] == static_cast<int64_t>(j);
        sub = prefix ? logits.narrow(0, 0, static_cast<int64_t>(picked.size()))
                     : logits.index_select(0, models::IndexToDevice(picked, logits.device()));
        if (overlap && sampling.size() == work.size()) {
          auto p = std::make_unique<Pending>();
          for (size_t i : sampling) p->seqs.push_back(Seq(work[i].seq));
          p->ids = SampleIds(sub, rows, penalties.get());
          p->slot = readback->Start(p->ids, KeyFlags());
          pending = std::move(p);
        } else {
          toks = SampleBatch(sub, rows, penalties.get());
        }
      } catch (const std::exception& e) {
        error = e.what();
      }
      if (pending) {  // read and emitted by a later step
        for (Sequence* s : finished) sched->TakeRunning(s);
        return;
      }
      std::vector<int> want;  // logprobs asked per sampled row (-1: none, or nothing was sampled)
      for (size_t j = 0; j < sampling.size(); ++j)
        want.push_back(error.empty() && toks[j] != kNonFiniteLogits ? Seq(work[sampling[j]].seq)->req.logprobs : -1);
      std::vector<TokenLogprob> lps;
      try {
        if (error.empty()) lps = TokenLogprobs(sub, toks, want);
      } catch (const std::exception& e) {
        error = e.what();
      }
      std::vector<int> penalty_lanes;  // the emitted tokens that the penalties' device state counts
      std::vector<int32_t> penalty_toks;
      // Page-coded keys: sequences whose keys had a NaN or infinity (the codec stored that page as
      // zeros and raised its lane's flag) end with an error. Read after the sampler's sync.
      const std::vector<int> bad = error.empty() ? NonFiniteKeyLanes() : std::vector<int>();
      for (size_t j = 0; j < sampling.size(); ++j) {
        Sequence* s = Seq(work[sampling[j]].seq);
        if (!error.empty()) {
          Finish(s, FinishReason::kError, error);
          finished.push_back(s);
          continue;
        }
        const bool bad_key = std::find(bad.begin(), bad.end(), s->lane) != bad.end();
        if (EmitSampled(s, want[j] >= 0 ? &lps[j] : nullptr, toks[j], bad_key))
          finished.push_back(s);
        else if (rows[j].penalty_lane >= 0)
          penalty_lanes.push_back(rows[j].penalty_lane), penalty_toks.push_back(toks[j]);
      }
      if (!penalty_lanes.empty()) penalties->Add(penalty_lanes, penalty_toks);  // one launch for the step
    }
    // Prompt chunks that did not sample this step are checked the same way.
    if (error.empty() && sampling.size() < work.size()) {
      const std::vector<int> bad = NonFiniteKeyLanes();
      for (size_t i = 0; i < work.size() && !bad.empty(); ++i) {
        Sequence* s = Seq(work[i].seq);
        if (work[i].samples || std::find(bad.begin(), bad.end(), s->lane) == bad.end()) continue;
        Finish(s, FinishReason::kError, kNonFiniteKeyMessage);
        finished.push_back(s);
      }
    }
  }
  for (Sequence* s : finished) sched->TakeRunning(s);
}

bool Engine::Impl::Overlappable(const Sequence* s) {
  const SamplingParams& p = s->req.sampling;
  return s->req.logprobs < 0 && p.repetition_penalty == 1.f && p.presence_penalty == 0.f && p.frequency_penalty == 0.f;
}

bool Engine::Impl::EmitSampled(Sequence* s, const TokenLogprob* logprob, int32_t tok, bool nonfinite_key) {
  try {
    if (tok == kNonFiniteLogits) throw std::runtime_error(kNonFiniteMessage);
    if (nonfinite_key) throw std::runtime_error(kNonFiniteKeyMessage);
    return Emit(s, logprob, tok);
  } catch (const std::exception& e) {
    Finish(s, FinishReason::kError, e.what());
    return true;
  }
}

at::Tensor Engine::Impl::ForwardFromIds(const std::vector<Sequence*>& seqs, const at::Tensor& ids,
                                        const std::vector<int64_t>& from) {
  if (graphs) {
    std::vector<DecodeRow> rows;
    std::vector<int64_t> lengths;
    for (Sequence* s : seqs) {
      rows.push_back({0, s->computed, &kv->Blocks(s->id), s->lane});
      lengths.push_back(s->computed + 1);
    }
    at::Tensor logits = graphs->Run(rows, ids, from);
    CountKeyBytes(lengths);
    return logits;
  }
  // On the CPU (the only other place steps overlap) the ids are host memory already.
  const at::Tensor host = ids.to(at::kCPU).contiguous();
  std::vector<std::vector<int32_t>> tokens;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int64_t id = host.data_ptr<int64_t>()[from.empty() ? static_cast<int64_t>(b) : from[b]];
    tokens.push_back({static_cast<int32_t>(std::max<int64_t>(id, 0))});
  }
  return ForwardEager(std::vector<SchedSeq*>(seqs.begin(), seqs.end()), tokens);
}

at::Tensor Engine::Impl::ForwardEager(const std::vector<SchedSeq*>& seqs, const std::vector<std::vector<int32_t>>& tokens) {
  std::vector<std::unique_ptr<kv::PagedSeqView>> views;
  std::vector<models::KvView*> kvs;
  std::vector<int64_t> decode_lengths;  // rows of one token after their prompt: decode attention
  for (size_t i = 0; i < seqs.size(); ++i) {
    SchedSeq* s = seqs[i];
    views.push_back(std::make_unique<kv::PagedSeqView>(storage.get(), kv->Blocks(s->id), s->computed, s->lane));
    views.back()->set_prompt(!s->prefilled);
    kvs.push_back(views.back().get());
    if (s->prefilled && tokens[i].size() == 1) decode_lengths.push_back(s->computed + 1);
  }
  at::Tensor logits = model->ForwardBatch(tokens, kvs);
  CountKeyBytes(decode_lengths);
  return logits;
}

void Engine::Impl::DrainAndRetire() {
  std::vector<Sequence*> finished;
  DrainPending(&finished, {});
  for (Sequence* s : finished) sched->TakeRunning(s);
}

bool Engine::Impl::LaunchAhead() {
  const Pending& p = *pending;  // moved out by DrainPending below: read before it
  if (sched->WouldAdmit()) return false;
  size_t alive = 0;
  for (Sequence* s : p.seqs) {
    if (!s) continue;
    if (s->stream->cancelled() || !Overlappable(s)) return false;
    ++alive;
  }
  if (alive != sched->running().size()) return false;  // a sequence outside the pending step (prefilling)
  // The sequences that go on, unless the pending token ends them: those that surely end with it
  // (length) are left out.
  const int64_t max_context = model->config().max_context;
  std::vector<Sequence*> next;
  std::vector<int64_t> from;
  bool identity = true;
  for (size_t j = 0; j < p.seqs.size(); ++j) {
    Sequence* s = p.seqs[j];
    if (!s) continue;
    const bool ends = (s->req.max_tokens > 0 && static_cast<int32_t>(s->output.size()) + 1 >= s->req.max_tokens) ||
                      s->computed + 1 >= max_context;
    if (ends) continue;
    identity = identity && from.size() == j;
    next.push_back(s);
    from.push_back(static_cast<int64_t>(j));
  }
  if (next.empty() || (graphs && static_cast<int>(next.size()) > graphs->max_batch())) return false;
  if (!sched->ReserveAhead(std::vector<SchedSeq*>(next.begin(), next.end()))) return false;
  for (Sequence* s : next) s->unread_token = true;
  const at::Tensor ids = p.ids;
  auto n = std::make_unique<Pending>();
  n->seqs = next;
  std::string error;
  try {
    std::vector<SampleRow> rows;
    for (Sequence* s : next) rows.push_back(RowFor(s, /*ahead=*/1));
    at::Tensor logits = ForwardFromIds(next, ids, identity ? std::vector<int64_t>() : from);
    n->ids = SampleIds(logits, rows);
    n->slot = readback->Start(n->ids, KeyFlags());
  } catch (const std::exception& e) {
    error = e.what();
  }
  // While the GPU runs it: the pending step's tokens.
  std::vector<Sequence*> finished;
  if (std::string e = DrainPending(&finished, next); !e.empty() && error.empty()) error = e;
  int discarded = 0;
  for (Sequence*& s : n->seqs)
    if (std::find(finished.begin(), finished.end(), s) != finished.end()) s = nullptr, ++discarded;
  if (metrics && error.empty()) metrics->AddStepAhead(discarded);
  for (Sequence* s : n->seqs) {
    if (!s) continue;
    if (!error.empty()) {
      Finish(s, FinishReason::kError, error);
      finished.push_back(s);
    } else {
      sched->Advance(s, 1);
    }
  }
  if (error.empty()) pending = std::move(n);
  for (Sequence* s : finished) sched->TakeRunning(s);
  return true;
}

std::string Engine::Impl::DrainPending(std::vector<Sequence*>* finished, const std::vector<Sequence*>& ahead) {
  std::unique_ptr<Pending> p = std::move(pending);
  try {
    readback->Wait(p->slot);  // throws on a device error raised by the step
  } catch (const std::exception& e) {
    for (Sequence* s : p->seqs)
      if (s) {
        Finish(s, FinishReason::kError, e.what());
        finished->push_back(s);
      }
    return e.what();
  }
  const int64_t* ids = readback->ids(p->slot);
  const int32_t* flags = readback->flags(p->slot);
  const bool coded = storage->spec().modes.page_coded_keys();
  for (size_t j = 0; j < p->seqs.size(); ++j) {
    Sequence* s = p->seqs[j];
    if (!s) continue;
    const int32_t tok = static_cast<int32_t>(ids[j]);
    if (EmitSampled(s, nullptr, tok, coded && flags[s->lane] != 0)) {
      finished->push_back(s);
    } else if (std::find(ahead.begin(), ahead.end(), s) != ahead.end()) {
      kv->SetLastToken(s->id, tok);
      s->unread_token = false;
    }
  }
  return "";
}

at::Tensor Engine::Impl::KeyFlags() const {
  return storage->spec().modes.page_coded_keys() ? storage->nonfinite_flags() : at::Tensor();
}

std::vector<int> Engine::Impl::NonFiniteKeyLanes() const {
  if (!storage->spec().modes.page_coded_keys()) return {};
  return storage->NonFiniteLanes();
}

bool Engine::Impl::PrefillWithPromptLogprobs(Sequence* s) {
  // Every position's logits: the log-probability of each prompt token given those before it
  // (no prefix-cache hits: admission computed the whole prompt).
  s->prefill_alone = false;
  std::vector<int32_t> tokens = s->AllTokens();
  kv::PagedSeqView view(storage.get(), kv->Blocks(s->id), s->computed, s->lane);
  std::vector<int32_t> uncached(tokens.begin() + s->computed, tokens.end());
  at::Tensor last_logits;
  const int64_t chunk = s->req.prompt_logprobs_chunk;
  const int64_t top = s->req.prompt_logprobs_top;
  s->prompt_logprobs.clear();
  s->prompt_top.clear();
  auto add_top = [&](const at::Tensor& ids, const at::Tensor& vals) {  // [rows, top] on the CPU
    const auto ia = ids.accessor<int64_t, 2>();
    const auto va = vals.accessor<float, 2>();
    for (int64_t r = 0; r < ids.size(0); ++r) {
      std::vector<std::pair<int32_t, float>> row;
      for (int64_t j = 0; j < ids.size(1); ++j) row.emplace_back(static_cast<int32_t>(ia[r][j]), va[r][j]);
      s->prompt_top.push_back(std::move(row));
    }
  };
  // Runs one piece of the prompt and appends its scores (and top tokens).
  auto score = [&](const std::vector<int32_t>& part) {
    at::Tensor ids, vals;
    at::Tensor picked = model->ForwardLogprobs(part, &view, &last_logits, top, &ids, &vals);  // bounded memory
    s->prompt_logprobs.insert(s->prompt_logprobs.end(), picked.data_ptr<float>(),
                              picked.data_ptr<float>() + picked.numel());
    if (top > 0) add_top(ids, vals);
  };
  if (chunk <= 0) {
    score(uncached);
  } else {
    // Chunk by chunk through the cache: each chunk's forward reads every earlier position in
    // its stored form (the view's Read / Attend), its own positions as computed. The first
    // token of a chunk is scored by the previous chunk's last logits.
    // The first piece covers the request's first chunk and the sequence's minimum first chunk
    // (an SVDq prefill basis is fitted on it), then pieces of `chunk`.
    const int64_t n = static_cast<int64_t>(uncached.size());
    const int64_t first = std::max<int64_t>({chunk, s->min_first_chunk, s->req.prompt_logprobs_first_chunk});
    for (int64_t c0 = 0; c0 < n;) {
      const int64_t len = c0 == 0 && s->computed == 0 ? first : chunk;
      std::vector<int32_t> part(uncached.begin() + c0, uncached.begin() + std::min(n, c0 + len));
      c0 += static_cast<int64_t>(part.size());
      if (last_logits.defined()) {
        at::Tensor lp = at::log_softmax(last_logits.to(at::kFloat), -1).to(at::kCPU);
        s->prompt_logprobs.push_back(lp[part[0]].item<float>());
        if (top > 0) {
          auto [v, i] = lp.topk(std::min<int64_t>(top, lp.size(0)));
          add_top(i.unsqueeze(0), v.unsqueeze(0));
        }
      }
      score(part);
    }
  }
  s->computed = static_cast<int64_t>(tokens.size());
  kv->Commit(s->id, static_cast<int32_t>(s->computed));
  s->prefilled = true;
  if (metrics && s->preempted == 0) metrics->AddPromptTokens(static_cast<double>(s->req.prompt.size()));
  at::Tensor last = last_logits.unsqueeze(0);
  const SampleRow row = RowFor(s);
  const int32_t tok = SampleBatch(last, {row}, penalties.get())[0];
  if (tok == kNonFiniteLogits) throw std::runtime_error(kNonFiniteMessage);  // the caller ends s with the error
  if (row.penalty_lane >= 0) penalties->Add({row.penalty_lane}, {tok});
  const std::vector<TokenLogprob> lp = TokenLogprobs(last, {tok}, {s->req.logprobs});
  return Emit(s, s->req.logprobs >= 0 ? &lp[0] : nullptr, tok);
}

SampleRow Engine::Impl::RowFor(Sequence* s, int ahead) {
  // Until min_tokens, the end of sequence and the stop token ids cannot be sampled.
  const Request& rq = s->req;
  SampleRow row;
  row.params = &rq.sampling;
  row.history = TokenHistory{&rq.prompt, &s->output};
  if (static_cast<int32_t>(s->output.size()) + ahead < rq.min_tokens) {
    if (!rq.ignore_eos) row.banned = tokenizer->eos_ids();
    row.banned.insert(row.banned.end(), rq.stop_token_ids.begin(), rq.stop_token_ids.end());
  }
  if (rq.sampling.temperature > 0.f) row.u = std::uniform_real_distribution<double>(0.0, 1.0)(s->rng);
  // Penalties read the sequence's tokens from a device table per lane, filled once when the
  // sequence starts on its lane (again after a preemption), then one token per step.
  const SamplingParams& sp = rq.sampling;
  if ((sp.repetition_penalty != 1.f || sp.presence_penalty != 0.f || sp.frequency_penalty != 0.f) && s->lane >= 0) {
    if (!penalties)
      penalties = std::make_unique<PenaltyState>(storage->spec().lanes, model->config().vocab_size, storage->spec().device);
    if (!penalties->Holds(s->lane, s->id)) penalties->Reset(s->lane, s->id, rq.prompt, s->output);
    row.penalty_lane = s->lane;
  }
  return row;
}

bool Engine::Impl::Emit(Sequence* s, const TokenLogprob* logprob, int32_t tok) {
  const auto& cfg = model->config();
  const Request& rq = s->req;
  auto now = Clock::now();
  if (s->output.empty()) {
    s->first_token = now;
    if (metrics) metrics->ObserveTimeToFirstToken(Seconds(s->arrival, now));
  } else if (metrics) {
    metrics->ObserveInterTokenLatency(Seconds(s->last_token, now));
  }
  s->last_token = now;
  s->output.push_back(tok);
  if (metrics) metrics->AddGenerationTokens(1);

  s->text += s->detok->Push(tok);
  FinishReason reason = FinishReason::kNone;
  std::string stop_reason;
  const bool may_stop = static_cast<int32_t>(s->output.size()) >= rq.min_tokens;
  if (may_stop && !rq.ignore_eos && tokenizer->IsEos(tok)) {
    reason = FinishReason::kStop;
  } else if (may_stop && std::find(rq.stop_token_ids.begin(), rq.stop_token_ids.end(), tok) != rq.stop_token_ids.end()) {
    reason = FinishReason::kStop;
    stop_reason = std::to_string(tok);
  } else if (rq.max_tokens > 0 && static_cast<int32_t>(s->output.size()) >= rq.max_tokens) {
    reason = FinishReason::kLength;
  } else if (s->computed + 1 >= cfg.max_context) {
    reason = FinishReason::kLength;
  }
  if (reason != FinishReason::kNone) s->text += s->detok->Flush();
  // Stop strings: bytes that could still begin one are held back (max_stop - 1 of them),
  // so a match can only start in the unsent part, and neither it nor what follows is sent.
  size_t cut = std::string::npos;
  if (may_stop) {
    for (const auto& st : rq.stop) {
      size_t q = s->text.find(st, s->emitted);
      if (q != std::string::npos && (cut == std::string::npos || q < cut)) {
        cut = q;
        stop_reason = st;
      }
    }
    if (cut != std::string::npos) reason = FinishReason::kStop;
  }
  size_t send_to = s->text.size();
  if (cut != std::string::npos) {
    send_to = cut;
  } else if (reason == FinishReason::kNone && s->max_stop > 1) {
    send_to = s->text.size() > s->max_stop - 1 ? s->text.size() - (s->max_stop - 1) : 0;
    while (send_to > s->emitted && (static_cast<unsigned char>(s->text[send_to]) & 0xC0) == 0x80) --send_to;
  }
  send_to = std::max(send_to, s->emitted);
  Event ev;
  ev.ids = {tok};
  ev.text = s->text.substr(s->emitted, send_to - s->emitted);
  if (logprob) ev.logprobs.push_back(*logprob);
  if (!s->prompt_logprobs_sent && rq.prompt_logprobs) {
    ev.prompt_logprobs = s->prompt_logprobs;
    ev.prompt_top = s->prompt_top;
    s->prompt_logprobs_sent = true;
  }
  s->emitted = send_to;
  s->stream->Push(std::move(ev));
  if (reason == FinishReason::kNone) return false;
  s->stop_reason = stop_reason;
  Finish(s, reason, "");
  return true;
}

void Engine::Impl::Finish(Sequence* s, FinishReason reason, const std::string& error) {
  auto now = Clock::now();
  Event fin;
  fin.final = true;
  fin.reason = reason;
  fin.error = error;
  fin.stop_reason = s->stop_reason;
  fin.prompt_tokens = static_cast<int32_t>(s->req.prompt.size());
  fin.completion_tokens = static_cast<int32_t>(s->output.size());
  fin.cached_tokens = s->cached_tokens;
  if (kv->Has(s->id)) {
    const int64_t bs = kv->block_size(), tokens = kv->NumTokens(s->id) - (s->unread_token ? 1 : 0);
    const int64_t blocks = std::min<int64_t>(static_cast<int64_t>(kv->Blocks(s->id).size()), (tokens + bs - 1) / bs);
    fin.kv_bytes_stored = blocks * (kv_bytes.key_per_block + kv_bytes.value_per_block);
    fin.kv_bytes_full = 2 * blocks * kv->block_size() * bf16_bytes_per_token;
  }
  fin.ttft_s = s->output.empty() ? 0 : Seconds(s->arrival, s->first_token);
  const double total_s = Seconds(s->arrival, now);
  fin.total_s = total_s;
  s->stream->Push(std::move(fin));
  sched->Release(s);  // every block at once, and the lane
  if (metrics) {
    metrics->ObserveEndToEnd(total_s);
    metrics->RequestFinished(MetricReason(reason));
  }
}

}  // namespace svdq::engine
