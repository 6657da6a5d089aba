// Token sampling for a whole batch at once, on the logits' device: penalties, banned ids,
// then greedy or temperature sampling with top-k, top-p and min-p. One small host-to-device
// copy of the per-row settings and one device-to-host copy of the chosen ids per step.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "server/engine/request.h"

namespace svdq::engine {

// What the penalties look at: the prompt's and the output's tokens.
struct TokenHistory {
  const std::vector<int32_t>* prompt = nullptr;
  const std::vector<int32_t>* output = nullptr;
};

// The penalties' view of each running sequence's tokens, kept on the device so that a step
// does no host work per token of history: per lane, seen [V] (in the prompt or the output)
// and count [V] (times in the output). A sequence's row is filled once from its tokens when
// it starts on a lane (Reset), then one token per step is added (Add); a released lane's row
// belongs to no one until the next Reset.
class PenaltyState {
 public:
  PenaltyState(int lanes, int64_t vocab, at::Device device);
  // Whether `lane` holds sequence `owner`'s tokens.
  bool Holds(int lane, uint64_t owner) const { return owner_[static_cast<size_t>(lane)] == owner; }
  void Reset(int lane, uint64_t owner, const std::vector<int32_t>& prompt, const std::vector<int32_t>& output);
  void Add(const std::vector<int>& lanes, const std::vector<int32_t>& tokens);  // one token per lane
  void Release(int lane) { owner_[static_cast<size_t>(lane)] = kNoOwner; }
  const at::Tensor& seen() const { return seen_; }    // bool [lanes, V]
  const at::Tensor& count() const { return count_; }  // int32 [lanes, V]

 private:
  static constexpr uint64_t kNoOwner = ~0ull;
  at::Tensor seen_, count_;
  std::vector<uint64_t> owner_;
};

// One sequence's row of the batch.
struct SampleRow {
  const SamplingParams* params = nullptr;
  TokenHistory history;
  // >= 0: the penalties read this lane of SampleBatch's PenaltyState instead of `history`.
  int penalty_lane = -1;
  std::vector<int32_t> banned;  // ids that cannot be chosen (min_tokens)
  // A uniform draw in [0, 1) from the request's own generator: it alone decides among the
  // kept tokens, so a seeded request repeats on any device and in any batch. Unused when greedy.
  double u = 0;
};

// logits: [B, vocab] fp32 on any device, one row per entry of `rows`. Returns the chosen id
// of each row, or kNonFiniteLogits for a row whose logits hold a NaN or an infinity (the
// model failed on that sequence; nothing can be sampled from it). Rows are independent: a
// row's result does not depend on the others.
// Probabilities are computed in fp64 after an fp32 sort, so that the choice at a given
// draw is stable to rounding.
constexpr int32_t kNonFiniteLogits = -1;
// `state` is needed where a row has a penalty_lane.
std::vector<int32_t> SampleBatch(const at::Tensor& logits, const std::vector<SampleRow>& rows,
                                 const PenaltyState* state = nullptr);
// The same choice left on the logits' device (int64 [B], kNonFiniteLogits where SampleBatch
// says so), read by nobody yet: a decode step's ids feed the next step without a sync.
at::Tensor SampleIds(const at::Tensor& logits, const std::vector<SampleRow>& rows,
                     const PenaltyState* state = nullptr);

}  // namespace svdq::engine
