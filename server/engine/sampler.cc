// Sampling runs on the host: one row per sequence is copied once, and a per-request
// std::mt19937_64 makes seeded requests reproducible on any device.
#include "server/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace svdq::engine {

int32_t SampleToken(const at::Tensor& logits, const SamplingParams& p, std::mt19937_64* rng) {
  if (p.temperature <= 0.f) return static_cast<int32_t>(logits.argmax().item<int64_t>());
  at::Tensor host = logits.to(at::kCPU, at::kFloat).contiguous();
  const float* x = host.data_ptr<float>();
  const int64_t n = host.numel();
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  int64_t keep = (p.top_k > 0 && p.top_k < n) ? p.top_k : n;
  auto by_logit = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), by_logit);
  idx.resize(keep);
  // Softmax over the kept tokens at the given temperature, in double for stability.
  std::vector<double> prob(keep);
  double mx = x[idx[0]], sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += prob[i] = std::exp((x[idx[i]] - mx) / p.temperature);
  for (auto& q : prob) q /= sum;
  if (p.top_p > 0.f && p.top_p < 1.f) {
    double cum = 0;
    int64_t cut = keep;
    for (int64_t i = 0; i < keep; ++i) {
      cum += prob[i];
      if (cum >= p.top_p) {
        cut = i + 1;
        break;
      }
    }
    prob.resize(cut);
    idx.resize(cut);
    double s = std::accumulate(prob.begin(), prob.end(), 0.0);
    for (auto& q : prob) q /= s;
  }
  double u = std::uniform_real_distribution<double>(0.0, 1.0)(*rng);
  double cum = 0;
  for (size_t i = 0; i < prob.size(); ++i) {
    cum += prob[i];
    if (u < cum) return idx[i];
  }
  return idx.back();
}

}  // namespace svdq::engine
