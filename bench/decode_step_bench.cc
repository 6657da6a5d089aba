// decode_step_bench: the server's decode step (server/engine/decode_graphs.h: the model over
// the paged KV cache, inputs filled from the host, replayed from a CUDA graph, the next
// tokens read back) in each KV mode, by batch size, beside two references measured in the
// same run on the same GPU:
//   peer:     a bare libtorch decode step of the same model: the same weights and layer code
//             (LlamaModel::DecodeStatic) over a contiguous bf16 cache of the same length, SDPA
//             with GQA, captured in one CUDA graph and replayed back to back (no host work);
//   ceiling:  B / ((weight bytes + the bf16 KV bytes of B sequences) / copy bandwidth).
// Steady-state decode only: each sequence is prefilled to --context tokens first (eagerly),
// then --steps steps are timed (median of per-step times), each with a sync on the chosen
// tokens as the server does. Then one step eagerly with CUDA events around every layer's KV
// write and attention (GPU time of those parts, summed over layers). Prints a table and writes
// JSON rows (model, key_mode, value_mode, streams, step_tok_s, peer_tok_s, ceiling_tok_s, ...).
//
// usage: decode_step_bench [--model synthetic:llama-3-8b] [--streams 1,16,64] [--context 1400]
//        [--steps 32] [--modes bf16_bf16,svdq_bf16] [--svdq-schedules S1;S2] [--json OUT]
//        [--date YYYY-MM-DD]
// --svdq-schedules: the schedules SVDq key modes run with (default 8,4,2,1,1,0,0,0).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/svdq/schedule.h"
#include "models/checkpoint.h"
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

}  // namespace

int main(int argc, char** argv) {
  std::string model_path = "synthetic:llama-3-8b", streams_arg = "1,16,64", modes_arg = "bf16_bf16,svdq_bf16";
  std::string json_out, date, schedules_arg = "8,4,2,1,1,0,0,0";
  int context = 1400, steps = 32;
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
    else if (a == "--json") json_out = next();
    else if (a == "--date") date = next();
    else {
      std::cerr << "usage: decode_step_bench [--model M] [--streams 1,16,64] [--context N] [--steps N] "
                   "[--modes bf16_bf16,svdq_bf16] [--svdq-schedules S1;S2] [--json OUT] [--date D]\n";
      return 2;
    }
  }
  if (!at::hasCUDA()) {
    std::cerr << "decode_step_bench: needs a CUDA device\n";
    return 1;
  }
  c10::InferenceMode no_grad;
  const at::Device dev(at::kCUDA, 0);
  auto model = models::LoadModel(model_path, dev, at::kBFloat16);
  const auto& c = model->config();
  std::vector<int64_t> streams;
  for (const auto& s : Split(streams_arg, ',')) streams.push_back(std::stoll(s));
  const int64_t max_b = *std::max_element(streams.begin(), streams.end());
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const double bw = CopyBandwidth();
  const int64_t P = 16, span = context + steps + 2, pages = (span + P - 1) / P;
  const int64_t embed = static_cast<int64_t>(c.vocab_size) * c.hidden * 2;
  const int64_t weights = model->weight_bytes() - (c.tied_embeddings ? 0 : embed);
  const double kv_token = 2.0 * c.n_layers * c.n_kv_heads * c.head_dim * 2;  // bf16 keys + values
  std::printf("decode_step_bench on %s: %s (%.2f GB of weights read per step), context %d, copy %.2f TB/s\n",
              prop->name, model_path.c_str(), weights / 1e9, context, bw / 1e12);
  std::printf("%-10s %-6s %7s %12s %12s %12s %8s %8s\n", "keys", "values", "streams", "step ms", "tok/s",
              "peer tok/s", "ceiling", "vs peer");
  json rows = json::array();
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
    // Prefill every sequence (eagerly, eight at a time), as the server does before decoding.
    for (int64_t b0 = 0; b0 < max_b; b0 += 8) {
      std::vector<std::unique_ptr<kv::PagedSeqView>> views;
      std::vector<models::KvView*> kvs;
      std::vector<std::vector<int32_t>> prompts;
      for (int64_t b = b0; b < std::min(max_b, b0 + 8); ++b) {
        views.push_back(std::make_unique<kv::PagedSeqView>(storage.get(), blocks[b], 0, static_cast<int>(b)));
        kvs.push_back(views.back().get());
        std::vector<int32_t> p(context);
        for (int t = 0; t < context; ++t) p[t] = static_cast<int32_t>((1009LL * (t + 1) + 7919LL * b) % c.vocab_size);
        prompts.push_back(std::move(p));
      }
      model->ForwardBatch(prompts, kvs);
    }
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
  return 0;
}
