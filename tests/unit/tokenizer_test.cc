// Tokenizer tests on a tiny hand-made byte-level BPE vocabulary. Parity with Hugging
// Face `tokenizers` on the real model is checked in tests/integration.
#include <gtest/gtest.h>

#include "models/gguf.h"
#include "models/tokenizer.h"
#include "tests/common/byte_char.h"
#include "tests/unit/gguf_writer.h"

using namespace svdq::models;
using svdq::testing::ByteChar;
using svdq::testing::GgufWriter;

namespace {

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::string> tokens = {"<|end|>"};
    for (unsigned b = 0; b < 256; ++b) tokens.push_back(ByteChar(b));
    // Merges: "h e" -> he, "he l" -> hel, "Ġ h" -> Ġh (Ġ is the space stand-in).
    tokens.push_back("he");
    tokens.push_back("hel");
    tokens.push_back(ByteChar(' ') + "h");
    std::vector<int32_t> types(tokens.size(), 1);
    types[0] = 3;
    GgufWriter w;
    w.KvString("tokenizer.ggml.model", "gpt2");
    w.KvString("tokenizer.ggml.pre", "smollm");
    w.KvStrings("tokenizer.ggml.tokens", tokens);
    w.KvI32s("tokenizer.ggml.token_type", types);
    w.KvStrings("tokenizer.ggml.merges", {"h e", "he l", ByteChar(' ') + " h"});
    w.KvU32("tokenizer.ggml.eos_token_id", 0);
    path_ = ::testing::TempDir() + "/svdq_tok_" + std::to_string(::getpid()) + ".gguf";
    GgufWriter::Save(path_, w.Build());
    file_ = GgufFile::Open(path_);
    tok_ = Tokenizer::FromGguf(*file_);
  }
  void TearDown() override { std::remove(path_.c_str()); }
  int32_t Byte(unsigned b) { return static_cast<int32_t>(b) + 1; }
  std::string path_;
  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(TokenizerTest, MergesByRank) {
  EXPECT_EQ(tok_->Encode("hel"), (std::vector<int32_t>{258}));
  EXPECT_EQ(tok_->Encode("help"), (std::vector<int32_t>{258, Byte('p')}));
  // "h e" (rank 0) beats "Ġ h" (rank 2), and "Ġ he" is no merge.
  EXPECT_EQ(tok_->Encode(" he"), (std::vector<int32_t>{Byte(' '), 257}));
  EXPECT_EQ(tok_->Encode(" h"), (std::vector<int32_t>{259}));
}

TEST_F(TokenizerTest, SpecialTokensMatchWhole) {
  EXPECT_EQ(tok_->Encode("he<|end|>he"), (std::vector<int32_t>{257, 0, 257}));
  EXPECT_EQ(tok_->DecodeBytes({257, 0, 257}, /*skip_special=*/false), "he<|end|>he");
  EXPECT_EQ(tok_->DecodeBytes({257, 0, 257}, /*skip_special=*/true), "hehe");
}

TEST_F(TokenizerTest, DigitsAreSplitOneByOne) {
  EXPECT_EQ(tok_->Encode("123"), (std::vector<int32_t>{Byte('1'), Byte('2'), Byte('3')}));
}

TEST_F(TokenizerTest, RoundTripsArbitraryUtf8) {
  for (std::string s : {"hello world", "  two  spaces\n\n", "héllo wörld", "日本語のテキスト", "emoji 🤖🚀!",
                        "x = f(3) + 42;  // code", "'s 're it's", "\t\ttabs\r\n", ""}) {
    EXPECT_EQ(tok_->DecodeBytes(tok_->Encode(s), false), s);
  }
}

TEST_F(TokenizerTest, RejectsInvalidUtf8) {
  EXPECT_THROW(tok_->Encode("bad \xff byte"), TokenizerError);
  EXPECT_THROW(tok_->Encode("cut \xe6\x97"), TokenizerError);
  EXPECT_FALSE(IsValidUtf8("\xc0\x80"));  // overlong
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));  // surrogate
  EXPECT_TRUE(IsValidUtf8("ok é 日 🤖"));
}

