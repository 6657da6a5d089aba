// Token sampling from one row of logits: greedy, or temperature with top-k and top-p.
#pragma once

#include <ATen/ATen.h>

#include <random>

#include "server/engine/request.h"

namespace svdq::engine {

// logits: [vocab] fp32 on any device. Greedy when temperature == 0.
int32_t SampleToken(const at::Tensor& logits, const SamplingParams& p, std::mt19937_64* rng);

}  // namespace svdq::engine
