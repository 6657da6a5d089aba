#include "kernels/svdq/schedule.h"

#include <sstream>

namespace svdq::kernels {

double Schedule::EquivalentBits() const {
  double s = 0;
  for (int b : bits) s += b;
  return s / kSvdqGroups;
}

std::string Schedule::ToString() const {
  std::string s;
  for (int g = 0; g < kSvdqGroups; ++g) s += (g ? "," : "") + std::to_string(bits[g]);
  return s;
}

Status ParseSchedule(const std::string& text, Schedule* out) {
  Schedule s;
  std::stringstream ss(text);
  std::string part;
  int n = 0;
  while (std::getline(ss, part, ',')) {
    if (n >= kSvdqGroups) return Status::Invalid("schedule '" + text + "' has more than 8 groups");
    size_t pos = 0;
    int b = -1;
    try {
      b = std::stoi(part, &pos);
    } catch (...) {
      pos = 0;
    }
    if (part.empty() || pos != part.size())
      return Status::Invalid("schedule '" + text + "': group " + std::to_string(n) + " ('" + part + "') is not a number");
    if (b != 0 && b != 1 && b != 2 && b != 3 && b != 4 && b != 8)
      return Status::Invalid("schedule '" + text + "': group " + std::to_string(n) + " has " + std::to_string(b) +
                             " bits; allowed are 0, 1, 2, 3, 4, 8");
    s.bits[n++] = b;
  }
  if (!text.empty() && text.back() == ',') return Status::Invalid("schedule '" + text + "' ends with a comma");
  if (n != kSvdqGroups)
    return Status::Invalid("schedule '" + text + "' has " + std::to_string(n) + " groups; it needs exactly 8");
  if (s.EquivalentBits() == 0) return Status::Invalid("schedule '" + text + "' keeps no channel");
  *out = s;
  return Status::Ok();
}

Status MakeLayout(int width, int page_size, const Schedule& s, SvdqLayout* out) {
  if (width <= 0 || width % kSvdqGroups != 0 || width > 1024)
    return Status::Invalid("latent width " + std::to_string(width) + " must be a positive multiple of 8, at most 1024");
  if (page_size < 1 || page_size > 1024)
    return Status::Invalid("page size " + std::to_string(page_size) + " must be in [1, 1024]");
  SvdqLayout l;
  l.width = width;
  l.page_size = page_size;
  l.group_size = width / kSvdqGroups;
  int offset = 0, retained = 0;
  for (int g = 0; g < kSvdqGroups; ++g) {
    l.bits[g] = s.bits[g];
    l.group_offset[g] = offset;
    l.retained_before[g] = retained;
    if (s.bits[g] > 0) {
      long bits = static_cast<long>(page_size) * l.group_size * s.bits[g];
      offset += static_cast<int>((bits + 31) / 32 * 4);
      retained += l.group_size;
    }
  }
  l.retained = retained;
  l.code_bytes = offset;
  l.scale_offset = offset;
  l.zero_offset = offset + 2 * retained;
  l.page_bytes = (l.zero_offset + 2 * retained + 15) / 16 * 16;
  *out = l;
  return Status::Ok();
}

double StoredBitsPerElement(const SvdqLayout& l, long tokens, bool count_basis) {
  if (tokens <= 0) return 0;
  long pages = (tokens + l.page_size - 1) / l.page_size;
  double bytes = static_cast<double>(pages) * l.page_bytes;
  if (count_basis) bytes += 2.0 * l.width * l.retained + 2.0 * l.width;  // fp16 basis V_r and mean
  return bytes * 8.0 / (static_cast<double>(tokens) * l.width);
}

std::vector<int64_t> RetainedChannels(const SvdqLayout& l) {
  std::vector<int64_t> kept;
  for (int c = 0; c < l.width; ++c)
    if (l.RetainedIndex(c) >= 0) kept.push_back(c);
  return kept;
}

}  // namespace svdq::kernels
