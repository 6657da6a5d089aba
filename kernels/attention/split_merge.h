// The last step of a split-KV (flash-decoding) attention: each split of a sequence's keys
// leaves, per query head, its unnormalised output acc [W], its running maximum m (natural-log
// units, -inf where the split saw no key) and its sum l; the merge rescales them to one
// maximum and divides: out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
// Shared by the bf16 paged decode kernel and the SVDq attention kernels.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/common/status.h"

namespace svdq::kernels {

// ws: [rows, splits, width + 2] (acc, m, l); out: [rows, width] fp32. Rows with no key get 0.
Status MergeSplits(const float* ws, float* out, int rows, int splits, int width, cudaStream_t stream);

// Split planning by waves, for a grid of units x s blocks of which `slots` are resident at
// once (multiprocessors x blocks per multiprocessor): the s in [1, max_splits] that minimises
// ceil(units s / slots) x (ceil(work / s) rounded up to `align`, + overhead), work and overhead
// in the same unit (tokens or pages); ties go to fewer splits. A split count that leaves the
// last wave nearly empty costs a whole wave: "about four blocks per SM" is not a plan.
int PlanSplitsByWaves(int64_t units, int64_t work, int64_t slots, int64_t align, int64_t overhead, int max_splits);

}  // namespace svdq::kernels
