// svdq_attention_bench: decode attention over SVDq-compressed key pages against bf16
// attention through libtorch's scaled_dot_product_attention (the peer), for Llama-3-8B
// attention shapes (32 query heads, 8 KV heads, head dim 128, one query token), with
// the device-to-device copy bandwidth measured in the same run as the ceiling.
//
// usage: svdq_attention_bench [--json OUT] [--schedule S] [--page P] [--iters N] [--batch B]
// Needs a CUDA device; prints what it measured and writes JSON.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_cuda.h"

using namespace svdq::kernels;

namespace {

// Mean time of fn in microseconds over `iters` runs after 3 warm-ups, by CUDA events.
double TimeUs(const std::function<void()>& fn, int iters) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a, at::cuda::getCurrentCUDAStream());
  for (int i = 0; i < iters; ++i) fn();
  cudaEventRecord(b, at::cuda::getCurrentCUDAStream());
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1000.0 * ms / iters;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, sched_text = "8,4,2,1,1,0,0,0";
  int page = 16, iters = 20, only_batch = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--json") json_path = argv[i + 1];
    else if (a == "--schedule") sched_text = argv[i + 1];
    else if (a == "--page") page = std::stoi(argv[i + 1]);
    else if (a == "--iters") iters = std::stoi(argv[i + 1]);
    else if (a == "--batch") only_batch = std::stoi(argv[i + 1]);  // run only the shapes of this batch
  }
  if (!at::hasCUDA()) {
    std::cerr << "svdq_attention_bench: no CUDA device\n";
    return 1;
  }
  c10::InferenceMode guard;
  auto dev = at::TensorOptions().device(at::kCUDA);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  const int H = 32, KV = 8, D = 128;
  Schedule sched;
  Status st = ParseSchedule(sched_text, &sched);
  SvdqLayout l;
  if (st.ok()) st = MakeLayout(D, page, sched, &l);
  if (!st.ok()) {
    std::cerr << st.message() << "\n";
    return 2;
  }

  // Ceiling: device-to-device copy of 2 GiB, bytes read + written.
  at::Tensor src = at::empty({1LL << 31}, dev.dtype(at::kByte)), dst = at::empty_like(src);
  double copy_us = TimeUs([&] { dst.copy_(src); }, 10);
  double copy_tbs = 2.0 * src.numel() / (copy_us * 1e-6) / 1e12;
  src.reset();
  dst.reset();
  printf("svdq_attention_bench on %s: copy bandwidth %.2f TB/s (read + write)\n", prop.name, copy_tbs);
  printf("schedule %s (%.2f equivalent bits), page %d tokens, %d bytes per key page and head (bf16: %d)\n\n",
         sched_text.c_str(), sched.EquivalentBits(), page, l.page_bytes, page * D * 2);
  printf("%-12s %12s %12s %10s %12s %12s %10s %10s\n", "batch x ctx", "bf16 bytes", "bf16 us", "bf16 TB/s", "svdq bytes",
         "svdq us", "svdq TB/s", "svdq/bf16");

  nlohmann::json out;
  out["device"] = prop.name;
  out["copy_tb_s"] = copy_tbs;
  out["schedule"] = sched_text;
  out["page_size"] = page;
  const std::vector<std::pair<int, int>> shapes = {{1, 32768}, {8, 32768}, {32, 32768}, {8, 131072}};
  for (auto [B, T] : shapes) {
    if (only_batch > 0 && B != only_batch) continue;
    // Peer: bf16 SDPA with GQA.
    at::Tensor q = at::randn({B, H, 1, D}, dev.dtype(at::kBFloat16));
    at::Tensor k = at::randn({B, KV, T, D}, dev.dtype(at::kBFloat16));
    at::Tensor v = at::randn({B, KV, T, D}, dev.dtype(at::kBFloat16));
    double bf16_us = TimeUs([&] { at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, {}, /*enable_gqa=*/true); }, iters);
    double bf16_bytes = 2.0 * k.numel() * 2;
    k.reset();

    // SVDq: encode random keys into pages with a random orthonormal basis per (sequence, head).
    const int pages_per_seq = T / page, pool_pages = B * pages_per_seq;
    at::Tensor basis = std::get<0>(at::linalg_qr(at::randn({B, KV, D, D}, dev.dtype(at::kFloat)))).contiguous();
    at::Tensor mean = (0.1 * at::randn({B, KV, D}, dev.dtype(at::kFloat))).contiguous();
    at::Tensor key_pages = at::empty({pool_pages, KV, l.page_bytes}, dev.dtype(at::kByte));
    {
      // Encode in chunks of pages to bound the fp32 staging buffer.
      const int chunk = 4096;
      for (int p0 = 0; p0 < pool_pages; p0 += chunk) {
        int n = std::min(chunk, pool_pages - p0);
        at::Tensor keys = at::randn({n, KV, page, D}, dev.dtype(at::kFloat));
        at::Tensor seq = at::arange(p0, p0 + n, dev.dtype(at::kLong)).div(pages_per_seq, "floor");
        at::Tensor m = mean.index_select(0, seq).contiguous(), bs = basis.index_select(0, seq).contiguous();
        SvdqEncodeParams e{l, n, KV, keys.data_ptr<float>(), m.data_ptr<float>(), bs.data_ptr<float>(),
                           key_pages.data_ptr<uint8_t>() + static_cast<int64_t>(p0) * KV * l.page_bytes, nullptr};
        st = SvdqEncode(e, at::cuda::getCurrentCUDAStream());
        if (!st.ok()) {
          std::cerr << st.message() << "\n";
          return 1;
        }
      }
    }
    // Values in the page pool layout [pool_pages, KV, P, D].
    at::Tensor value_pages = v.view({B, KV, pages_per_seq, page, D}).permute({0, 2, 1, 3, 4}).contiguous().view(
        {pool_pages, KV, page, D});
    v.reset();
    at::Tensor table = at::arange(pool_pages, dev.dtype(at::kInt)).view({B, pages_per_seq}).contiguous();
    at::Tensor np = at::full({B}, pages_per_seq, dev.dtype(at::kInt));
    at::Tensor tl = at::zeros({B}, dev.dtype(at::kInt));
    at::Tensor tail = at::zeros({B, KV, page, D}, dev.dtype(at::kBFloat16));
    at::Tensor pos = at::arange(T, dev.dtype(at::kFloat)).unsqueeze(1);
    at::Tensor inv = at::pow(10000.0, -at::arange(0, D, 2, dev.dtype(at::kFloat)) / D);
    at::Tensor ang = at::cat({pos * inv, pos * inv}, 1);
    at::Tensor cos = ang.cos().contiguous(), sin = ang.sin().contiguous();
    at::Tensor qs = q.view({B, H, D}).contiguous();
    at::Tensor o = at::empty({B, H, D}, dev.dtype(at::kFloat));
    SvdqAttentionParams a;
    a.layout = l;
    a.batch = B;
    a.num_heads = H;
    a.kv_heads = KV;
    a.max_pages = pages_per_seq;
    a.sm_scale = 1.f / std::sqrt(float(D));
    a.q = reinterpret_cast<const uint16_t*>(qs.data_ptr());
    a.key_pages = key_pages.data_ptr<uint8_t>();
    a.value_pages = reinterpret_cast<const uint16_t*>(value_pages.data_ptr());
    a.page_table = table.data_ptr<int32_t>();
    a.num_pages = np.data_ptr<int32_t>();
    a.mean = mean.data_ptr<float>();
    a.basis = basis.data_ptr<float>();
    a.tail_keys = reinterpret_cast<const uint16_t*>(tail.data_ptr());
    a.tail_values = a.tail_keys;
    a.tail_len = tl.data_ptr<int32_t>();
    a.rope_cos = cos.data_ptr<float>();
    a.rope_sin = sin.data_ptr<float>();
    a.out = o.data_ptr<float>();
    // Split so that the grid covers the GPU several times over: about 4 blocks per SM.
    a.pages_per_split = std::max(1, static_cast<int>((static_cast<int64_t>(B) * KV * pages_per_seq) /
                                                     (4 * prop.multiProcessorCount)));
    at::Tensor ws = at::empty({static_cast<int64_t>(SvdqAttentionWorkspaceFloats(a))}, dev.dtype(at::kFloat));
    a.workspace = ws.data_ptr<float>();
    double svdq_us = TimeUs([&] { st = SvdqAttention(a, at::cuda::getCurrentCUDAStream()); }, std::max(2, iters / 4));
    if (!st.ok()) {
      std::cerr << st.message() << "\n";
      return 1;
    }
    cudaDeviceSynchronize();
    double svdq_bytes = static_cast<double>(key_pages.numel()) + 2.0 * value_pages.numel() + 4.0 * basis.numel();
    double bf16_tbs = bf16_bytes / (bf16_us * 1e-6) / 1e12, svdq_tbs = svdq_bytes / (svdq_us * 1e-6) / 1e12;
    char label[32];
    snprintf(label, sizeof(label), "%d x %dk", B, T / 1024);
    printf("%-12s %10.3fGiB %12.1f %10.2f %10.3fGiB %12.1f %10.2f %10.2f\n", label, bf16_bytes / (1 << 30), bf16_us,
           bf16_tbs, svdq_bytes / (1 << 30), svdq_us, svdq_tbs, svdq_us / bf16_us);
    out["rows"].push_back({{"batch", B}, {"context", T}, {"bf16_bytes", bf16_bytes}, {"bf16_us", bf16_us},
                           {"bf16_tb_s", bf16_tbs}, {"svdq_bytes", svdq_bytes}, {"svdq_us", svdq_us},
                           {"svdq_tb_s", svdq_tbs}, {"svdq_over_bf16", svdq_us / bf16_us}});
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
