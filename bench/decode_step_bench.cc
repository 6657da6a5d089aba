// decode_step_bench: the server's decode step (server/engine/decode_graphs.h: the model over
// the paged KV cache, inputs filled from the host, replayed from a CUDA graph, the next
// tokens read back) in each KV mode, by batch size, beside two references measured in the
// same run on the same GPU:
//   peer:     a bare libtorch decode step of the same model: the same weights and layer code
//             (LlamaModel::DecodeStatic) over a contiguous bf16 cache of the same length, SDPA
//             with GQA, captured in one CUDA graph and replayed back to back (no host work);
//   ceiling:  B / ((weight bytes + the bf16 KV bytes of B sequences) / copy bandwidth).
// Each sequence is first prefilled to --context tokens the way the engine plans prompt chunks
// (steps of --prefill-step tokens, eager); that prefill is timed too, beside a prefill peer (the
// same model over a contiguous cache, one prompt of --prefill-step tokens) and a GEMM ceiling.
// Then --steps steps are timed (median of per-step times), each with a sync on the chosen
// tokens as the server does. Then one step eagerly with CUDA events around every layer's KV
// write and attention (GPU time of those parts, summed over layers). Prints a table and writes
// JSON rows (model, key_mode, value_mode, streams, step_tok_s, peer_tok_s, ceiling_tok_s, ...).
//
// usage: decode_step_bench [--model synthetic:llama-3-8b] [--streams 1,16,64] [--context 1400]
//        [--steps 32] [--modes bf16_bf16,svdq_bf16] [--svdq-schedules S1;S2] [--json OUT]
//        [--prefill-step 2048] [--prefill-json OUT] [--date YYYY-MM-DD] [--profile-prefill]
//        [--profile-from N]
// --profile-prefill: the PyTorch (Kineto) profiler over prefill steps 2-4 of each mode (N+1 to
//   N+3 with --profile-from N: later steps of a long prompt attend over more pages), then
//   the GPU kernels by total time and the host-side ATen ops by total time (that profiled
//   pass is timed apart, so the prefill figure above stays unprofiled).
// --profile-decode: the same profiler over 4 replayed decode steps and one eager step at each
//   stream count, after the timed steps: GPU kernels and copies per step, host time per step.
// --svdq-schedules: the schedules SVDq key modes run with (default 4,2,2,2,2,2,1,1, the server's).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_cuda.h"
#include "models/checkpoint.h"
#include "models/kv_view.h"
#include "models/llama.h"
#include "server/engine/decode_graphs.h"
#include "server/kv/paged_storage.h"

using namespace svdq;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, sep))
    if (!x.empty()) out.push_back(x);
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double CopyBandwidth() {
  const int64_t n = (1LL << 30) / 4;
  at::Tensor src = at::ones({n}, at::TensorOptions().device(at::kCUDA).dtype(at::kFloat)), dst = at::empty_like(src);
  std::vector<double> t;
  for (int i = 0; i < 6; ++i) {
    c10::cuda::device_synchronize();
    auto a = Clock::now();
    dst.copy_(src);
    c10::cuda::device_synchronize();
    if (i > 0) t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
  }
  return 2.0 * n * 4 / Median(t);  // bytes read + written per second
}

