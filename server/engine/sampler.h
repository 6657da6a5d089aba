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

// One sequence's row of the batch.
struct SampleRow {
  const SamplingParams* params = nullptr;
  TokenHistory history;
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
std::vector<int32_t> SampleBatch(const at::Tensor& logits, const std::vector<SampleRow>& rows);

}  // namespace svdq::engine
