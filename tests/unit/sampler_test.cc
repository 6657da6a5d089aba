// The batched sampler against a row-at-a-time reference written the plain way (sort, softmax
// in double, top-k / top-p / min-p cuts, then the draw), over random logits and random
// settings, on the CPU (label cpu) and on CUDA where present (label gpu). Also: rows are
// independent of their batch, bans and penalties act, and draws follow the distribution.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "server/engine/sampler.h"

using namespace svdq::engine;

namespace {

// The reference: one row, host loops.
int32_t Reference(std::vector<float> x, const SampleRow& r) {
  const SamplingParams& p = *r.params;
  const int64_t n = static_cast<int64_t>(x.size());
  if (p.repetition_penalty != 1.f) {
    std::vector<bool> seen(n, false);
    for (const auto* list : {r.history.prompt, r.history.output})
      if (list)
        for (int32_t t : *list) seen[t] = true;
    for (int64_t t = 0; t < n; ++t)
      if (seen[t]) x[t] = x[t] > 0 ? x[t] / p.repetition_penalty : x[t] * p.repetition_penalty;
  }
  if (r.history.output) {
    std::vector<int> count(n, 0);
    for (int32_t t : *r.history.output) ++count[t];
    for (int64_t t = 0; t < n; ++t)
      if (count[t]) x[t] -= p.presence_penalty + p.frequency_penalty * count[t];
  }
  for (int32_t t : r.banned) x[t] = -INFINITY;
  if (p.temperature <= 0.f) return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  const int64_t keep = (p.top_k > 0 && p.top_k < n) ? p.top_k : n;
  std::vector<double> prob(keep);
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i)
    sum += prob[i] = std::exp((static_cast<double>(x[idx[i]]) - x[idx[0]]) / static_cast<double>(p.temperature));
  for (auto& q : prob) q /= sum;
  int64_t cut = keep;
  if (p.top_p > 0.f && p.top_p < 1.f) {
    double cum = 0;
    for (int64_t i = 0; i < keep; ++i)
      if ((cum += prob[i]) >= p.top_p) {
        cut = i + 1;
        break;
      }
  }
  if (p.min_p > 0.f) {
    int64_t k = 1;
    while (k < cut && prob[k] >= p.min_p * prob[0]) ++k;
    cut = k;
  }
  const double target = r.u * std::accumulate(prob.begin(), prob.begin() + cut, 0.0);
  double cum = 0;
  for (int64_t i = 0; i < cut; ++i)
    if (target < (cum += prob[i])) return idx[i];
  return idx[cut - 1];
}

