// model_throughput: prefill and decode tokens per second of the model runtime (libtorch
// forward over the contiguous per-sequence KV cache, models/kv_view.h), by batch size, each
// beside its ceiling measured on the same device in the same run:
//   decode:  B / ((weight bytes read per step + KV bytes read per step) / copy bandwidth)
//   prefill: matmul FLOP/s / FLOPs per token (2 x linear weights + causal attention)
// Copy bandwidth is a device-to-device (or host memcpy) copy of 1 GiB, counted as read +
// write; matmul FLOP/s is a large GEMM in the model's dtype. Synthetic models
// (synthetic:NAME, random weights) are labelled as such in the output.
//
// usage: model_throughput --model PATH|synthetic:NAME [--device cpu|cuda] [--dtype float32|bfloat16|float16]
//        [--batches 1,4,16] [--prompt 128] [--steps 16] [--json OUT]
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "models/checkpoint.h"
#include "models/kv_view.h"

using namespace svdq::models;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

// Waits for the device: a value read back to the host orders after all queued work.
void Sync(const at::Tensor& t) { (void)t.reshape(-1)[0].item<float>(); }

// Median seconds of fn over `reps` runs after one warm-up; fn returns a tensor to sync on.
double Seconds(const std::function<at::Tensor()>& fn, int reps) {
  Sync(fn());
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = Clock::now();
    Sync(fn());
    t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double CopyBandwidth(at::Device d) {
  const int64_t n = (1LL << 30) / 4;
  at::Tensor src = at::ones({n}, at::TensorOptions().device(d).dtype(at::kFloat)), dst = at::empty_like(src);
  const double s = Seconds([&] { return dst.copy_(src); }, 5);
  return 2.0 * n * 4 / s;  // bytes read + written per second
}

double MatmulFlops(at::Device d, at::ScalarType dt) {
  const int64_t n = d.is_cuda() ? 8192 : 1024;
  auto o = at::TensorOptions().device(d).dtype(dt);
  at::Tensor a = at::randn({n, n}, o), b = at::randn({n, n}, o);
  const double s = Seconds([&] { return at::mm(a, b); }, d.is_cuda() ? 10 : 3);
  return 2.0 * n * n * n / s;
}

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ',')) out.push_back(std::stoi(x));
  return out;
}

