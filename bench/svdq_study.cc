// svdq_study: does SVDq's key error beat direct per-channel quantization on real keys?
//
// Runs the model over a real English text, captures the pre-RoPE keys, queries and
// values of every layer and KV head, encodes the keys with each codec through the CPU
// reference (page by page, as the cache would), and measures against the unquantized keys:
//   key error     ||K - K^||_F / ||K||_F                      (pre-RoPE)
//   score error   ||S - S^||_F / ||S||_F over causal entries   (S = RoPE(Q) RoPE(K)^T / sqrt(d))
//   output error  ||A - A^||_F / ||A||_F                       (A = softmax(S) V)
// (means over layers and KV heads, and per layer in the JSON and a table) for SVDq with a
// per-sequence basis (computed from the evaluated text's own keys, the paper's prefill
// setting), with a calibrated basis (from a different text), with the layer scope, and for
// direct per-channel quantization. Scores and outputs use a sample
// of query positions (every 8th and the last 64) against all keys.
//
// usage: svdq_study MODEL.gguf [--text FILE] [--calib FILE | --basis FILE.svdq-basis] [--tokens N]
//                  [--page P] [--no-center] [--json OUT]
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_ref.h"
#include "models/basis_file.h"
#include "models/calibration.h"
#include "models/gguf.h"
#include "models/llama.h"
#include "models/tokenizer.h"

using namespace svdq;
using nlohmann::json;

namespace {

struct Method {
  std::string name, schedule;
  enum Kind { kSvdqPrefill, kSvdqCalibrated, kSvdqLayerPrefill, kDirect, kDirectSorted, kBf16 } kind;
};

const std::vector<Method> kMethods = {
    {"svdq-prefill 2.0b", "8,4,2,1,1,0,0,0", Method::kSvdqPrefill},
    {"svdq-prefill 1.25b", "4,2,2,1,1,0,0,0", Method::kSvdqPrefill},
    {"svdq-prefill 1.25b (8,2)", "8,2,0,0,0,0,0,0", Method::kSvdqPrefill},
    {"svdq-prefill 2.0b (all ch)", "4,4,2,2,1,1,1,1", Method::kSvdqPrefill},
    {"svdq-prefill 1.25b (7/8 ch)", "2,2,2,1,1,1,1,0", Method::kSvdqPrefill},
    // The tail at 2 bits: the schedules with the lowest perplexity cost (README, KV cache modes).
    {"svdq-prefill 2.0b (tail 2b)", "4,2,2,2,2,2,1,1", Method::kSvdqPrefill},
    {"svdq-prefill 2.5b (tail 2b)", "8,4,2,2,2,2,1,1", Method::kSvdqPrefill},
    {"svdq-calibrated 2.0b", "8,4,2,1,1,0,0,0", Method::kSvdqCalibrated},
    {"svdq-calibrated 2.0b (all ch)", "4,4,2,2,1,1,1,1", Method::kSvdqCalibrated},
    {"svdq-calibrated 1.25b", "4,2,2,1,1,0,0,0", Method::kSvdqCalibrated},
    {"svdq-layer-prefill 2.0b", "8,4,2,1,1,0,0,0", Method::kSvdqLayerPrefill},
    {"svdq-layer-prefill 1.25b", "4,2,2,1,1,0,0,0", Method::kSvdqLayerPrefill},
    {"bf16 pass-through", "8,8,8,8,8,8,8,8", Method::kBf16},
    {"direct 4b", "4,4,4,4,4,4,4,4", Method::kDirect},
    {"direct 2b", "2,2,2,2,2,2,2,2", Method::kDirect},
    {"direct 1b", "1,1,1,1,1,1,1,1", Method::kDirect},
    {"direct-sorted 1.25b", "2,2,1,1,1,1,1,1", Method::kDirectSorted},
};

std::vector<float> ToVector(const at::Tensor& t) {
  at::Tensor c = t.contiguous().to(at::kFloat);
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Encodes keys [T, W] page by page (T a multiple of P) with one mean and basis, and
// returns the decoded pre-RoPE keys.
at::Tensor CodecRoundTrip(const at::Tensor& keys, const kernels::SvdqLayout& l, const std::vector<float>& mean,
                          const std::vector<float>& basis) {
  const int64_t T = keys.size(0), W = keys.size(1), pages = T / l.page_size;
  std::vector<float> k = ToVector(keys), means, bases, out(k.size());
  for (int64_t p = 0; p < pages; ++p) {
    means.insert(means.end(), mean.begin(), mean.end());
    bases.insert(bases.end(), basis.begin(), basis.end());
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(pages) * l.page_bytes);
  kernels::SvdqEncodeParams e{l, static_cast<int>(pages), 1, k.data(), means.data(), bases.data(), bytes.data(), nullptr};
  kernels::Status st = kernels::SvdqEncodeRef(e);
  if (!st.ok()) throw std::runtime_error(st.message());
  kernels::SvdqDecodeParams d{l, static_cast<int>(pages), 1, bytes.data(), means.data(), bases.data(),
                              nullptr, nullptr, nullptr, out.data()};
  st = kernels::SvdqDecodeRef(d);
  if (!st.ok()) throw std::runtime_error(st.message());
  return at::from_blob(out.data(), {T, W}, at::kFloat).clone();
}

at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {  // x [T, H, D]
  const int64_t D = x.size(-1);
  at::Tensor rot = at::cat({-x.narrow(-1, D / 2, D / 2), x.narrow(-1, 0, D / 2)}, -1);
  return x * cos.unsqueeze(1) + rot * sin.unsqueeze(1);
}

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / std::max(a.norm().item<double>(), 1e-30);
}

}  // namespace