// use_state: three rows in four read their penalties from the device state (PenaltyState),
// filled from all but its last output token and then given that one by Add, as the engine
// does step by step; the reference still reads the host lists.
void CompareWithReference(at::Device device, bool use_state = false) {
  constexpr int kVocab = 300, kBatch = 24, kRounds = 20;
  PenaltyState state(kBatch, kVocab, device);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<SamplingParams> params(kBatch);
  std::vector<std::vector<int32_t>> prompts(kBatch), outputs(kBatch);
  int mismatches = 0, sampled = 0;
  for (int round = 0; round < kRounds; ++round) {
    at::Tensor logits = at::randn({kBatch, kVocab}, at::TensorOptions().dtype(at::kFloat)) * 3;
    std::vector<SampleRow> rows(kBatch);
    for (int b = 0; b < kBatch; ++b) {
      SamplingParams& p = params[b];
      p = SamplingParams();
      p.temperature = b % 4 == 0 ? 0.f : static_cast<float>(0.3 + 1.5 * unit(rng));
      if (b % 3 == 1) p.top_k = 1 + static_cast<int>(unit(rng) * 40);
      if (b % 5 == 2) p.top_p = static_cast<float>(0.2 + 0.7 * unit(rng));
      if (b % 7 == 3) p.min_p = static_cast<float>(0.3 * unit(rng));
      if (b % 2 == 1) p.repetition_penalty = static_cast<float>(1.0 + unit(rng));
      if (b % 6 == 5) p.presence_penalty = 0.5f, p.frequency_penalty = 0.25f;
      prompts[b].clear();
      outputs[b].clear();
      for (int i = 0; i < 10; ++i) prompts[b].push_back(static_cast<int32_t>(unit(rng) * kVocab));
      for (int i = 0; i < 6; ++i) outputs[b].push_back(static_cast<int32_t>(unit(rng) * 8));  // repeats
      rows[b].params = &params[b];
      rows[b].history = TokenHistory{&prompts[b], &outputs[b]};
      if (b % 8 == 7) rows[b].banned = {static_cast<int32_t>(logits[b].argmax().item<int64_t>())};
      rows[b].u = unit(rng);
      if (use_state && b % 4 != 0) {  // the penalized rows are odd (repetition) and b % 6 == 5
        const std::vector<int32_t> earlier(outputs[b].begin(), outputs[b].end() - 1);
        state.Reset(b, static_cast<uint64_t>(round * kBatch + b), prompts[b], earlier);
        state.Add({b}, {outputs[b].back()});
        rows[b].penalty_lane = b;
      }
    }
    std::vector<int32_t> got = SampleBatch(logits.to(device), rows, use_state ? &state : nullptr);
    ASSERT_EQ(got.size(), static_cast<size_t>(kBatch));
    for (int b = 0; b < kBatch; ++b) {
      at::Tensor row = logits[b].contiguous();
      std::vector<float> x(row.data_ptr<float>(), row.data_ptr<float>() + kVocab);
      const int32_t want = Reference(x, rows[b]);
      sampled += params[b].temperature > 0.f;
      if (got[b] != want) {
        ++mismatches;
        ADD_FAILURE() << "round " << round << " row " << b << ": got " << got[b] << ", reference " << want
                      << " (temperature " << params[b].temperature << ", top_k " << params[b].top_k << ", top_p "
                      << params[b].top_p << ", min_p " << params[b].min_p << ", u " << rows[b].u << ")";
      }
      for (int32_t t : rows[b].banned) EXPECT_NE(got[b], t);
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(sampled, kRounds * kBatch / 2);
}

// Each row alone gives what it gave inside the batch.
void RowsIndependent(at::Device device) {
  constexpr int kVocab = 500, kBatch = 9;
  at::Tensor logits = (at::randn({kBatch, kVocab}) * 2).to(device);
  std::vector<SamplingParams> params(kBatch);
  std::vector<SampleRow> rows(kBatch);
  for (int b = 0; b < kBatch; ++b) {
    params[b].temperature = b == 0 ? 0.f : 0.9f;
    params[b].top_p = 0.95f;
    rows[b].params = &params[b];
    rows[b].u = (b + 0.5) / kBatch;
  }
  std::vector<int32_t> all = SampleBatch(logits, rows);
  for (int b = 0; b < kBatch; ++b) EXPECT_EQ(SampleBatch(logits.narrow(0, b, 1), {rows[b]})[0], all[b]) << b;
}

// Draws over many u follow softmax(x / T) restricted to the top k.
void FollowsDistribution(at::Device device) {
  const std::vector<float> x = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 4;
  constexpr int kDraws = 4000;
  at::Tensor logits = at::tensor(x).unsqueeze(0).expand({kDraws, 6}).contiguous().to(device);
  std::vector<SampleRow> rows(kDraws);
  std::mt19937_64 rng(3);
  for (auto& r : rows) {
    r.params = &p;
    r.u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  }
  std::vector<int32_t> got = SampleBatch(logits, rows);
  std::vector<int> count(6, 0);
  for (int32_t t : got) ++count.at(t);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += std::exp(x[i] / p.temperature);
  for (int i = 0; i < 6; ++i) {
    const double want = i < 4 ? std::exp(x[i] / p.temperature) / z : 0.0;
    const double sd = std::sqrt(want * (1 - want) / kDraws);
    EXPECT_NEAR(count[i] / static_cast<double>(kDraws), want, 5 * sd + 1e-9) << "token " << i;
  }
}

// A row whose logits hold a NaN or an infinity gets kNonFiniteLogits; the other rows are
// sampled as usual, including one whose bans put -inf in (after the check).
void FlagsNonFiniteRows(at::Device device) {
  const int64_t V = 50;
  at::manual_seed(5);
  at::Tensor logits = at::randn({5, V});
  logits[1][7] = std::numeric_limits<float>::quiet_NaN();
  logits[2][0] = std::numeric_limits<float>::infinity();
  logits[3][9] = -std::numeric_limits<float>::infinity();
  SamplingParams greedy, hot;
  hot.temperature = 0.7f;
  std::vector<SampleRow> rows(5);
  for (int b = 0; b < 5; ++b) rows[b].params = b == 4 ? &hot : &greedy;
  rows[4].u = 0.3;
  const int32_t top0 = static_cast<int32_t>(logits[0].argmax().item<int64_t>());
  rows[0].banned = {top0 == 0 ? 1 : 0};  // a ban is not a non-finite logit
  std::vector<int32_t> got = SampleBatch(logits.to(device), rows);
  EXPECT_EQ(got[0], top0);
  EXPECT_EQ(got[1], kNonFiniteLogits);
  EXPECT_EQ(got[2], kNonFiniteLogits);
  EXPECT_EQ(got[3], kNonFiniteLogits);  // -inf straight from the model counts too
  EXPECT_GE(got[4], 0);
  EXPECT_LT(got[4], V);
}

bool HaveCuda() { return at::hasCUDA(); }

}  // namespace

TEST(SamplerCpu, MatchesReference) { CompareWithReference(at::kCPU); }
TEST(SamplerCpu, DeviceStatePenaltiesMatchReference) { CompareWithReference(at::kCPU, /*use_state=*/true); }
TEST(SamplerCpu, RowsAreIndependent) { RowsIndependent(at::kCPU); }
TEST(SamplerCpu, FollowsTheDistribution) { FollowsDistribution(at::kCPU); }
TEST(SamplerCpu, FlagsNonFiniteRows) { FlagsNonFiniteRows(at::kCPU); }

TEST(SamplerCuda, MatchesReference) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  CompareWithReference(at::Device(at::kCUDA));
}
TEST(SamplerCuda, DeviceStatePenaltiesMatchReference) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  CompareWithReference(at::Device(at::kCUDA), /*use_state=*/true);
}
TEST(SamplerCuda, RowsAreIndependent) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  RowsIndependent(at::Device(at::kCUDA));
}
TEST(SamplerCuda, FollowsTheDistribution) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  FollowsDistribution(at::Device(at::kCUDA));
}
TEST(SamplerCuda, FlagsNonFiniteRows) {
  if (!HaveCuda()) GTEST_SKIP() << "no CUDA device";
  FlagsNonFiniteRows(at::Device(at::kCUDA));
}
