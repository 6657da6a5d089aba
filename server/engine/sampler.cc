// Sampling runs on the host: one row per sequence is copied once, and a per-request
// std::mt19937_64 makes seeded requests reproducible on any device.
#include "server/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace svdq::engine {

int32_t SampleToken(const at::Tensor& logits, const SamplingParams& p, const TokenHistory& hist,
                    const std::vector<int32_t>& banned, std::mt19937_64* rng) {
  if (!p.NeedsHost() && banned.empty()) return static_cast<int32_t>(logits.argmax().item<int64_t>());
  at::Tensor host = logits.to(at::kCPU, at::kFloat).contiguous();
  float* x = host.data_ptr<float>();
  const int64_t n = host.numel();
  auto valid = [n](int32_t t) { return t >= 0 && t < n; };
  if (p.repetition_penalty != 1.f) {
    std::vector<bool> seen(n, false);
    for (const auto* list : {hist.prompt, hist.output})
      if (list)
        for (int32_t t : *list)
          if (valid(t)) seen[t] = true;
    for (int64_t t = 0; t < n; ++t)
      if (seen[t]) x[t] = x[t] > 0 ? x[t] / p.repetition_penalty : x[t] * p.repetition_penalty;
  }
  if ((p.presence_penalty != 0.f || p.frequency_penalty != 0.f) && hist.output) {
    std::vector<int32_t> count(n, 0);
    for (int32_t t : *hist.output)
      if (valid(t)) ++count[t];
    for (int64_t t = 0; t < n; ++t)
      if (count[t]) x[t] -= p.presence_penalty + p.frequency_penalty * count[t];
  }
  for (int32_t t : banned)
    if (valid(t)) x[t] = -INFINITY;
  if (p.temperature <= 0.f) return static_cast<int32_t>(std::max_element(x, x + n) - x);

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
  int64_t cut = keep;
  if (p.top_p > 0.f && p.top_p < 1.f) {
    double cum = 0;
    for (int64_t i = 0; i < keep; ++i) {
      cum += prob[i];
      if (cum >= p.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  if (p.min_p > 0.f) {
    const double floor = p.min_p * prob[0];  // prob is sorted, prob[0] is the most likely
    int64_t k = 1;
    while (k < cut && prob[k] >= floor) ++k;
    cut = k;
  }
  prob.resize(cut);
  idx.resize(cut);
  double s = std::accumulate(prob.begin(), prob.end(), 0.0);
  double u = std::uniform_real_distribution<double>(0.0, 1.0)(*rng) * s;
  double cum = 0;
  for (size_t i = 0; i < prob.size(); ++i) {
    cum += prob[i];
    if (u < cum) return idx[i];
  }
  return idx.back();
}

}  // namespace svdq::engine