int Run(int argc, char** argv);

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "svdq_study: " << e.what() << "\n";
    return 1;
  }
}

int Run(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: svdq_study MODEL.gguf [--text FILE] [--calib FILE] [--tokens N] [--page P] [--json OUT]\n";
    return 2;
  }
  std::string model_path = argv[1], text_path = "/usr/share/common-licenses/GPL-3",
              calib_path = "/usr/share/common-licenses/GFDL-1.3", json_path, basis_path;
  bool center = true;
  int tokens = 4096, page = 16;
  for (int i = 2; i < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--no-center") {
      center = false;
      --i;
      continue;
    }
    if (i + 1 >= argc) {
      std::cerr << a << " needs a value\n";
      return 2;
    }
    if (a == "--text") text_path = argv[i + 1];
    else if (a == "--basis") basis_path = argv[i + 1];
    else if (a == "--calib") calib_path = argv[i + 1];
    else if (a == "--tokens") tokens = std::stoi(argv[i + 1]);
    else if (a == "--page") page = std::stoi(argv[i + 1]);
    else if (a == "--json") json_path = argv[i + 1];
    else {
      std::cerr << "unknown option " << a << "\n";
      return 2;
    }
  }
  c10::InferenceMode guard;
  auto t0 = std::chrono::steady_clock::now();
  auto file = models::GgufFile::Open(model_path);
  auto tok = models::Tokenizer::FromGguf(*file);
  auto model = models::LlamaModel::LoadGguf(*file, at::kCPU, at::kFloat);
  const auto& cfg = model->config();
  const int D = cfg.head_dim, NKV = cfg.n_kv_heads, G = cfg.n_heads / cfg.n_kv_heads;

  // The evaluated text: queries, keys and values of every layer.
  models::ForwardCapture eval;
  {
    std::ifstream in(text_path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<int32_t> ids = tok->Encode(ss.str());
    tokens = std::min<int>(tokens, static_cast<int>(ids.size())) / page * page;
    if (tokens < page) throw std::runtime_error(text_path + " is too short");
    ids.resize(tokens);
    models::SequenceKv kv;
    model->set_capture(&eval);
    model->Forward(ids, &kv);
    model->set_capture(nullptr);
  }
  // The calibrated bases: from a basis file (tools/svdq_calibrate), or computed here the same way.
  models::BasisSet calib = basis_path.empty()
                               ? models::ComputeBases(models::CaptureKeys(*model, *tok, calib_path, 2048), "head", center)
                               : models::ReadBasisFile(basis_path);
  if (calib.layers != cfg.n_layers || calib.units != NKV || calib.width != D || calib.scope != "head")
    throw std::runtime_error("the calibrated basis does not match this model's layers, KV heads and head dim");
  std::cout << "svdq_study: " << cfg.name << ", " << tokens << " tokens of " << text_path << " (calibration: "
            << calib.tokens << " tokens of " << (basis_path.empty() ? calib_path : basis_path) << "), page " << page
            << (center ? "" : ", not centred") << "\n";

  // Query sample: every 8th position and the last 64.
  std::vector<int64_t> qpos;
  for (int64_t t = 0; t < tokens; ++t)
    if (t % 8 == 7 || t >= tokens - 64) qpos.push_back(t);
  at::Tensor qidx = at::tensor(qpos, at::kLong);
  at::Tensor cos = model->rope_cos().narrow(0, 0, tokens), sin = model->rope_sin().narrow(0, 0, tokens);
  at::Tensor causal = at::arange(tokens, at::kLong).unsqueeze(0) <= qidx.unsqueeze(1);  // [Q, T]

  std::map<std::string, std::array<double, 3>> sums;
  // The same errors per layer (summed over its KV heads), and each layer's spectrum.
  std::map<std::string, std::vector<std::array<double, 3>>> layer_sums;
  std::vector<double> layer_e16(cfg.n_layers, 0.0);
  std::vector<double> energy8(1, 0), energy16(1, 0), energy32(1, 0);
  double e8 = 0, e16 = 0, e32 = 0;
  std::vector<double> sv_decay(D, 0.0);
  int n_heads = 0;
  for (int layer = 0; layer < cfg.n_layers; ++layer) {
    at::Tensor K = eval.k_pre_rope[layer], Q = eval.q_pre_rope[layer], V = eval.v[layer];  // [T, H, D]
    // Layer scope: all KV heads concatenated, one basis of width NKV * D.
    std::map<std::string, at::Tensor> layer_recon;
    {
      at::Tensor Kl = K.reshape({tokens, NKV * D});
      kernels::SvdqBasis lb;
      std::vector<float> kl = ToVector(Kl);
      if (!kernels::ComputeBasisRef(kl.data(), tokens, NKV * D, center, &lb).ok()) throw std::runtime_error("basis");
      for (const auto& m : kMethods) {
        if (m.kind != Method::kSvdqLayerPrefill) continue;
        kernels::Schedule s;
        kernels::ParseSchedule(m.schedule, &s);
        kernels::SvdqLayout l;
        kernels::MakeLayout(NKV * D, page, s, &l);
        layer_recon[m.name] = CodecRoundTrip(Kl, l, lb.mean, lb.vectors).reshape({tokens, NKV, D});
      }
    }
    for (int h = 0; h < NKV; ++h) {
      at::Tensor k = K.select(1, h).contiguous();  // [T, D]
      std::vector<float> kv = ToVector(k);
      kernels::SvdqBasis pb;
      if (!kernels::ComputeBasisRef(kv.data(), tokens, D, center, &pb).ok()) throw std::runtime_error("basis computation failed");
      const std::vector<float>& cb_mean = calib.mean[static_cast<size_t>(layer) * NKV + h];
      const std::vector<float>& cb_vectors = calib.vectors[static_cast<size_t>(layer) * NKV + h];
      double total = 0, c8 = 0, c16 = 0, c32 = 0;
      for (int j = 0; j < D; ++j) {
        double e = pb.singular_values[j] * pb.singular_values[j];
        total += e;
        if (j < 8) c8 += e;
        if (j < 16) c16 += e;
        if (j < 32) c32 += e;
        sv_decay[j] += pb.singular_values[j] / pb.singular_values[0];
      }
      e8 += c8 / total;
      e16 += c16 / total;
      layer_e16[layer] += c16 / total / NKV;
      e32 += c32 / total;
      // Direct-sorted: channels ordered by variance, as a permutation basis.
      at::Tensor var = k.var(0);
      at::Tensor order = var.argsort(0, /*descending=*/true);
      std::vector<float> perm(static_cast<size_t>(D) * D, 0.f), ident(static_cast<size_t>(D) * D, 0.f), zero(D, 0.f);
      for (int j = 0; j < D; ++j) {
        perm[static_cast<size_t>(order[j].item<int64_t>()) * D + j] = 1.f;
        ident[static_cast<size_t>(j) * D + j] = 1.f;
      }
      at::Tensor q = Q.narrow(1, h * G, G).index_select(0, qidx);                    // [Qn, G, D]
      at::Tensor qr = Rope(q, cos.index_select(0, qidx), sin.index_select(0, qidx));  // post-RoPE
      at::Tensor kr = Rope(k.unsqueeze(1), cos, sin).squeeze(1);                      // [T, D]
      at::Tensor v = V.select(1, h);                                                  // [T, D]
      auto scores = [&](const at::Tensor& keys_rope) {  // [G, Qn, T], masked to the causal part
        at::Tensor s = at::einsum("qgd,td->gqt", {qr, keys_rope}) / std::sqrt(static_cast<double>(D));
        return s.masked_fill(~causal.unsqueeze(0), 0.0);
      };
      auto output = [&](const at::Tensor& s) {
        at::Tensor masked = s.masked_fill(~causal.unsqueeze(0), -INFINITY);
        return at::einsum("gqt,td->gqd", {at::softmax(masked, -1), v});
      };
      at::Tensor s_ref = scores(kr), o_ref = output(s_ref);
      for (const auto& m : kMethods) {
        kernels::Schedule s;
        kernels::ParseSchedule(m.schedule, &s);
        kernels::SvdqLayout l;
        kernels::MakeLayout(D, page, s, &l);
        at::Tensor recon;
        switch (m.kind) {
          case Method::kSvdqPrefill: recon = CodecRoundTrip(k, l, pb.mean, pb.vectors); break;
          case Method::kSvdqCalibrated: recon = CodecRoundTrip(k, l, cb_mean, cb_vectors); break;
          case Method::kSvdqLayerPrefill: recon = layer_recon[m.name].select(1, h); break;
          case Method::kDirect: recon = CodecRoundTrip(k, l, zero, ident); break;
          case Method::kDirectSorted: recon = CodecRoundTrip(k, l, zero, perm); break;
          case Method::kBf16: recon = k.to(at::kBFloat16).to(at::kFloat); break;
        }
        at::Tensor s_hat = scores(Rope(recon.unsqueeze(1), cos, sin).squeeze(1));
        const std::array<double, 3> err = {RelErr(k, recon), RelErr(s_ref, s_hat), RelErr(o_ref, output(s_hat))};
        auto& per_layer = layer_sums[m.name];
        per_layer.resize(cfg.n_layers, {0.0, 0.0, 0.0});
        for (int e = 0; e < 3; ++e) {
          sums[m.name][e] += err[e];
          per_layer[layer][e] += err[e] / NKV;
        }
      }
      ++n_heads;
    }
  }

  json out;
  out["model"] = cfg.name;
  out["text"] = text_path;
  out["calibration"] = basis_path.empty() ? calib_path : basis_path;
  out["centered"] = center;
  out["tokens"] = tokens;
  out["page_size"] = page;
  out["layers_x_kv_heads"] = n_heads;
  out["energy_first_8_of_64"] = e8 / n_heads;
  out["energy_first_16_of_64"] = e16 / n_heads;
  out["energy_first_32_of_64"] = e32 / n_heads;
  std::vector<double> decay;
  for (int j = 0; j < D; ++j) decay.push_back(sv_decay[j] / n_heads);
  out["singular_value_decay_mean"] = decay;
  // Per layer: energy in the first 16 latent channels and each codec's key / score / output error
  // (means over the layer's KV heads).
  for (int layer = 0; layer < cfg.n_layers; ++layer) {
    json row = {{"layer", layer}, {"energy_first_16", layer_e16[layer]}};
    for (const auto& [name, v] : layer_sums) row["errors"][name] = {v[layer][0], v[layer][1], v[layer][2]};
    out["per_layer"].push_back(row);
  }
  printf("\nsingular values (mean over %d layer-heads): energy in the first 8/16/32 of %d latent channels = %.3f / %.3f / %.3f\n",
         n_heads, D, e8 / n_heads, e16 / n_heads, e32 / n_heads);
  printf("sigma_j / sigma_0 at j = 1, 4, 8, 16, 32, 63: %.3f %.3f %.3f %.3f %.3f %.4f\n\n", decay[1], decay[4], decay[8],
         decay[16], decay[32], decay[D - 1]);
  printf("%-30s %-18s %6s %7s %9s %9s %9s\n", "codec", "schedule", "equiv", "stored", "key err", "score err", "out err");
  for (const auto& m : kMethods) {
    kernels::Schedule s;
    kernels::ParseSchedule(m.schedule, &s);
    kernels::SvdqLayout l;
    int width = m.kind == Method::kSvdqLayerPrefill ? NKV * D : D;
    kernels::MakeLayout(width, page, s, &l);
    bool per_seq_basis = m.kind == Method::kSvdqPrefill || m.kind == Method::kSvdqLayerPrefill;
    double stored = m.kind == Method::kBf16 ? 16.0 : kernels::StoredBitsPerElement(l, tokens, per_seq_basis);
    const auto& a = sums[m.name];
    double equiv = m.kind == Method::kBf16 ? 16.0 : s.EquivalentBits();
    printf("%-30s %-18s %6.2f %7.2f %9.4f %9.4f %9.4f\n", m.name.c_str(), m.kind == Method::kBf16 ? "-" : m.schedule.c_str(), equiv, stored,
           a[0] / n_heads, a[1] / n_heads, a[2] / n_heads);
    out["codecs"].push_back({{"codec", m.name}, {"schedule", m.schedule}, {"equivalent_bits", equiv},
                             {"stored_bits", stored}, {"key_rel_err", a[0] / n_heads},
                             {"score_rel_err", a[1] / n_heads}, {"output_rel_err", a[2] / n_heads}});
  }
  auto ratio = [&](const std::string& a, const std::string& b) { return sums[a][0] / sums[b][0]; };
  out["answers"] = {
      {"prefill_2b_key_err_over_direct_2b", ratio("svdq-prefill 2.0b", "direct 2b")},
      {"prefill_2b_all_channels_key_err_over_direct_2b", ratio("svdq-prefill 2.0b (all ch)", "direct 2b")},
      {"prefill_2b_tail_2b_key_err_over_direct_2b", ratio("svdq-prefill 2.0b (tail 2b)", "direct 2b")},
      {"calibrated_2b_key_err_over_direct_2b", ratio("svdq-calibrated 2.0b", "direct 2b")},
      {"prefill_1.25b_key_err_over_direct_sorted_1.25b", ratio("svdq-prefill 1.25b", "direct-sorted 1.25b")},
      {"calibrated_1.25b_key_err_over_direct_sorted_1.25b", ratio("svdq-calibrated 1.25b", "direct-sorted 1.25b")},
  };
  printf("\nkey error ratio SVDq / direct at the same equivalent bits (the paper claims <= 0.1):\n");
  for (auto& [k, v] : out["answers"].items()) printf("  %-50s %.3f\n", k.c_str(), v.get<double>());
  printf("\nper layer, key error (mean over KV heads) and energy in the first 16 latent channels:\n");
  const char* shown[] = {"svdq-prefill 2.0b", "direct 2b", "svdq-prefill 1.25b (8,2)", "direct-sorted 1.25b"};
  printf("%5s %7s", "layer", "e16");
  for (const char* n : shown) printf(" %26s", n);
  printf("\n");
  for (int layer = 0; layer < cfg.n_layers; ++layer) {
    printf("%5d %7.3f", layer, layer_e16[layer]);
    for (const char* n : shown) printf(" %26.4f", layer_sums[n][layer][0]);
    printf("\n");
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out["seconds"] = secs;
  printf("\n(%.1f s)\n", secs);
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
