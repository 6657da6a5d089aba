// SVDq bit schedules ("8,2,0,0,0,0,0,0") and the page layout they imply.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common/status.h"
#include "kernels/svdq/svdq_params.h"

namespace svdq::kernels {

struct Schedule {
  int bits[kSvdqGroups] = {};
  double EquivalentBits() const;  // mean of the schedule: the paper's figure
  std::string ToString() const;
};

// Accepts exactly eight comma-separated widths from {0, 1, 2, 3, 4, 8}, at least one
// non-zero. Errors name the offending part.
Status ParseSchedule(const std::string& text, Schedule* out);

// width must be a positive multiple of 8 (and at most 1024); page_size in [1, 1024].
Status MakeLayout(int width, int page_size, const Schedule& s, SvdqLayout* out);

// Stored bits per key element of a sequence of `tokens` tokens in this layout, with the
// per-sequence basis (width x r fp32... counted as stored: fp16 width x r) and mean
// (fp16 width) amortized over the sequence; codes, scales and zeros as laid out.
double StoredBitsPerElement(const SvdqLayout& l, long tokens, bool count_basis);

// The latent channels a layout keeps (groups with bits > 0), ascending: the basis columns of
// SvdqAttentionParams::basis_half, in its order.
std::vector<int64_t> RetainedChannels(const SvdqLayout& l);

}  // namespace svdq::kernels
