// svdq_attention_bench: decode attention over SVDq-compressed key pages and over per-token
// pages (bf16 or fp8 keys; bf16, fp8, int8 or int4 values) against bf16 attention through
// libtorch's scaled_dot_product_attention on a contiguous cache (the peer), for Llama-3-8B
// attention shapes (32 query heads, 8 KV heads, head dim 128, one query token), with the
// device-to-device copy bandwidth measured in the same run as the ceiling. For each shape,
// page size (16, 64), key mode and value mode it prints microseconds, the real bytes read and
// their TB/s, the bf16-equivalent TB/s (bf16 K+V bytes / time) and the ratio to the peer.
//
// usage: svdq_attention_bench [--json OUT] [--iters N] [--batch B] [--pages 16,64]
//                             [--schedules S1;S2] [--values bf16,fp8,int8,int4]
//                             [--sweep-splits 1,2,4,...] [--shuffle 1] [--date YYYY-MM-DD]
//                             [--shape HEADS,KV_HEADS,HEAD_DIM]
// --shape: other attention shapes than Llama-3-8B's 32,8,128 (SmolLM2-135M: 9,3,64).
// --sweep-splits also times the bf16 paged kernel at each of those split counts (the planner's
// check); --shuffle 1 hands out pool pages in a random order (as a running server's allocator
// does after churn) instead of sequence by sequence.
// Needs a CUDA device; writes a JSON list of rows (bench/results/attention_h200.json).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench/bench_util.h"
#include "kernels/attention/paged_decode.h"
#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_cuda.h"

using namespace svdq::kernels;

using svdq::bench::Die;
using svdq::bench::Split;
using svdq::bench::TimeUs;

