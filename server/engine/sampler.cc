// The batched sampler. Penalties come from the per-lane device state (PenaltyState) or, for
// rows without one, from index lists built on the host; bans from host lists (one copy each); the sampling rows are sorted once on the
// device, and top-k, top-p and min-p become one prefix mask over the sorted row.
#include "server/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace svdq::engine {
namespace {

// Through pinned memory without blocking: the forward that made the logits may still run.
at::Tensor OnDevice(const at::Tensor& host, at::Device d) {
  return d.is_cuda() ? host.pin_memory().to(d, /*non_blocking=*/true) : host.to(d);
}
at::Tensor OnDevice(const std::vector<int64_t>& v, at::Device d) { return OnDevice(at::tensor(v, at::kLong), d); }
at::Tensor OnDevice(const std::vector<double>& v, at::Device d) { return OnDevice(at::tensor(v, at::kDouble), d); }

// Penalties of the rows that read the device state, on the device: the same arithmetic as the
// host lists below (repetition: x / p where x > 0, x * p elsewhere, on seen tokens; presence
// and frequency: x - float(presence + frequency * count) on tokens in the output).
void ApplyStatePenalties(at::Tensor& x, const std::vector<SampleRow>& rows, const PenaltyState& st) {
  std::vector<int64_t> idx, lanes;
  std::vector<double> rep, presence, frequency;
  for (size_t b = 0; b < rows.size(); ++b) {
    if (rows[b].penalty_lane < 0) continue;
    const SamplingParams& p = *rows[b].params;
    idx.push_back(static_cast<int64_t>(b));
    lanes.push_back(rows[b].penalty_lane);
    rep.push_back(p.repetition_penalty);
    presence.push_back(p.presence_penalty);
    frequency.push_back(p.frequency_penalty);
  }
  if (idx.empty()) return;
  const at::Device d = x.device();
  at::Tensor rows_t = OnDevice(idx, d), lanes_t = OnDevice(lanes, d);
  at::Tensor v = x.index_select(0, rows_t);
  at::Tensor seen = st.seen().index_select(0, lanes_t), count = st.count().index_select(0, lanes_t);
  at::Tensor pen = OnDevice(rep, d).to(at::kFloat).unsqueeze(1);
  v = at::where(seen & (pen != 1.f), at::where(v > 0, v / pen, v * pen), v);
  at::Tensor add = (OnDevice(presence, d).unsqueeze(1) + OnDevice(frequency, d).unsqueeze(1) * count.to(at::kDouble));
  v = at::where(count > 0, v + (-add).to(at::kFloat), v);
  x.index_copy_(0, rows_t, v);
}

// Adds penalties and bans to x [B, V] fp32 in place (rows with a penalty_lane: bans only).
void ApplyPenalties(at::Tensor& x, const std::vector<SampleRow>& rows) {
  const int64_t V = x.size(1);
  auto valid = [V](int32_t t) { return t >= 0 && t < V; };
  std::vector<int64_t> rep_idx, add_idx, ban_idx;
  std::vector<double> rep_pen, add_val;
  for (size_t b = 0; b < rows.size(); ++b) {
    const SamplingParams& p = *rows[b].params;
    const int64_t base = static_cast<int64_t>(b) * V;
    for (int32_t t : rows[b].banned)
      if (valid(t)) ban_idx.push_back(base + t);
    if (rows[b].penalty_lane >= 0) continue;  // on the device (ApplyStatePenalties)
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

PenaltyState::PenaltyState(int lanes, int64_t vocab, at::Device device)
    : seen_(at::zeros({lanes, vocab}, at::TensorOptions().device(device).dtype(at::kBool))),
      count_(at::zeros({lanes, vocab}, at::TensorOptions().device(device).dtype(at::kInt))),
      owner_(static_cast<size_t>(lanes), kNoOwner) {}

void PenaltyState::Reset(int lane, uint64_t owner, const std::vector<int32_t>& prompt,
                         const std::vector<int32_t>& output) {
  const int64_t V = seen_.size(1);
  std::vector<int64_t> all, out;
  for (int32_t t : prompt)
    if (t >= 0 && t < V) all.push_back(t);
  for (int32_t t : output)
    if (t >= 0 && t < V) all.push_back(t), out.push_back(t);
  at::Tensor s = seen_[lane], c = count_[lane];
  s.zero_();
  c.zero_();
  const at::Device d = seen_.device();
  if (!all.empty()) s.index_fill_(0, OnDevice(all, d), true);
  if (!out.empty()) c.index_put_({OnDevice(out, d)}, at::ones({static_cast<int64_t>(out.size())}, c.options()), true);
  owner_[static_cast<size_t>(lane)] = owner;
}

void PenaltyState::Add(const std::vector<int>& lanes, const std::vector<int32_t>& tokens) {
  const int64_t V = seen_.size(1);
  std::vector<int64_t> flat;
  for (size_t i = 0; i < lanes.size() && i < tokens.size(); ++i)
    if (tokens[i] >= 0 && tokens[i] < V) flat.push_back(static_cast<int64_t>(lanes[i]) * V + tokens[i]);
  if (flat.empty()) return;
  at::Tensor idx = OnDevice(flat, seen_.device());
  seen_.view({-1}).index_fill_(0, idx, true);
  count_.view({-1}).index_put_({idx}, at::ones({static_cast<int64_t>(flat.size())}, count_.options()), true);
}

at::Tensor SampleIds(const at::Tensor& logits, const std::vector<SampleRow>& rows, const PenaltyState* state) {
  const int64_t B = static_cast<int64_t>(rows.size());
  if (logits.dim() != 2 || logits.size(0) != B) throw std::invalid_argument("SampleBatch: one logits row per entry");
  const at::Device d = logits.device();
  // Penalties and bans write into x; without them the logits are read as they are (no copy).
  bool writes = false;
  for (const SampleRow& r : rows) {
    if (r.penalty_lane >= 0 && !state) throw std::invalid_argument("SampleBatch: a penalty_lane needs the state");
    const SamplingParams& p = *r.params;
    writes = writes || r.penalty_lane >= 0 || !r.banned.empty() || p.repetition_penalty != 1.f ||
             p.presence_penalty != 0.f || p.frequency_penalty != 0.f;
  }
  at::Tensor x = logits.to(at::kFloat).contiguous();
  if (writes) x = x.clone();
  const at::Tensor finite = at::isfinite(x).all(-1);  // before bans put -inf in
  if (state) ApplyStatePenalties(x, rows, *state);
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
  return chosen.to(at::kLong);
}

std::vector<int32_t> SampleBatch(const at::Tensor& logits, const std::vector<SampleRow>& rows,
                                 const PenaltyState* state) {
  at::Tensor host = SampleIds(logits, rows, state).to(at::kCPU).contiguous();
  return std::vector<int32_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
}

}  // namespace svdq::engine