std::vector<int32_t> Prompt(int len, int vocab, int seed) {
  std::vector<int32_t> p(len);
  for (int i = 0; i < len; ++i) p[i] = static_cast<int32_t>((1009LL * (i + 1) + 7919LL * seed) % vocab);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, device_name = "cpu", dtype_name, json_out, batches_arg = "1,4,16";
  int prompt = 128, steps = 16;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model") model_path = next();
    else if (a == "--device") device_name = next();
    else if (a == "--dtype") dtype_name = next();
    else if (a == "--batches") batches_arg = next();
    else if (a == "--prompt") prompt = std::stoi(next());
    else if (a == "--steps") steps = std::stoi(next());
    else if (a == "--json") json_out = next();
    else {
      std::cerr << "usage: model_throughput --model PATH|synthetic:NAME [--device cpu|cuda] [--dtype D] "
                   "[--batches 1,4,16] [--prompt N] [--steps N] [--json OUT]\n";
      return 2;
    }
  }
  if (model_path.empty()) {
    std::cerr << "model_throughput: --model is required\n";
    return 2;
  }
  const at::Device device = device_name == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  if (dtype_name.empty()) dtype_name = device.is_cuda() ? "bfloat16" : "float32";
  const at::ScalarType dtype = dtype_name == "bfloat16" ? at::kBFloat16 : dtype_name == "float16" ? at::kHalf : at::kFloat;
  c10::InferenceMode guard;

  auto t0 = Clock::now();
  auto model = LoadModel(model_path, device, dtype);
  const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const ModelConfig& c = model->config();
  const int64_t el = static_cast<int64_t>(c10::elementSize(dtype));
  const int64_t embed_bytes = static_cast<int64_t>(c.vocab_size) * c.hidden * el;
  // Read per decode step: every weight once, except the embedding table, of which only B rows
  // are gathered (when tied, it is read whole as the output matrix and stays counted).
  const int64_t step_weight_bytes = model->weight_bytes() - (c.tied_embeddings ? 0 : embed_bytes);
  const int64_t linear_params = (model->weight_bytes() - (c.tied_embeddings ? 0 : embed_bytes)) / el;
  const int64_t kv_token_bytes = 2LL * c.n_layers * c.n_kv_heads * c.head_dim * el;

  const double bw = CopyBandwidth(device);
  const double flops = MatmulFlops(device, dtype);
  std::printf("model %s: %d layers, hidden %d, %d/%d heads, vocab %d; %.2f GB of weights (%s) on %s, loaded in %.1f s\n",
              c.name.c_str(), c.n_layers, c.hidden, c.n_heads,
              c.n_kv_heads, c.vocab_size, model->weight_bytes() / 1e9, dtype_name.c_str(), device_name.c_str(), load_s);
  std::printf("ceilings measured here: copy bandwidth %.0f GB/s, %s matmul %.1f TFLOP/s\n", bw / 1e9,
              dtype_name.c_str(), flops / 1e12);
  std::printf("%-7s %-6s %14s %14s %8s %14s %14s %8s\n", "batch", "prompt", "prefill tok/s", "ceiling", "of ceil",
              "decode tok/s", "ceiling", "of ceil");

  json rows = json::array();
  for (int B : ParseList(batches_arg)) {
    // Prefill: B prompts in one forward (projections and MLP batched, attention per sequence).
    std::vector<std::vector<int32_t>> prompts;
    for (int b = 0; b < B; ++b) prompts.push_back(Prompt(prompt, c.vocab_size, b));
    std::vector<std::unique_ptr<SequenceKv>> kvs;
    auto fresh = [&] {
      kvs.clear();
      std::vector<KvView*> v;
      for (int b = 0; b < B; ++b) {
        kvs.push_back(std::make_unique<SequenceKv>());
        v.push_back(kvs.back().get());
      }
      return v;
    };
    const double prefill_s = Seconds([&] { return model->ForwardBatch(prompts, fresh()); }, device.is_cuda() ? 5 : 1);
    const double prefill_tps = B * prompt / prefill_s;
    const double attn_flops = 4.0 * c.n_layers * c.n_heads * c.head_dim * (prompt / 2.0);
    const double prefill_ceiling = flops / (2.0 * linear_params + attn_flops);

    // Decode: from the prefilled state, `steps` steps of one token per sequence.
    std::vector<KvView*> views = fresh();
    at::Tensor logits = model->ForwardBatch(prompts, views);
    Sync(logits);
    std::vector<std::vector<int32_t>> next(B, std::vector<int32_t>{1});
    auto step = [&] { return model->ForwardBatch(next, views); };
    Sync(step());  // warm-up at the new shape
    auto a = Clock::now();
    for (int s = 0; s < steps; ++s) Sync(step());
    const double decode_s = std::chrono::duration<double>(Clock::now() - a).count();
    const double decode_tps = static_cast<double>(B) * steps / decode_s;
    const double ctx = prompt + 1 + steps / 2.0;
    const double step_bytes = step_weight_bytes + B * ctx * kv_token_bytes;
    const double decode_ceiling = B * bw / step_bytes;
    std::printf("%-7d %-6d %14.0f %14.0f %7.1f%% %14.1f %14.0f %7.1f%%\n", B, prompt, prefill_tps, prefill_ceiling,
                100 * prefill_tps / prefill_ceiling, decode_tps, decode_ceiling, 100 * decode_tps / decode_ceiling);
    rows.push_back({{"batch", B}, {"prompt", prompt}, {"prefill_tokens_per_s", prefill_tps},
                    {"prefill_ceiling_tokens_per_s", prefill_ceiling}, {"decode_steps", steps},
                    {"decode_tokens_per_s", decode_tps}, {"decode_ceiling_tokens_per_s", decode_ceiling},
                    {"decode_bytes_per_step", step_bytes}});
  }
  if (!json_out.empty()) {
    json out = {{"model", c.name}, {"synthetic", c.synthetic}, {"device", device_name}, {"dtype", dtype_name},
                {"weight_bytes", model->weight_bytes()}, {"copy_bandwidth_bytes_per_s", bw},
                {"matmul_flops_per_s", flops}, {"rows", rows}};
    std::ofstream(json_out) << out.dump(2) << "\n";
  }
  return 0;
}
