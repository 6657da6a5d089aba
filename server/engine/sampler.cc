// The batched sampler. Penalties and bans are scattered into the [B, vocab] logits with
// index lists built on the host (one copy each); the sampling rows are sorted once on the
// device, and top-k, top-p and min-p become one prefix mask over the sorted row.
#include "server/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace svdq::engine {
namespace {

// Through pinned memory without blocking: the forward that made the logits may still run.
at::Tensor OnDevice(const at::Tensor& host, at::Device d) {
  return d.is_cuda() ? host.pin_memory().to(d, /*non_blocking=*/true) : host.to(d);
}
at::Tensor OnDevice(const std::vector<int64_t>& v, at::Device d) { return OnDevice(at::tensor(v, at::kLong), d); }
at::Tensor OnDevice(const std::vector<double>& v, at::Device d) { return OnDevice(at::tensor(v, at::kDouble), d); }

// Adds penalties and bans to x [B, V] fp32 in place.
void ApplyPenalties(at::Tensor& x, const std::vector<SampleRow>& rows) {
  const int64_t V = x.size(1);
  auto valid = [V](int32_t t) { return t >= 0 && t < V; };
  std::vector<int64_t> rep_idx, add_idx, ban_idx;
  std::vector<double> rep_pen, add_val;
  for (size_t b = 0; b < rows.size(); ++b) {
    const SamplingParams& p = *rows[b].params;
    const int64_t base = static_cast<int64_t>(b) * V;
    if (p.repetition_penalty != 1.f) {
      std::vector<int32_t> seen;
      for (const auto* list : {rows[b].history.prompt, rows[b].history.output})
        if (list) seen.insert(seen.end(), list->begin(), list->end());
      std::sort(seen.begin(), seen.end());
      seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
      for (int32_t t : seen)
        if (valid(t)) {
          rep_idx.push_back(base + t);
          rep_pen.push_back(p.repetition_penalty);
        }
    }
    if ((p.presence_penalty != 0.f || p.frequency_penalty != 0.f) && rows[b].history.output) {
      std::vector<int32_t> out(*rows[b].history.output);
      std::sort(out.begin(), out.end());
      for (size_t i = 0; i < out.size();) {
        size_t j = i;
        while (j < out.size() && out[j] == out[i]) ++j;
        if (valid(out[i])) {
          add_idx.push_back(base + out[i]);
          add_val.push_back(-(static_cast<double>(p.presence_penalty) +
                              static_cast<double>(p.frequency_penalty) * static_cast<double>(j - i)));
        }
        i = j;
      }
    }
    for (int32_t t : rows[b].banned)
      if (valid(t)) ban_idx.push_back(base + t);
  }
  at::Tensor flat = x.view({-1});
  const at::Device d = x.device();
  if (!rep_idx.empty()) {
    at::Tensor idx = OnDevice(rep_idx, d), pen = OnDevice(rep_pen, d).to(at::kFloat);
    at::Tensor v = flat.index_select(0, idx);
    flat.index_copy_(0, idx, at::where(v > 0, v / pen, v * pen));
  }
  if (!add_idx.empty()) flat.index_add_(0, OnDevice(add_idx, d), OnDevice(add_val, d).to(at::kFloat));
  if (!ban_idx.empty()) flat.index_fill_(0, OnDevice(ban_idx, d), -std::numeric_limits<float>::infinity());
}

}  // namespace

std::vector<int32_t> SampleBatch(const at::Tensor& logits, const std::vector<SampleRow>& rows) {
  const int64_t B = static_cast<int64_t>(rows.size());
  if (logits.dim() != 2 || logits.size(0) != B) throw std::invalid_argument("SampleBatch: one logits row per entry");
  const at::Device d = logits.device();
  at::Tensor x = logits.to(at::kFloat).contiguous().clone();
  const at::Tensor finite = at::isfinite(x).all(-1);  // before bans put -inf in
  ApplyPenalties(x, rows);
  at::Tensor chosen = x.argmax(-1);  // greedy rows keep this

  std::vector<int64_t> srows, top_k;
  std::vector<double> temp, top_p, min_p, u;
  const int64_t V = x.size(1);
  for (int64_t b = 0; b < B; ++b) {
    const SamplingParams& p = *rows[b].params;
    if (p.temperature <= 0.f) continue;
    srows.push_back(b);
    temp.push_back(p.temperature);
    top_k.push_back(p.top_k > 0 && p.top_k < V ? p.top_k : V);
    top_p.push_back(p.top_p > 0.f && p.top_p < 1.f ? p.top_p : std::numeric_limits<double>::infinity());
    min_p.push_back(p.min_p > 0.f ? p.min_p : 0.0);
    u.push_back(rows[b].u);
  }
  if (!srows.empty()) {
    at::Tensor rows_t = OnDevice(srows, d);
    // Sorted descending, ties by lower id (a stable sort of the negated row).
    auto [neg_sorted, order] = at::sort(-x.index_select(0, rows_t), /*stable=*/true, /*dim=*/-1, /*descending=*/false);
    at::Tensor z = (-neg_sorted).to(at::kDouble) / OnDevice(temp, d).unsqueeze(1);
    at::Tensor rank = at::arange(V, z.options().dtype(at::kLong)).unsqueeze(0);
    z = z.masked_fill(rank >= OnDevice(top_k, d).unsqueeze(1), -std::numeric_limits<double>::infinity());
    at::Tensor prob = at::softmax(z, -1);
    at::Tensor before = at::cumsum(prob, -1) - prob;  // mass of the tokens ranked above
    at::Tensor keep = (before < OnDevice(top_p, d).unsqueeze(1)) &
                      (prob >= OnDevice(min_p, d).unsqueeze(1) * prob.narrow(1, 0, 1)) & (prob > 0);
    keep.narrow(1, 0, 1).fill_(true);
    // The mask is a prefix of the sorted row: keep the first n tokens, draw among them.
    at::Tensor n = keep.to(at::kLong).cumprod(-1).sum(-1, /*keepdim=*/true);
    at::Tensor q = prob.masked_fill(rank >= n, 0.0);
    at::Tensor cum = at::cumsum(q, -1);
    at::Tensor target = OnDevice(u, d).unsqueeze(1) * cum.narrow(1, V - 1, 1);
    at::Tensor pos = at::minimum((cum <= target).to(at::kLong).sum(-1, /*keepdim=*/true), n - 1);
    chosen.index_copy_(0, rows_t, order.gather(1, pos).squeeze(1));
  }
  chosen.masked_fill_(finite.logical_not(), kNonFiniteLogits);  // read back with the ids: no extra sync
  at::Tensor host = chosen.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int32_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + B);
}

}  // namespace svdq::engine
