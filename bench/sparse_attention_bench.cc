// Sparse SVDq decode attention (issue 17) at Llama-3-8B attention shapes (32 query / 8 KV heads,
// head dim 128): per sequence and KV head, the page selection (kernels/sparse) scores every page
// before the recent window by its landmark, keeps the sink page and the best pages within the
// token budget, and the warp-stream SVDq kernel attends to those, the recent pages and the tail.
// Times the step (selection + attention) in a CUDA graph, as the server's decode step runs it (and
// eagerly, launch gaps included), each part, dense SVDq attention and bf16 SDPA over the whole
// context in the same run (CUDA events; SDPA in a CUDA graph too), and counts the key bytes each
// step reads:
//   codes      the attended pages' key records (codes, scales, zeros) and the bf16 tail keys;
//   basis      the sequence's SVDq mean (fp32) and the r basis columns the kernel reads (fp16);
//   metadata   every scored page's landmark (R int8 + an fp16 scale) and the landmark basis.
// Compression = bf16 bytes of every key of the context / key bytes read (all three included).
// Pages and values are random: the time does not depend on which pages are chosen.
//   sparse_attention_bench [--json OUT] [--date D] [--iters N] [--batch 8] [--contexts 32768,131072]
//                          [--budgets 256,1024,2048,4096] [--pages 64,16] [--ranks 128,16]
//                          [--schedules 4,2,2,1,1,0,0,0;8,4,2,1,1,0,0,0] [--recent 128] [--sweep-pps 0,1,2,4,8]
//                          [--dense 1]
// "fixed us" is the attention launch with the same grid but no page attended: each block's setup
// (basis, RoPE table, queries), its merge and the split merge, without any tile.
// --dense 0 leaves out the dense SVDq attention (so that the first SVDq kernel launched is the
// sparse one, for ncu --launch-count 1).
// --ranks: landmark widths; 128 (= head dim) is the page mean itself (the server's metadata),
// smaller ones a mean in an R-column basis; RxS: S landmarks of R coordinates a page (the means
// of its S slices, --sparse-landmark-subs S). Writes bench/results/sparse_h200.json's rows.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "bench/bench_util.h"
#include "kernels/sparse/sparse_select.h"
#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_cuda.h"

using namespace svdq::kernels;
using svdq::bench::AtenGraphUs;
using svdq::bench::Die;
using svdq::bench::GraphUs;
using svdq::bench::Split;
using svdq::bench::TimeUs;