int main(int argc, char** argv) {
  std::string json_path, date = "unknown", pages_text = "16,64", scheds_text = "4,2,2,2,2,2,1,1;8,4,2,1,1,0,0,0;8,2,0,0,0,0,0,0";
  std::string values_text = "bf16,fp8,int8,int4", sweep_text;
  bool shuffle = false;
  int iters = 20, only_batch = 0;
  int H = 32, KV = 8, D = 128;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--json") json_path = argv[i + 1];
    else if (a == "--iters") iters = std::stoi(argv[i + 1]);
    else if (a == "--batch") only_batch = std::stoi(argv[i + 1]);  // run only the shapes of this batch
    else if (a == "--pages") pages_text = argv[i + 1];
    else if (a == "--schedules") scheds_text = argv[i + 1];
    else if (a == "--values") values_text = argv[i + 1];
    else if (a == "--sweep-splits") sweep_text = argv[i + 1];
    else if (a == "--shuffle") shuffle = std::stoi(argv[i + 1]) != 0;
    else if (a == "--date") date = argv[i + 1];
    else if (a == "--shape") {
      const std::vector<std::string> f = Split(argv[i + 1], ',');
      if (f.size() != 3) {
        std::cerr << "svdq_attention_bench: --shape HEADS,KV_HEADS,HEAD_DIM\n";
        return 2;
      }
      H = std::stoi(f[0]), KV = std::stoi(f[1]), D = std::stoi(f[2]);
    }
  }
  const std::vector<std::string> value_modes = Split(values_text, ',');
  if (!at::hasCUDA()) {
    std::cerr << "svdq_attention_bench: no CUDA device\n";
    return 1;
  }
  c10::InferenceMode guard;
  auto dev = at::TensorOptions().device(at::kCUDA);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  const double theta = 500000.0;  // Llama 3

  // Ceiling: device-to-device copy of 2 GiB, bytes read + written.
  at::Tensor src = at::empty({1LL << 31}, dev.dtype(at::kByte)), dst = at::empty_like(src);
  double copy_us = TimeUs([&] { dst.copy_(src); }, 10);
  const double copy_tbs = 2.0 * src.numel() / (copy_us * 1e-6) / 1e12;
  src.reset();
  dst.reset();
  printf("svdq_attention_bench on %s: copy bandwidth %.2f TB/s (read + write)\n", prop.name, copy_tbs);
  printf("bf16-eq TB/s = bf16 K+V bytes of the context / time; real TB/s = bytes this kernel reads / time\n\n");
  printf("%-10s %-5s %-26s %-6s %9s %9s %9s %10s %10s %9s\n", "batch x ctx", "page", "keys", "values", "bytes MB", "us",
         "real TB/s", "bf16eq TB/s", "peer us", "vs peer");

  nlohmann::json rows = nlohmann::json::array();
  auto record = [&](int B, int T, const std::string& key_mode, const std::string& value_mode, int page, double bytes,
                    double us, double peer_us, const std::string& kernel) {
    const double bf16_bytes = 2.0 * 2.0 * B * KV * static_cast<double>(T) * D;
    char label[32];
    snprintf(label, sizeof(label), "%d x %dk", B, T / 1024);
    printf("%-10s %-5d %-26s %-6s %9.1f %9.1f %9.2f %10.2f %10.1f %8.2fx\n", label, page, key_mode.c_str(),
           value_mode.c_str(), bytes / 1e6, us, bytes / (us * 1e-6) / 1e12, bf16_bytes / (us * 1e-6) / 1e12, peer_us,
           peer_us / us);
    rows.push_back({{"batch", B}, {"context", T}, {"key_mode", key_mode}, {"value_mode", value_mode}, {"page", page},
                    {"kernel", kernel}, {"us", us}, {"peer_us", peer_us}, {"bytes_read", bytes},
                    {"real_tbps", bytes / (us * 1e-6) / 1e12}, {"bf16_equiv_tbps", bf16_bytes / (us * 1e-6) / 1e12},
                    {"copy_tbps", copy_tbs}, {"device", prop.name}, {"date", date}});
  };

  const std::vector<std::pair<int, int>> shapes = {{1, 32768}, {8, 32768}, {32, 32768}, {8, 131072}};
  for (auto [B, T] : shapes) {
    if (only_batch > 0 && B != only_batch) continue;
    // Peer: bf16 SDPA with GQA on a contiguous cache.
    at::Tensor q = at::randn({B, H, 1, D}, dev.dtype(at::kBFloat16));
    at::Tensor k = at::randn({B, KV, T, D}, dev.dtype(at::kBFloat16));
    at::Tensor v = at::randn({B, KV, T, D}, dev.dtype(at::kBFloat16));
    const double peer_us =
        TimeUs([&] { at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, {}, /*enable_gqa=*/true); }, iters);
    record(B, T, "bf16 (SDPA, contiguous)", "bf16", 0, 2.0 * k.numel() * 2, peer_us, peer_us, "sdpa");
    at::Tensor qs = q.view({B, H, D}).contiguous();
    at::Tensor o = at::empty({B, H, D}, dev.dtype(at::kFloat));
    at::Tensor inv = at::pow(theta, -at::arange(0, D, 2, dev.dtype(at::kDouble)) / D).to(at::kFloat);

    for (const std::string& page_text : Split(pages_text, ',')) {
      const int page = std::stoi(page_text);
      const int pages_per_seq = T / page, pool_pages = B * pages_per_seq;
      // Values (and bf16 keys) in the page pool layout [pool_pages, KV, P, D].
      auto paged = [&](const at::Tensor& x) {
        return x.view({B, KV, pages_per_seq, page, D}).permute({0, 2, 1, 3, 4}).contiguous().view({pool_pages, KV, page, D});
      };
      at::Tensor value_pages = paged(v);
      at::Tensor table = (shuffle ? at::randperm(pool_pages, dev.dtype(at::kLong)).to(at::kInt)
                                  : at::arange(pool_pages, dev.dtype(at::kInt)))
                             .view({B, pages_per_seq})
                             .contiguous();
      at::Tensor lens = at::full({B}, T, dev.dtype(at::kInt));
      // Per-token pages of one format: codes (random, finite) and bf16 scales per 32 channels.
      struct TokenPages {
        at::Tensor data, scales;
        double bytes() const { return data.numel() * data.element_size() + (scales.defined() ? 2.0 * scales.numel() : 0.0); }
      };
      auto token_pages = [&](KvFormat f, const at::Tensor& bf16_pages) {
        TokenPages t;
        if (f == KvFormat::kBf16) {
          t.data = bf16_pages;
          return t;
        }
        const int64_t rows_n = static_cast<int64_t>(pool_pages) * KV * page;
        if (f == KvFormat::kFp8) t.data = at::randn({rows_n, D}, dev.dtype(at::kFloat)).mul(50).to(at::kFloat8_e4m3fn);
        else if (f == KvFormat::kInt8) t.data = at::randint(-127, 128, {rows_n, D}, dev.dtype(at::kChar));
        else t.data = at::randint(0, 256, {rows_n, D / 2}, dev.dtype(at::kByte));
        t.scales = at::rand({rows_n, D / 32}, dev.dtype(at::kFloat)).mul(0.01).add(1e-3).to(at::kBFloat16);
        return t;
      };
      const std::vector<std::pair<std::string, KvFormat>> formats = {
          {"bf16", KvFormat::kBf16}, {"fp8", KvFormat::kFp8}, {"int8", KvFormat::kInt8}, {"int4", KvFormat::kInt4}};
      std::vector<std::pair<std::string, TokenPages>> values;  // the value modes asked for
      for (const auto& [name, f] : formats)
        if (std::find(value_modes.begin(), value_modes.end(), name) != value_modes.end())
          values.emplace_back(name, token_pages(f, value_pages));
      // Our paged decode kernel (tensor cores, split-KV as the server plans it): bf16 keys with
      // every value mode, and fp8 keys with fp8 values.
      {
        const TokenPages bf16_keys = token_pages(KvFormat::kBf16, paged(k));
        const TokenPages fp8_keys = token_pages(KvFormat::kFp8, bf16_keys.data);
        std::vector<std::tuple<std::string, const TokenPages*, KvFormat, std::string, const TokenPages*, KvFormat>> runs;
        for (const auto& [name, pages_v] : values) {
          const KvFormat vf = std::find_if(formats.begin(), formats.end(), [&](auto& x) { return x.first == name; })->second;
          runs.emplace_back("bf16 (ours, paged)", &bf16_keys, KvFormat::kBf16, name, &pages_v, vf);
          if (name == "fp8") runs.emplace_back("fp8 (ours, paged)", &fp8_keys, KvFormat::kFp8, name, &pages_v, vf);
        }
        std::vector<int> sweep = {0};  // 0: the planner's split count
        for (const std::string& s : Split(sweep_text, ',')) sweep.push_back(std::stoi(s));
        for (const auto& [kname, kp, kf, vname, vp, vf] : runs)
        for (int forced : sweep) {
          if (forced > 0 && (kf != KvFormat::kBf16 || vf != KvFormat::kBf16)) continue;
          PagedDecodeParams pd;
          pd.batch = B;
          pd.num_heads = H;
          pd.kv_heads = KV;
          pd.head_dim = D;
          pd.page_size = page;
          pd.max_pages = pages_per_seq;
          pd.sm_scale = 1.f / std::sqrt(float(D));
          pd.q = reinterpret_cast<const uint16_t*>(qs.data_ptr());
          pd.key_format = kf;
          pd.value_format = vf;
          pd.key_pages = kp->data.data_ptr();
          pd.value_pages = vp->data.data_ptr();
          if (kp->scales.defined()) pd.key_scales = reinterpret_cast<const uint16_t*>(kp->scales.data_ptr());
          if (vp->scales.defined()) pd.value_scales = reinterpret_cast<const uint16_t*>(vp->scales.data_ptr());
          pd.page_table = table.data_ptr<int32_t>();
          pd.seq_len = lens.data_ptr<int32_t>();
          pd.max_seq_len = T;
          pd.out = o.data_ptr<float>();
          pd.num_splits = forced > 0 ? forced : PagedDecodeNumSplits(pd, prop.multiProcessorCount);
          at::Tensor pd_ws = at::empty({static_cast<int64_t>(PagedDecodeWorkspaceFloats(pd)) + 1}, dev.dtype(at::kFloat));
          pd.workspace = pd_ws.data_ptr<float>();
          Status st = Status::Ok();
          double us = TimeUs([&] { st = PagedDecodeAttention(pd, stream); }, std::max(2, iters / 4));
          const std::string label = forced > 0 ? "bf16 (ours, s=" + std::to_string(forced) + ")" : kname;
          const std::string kernel = "paged_decode_s" + std::to_string(pd.num_splits) + (forced > 0 ? "_forced" : "");
          if (st.ok()) record(B, T, label, vname, page, kp->bytes() + vp->bytes(), us, peer_us, kernel);
          else printf("%-10s %-5d %s / %s: %s\n", "", page, kname.c_str(), vname.c_str(), st.message().c_str());
          cudaGetLastError();
        }
      }
      for (const std::string& sched_text : Split(scheds_text, ';')) {
        Schedule sched;
        SvdqLayout l;
        Die(ParseSchedule(sched_text, &sched));
        Die(MakeLayout(D, page, sched, &l));
        // Encode random keys into pages with a random orthonormal basis per (sequence, head).
        at::Tensor basis = std::get<0>(at::linalg_qr(at::randn({B, KV, D, D}, dev.dtype(at::kFloat)))).contiguous();
        at::Tensor mean = (0.1 * at::randn({B, KV, D}, dev.dtype(at::kFloat))).contiguous();
        at::Tensor key_pages = at::empty({pool_pages, KV, l.page_bytes}, dev.dtype(at::kByte));
        const int chunk = std::max(1, 65536 / page);  // pages per encode call, bounds the fp32 staging
        for (int p0 = 0; p0 < pool_pages; p0 += chunk) {
          int n = std::min(chunk, pool_pages - p0);
          at::Tensor keys = at::randn({n, KV, page, D}, dev.dtype(at::kFloat));
          at::Tensor seq = at::arange(p0, p0 + n, dev.dtype(at::kLong)).div(pages_per_seq, "floor");
          at::Tensor m = mean.index_select(0, seq).contiguous(), bs = basis.index_select(0, seq).contiguous();
          SvdqEncodeParams e{l, n, KV, keys.data_ptr<float>(), m.data_ptr<float>(), bs.data_ptr<float>(),
                             key_pages.data_ptr<uint8_t>() + static_cast<int64_t>(p0) * KV * l.page_bytes, nullptr};
          Die(SvdqEncode(e, stream));
        }
        at::Tensor np = at::full({B}, pages_per_seq, dev.dtype(at::kInt));
        at::Tensor tl = at::zeros({B}, dev.dtype(at::kInt));
        at::Tensor tail = at::zeros({B, KV, page, D}, dev.dtype(at::kBFloat16));
        at::Tensor tail_page = at::zeros({B}, dev.dtype(at::kLong));  // no tail here (tail_len 0)
        at::Tensor pos = at::arange(T, dev.dtype(at::kFloat)).unsqueeze(1);
        at::Tensor ang = at::cat({pos * inv, pos * inv}, 1);
        at::Tensor cos = ang.cos().contiguous(), sin = ang.sin().contiguous();
        std::vector<int> svdq_sweep = {0};  // 0: the planner's split
        for (const std::string& s : Split(sweep_text, ',')) svdq_sweep.push_back(std::stoi(s));
        for (const auto& [vname, vpages] : values)
        for (int forced : svdq_sweep) {
        if (forced > 0 && vname != "bf16") continue;
        SvdqAttentionParams a;
        a.layout = l;
        a.batch = B;
        a.num_heads = H;
        a.kv_heads = KV;
        a.max_pages = pages_per_seq;
        a.sm_scale = 1.f / std::sqrt(float(D));
        a.q = reinterpret_cast<const uint16_t*>(qs.data_ptr());
        a.key_pages = key_pages.data_ptr<uint8_t>();
        a.value_pages = vpages.data.data_ptr();
        a.value_format = std::find_if(formats.begin(), formats.end(), [&](auto& x) { return x.first == vname; })->second;
        if (vpages.scales.defined()) a.value_scales = reinterpret_cast<const uint16_t*>(vpages.scales.data_ptr());
        a.page_table = table.data_ptr<int32_t>();
        a.num_pages = np.data_ptr<int32_t>();
        a.mean = mean.data_ptr<float>();
        // The fp16 copy of the retained columns, which the warp-stream kernel reads (as the server's does).
        at::Tensor kept = at::tensor(RetainedChannels(l), at::kLong).to(basis.device());
        at::Tensor basis_half = basis.index_select(-1, kept).to(at::kHalf).contiguous();
        a.basis = basis.data_ptr<float>();
        a.basis_half = reinterpret_cast<const uint16_t*>(basis_half.data_ptr());
        a.tail_keys = reinterpret_cast<const uint16_t*>(tail.data_ptr());
        a.tail_values = a.tail_keys;
        a.tail_value_page = tail_page.data_ptr<int64_t>();
        a.tail_len = tl.data_ptr<int32_t>();
        a.rope_cos = cos.data_ptr<float>();
        a.rope_sin = sin.data_ptr<float>();
        a.rope_inv_freq = inv.data_ptr<float>();
        a.out = o.data_ptr<float>();
        // Bytes read: key records, values, each sequence's basis (r columns used, counted as fp32:
        // the block kernel's; the warp-stream one reads their fp16 copy) and mean.
        const double bytes = static_cast<double>(key_pages.numel()) + vpages.bytes() +
                             4.0 * B * KV * (static_cast<double>(D) * l.retained + D);
        // Each tensor-core kernel that takes the shape: the warp-stream one (what SvdqAttention
        // picks first; at head dim 128 from 6 k-steps on with its warpgroup rebuild, and also
        // without it, "sync") and the block mma one; split sweeps take the default.
        using K = SvdqAttentionParams::Kernel;
        std::vector<std::pair<K, std::string>> kernels = {{K::kAuto, ""}};
        if (forced == 0) {
          kernels = {{K::kBlockMma, " block"}};
          if (SvdqAttentionWarpSupported(a)) {
            if (SvdqAttentionWarpGroupRebuild(a)) kernels.insert(kernels.begin(), {K::kWarpStreamsSync, " sync"});
            kernels.insert(kernels.begin(), {K::kWarpStreams, " warp"});
          }
        }
        for (const auto& [kernel, suffix] : kernels) {
          a.kernel = kernel;
          // The split as planned for this kernel's resident blocks (or forced).
          a.pages_per_split = SvdqAttentionPagesPerSplit(B, KV, pages_per_seq, page, prop.multiProcessorCount, SvdqAttentionBlocksPerSm(a));
          if (forced == 1) a.pages_per_split = 0;
          if (forced > 1) a.pages_per_split = (pages_per_seq + forced - 1) / forced;
          at::Tensor ws = at::empty({static_cast<int64_t>(std::max<size_t>(SvdqAttentionWorkspaceFloats(a), 1))},
                                    dev.dtype(at::kFloat));
          a.workspace = ws.data_ptr<float>();
          Status st = Status::Ok();
          double us = TimeUs([&] { st = SvdqAttention(a, stream); }, iters);
          Die(st);
          Die(cudaDeviceSynchronize() == cudaSuccess ? Status::Ok() : Status::Invalid("kernel failed"));
          char mode[64];
          if (forced > 0) snprintf(mode, sizeof(mode), "svdq %.2fb s=%d", sched.EquivalentBits(), forced);
          else snprintf(mode, sizeof(mode), "svdq %.2fb %s%s", sched.EquivalentBits(), sched_text.substr(0, 7).c_str(), suffix.c_str());
          const bool warp = kernel == K::kWarpStreams || (kernel == K::kAuto && SvdqAttentionWarpSupported(a));
          const char* name = kernel == K::kWarpStreamsSync ? "svdq_warp_sync_pps" : warp ? "svdq_warp_pps" : "svdq_mma_pps";
          record(B, T, mode, vname, page, bytes, us, peer_us,
                 std::string(name) + std::to_string(a.pages_per_split) + (forced > 0 ? "_forced" : ""));
        }
        }
      }
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << rows.dump(2) << "\n";
  return 0;
}