TEST_F(TokenizerTest, IncrementalDetokenizerHoldsBackPartialCharacters) {
  // "日" is E6 97 A5: three byte tokens. Nothing may come out until the third.
  IncrementalDetokenizer d(*tok_);
  EXPECT_EQ(d.Push(Byte(0xE6)), "");
  EXPECT_EQ(d.Push(Byte(0x97)), "");
  EXPECT_EQ(d.Push(Byte(0xA5)), "日");
  EXPECT_EQ(d.Push(0), "");  // special tokens are skipped
  EXPECT_EQ(d.Push(Byte('a')), "a");
  EXPECT_EQ(d.Push(Byte(0xF0)), "");
  EXPECT_EQ(d.Flush(), "\xEF\xBF\xBD");  // an unfinished character at the end becomes U+FFFD
}

TEST(TokenizerLoad, RejectsUnsupportedModels) {
  GgufWriter w;
  w.KvString("tokenizer.ggml.model", "llama");
  std::string p = ::testing::TempDir() + "/svdq_tok_bad.gguf";
  GgufWriter::Save(p, w.Build());
  auto f = GgufFile::Open(p);
  EXPECT_THROW(Tokenizer::FromGguf(*f), FormatError);
  std::remove(p.c_str());
}

// Both fail fuzz/gguf_fuzz.cc (crafted inputs, now in its seeds): an empty control token
// matched at every position without consuming text (Encode never returned), and an
// unknown-token id past the vocabulary was emitted for each byte without a token of its own.
TEST(TokenizerLoad, EmptyControlTokensAndOutOfRangeIdsAreHarmless) {
  std::vector<std::string> tokens = {"<|end|>", ""};
  for (unsigned b = 0; b < 256; ++b) tokens.push_back(b == 'x' ? "not-x" : ByteChar(b));
  std::vector<int32_t> types(tokens.size(), 1);
  types[0] = types[1] = 3;
  GgufWriter w;
  w.KvString("tokenizer.ggml.model", "gpt2");
  w.KvStrings("tokenizer.ggml.tokens", tokens);
  w.KvI32s("tokenizer.ggml.token_type", types);
  w.KvStrings("tokenizer.ggml.merges", {});
  w.KvU32("tokenizer.ggml.eos_token_id", 0);
  w.KvU32("tokenizer.ggml.bos_token_id", 100000);
  w.KvU32("tokenizer.ggml.unknown_token_id", 100000);
  w.KvU32("tokenizer.ggml.add_bos_token", 1);
  const std::vector<uint8_t> bytes = w.Build();
  auto f = GgufFile::FromBuffer(bytes.data(), bytes.size(), "tok.gguf");
  auto t = Tokenizer::FromGguf(*f);
  EXPECT_EQ(t->Encode("ab"), (std::vector<int32_t>{2 + 'a', 2 + 'b'}));
  EXPECT_EQ(t->Encode("axb"), (std::vector<int32_t>{2 + 'a', 2 + 'b'}));  // no token for 'x', no unknown token
  EXPECT_EQ(t->bos_id(), -1);
  EXPECT_FALSE(t->add_bos());
  EXPECT_EQ(t->EncodePrompt("a"), (std::vector<int32_t>{2 + 'a'}));
}

}  // namespace

// Invalid UTF-8 in streamed output: one U+FFFD per maximal invalid subpart, as Python's and
// Rust's lossy decoders (and so Hugging Face's decode) produce.
TEST(IncrementalDetokenizerLossy, ReplacesMaximalSubparts) {
  auto tok = svdq::models::Tokenizer::ByteLevel(300);  // ids 0..255 are the bytes
  auto run = [&](std::initializer_list<int> bytes) {
    svdq::models::IncrementalDetokenizer d(*tok);
    std::string out;
    for (int b : bytes) out += d.Push(b);
    return out + d.Flush();
  };
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_EQ(run({0xE3, 0x83, 'A'}), R + "A");
  EXPECT_EQ(run({0xED, 0xA0, 0x80}), R + R + R);
  EXPECT_EQ(run({0xC0, 0x80}), R + R);
  EXPECT_EQ(run({0xF0, 0x9F, 0x98}), R);
  EXPECT_EQ(run({0xE0, 0x80, 0xAF, 'z'}), R + R + R + "z");
  EXPECT_EQ(run({0xF0, 0x9F, 0x98, 0x80}), "\xF0\x9F\x98\x80");
}