// The peer: DecodeStatic over a contiguous [B, kv, T, D] cache per layer, in one graph.
double PeerStepSeconds(models::LlamaModel* model, int64_t B, int64_t T, int steps) {
  const auto& c = model->config();
  auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  std::vector<at::Tensor> kc, vc;
  for (int l = 0; l < c.n_layers; ++l) {
    kc.push_back(at::randn({B, c.n_kv_heads, T, c.head_dim}, o));
    vc.push_back(at::randn({B, c.n_kv_heads, T, c.head_dim}, o));
  }
  at::Tensor ids = at::ones({B}, o.dtype(at::kLong)), pos = at::full({B}, T - 1, o.dtype(at::kLong));
  at::Tensor slot = at::full({1}, T - 1, o.dtype(at::kLong));
  models::StaticDecodeKv kv;
  kv.write = [&](int l, const at::Tensor&, const at::Tensor& k, const at::Tensor& v) {
    kc[l].index_copy_(2, slot, k.unsqueeze(2));
    vc[l].index_copy_(2, slot, v.unsqueeze(2));
  };
  kv.attend = [&](int l, const at::Tensor& q) {
    return at::scaled_dot_product_attention(q.unsqueeze(2), kc[l], vc[l], {}, 0.0, false, {}, /*enable_gqa=*/true)
        .squeeze(2)
        .to(at::kFloat);
  };
  // The caches and inputs above are made on the current stream; the side stream below must
  // not read them before they exist (it read uninitialised ids once, out of range).
  c10::cuda::device_synchronize();
  at::cuda::CUDAStream side = at::cuda::getStreamFromPool();
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    for (int i = 0; i < 2; ++i) model->DecodeStatic(ids, pos, kv);
    side.synchronize();
    graph.capture_begin();
    at::Tensor logits = model->DecodeStatic(ids, pos, kv);
    graph.capture_end();
  }
  c10::cuda::device_synchronize();
  graph.replay();
  c10::cuda::device_synchronize();
  auto a = Clock::now();
  for (int i = 0; i < steps; ++i) graph.replay();
  c10::cuda::device_synchronize();
  return std::chrono::duration<double>(Clock::now() - a).count() / steps;
}

// The prefill peer: the same model's forward of one `n`-token prompt over a contiguous cache
// (models::SequenceKv: no pages, no codec, causal SDPA); tokens/s, best of three.
double PeerPrefillTokS(models::LlamaModel* model, int64_t n) {
  std::vector<int32_t> p(n);
  for (int64_t t = 0; t < n; ++t) p[t] = static_cast<int32_t>((31LL * t + 5) % model->config().vocab_size);
  double best = 1e30;
  for (int i = 0; i < 4; ++i) {
    models::SequenceKv kv;
    c10::cuda::device_synchronize();
    auto a = Clock::now();
    model->Forward(p, &kv);
    c10::cuda::device_synchronize();
    if (i > 0) best = std::min(best, std::chrono::duration<double>(Clock::now() - a).count());
  }
  return n / best;
}

// Dense bf16 GEMM throughput (flop/s) at a prefill step's shape: [n, 4096] x [4096, 14336].
double GemmFlops(int64_t n) {
  auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::Tensor x = at::randn({n, 4096}, o), w = at::randn({14336, 4096}, o);
  std::vector<double> t;
  for (int i = 0; i < 12; ++i) {
    c10::cuda::device_synchronize();
    auto a = Clock::now();
    at::Tensor y = at::linear(x, w);
    c10::cuda::device_synchronize();
    if (i > 1) t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
  }
  return 2.0 * n * 4096 * 14336 / Median(t);
}