int main(int argc, char** argv) {
  std::string json_path, date = "unknown", contexts_text = "32768,131072", budgets_text = "256,1024,2048,4096";
  std::string pages_text = "64,16", ranks_text = "128,16", scheds_text = "4,2,2,1,1,0,0,0;8,4,2,1,1,0,0,0";
  std::string pps_text_all = "0,1,2,4,8";
  int iters = 100, B = 8, recent_tokens = 128, run_dense = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--json") json_path = v;
    else if (a == "--date") date = v;
    else if (a == "--iters") iters = std::stoi(v);
    else if (a == "--batch") B = std::stoi(v);
    else if (a == "--contexts") contexts_text = v;
    else if (a == "--budgets") budgets_text = v;
    else if (a == "--pages") pages_text = v;
    else if (a == "--ranks") ranks_text = v;
    else if (a == "--schedules") scheds_text = v;
    else if (a == "--recent") recent_tokens = std::stoi(v);
    else if (a == "--sweep-pps") pps_text_all = v;
    else if (a == "--dense") run_dense = std::stoi(v);
    else {
      std::fprintf(stderr, "sparse_attention_bench: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (!at::hasCUDA()) {
    std::fprintf(stderr, "sparse_attention_bench: no CUDA device\n");
    return 1;
  }
  c10::InferenceMode guard;
  const int H = 32, KV = 8, D = 128, G = H / KV;
  const double theta = 500000.0;
  auto dev = at::TensorOptions().device(at::kCUDA);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  at::Tensor src = at::empty({1LL << 31}, dev.dtype(at::kByte)), dst = at::empty_like(src);
  const double copy_us = TimeUs([&] { dst.copy_(src); }, 10);
  const double copy_tbs = 2.0 * src.numel() / (copy_us * 1e-6) / 1e12;
  src.reset();
  dst.reset();
  std::printf("sparse_attention_bench on %s: copy bandwidth %.2f TB/s (read + write); batch %d, recent %d tokens\n",
              prop.name, copy_tbs, B, recent_tokens);
  std::printf("step, attention and dense SVDq in a CUDA graph (as served); eager: the step launched from the host\n");
  std::printf("%-9s %6s %4s %4s %-6s %8s %8s %8s %8s %9s %9s %8s %10s %8s\n", "ctx", "budget", "page", "R", "bits", "step us",
              "eager us", "sel us", "attn us", "dense us", "sdpa us", "vs sdpa", "key KB/seq", "key x");
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& ct : Split(contexts_text, ',')) {
    const int T = std::stoi(ct);
    at::Tensor q = at::randn({B, H, 1, D}, dev.dtype(at::kBFloat16));
    at::Tensor qs = q.view({B, H, D}).contiguous(), qf = qs.to(at::kFloat);
    double sdpa_us;
    {
      at::Tensor k = at::randn({B, KV, T, D}, dev.dtype(at::kBFloat16)), v = at::randn_like(k);
      // In a CUDA graph, as the sparse step is timed (the same ops as eagerly: launch gaps aside).
      sdpa_us = AtenGraphUs([&] { at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, {}, /*enable_gqa=*/true); });
    }
    at::Tensor inv = at::pow(theta, -at::arange(0, D, 2, dev.dtype(at::kDouble)) / D).to(at::kFloat);
    at::Tensor pos = at::arange(T + 64, dev.dtype(at::kFloat)).unsqueeze(1), ang = at::cat({pos * inv, pos * inv}, 1);
    at::Tensor cos = ang.cos().contiguous(), sin = ang.sin().contiguous();
    at::Tensor out = at::empty({B, H, D}, dev.dtype(at::kFloat));
    for (const std::string& pt : Split(pages_text, ',')) {
      const int P = std::stoi(pt), pages = T / P, pool = B * pages;
      const int recent = std::max(1, (recent_tokens + P - 1) / P);
      if (pages > kSparseMaxChunks) {
        std::printf("%d x %d: %d pages of %d is over the selection's %d\n", B, T, pages, P, kSparseMaxChunks);
        continue;
      }
      at::Tensor table = at::randperm(pool, dev.dtype(at::kLong)).to(at::kInt).view({B, pages}).contiguous();
      at::Tensor values = at::randn({pool, KV, P, D}, dev.dtype(at::kBFloat16));
      at::Tensor np = at::full({B}, pages, dev.dtype(at::kInt)), tl = at::zeros({B}, dev.dtype(at::kInt));
      at::Tensor tail = at::zeros({B, KV, P, D}, dev.dtype(at::kBFloat16)), tail_page = at::zeros({B}, dev.dtype(at::kLong));
      at::Tensor chunks = at::full({B}, pages - recent, dev.dtype(at::kInt));
      for (const std::string& st_text : Split(scheds_text, ';')) {
        Schedule sched;
        SvdqLayout l;
        Die(ParseSchedule(st_text, &sched));
        Die(MakeLayout(D, P, sched, &l));
        at::Tensor basis = std::get<0>(at::linalg_qr(at::randn({B, KV, D, D}, dev.dtype(at::kFloat)))).contiguous();
        at::Tensor mean = (0.1 * at::randn({B, KV, D}, dev.dtype(at::kFloat))).contiguous();
        at::Tensor key_pages = at::empty({pool, KV, l.page_bytes}, dev.dtype(at::kByte));
        const int per_call = std::max(1, 65536 / P);
        for (int p0 = 0; p0 < pool; p0 += per_call) {
          const int n = std::min(per_call, pool - p0);
          at::Tensor keys = at::randn({n, KV, P, D}, dev.dtype(at::kFloat));
          at::Tensor seq = at::arange(p0, p0 + n, dev.dtype(at::kLong)).div(pages, "floor");
          at::Tensor m = mean.index_select(0, seq).contiguous(), bs = basis.index_select(0, seq).contiguous();
          SvdqEncodeParams e{l, n, KV, keys.data_ptr<float>(), m.data_ptr<float>(), bs.data_ptr<float>(),
                             key_pages.data_ptr<uint8_t>() + static_cast<int64_t>(p0) * KV * l.page_bytes, nullptr};
          Die(SvdqEncode(e, stream));
        }
        SvdqAttentionParams a;
        a.layout = l;
        a.batch = B, a.num_heads = H, a.kv_heads = KV, a.max_pages = pages;
        a.sm_scale = 1.f / std::sqrt(float(D));
        a.q = reinterpret_cast<const uint16_t*>(qs.data_ptr());
        a.key_pages = key_pages.data_ptr<uint8_t>();
        a.value_pages = values.data_ptr();
        a.page_table = table.data_ptr<int32_t>();
        a.num_pages = np.data_ptr<int32_t>();
        a.mean = mean.data_ptr<float>();
        // The fp16 copy of the retained columns the warp-stream kernel reads (the server's, too).
        at::Tensor kept = at::tensor(RetainedChannels(l), at::kLong).to(dev.device());
        at::Tensor basis_half = basis.index_select(-1, kept).to(at::kHalf).contiguous();
        a.basis = basis.data_ptr<float>();
        a.basis_half = reinterpret_cast<const uint16_t*>(basis_half.data_ptr());
        a.tail_keys = reinterpret_cast<const uint16_t*>(tail.data_ptr());
        a.tail_value_page = tail_page.data_ptr<int64_t>();
        a.tail_len = tl.data_ptr<int32_t>();
        a.rope_cos = cos.data_ptr<float>();
        a.rope_sin = sin.data_ptr<float>();
        a.rope_inv_freq = inv.data_ptr<float>();
        a.out = out.data_ptr<float>();
        a.kernel = SvdqAttentionParams::Kernel::kWarpStreams;
        a.pages_per_split = SvdqAttentionPagesPerSplit(B, KV, pages, P, prop.multiProcessorCount, SvdqAttentionBlocksPerSm(a));
        at::Tensor dense_ws = at::empty({static_cast<int64_t>(SvdqAttentionWorkspaceFloats(a)) + 1}, dev.dtype(at::kFloat));
        a.workspace = dense_ws.data_ptr<float>();
        Status st = Status::Ok();
        const double dense_us = run_dense ? TimeUs([&] { st = SvdqAttention(a, stream); }, iters) : 0.0;
        Die(st);
        const double dense_graph_us = run_dense ? GraphUs([&](cudaStream_t gs) { Die(SvdqAttention(a, gs)); }, 5) : 0.0;
        // Per (sequence, KV head): the SVDq mean (fp32) and the r basis columns the kernel reads (fp16).
        const double basis_bytes = 4.0 * D + 2.0 * D * l.retained;
        for (const std::string& bt : Split(budgets_text, ',')) {
          const int budget = std::stoi(bt), keep = budget / P - 1 - recent;
          if (keep < 1 || keep + 1 >= pages - recent) continue;
          for (const std::string& rt : Split(ranks_text, ',')) {
            const size_t x = rt.find('x');
            const int R = std::stoi(rt.substr(0, x)), S = x == std::string::npos ? 1 : std::stoi(rt.substr(x + 1));
            at::Tensor coords = at::randint(-127, 128, {pool, KV, S * R}, dev.dtype(at::kChar));
            at::Tensor scales = at::rand({pool, KV}, dev.dtype(at::kFloat)).mul(0.01).to(at::kHalf);
            at::Tensor land_basis = R == D ? at::Tensor() : (0.1 * at::randn({KV, D, R}, dev.dtype(at::kFloat))).contiguous();
            at::Tensor selected = at::empty({B, KV, keep + 1}, dev.dtype(at::kInt)), count = at::empty({B, KV}, dev.dtype(at::kInt));
            SparseSelectParams sp;
            sp.score = SparseScore::kLandmark;
            sp.q = qf.data_ptr<float>();
            sp.basis = land_basis.defined() ? land_basis.data_ptr<float>() : nullptr;
            sp.coords = coords.data_ptr<int8_t>();
            sp.scales = static_cast<const uint16_t*>(scales.data_ptr());  // fp16
            sp.table = table.data_ptr<int32_t>();
            sp.chunks = chunks.data_ptr<int32_t>();
            sp.selected = selected.data_ptr<int32_t>();
            sp.count = count.data_ptr<int32_t>();
            sp.B = B, sp.H = H, sp.KV = KV, sp.D = D, sp.R = R, sp.S = S, sp.max_chunks = pages, sp.keep = keep;
            SvdqAttentionParams s = a;
            s.sparse_pages = selected.data_ptr<int32_t>();
            s.sparse_count = count.data_ptr<int32_t>();
            s.sparse_recent = chunks.data_ptr<int32_t>();
            s.sparse_stride = keep + 1;
            s.sparse_max_pages = keep + 1 + recent;
            // The server's plan (paged_storage.cc AttendDecode); the sweep below checks it.
            s.pages_per_split = SvdqAttentionPagesPerSplit(B, KV, s.sparse_max_pages, P, prop.multiProcessorCount, SvdqAttentionBlocksPerSm(s));
            at::Tensor ws = at::empty({static_cast<int64_t>(SvdqAttentionWorkspaceFloats(s)) + 1}, dev.dtype(at::kFloat));
            s.workspace = ws.data_ptr<float>();
            Die(SparseSelect(sp, stream));
            const double select_us = TimeUs([&] { st = SparseSelect(sp, stream); }, iters);
            Die(st);
            const double attn_us = TimeUs([&] { st = SvdqAttention(s, stream); }, iters);
            Die(st);
            // The attention at other split sizes (pages per block; 0: one block per sequence and
            // KV head), to check the planner's choice.
            nlohmann::json by_pps = nlohmann::json::object();
            std::string sweep_line;
            for (const std::string& pps_text : Split(pps_text_all, ',')) {
              SvdqAttentionParams f = s;
              f.pages_per_split = std::stoi(pps_text);
              at::Tensor fws = at::empty({static_cast<int64_t>(SvdqAttentionWorkspaceFloats(f)) + 1}, dev.dtype(at::kFloat));
              f.workspace = fws.data_ptr<float>();
              const double us = GraphUs([&](cudaStream_t gs) { Die(SvdqAttention(f, gs)); });
              by_pps[pps_text] = us;
              char item[48];
              std::snprintf(item, sizeof(item), " pps%s %.1f", pps_text.c_str(), us);
              sweep_line += item;
            }
            const double step_us = TimeUs([&] {
              Die(SparseSelect(sp, stream));
              st = SvdqAttention(s, stream);
            }, iters);
            Die(st);
            // The same in a CUDA graph (the server's decode step): GPU time without launch gaps.
            const double step_graph_us = GraphUs([&](cudaStream_t gs) {
              Die(SparseSelect(sp, gs));
              Die(SvdqAttention(s, gs));
            });
            const double attn_graph_us = GraphUs([&](cudaStream_t gs) { Die(SvdqAttention(s, gs)); });
            // The step with the attention's setup overlapping the selection (overlap_setup, PDL).
            double step_overlap_us = 0.0;
            {
              SvdqAttentionParams o = s;
              o.overlap_setup = true;
              step_overlap_us = GraphUs([&](cudaStream_t gs) {
                Die(SparseSelect(sp, gs));
                Die(SvdqAttention(o, gs));
              });
            }
            // The same grid with no page attended (count 0, every page "recent" and none of them
            // past the recent start): the fixed cost of a launch.
            double fixed_us = 0.0;
            {
              at::Tensor zero = at::zeros({B, KV}, dev.dtype(at::kInt));
              SvdqAttentionParams f = s;
              f.sparse_count = zero.data_ptr<int32_t>();
              f.sparse_recent = np.data_ptr<int32_t>();
              fixed_us = GraphUs([&](cudaStream_t gs) { Die(SvdqAttention(f, gs)); });
            }
            Die(cudaDeviceSynchronize() == cudaSuccess ? Status::Ok() : Status::Invalid("a kernel failed"));
            // Key bytes per (sequence, KV head) and step.
            const int scored = pages - recent;  // every page before the recent ones, the sink too
            const double meta = scored * (S * R + 2.0) + (R == D ? 0.0 : 4.0 * D * R);  // and the landmark basis
            const double codes = static_cast<double>(keep + 1 + recent) * l.page_bytes;
            const double read = codes + basis_bytes + meta, bf16 = 2.0 * T * D;
            std::printf("%2dx%-6d %6d %4d %4s %-6.2f %8.1f %8.1f %8.1f %8.1f %9.1f %9.1f %7.1fx %10.1f %7.1fx\n", B, T, budget, P,
                        rt.c_str(), sched.EquivalentBits(), step_graph_us, step_us, select_us, attn_graph_us, dense_graph_us, sdpa_us,
                        sdpa_us / step_graph_us, read / 1024, bf16 / read);
            std::printf("          attention by pages per split, in a graph (planner: %d):%s; fixed %.1f; step with the setup overlapped %.1f\n",
                        s.pages_per_split, sweep_line.c_str(), fixed_us, step_overlap_us);
            rows.push_back({{"batch", B}, {"context", T}, {"budget", budget}, {"page", P}, {"landmark_rank", R}, {"landmark_subs", S},
                            {"recent_pages", recent}, {"kept_pages", keep + 1}, {"schedule", st_text},
                            {"key_bits", sched.EquivalentBits()}, {"us", step_graph_us > 0 ? step_graph_us : step_us}, {"us_eager", step_us}, {"select_us", select_us},
                            {"attention_us", attn_us}, {"dense_svdq_us", dense_us}, {"dense_svdq_us_graph", dense_graph_us}, {"peer_us", sdpa_us},
                            {"key_bytes_read", read * B * KV}, {"key_bytes_codes", codes * B * KV},
                            {"key_bytes_basis", basis_bytes * B * KV}, {"key_bytes_metadata", meta * B * KV},
                            {"key_bytes_bf16", bf16 * B * KV}, {"compression", bf16 / read},
                            {"compression_without_basis", bf16 / (codes + meta)}, {"copy_tbps", copy_tbs},
                            {"pages_per_split", s.pages_per_split}, {"attention_us_by_pages_per_split", by_pps},
                            {"us_graph", step_graph_us}, {"attention_us_graph", attn_graph_us}, {"attention_fixed_us", fixed_us}, {"us_graph_overlapped_setup", step_overlap_us},
                            {"device", prop.name}, {"date", date}});
          }
        }
      }
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << rows.dump(2) << "\n";
  return 0;
}
