// The calibrated basis file: round trip, and every corruption rejected with a message.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "models/basis_file.h"
#include "models/gguf.h"

using namespace svdq::models;

namespace {

BasisSet Sample() {
  BasisSet b;
  b.model_name = "test";
  b.model_file_bytes = 1234;
  b.layers = 2;
  b.units = 3;
  b.width = 8;
  b.tokens = 99;
  b.text = "/x";
  for (int k = 0; k < 6; ++k) {
    std::vector<float> mean(8), vec(64), sv(8);
    for (int i = 0; i < 8; ++i) mean[i] = k + 0.5f * i, sv[i] = 8.f - i;
    for (int i = 0; i < 64; ++i) vec[i] = (i * 7 + k) % 11 - 5.f;
    b.mean.push_back(mean);
    b.vectors.push_back(vec);
    b.singular_values.push_back(sv);
  }
  return b;
}

std::string Path(const char* tag) { return ::testing::TempDir() + "/svdq_basis_" + tag + "_" + std::to_string(::getpid()); }

std::string Slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void Spit(const std::string& p, const std::string& data) { std::ofstream(p, std::ios::binary) << data; }

TEST(BasisFile, RoundTrips) {
  std::string p = Path("ok");
  BasisSet b = Sample();
  WriteBasisFile(p, b);
  BasisSet r = ReadBasisFile(p);
  EXPECT_EQ(r.model_name, "test");
  EXPECT_EQ(r.model_file_bytes, 1234u);
  EXPECT_EQ(r.layers, 2);
  EXPECT_EQ(r.units, 3);
  EXPECT_EQ(r.width, 8);
  EXPECT_EQ(r.scope, "head");
  EXPECT_TRUE(r.centered);
  EXPECT_EQ(r.mean, b.mean);
  EXPECT_EQ(r.vectors, b.vectors);
  EXPECT_EQ(r.singular_values, b.singular_values);
  std::remove(p.c_str());
}

TEST(BasisFile, RejectsCorruptionTruncationAndOtherVersions) {
  std::string p = Path("bad");
  WriteBasisFile(p, Sample());
  const std::string good = Slurp(p);
  auto expect_error = [&](const std::string& data, const std::string& fragment) {
    Spit(p, data);
    try {
      ReadBasisFile(p);
      ADD_FAILURE() << "accepted a file that should fail with '" << fragment << "'";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x40;
  expect_error(flipped, "checksum");
  expect_error(good.substr(0, good.size() - 7), "checksum");
  expect_error(good.substr(0, 10), "not an SVDq basis file");
  std::string v2 = good;
  v2[8] = 2;
  expect_error(v2, "version 2");
  expect_error("garbage", "not an SVDq basis file");
  EXPECT_THROW(ReadBasisFile(p + ".missing"), FormatError);
  BasisSet inconsistent = Sample();
  inconsistent.vectors.pop_back();
  EXPECT_THROW(WriteBasisFile(p, inconsistent), FormatError);
  std::remove(p.c_str());
}

}  // namespace