// Kernel and host-op totals of whatever runs between Start and Report (the Kineto profiler
// that torch.profiler drives; nsys is not on the GPU host).
struct KernelProfile {
  void Start() {
    namespace prof = torch::autograd::profiler;
    using torch::profiler::impl::ActivityType;
    const torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::KINETO);
    const std::set<ActivityType> acts{ActivityType::CPU, ActivityType::CUDA};
    prof::prepareProfiler(cfg, acts);
    prof::enableProfiler(cfg, acts);
  }
  // Prints the totals; `steps` > 0 adds the per-step GPU operations and host time.
  void Report(const std::string& label, double wall_s, int top = 18, int steps = 0) {
    auto result = torch::autograd::profiler::disableProfiler();
    std::map<std::string, std::pair<double, int>> gpu, cpu;
    double gpu_total = 0;
    int64_t gpu_ops = 0;
    for (const auto& e : result->events()) {
      const double ms = e.durationNs() / 1e6;
      std::string name = e.name().substr(0, 90);
      if (e.deviceType() == c10::DeviceType::CUDA) {
        auto& g = gpu[name];
        g.first += ms;
        g.second += 1;
        gpu_total += ms;
        ++gpu_ops;
      } else if (name.rfind("aten::", 0) == 0) {
        auto& c = cpu[name];
        c.first += ms;
        c.second += 1;
      }
    }
    auto print = [&](const char* what, const std::map<std::string, std::pair<double, int>>& m) {
      std::vector<std::pair<double, std::string>> v;
      for (const auto& [n, t] : m) v.push_back({t.first, n + " (x" + std::to_string(t.second) + ")"});
      std::sort(v.rbegin(), v.rend());
      std::printf("  %s:\n", what);
      for (int i = 0; i < top && i < static_cast<int>(v.size()); ++i)
        std::printf("    %9.2f ms  %s\n", v[i].first, v[i].second.c_str());
    };
    std::printf("profile %s: %.1f ms wall, %.1f ms of GPU kernels and copies\n", label.c_str(), wall_s * 1e3, gpu_total);
    if (steps > 0)
      std::printf("  per step: %.1f GPU kernels and copies, %.3f ms of them, %.3f ms wall\n",
                  static_cast<double>(gpu_ops) / steps, gpu_total / steps, wall_s * 1e3 / steps);
    print("GPU", gpu);
    print("host ATen ops (inclusive, nested ops counted in each)", cpu);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string model_path = "synthetic:llama-3-8b", streams_arg = "1,16,64", modes_arg = "bf16_bf16,svdq_bf16";
  std::string json_out, date, schedules_arg = "4,2,2,2,2,2,1,1";
  int context = 1400, steps = 32, prefill_step = 2048;
  std::string prefill_json;
  bool profile_prefill = false, profile_decode = false;
  int profile_from = 1;  // the first profiled prefill step (0-based)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model") model_path = next();
    else if (a == "--streams") streams_arg = next();
    else if (a == "--modes") modes_arg = next();
    else if (a == "--svdq-schedules") schedules_arg = next();
    else if (a == "--context") context = std::stoi(next());
    else if (a == "--steps") steps = std::stoi(next());
    else if (a == "--prefill-step") prefill_step = std::stoi(next());
    else if (a == "--prefill-json") prefill_json = next();
    else if (a == "--profile-prefill") profile_prefill = true;
    else if (a == "--profile-from") profile_from = std::max(1, std::stoi(next()));
    else if (a == "--profile-decode") profile_decode = true;
    else if (a == "--json") json_out = next();
    else if (a == "--date") date = next();
    else {
      std::cerr << "usage: decode_step_bench [--model M] [--streams 1,16,64] [--context N] [--steps N] "
                   "[--modes bf16_bf16,svdq_bf16] [--svdq-schedules S1;S2] [--json OUT] [--prefill-step N] "
                   "[--prefill-json OUT] [--date D] [--profile-prefill] [--profile-from N] [--profile-decode]\n";
      return 2;
    }
  }
  if (!at::hasCUDA()) {
    std::cerr << "decode_step_bench: needs a CUDA device\n";
    return 1;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines reach a pipe as they are printed
  c10::InferenceMode no_grad;
  const at::Device dev(at::kCUDA, 0);
  auto model = models::LoadModel(model_path, dev, at::kBFloat16);
  const auto& c = model->config();
  std::vector<int64_t> streams;
  for (const auto& s : Split(streams_arg, ',')) streams.push_back(std::stoll(s));
  const int64_t max_b = *std::max_element(streams.begin(), streams.end());
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const double bw = CopyBandwidth();
  const int64_t P = 16, span = context + steps + 8, pages = (span + P - 1) / P;
  if (span > model->rope_cos().size(0)) {
    std::fprintf(stderr, "--context %d with %d steps needs %lld positions, and %s has %lld: pick a longer-context model "
                 "(synthetic:llama-3.1-8b has 131072)\n", context, steps, static_cast<long long>(span), model_path.c_str(),
                 static_cast<long long>(model->rope_cos().size(0)));
    return 2;
  }
  const int64_t embed = static_cast<int64_t>(c.vocab_size) * c.hidden * 2;
  const int64_t weights = model->weight_bytes() - (c.tied_embeddings ? 0 : embed);
  const double kv_token = 2.0 * c.n_layers * c.n_kv_heads * c.head_dim * 2;  // bf16 keys + values
  std::printf("decode_step_bench on %s: %s (%.2f GB of weights read per step), context %d, copy %.2f TB/s\n",
              prop->name, model_path.c_str(), weights / 1e9, context, bw / 1e12);
  std::printf("%-10s %-6s %7s %12s %12s %12s %8s %8s\n", "keys", "values", "streams", "step ms", "tok/s",
              "peer tok/s", "ceiling", "vs peer");
  json rows = json::array(), prefill_rows = json::array();
  const double peer_prefill = PeerPrefillTokS(model.get(), prefill_step);
  const double gemm = GemmFlops(prefill_step), gemm_ceiling = gemm / weights;  // 2 flop per weight, 2 bytes each
  std::printf("prefill: the peer (one %d-token prompt, contiguous cache) %.0f tok/s; GEMM %.0f TFLOP/s, so %.0f tok/s "
              "if every weight's GEMM ran at that rate\n",
              prefill_step, peer_prefill, gemm / 1e12, gemm_ceiling);
  {
    // What a prefill basis costs per layer today (PagedSeqView::ComputeBasis): one eigh of
    // kv_heads Gram matrices, fp64, on the device.
    auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kDouble);
    at::Tensor g = at::randn({c.n_kv_heads, c.head_dim, c.head_dim}, o);
    g = at::matmul(g, g.transpose(1, 2));
    std::vector<double> t;
    for (int i = 0; i < 6; ++i) {
      c10::cuda::device_synchronize();
      auto a = Clock::now();
      at::Tensor v = std::get<1>(at::linalg_eigh(g));
      c10::cuda::device_synchronize();
      if (i > 0) t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
    }
    std::printf("prefill basis: eigh of %d %dx%d fp64 Gram matrices on the device: %.2f ms (one per layer and sequence)\n",
                c.n_kv_heads, c.head_dim, c.head_dim, Median(t) * 1e3);
    // The batched Jacobi kernel that replaces it, for one layer and for every layer at once.
    for (int64_t batch : {static_cast<int64_t>(c.n_kv_heads), static_cast<int64_t>(c.n_kv_heads) * c.n_layers}) {
      at::Tensor m = g.to(at::kFloat).repeat({batch / c.n_kv_heads, 1, 1}).contiguous(), vec = at::empty_like(m);
      kernels::SymEigParams p;
      p.matrices = m.data_ptr<float>();
      p.vectors = vec.data_ptr<float>();
      p.batch = static_cast<int>(batch);
      p.n = c.head_dim;
      std::vector<double> tj;
      for (int i = 0; i < 4; ++i) {
        c10::cuda::device_synchronize();
        auto a = Clock::now();
        const kernels::Status st = kernels::SymEigDescending(p, at::cuda::getCurrentCUDAStream());
        c10::cuda::device_synchronize();
        if (!st.ok()) throw std::runtime_error(st.message());
        if (i > 0) tj.push_back(std::chrono::duration<double>(Clock::now() - a).count());
      }
      std::printf("prefill basis: SymEigDescending of %lld %dx%d fp32 matrices: %.2f ms\n", static_cast<long long>(batch),
                  c.head_dim, c.head_dim, Median(tj) * 1e3);
    }
  }
  auto Prompt = [&](int64_t b) {
    std::vector<int32_t> p(context);
    for (int t = 0; t < context; ++t) p[t] = static_cast<int32_t>((1009LL * (t + 1) + 7919LL * b) % c.vocab_size);
    return p;
  };
  std::vector<double> peer(streams.size());
  for (size_t i = 0; i < streams.size(); ++i)
    peer[i] = static_cast<double>(streams[i]) / PeerStepSeconds(model.get(), streams[i], context, steps);

  for (const std::string& mode : Split(modes_arg, ','))
  for (const std::string& schedule : Split(schedules_arg, ';')) {
    const auto parts = Split(mode, '_');
    kv::StorageSpec spec;
    if (parts.size() != 2 || !kv::ParseKeyMode(parts[0], &spec.modes.key) || !kv::ParseValueMode(parts[1], &spec.modes.value)) {
      std::cerr << "decode_step_bench: bad mode " << mode << " (keys_values, e.g. svdq_bf16)\n";
      return 2;
    }
    const bool svdq = parts[0] == "svdq";
    if (!svdq && schedule != Split(schedules_arg, ';').front()) continue;  // one run for the other modes
    if (!kernels::ParseSchedule(schedule, &spec.modes.schedule).ok()) {
      std::cerr << "decode_step_bench: bad schedule " << schedule << "\n";
      return 2;
    }
    std::string key_label = parts[0];
    if (svdq) {
      char label[32];
      std::snprintf(label, sizeof(label), "svdq%.2fb", spec.modes.schedule.EquivalentBits());
      key_label = label;
    }
    spec.shape = {c.n_layers, c.n_kv_heads, c.head_dim, static_cast<int>(P), 2};
    spec.num_blocks = static_cast<int32_t>(max_b * pages + 1);  // the last: the graphs' scratch block
    spec.lanes = static_cast<int>(max_b + 1);                   // the last: the graphs' scratch lane
    spec.device = dev;
    spec.dtype = at::kBFloat16;
    spec.rope_cos = model->rope_cos();
    spec.rope_sin = model->rope_sin();
    spec.rope_inv_freq = model->rope_inv_freq();
    auto storage = std::make_unique<kv::PagedKvStorage>(spec);
    std::vector<std::vector<kv::BlockId>> blocks(max_b);
    for (int64_t b = 0; b < max_b; ++b)
      for (int64_t p = 0; p < pages; ++p) blocks[b].push_back(static_cast<kv::BlockId>(b * pages + p));
    // Prefill every sequence as the engine plans it: steps of up to --prefill-step tokens,
    // sequences in order, the last one of a step chunked. Each step is timed to the end of
    // its GPU work.
    std::vector<std::unique_ptr<kv::PagedSeqView>> views;
    for (int64_t b = 0; b < max_b; ++b)
      views.push_back(std::make_unique<kv::PagedSeqView>(storage.get(), blocks[b], 0, static_cast<int>(b)));
    std::vector<int64_t> done(max_b, 0);
    double prefill_s = 0, profiled_s = 0;
    int prefill_steps = 0;
    std::vector<double> step_s;
    KernelProfile profile;
    for (int64_t first = 0; first < max_b;) {
      std::vector<models::KvView*> kvs;
      std::vector<std::vector<int32_t>> chunks;
      int64_t budget = prefill_step;
      for (int64_t b = first; b < max_b && budget > 0; ++b) {
        const int64_t n = std::min<int64_t>(budget, context - done[b]);
        const std::vector<int32_t> p = Prompt(b);
        chunks.emplace_back(p.begin() + done[b], p.begin() + done[b] + n);
        kvs.push_back(views[b].get());
        done[b] += n;
        budget -= n;
      }
      const bool profiled = profile_prefill && prefill_steps >= profile_from && prefill_steps < profile_from + 3;
      c10::cuda::device_synchronize();
      if (profiled && prefill_steps == profile_from) profile.Start();
      auto a = Clock::now();
      model->ForwardBatch(chunks, kvs);
      c10::cuda::device_synchronize();
      const double s = std::chrono::duration<double>(Clock::now() - a).count();
      if (profiled) {
        profiled_s += s;
        if (prefill_steps == profile_from + 2)
          profile.Report(key_label + " " + parts[1] + " prefill steps " + std::to_string(profile_from + 1) + "-" +
                             std::to_string(profile_from + 3),
                         profiled_s);
      } else {
        prefill_s += s;
        step_s.push_back(s);
      }
      ++prefill_steps;
      while (first < max_b && done[first] == context) ++first;
    }
    views.clear();
    // Profiled steps are left out of the time and replaced by the median step (every step but
    // the last holds --prefill-step tokens).
    const double median_step = Median(step_s);
    if (profiled_s > 0) prefill_s += 3 * median_step;
    std::printf("%-10s %-6s prefill steps: first %.1f ms, median %.1f ms, max %.1f ms\n", key_label.c_str(),
                parts[1].c_str(), step_s.front() * 1e3, median_step * 1e3, *std::max_element(step_s.begin(), step_s.end()) * 1e3);
    if (step_s.size() <= 48) {  // a long prompt's steps grow with the pages they attend over
      std::printf("%-10s %-6s prefill step ms (unprofiled, in order):", key_label.c_str(), parts[1].c_str());
      for (double s : step_s) std::printf(" %.1f", s * 1e3);
      std::printf("\n");
    }
    const double prefill_tok_s = max_b * context / prefill_s;
    std::printf("%-10s %-6s prefill of %lld x %d tokens in %d steps: %.3f s, %.0f tok/s (%.0f%% of the peer's %.0f)\n",
                key_label.c_str(), parts[1].c_str(), static_cast<long long>(max_b), context, prefill_steps, prefill_s,
                prefill_tok_s, 100.0 * prefill_tok_s / peer_prefill, peer_prefill);
    prefill_rows.push_back({{"model", model_path}, {"key_mode", parts[0]}, {"value_mode", parts[1]},
                            {"schedule", svdq ? schedule : ""}, {"sequences", max_b}, {"context", context},
                            {"prefill_step_tokens", prefill_step}, {"steps", prefill_steps}, {"seconds", prefill_s},
                            {"prefill_tok_s", prefill_tok_s}, {"peer_prefill_tok_s", peer_prefill},
                            {"gemm_ceiling_tok_s", gemm_ceiling}, {"device", prop->name}, {"date", date}});
    std::string why;
    auto graphs = engine::DecodeGraphs::Create(model.get(), storage.get(), static_cast<kv::BlockId>(max_b * pages),
                                               static_cast<int>(max_b), static_cast<int>(max_b), &why);
    if (!graphs) {
      std::cerr << "decode_step_bench: " << mode << ": no graphs: " << why << "\n";
      continue;
    }
    for (size_t si = 0; si < streams.size(); ++si) {
      const int64_t B = streams[si];
      std::vector<int32_t> next(B, 1);
      std::vector<double> t;
      for (int s = 0; s < steps + 2; ++s) {
        std::vector<engine::DecodeRow> rows;
        for (int64_t b = 0; b < B; ++b) rows.push_back({next[b], context + s, &blocks[b], static_cast<int>(b)});
        auto a = Clock::now();
        at::Tensor ids = graphs->Run(rows).argmax(-1).to(at::kCPU);  // the server's sync point
        if (s >= 2) t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
        for (int64_t b = 0; b < B; ++b) next[b] = static_cast<int32_t>(ids[b].item<int64_t>());
      }
      // One more step eagerly, with events around each layer's KV write and attention.
      std::vector<engine::DecodeRow> last;
      for (int64_t b = 0; b < B; ++b) last.push_back({next[b], context + steps + 1, &blocks[b], static_cast<int>(b)});
      const engine::DecodeGraphs::StepProfile prof = graphs->Profile(last);
      if (profile_decode) {
        const std::string label = key_label + " " + parts[1] + " " + std::to_string(B) + " streams";
        KernelProfile kp;
        c10::cuda::device_synchronize();
        kp.Start();
        auto a = Clock::now();
        for (int s = 0; s < 4; ++s) {
          std::vector<engine::DecodeRow> rows;
          for (int64_t b = 0; b < B; ++b) rows.push_back({next[b], context + steps + 2 + s, &blocks[b], static_cast<int>(b)});
          at::Tensor ids = graphs->Run(rows).argmax(-1).to(at::kCPU);
        }
        kp.Report(label + ", 4 graph replays", std::chrono::duration<double>(Clock::now() - a).count(), 6, 4);
        kp.Start();
        a = Clock::now();
        graphs->Profile(last);
        c10::cuda::device_synchronize();
        kp.Report(label + ", 1 eager step", std::chrono::duration<double>(Clock::now() - a).count(), 12, 1);
      }
      const double step_s = Median(t), tok_s = B / step_s;
      const double ceiling = B / ((weights + B * context * kv_token) / bw);
      std::printf("%-10s %-6s %7lld %12.3f %12.1f %12.1f %8.0f %7.0f%%   eager %.2f ms: kv write %.2f, attention %.2f\n",
                  key_label.c_str(), parts[1].c_str(), static_cast<long long>(B), step_s * 1e3, tok_s, peer[si], ceiling,
                  100.0 * tok_s / peer[si], prof.total_ms, prof.write_ms, prof.attend_ms);
      rows.push_back({{"model", model_path}, {"key_mode", parts[0]}, {"value_mode", parts[1]}, {"streams", B},
                      {"schedule", svdq ? schedule : ""},
                      {"context", context}, {"step_ms", step_s * 1e3}, {"step_tok_s", tok_s}, {"peer_tok_s", peer[si]},
                      {"ceiling_tok_s", ceiling}, {"copy_tbps", bw / 1e12}, {"device", prop->name}, {"date", date},
                      {"graphs", graphs->sizes()}, {"eager_step_ms", prof.total_ms},
                      {"eager_kv_write_ms", prof.write_ms}, {"eager_attention_ms", prof.attend_ms}});
    }
  }
  if (!json_out.empty()) std::ofstream(json_out) << rows.dump(1) << "\n";
  if (!prefill_json.empty()) std::ofstream(prefill_json) << prefill_rows.dump(1) << "\n";
  return 0;
}
