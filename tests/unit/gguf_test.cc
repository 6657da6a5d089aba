// GGUF reader and dequantizer tests on hand-built files: valid files read back exactly,
// and every kind of corruption ends in FormatError, never a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "models/dequant.h"
#include "models/gguf.h"
#include "tests/unit/gguf_writer.h"

using namespace svdq::models;
using svdq::testing::GgufWriter;

namespace {

std::string TempPath(const std::string& tag) {
  return ::testing::TempDir() + "/svdq_" + tag + "_" + std::to_string(::getpid()) + ".gguf";
}

std::vector<uint8_t> F32Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

GgufWriter SmallFile() {
  GgufWriter w;
  w.KvString("general.architecture", "llama");
  w.KvU32("llama.block_count", 2);
  w.Tensor("a", {4, 2}, 0, F32Bytes({1, 2, 3, 4, 5, 6, 7, 8}));
  w.Tensor("b", {3}, 0, F32Bytes({-1, 0.5f, 2}));
  return w;
}

TEST(Gguf, ReadsMetadataAndTensors) {
  std::string p = TempPath("ok");
  GgufWriter::Save(p, SmallFile().Build());
  auto f = GgufFile::Open(p);
  EXPECT_EQ(f->GetString("general.architecture", ""), "llama");
  EXPECT_EQ(f->GetInt("llama.block_count", 0), 2);
  EXPECT_EQ(f->GetInt("missing", 7), 7);
  ASSERT_EQ(f->tensors().size(), 2u);
  const GgufTensorInfo* b = f->FindTensor("b");
  ASSERT_NE(b, nullptr);
  std::vector<float> out(3);
  Dequantize(b->type, f->TensorData(*b), out.data(), 3);
  EXPECT_EQ(out, (std::vector<float>{-1, 0.5f, 2}));
  EXPECT_EQ(f->FindTensor("a")->dims, (std::vector<int64_t>{4, 2}));
  EXPECT_THROW(f->Get("nope"), FormatError);
  EXPECT_THROW(f->GetString("llama.block_count", ""), FormatError);
  std::remove(p.c_str());
}

TEST(Gguf, EveryTruncationIsAFormatError) {
  std::vector<uint8_t> full = SmallFile().Build();
  std::string p = TempPath("trunc");
  // Cut the file at every length short of the last tensor's end (12 bytes into its
  // 32-byte padded slot): the reader must reject each one cleanly.
  const size_t data_end = full.size() - 32 + 12;
  for (size_t n = 1; n < data_end; ++n) {
    GgufWriter::Save(p, std::vector<uint8_t>(full.begin(), full.begin() + n));
    EXPECT_THROW(GgufFile::Open(p), FormatError) << "length " << n;
  }
  std::remove(p.c_str());
}

TEST(Gguf, RejectsBadMagicVersionAndMissingFile) {
  std::vector<uint8_t> full = SmallFile().Build();
  std::string p = TempPath("bad");
  auto bad = full;
  bad[0] = 'X';
  GgufWriter::Save(p, bad);
  EXPECT_THROW(GgufFile::Open(p), FormatError);
  bad = full;
  bad[4] = 9;  // version 9
  GgufWriter::Save(p, bad);
  EXPECT_THROW(GgufFile::Open(p), FormatError);
  EXPECT_THROW(GgufFile::Open(p + ".does-not-exist"), FormatError);
  std::remove(p.c_str());
}

TEST(Gguf, RejectsUnknownTensorType) {
  GgufWriter w;
  w.Tensor("x", {32}, 77, std::vector<uint8_t>(64, 0));
  std::string p = TempPath("type");
  GgufWriter::Save(p, w.Build());
  EXPECT_THROW(GgufFile::Open(p), FormatError);
  std::remove(p.c_str());
}

TEST(Gguf, FromBufferReadsInPlace) {
  const std::vector<uint8_t> bytes = SmallFile().Build();
  auto f = GgufFile::FromBuffer(bytes.data(), bytes.size(), "in-memory.gguf");
  EXPECT_EQ(f->path(), "in-memory.gguf");
  const GgufTensorInfo* b = f->FindTensor("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(f->TensorData(*b), bytes.data() + bytes.size() - 32);  // the last 32-byte slot
  std::vector<uint8_t> cut(bytes.begin(), bytes.end() - 32);
  EXPECT_THROW(GgufFile::FromBuffer(cut.data(), cut.size(), "cut.gguf"), FormatError);
}

// Found by fuzz/gguf_fuzz.cc: every dimension is allowed (<= 2^40) but their product (2^83)
// overflowed int64 in numel(), wrapped to 0 elements and 0 bytes, and the tensor was accepted.
TEST(Gguf, RejectsTensorsWithTooManyElements) {
  GgufWriter w;
  w.Tensor("x", {1ull << 40, 1ull << 40, 8}, 0, std::vector<uint8_t>(32, 0));
  const std::vector<uint8_t> bytes = w.Build();
  try {
    GgufFile::FromBuffer(bytes.data(), bytes.size(), "huge.gguf");
    ADD_FAILURE() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor x has too many elements"), std::string::npos) << e.what();
  }
}

TEST(Dequant, HalfConversion) {
  EXPECT_EQ(HalfToFloat(0x3C00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xC000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x0000), 0.0f);
  EXPECT_FLOAT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7C00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7E00)));
  EXPECT_EQ(BF16ToFloat(0x3F80), 1.0f);
}

TEST(Dequant, Q4_1BlockByHand) {
  // d = 0.5, m = -1; nibble j of byte k: low nibbles are elements 0..15, high 16..31.
  std::vector<uint8_t> b(20);
  uint16_t d = 0x3800, m = 0xBC00;
  std::memcpy(&b[0], &d, 2);
  std::memcpy(&b[2], &m, 2);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>((j & 0xF) | ((15 - j) << 4));
  std::vector<float> y(32);
  Dequantize(GgmlType::Q4_1, b.data(), y.data(), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_FLOAT_EQ(y[j], j * 0.5f - 1.f);
    EXPECT_FLOAT_EQ(y[j + 16], (15 - j) * 0.5f - 1.f);
  }
  EXPECT_THROW(Dequantize(GgmlType::Q4_1, b.data(), y.data(), 31), FormatError);
  EXPECT_THROW(Dequantize(GgmlType::Q2_K, b.data(), y.data(), 256), FormatError);
}

}  // namespace
