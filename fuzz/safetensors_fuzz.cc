// Fuzzes the safetensors reader (models/safetensors.cc through SafetensorsFile::FromBuffer, the
// parser Open runs on a mapped file): the 8-byte header length, the JSON header and its
// validation. Input: the bytes of a .safetensors file. Asserts: a malformed file ends in
// FormatError and nothing else escapes; no ASan/UBSan report; every tensor accepted lies in the
// data section after the header, its size is shape x dtype, data ranges do not overlap, and its
// bytes can be read (ASan sees each read).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "models/gguf.h"  // FormatError
#include "models/safetensors.h"

using namespace svdq::models;

namespace {
volatile uint8_t sink;  // keeps the reads of tensor bytes
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<SafetensorsFile> f;
  try {
    f = SafetensorsFile::FromBuffer(data, size, "fuzz.safetensors");
  } catch (const FormatError&) {
    return 0;
  }
  FUZZ_CHECK(size >= 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | data[i];
  const uint8_t* data_begin = data + 8 + header_len;
  std::vector<std::pair<const uint8_t*, const uint8_t*>> ranges;
  for (const auto& [name, t] : f->tensors()) {
    FUZZ_CHECK(name == t.name);
    FUZZ_CHECK(t.data >= data_begin && t.data <= data + size && t.nbytes <= static_cast<size_t>(data + size - t.data));
    for (int64_t d : t.shape) FUZZ_CHECK(d >= 0);
    FUZZ_CHECK(t.nbytes == static_cast<uint64_t>(t.numel()) * StDtypeBytes(t.dtype));
    uint8_t sum = 0;
    for (uint64_t k = 0; k < t.nbytes; ++k) sum ^= t.data[k];
    sink = sum;
    if (t.nbytes) ranges.emplace_back(t.data, t.data + t.nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) FUZZ_CHECK(ranges[i].first >= ranges[i - 1].second);
  return 0;
}
