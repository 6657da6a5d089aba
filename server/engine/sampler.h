// Token sampling from one row of logits: greedy, or temperature with top-k and top-p.
#pragma once

#include <ATen/ATen.h>

#include <random>

#include "server/engine/request.h"

namespace svdq::engine {

// What the penalties look at: the prompt's and the output's tokens.
struct TokenHistory {
  const std::vector<int32_t>* prompt = nullptr;
  const std::vector<int32_t>* output = nullptr;
};

// logits: [vocab] fp32 on any device. Applies the penalties, bans `banned` ids, then takes
// the argmax (temperature 0) or samples with top-k, top-p and min-p.
int32_t SampleToken(const at::Tensor& logits, const SamplingParams& p, const TokenHistory& hist,
                    const std::vector<int32_t>& banned, std::mt19937_64* rng);

}  // namespace svdq::engine
