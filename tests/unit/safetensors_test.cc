// Safetensors reader tests on files built in memory (SafetensorsFile::FromBuffer, the parser
// Open runs on a mapped file): a valid file reads back in place, and shapes that would not fit
// an int64 are refused. Whole checkpoints and malformed files through the CLI:
// tests/integration/test_hf_models.py; arbitrary bytes: fuzz/safetensors_fuzz.cc.
#include <gtest/gtest.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "models/gguf.h"  // FormatError
#include "models/safetensors.h"

using namespace svdq::models;
using nlohmann::json;

namespace {

// The 8-byte length, `header` padded with spaces to 8 bytes, then `data_bytes` bytes of data.
std::string File(const json& header, size_t data_bytes) {
  std::string h = header.dump();
  while (h.size() % 8) h.push_back(' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((h.size() >> (8 * i)) & 0xFF);
  return out + h + std::string(data_bytes, '\x01');
}

std::unique_ptr<SafetensorsFile> Read(const std::string& bytes) {
  return SafetensorsFile::FromBuffer(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "mem.safetensors");
}

TEST(Safetensors, FromBufferReadsInPlace) {
  const std::string bytes = File({{"__metadata__", {{"format", "pt"}}},
                                  {"a", {{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}},
                                  {"b", {{"dtype", "BF16"}, {"shape", {3}}, {"data_offsets", {16, 22}}}}},
                                 22);
  auto f = Read(bytes);
  ASSERT_EQ(f->tensors().size(), 2u);
  const StTensor& b = f->tensors().at("b");
  EXPECT_EQ(b.shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(b.nbytes, 6u);
  EXPECT_EQ(b.data, reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size() - 6);
  EXPECT_THROW(Read(bytes.substr(0, bytes.size() - 1)), FormatError);  // b runs past the end
}

// fuzz/safetensors_fuzz.cc's check that every dimension is >= 0 fails on this (a crafted input;
// random runs did not reach it): after a zero, the size check (numel x dtype = bytes) saw
// nothing wrong with 2^64 - 1, which was stored as -1.
TEST(Safetensors, RefusesDimensionsBeyondInt64) {
  try {
    Read(File({{"a", {{"dtype", "F32"}, {"shape", {0, UINT64_MAX}}, {"data_offsets", {0, 0}}}}}, 0));
    ADD_FAILURE() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor a: shape entries must be non-negative integers"), std::string::npos)
        << e.what();
  }
  auto f = Read(File({{"a", {{"dtype", "F32"}, {"shape", {0, INT64_MAX}}, {"data_offsets", {0, 0}}}}}, 0));
  EXPECT_EQ(f->tensors().at("a").numel(), 0);
}

}  // namespace
