// Tokenizer::FromHuggingFace on tiny hand-written tokenizer.json files (byte-level BPE
// with the Llama 3 split; SentencePiece-style BPE with byte fallback, in Llama 2's
// normalizer and in the Metaspace spelling), Tokenizer::ByteLevel, and malformed files.
// Parity with `tokenizers` on trained vocabularies is in tests/integration.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/gguf.h"
#include "models/tokenizer.h"
#include "tests/common/byte_char.h"

using namespace svdq::models;
using nlohmann::json;

using svdq::testing::ByteChar;

namespace {

const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A fresh directory under the test temp dir, removed (files and all) at the end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/svdq_hf_XXXXXX";
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
      std::remove((path_ + "/" + f).c_str());
    rmdir(path_.c_str());
  }
  void Write(const std::string& name, const std::string& text) const { std::ofstream(path_ + "/" + name) << text; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Bytes 0..255 are ids 0..255; merges build "hello"; "Ġworld" is in the vocabulary with
// no merges to reach it (ignore_merges emits it whole).
json ByteLevelJson() {
  json vocab = json::object();
  for (unsigned b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  const std::string sp = ByteChar(' ');
  int id = 256;
  for (const std::string& t : {std::string("he"), std::string("ll"), std::string("hell"), std::string("hello"), sp + "w",
                               sp + "world", std::string("34")})
    vocab[t] = id++;
  json added = json::array({
      {{"id", 263}, {"content", "<|begin_of_text|>"}, {"special", true}, {"normalized", false}},
      {{"id", 264}, {"content", "<|eot_id|>"}, {"special", true}, {"normalized", false}},
      {{"id", 265}, {"content", "[[x]]"}, {"special", false}, {"normalized", false}},
      {{"id", 266}, {"content", "<|end_of_text|>"}, {"special", true}, {"normalized", false}},
  });
  return {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", kLlama3Regex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "Sequence"},
        {"processors",
         {{{"type", "ByteLevel"}},
          {{"type", "TemplateProcessing"},
           {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
           {"special_tokens", json::object()}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"ignore_merges", true}, {"byte_fallback", false}, {"vocab", vocab},
        {"merges", json::array({"3 4", "h e", "l l", json::array({"he", "ll"}), "hell o", sp + " w"})}}},
  };
}

// <unk> <s> </s>, <0x00>..<0xFF> (ids 3..258), then characters and merges up to "▁hello".
json SentencePieceJson(bool metaspace) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (unsigned b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  int id = 259;
  for (const char* t : {"▁", "h", "e", "l", "o", "▁h", "el", "▁hel", "▁hell", "▁hello"}) vocab[t] = id++;
  json added = json::array();
  for (int k = 0; k < 3; ++k)
    added.push_back({{"id", k}, {"content", k == 0 ? "<unk>" : k == 1 ? "<s>" : "</s>"}, {"special", true}, {"normalized", false}});
  json normalizer = nullptr, pre = nullptr;
  if (metaspace) {
    pre = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", false}};
  } else {
    normalizer = {{"type", "Sequence"},
                  {"normalizers",
                   {{{"type", "Prepend"}, {"prepend", "▁"}},
                    {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}};
  }
  return {
      {"added_tokens", added},
      {"normalizer", normalizer},
      {"pre_tokenizer", pre},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"}, {"unk_token", "<unk>"}, {"byte_fallback", true}, {"fuse_unk", true}, {"vocab", vocab},
        {"merges", {"▁ h", "e l", "▁h el", "▁hel l", "▁hell o"}}}},
  };
}

std::unique_ptr<Tokenizer> Load(const TempDir& d, const json& tok, const json& config) {
  d.Write("tokenizer.json", tok.dump());
  if (!config.is_null()) d.Write("tokenizer_config.json", config.dump());
  return Tokenizer::FromHuggingFace(d.path());
}

TEST(HfByteLevel, EncodesWithLlama3SplitIgnoreMergesAndAddedTokens) {
  TempDir d;
  d.Write("generation_config.json", R"({"bos_token_id": 263, "eos_token_id": [266, 264]})");
  auto t = Load(d, ByteLevelJson(), {{"bos_token", "<|begin_of_text|>"}, {"eos_token", {{"content", "<|eot_id|>"}}}});
  EXPECT_EQ(t->Encode("hello world"), (std::vector<int32_t>{259, 261}));  // both whole (ignore_merges)
  EXPECT_EQ(t->Encode("hello worlds"), (std::vector<int32_t>{259, 260, 'o', 'r', 'l', 'd', 's'}));
  // \p{N}{1,3}: "12345" is "123" + "45", so the merge "3 4" cannot apply.
  EXPECT_EQ(t->Encode("12345"), (std::vector<int32_t>{'1', '2', '3', '4', '5'}));
  EXPECT_EQ(t->Encode("34"), (std::vector<int32_t>{262}));
  EXPECT_EQ(t->Encode("a<|eot_id|>[[x]]hello"), (std::vector<int32_t>{'a', 264, 265, 259}));
  EXPECT_EQ(t->DecodeBytes({263, 259, 261, 264, 265}, /*skip_special=*/true), "hello world[[x]]");
  EXPECT_EQ(t->DecodeBytes({263, 259}, /*skip_special=*/false), "<|begin_of_text|>hello");
  EXPECT_TRUE(t->add_bos());
  EXPECT_EQ(t->bos_id(), 263);
  EXPECT_EQ(t->EncodePrompt("hello"), (std::vector<int32_t>{263, 259}));
  EXPECT_EQ(t->eos_id(), 264);
  EXPECT_EQ(t->eos_ids(), (std::vector<int32_t>{264, 266}));
  EXPECT_TRUE(t->IsEos(266));
  EXPECT_FALSE(t->IsEos(263));
  EXPECT_TRUE(t->IsSpecial(264));
  EXPECT_FALSE(t->IsSpecial(265));
  for (std::string s : {"it's  two\n\n spaces\r\n", "héllo wörld 日本語 🤖", "x = f(3) + 42;", ""})
    EXPECT_EQ(t->DecodeBytes(t->Encode(s), false), s);
}

// Qwen2's normalizer: NFC alone; also NFD, and NFC inside a Sequence before a Replace (which
// then sees the composed character). Byte ids are the UTF-8 bytes of the normalized text.
TEST(HfByteLevel, NfcAndNfdNormalizersAloneAndInSequence) {
  const std::vector<int32_t> composed{0xC3, 0xA9}, decomposed{'e', 0xCC, 0x81};  // U+00E9, e U+0301
  TempDir d;
  json j = ByteLevelJson();
  EXPECT_EQ(Load(d, j, {{"eos_token", "<|eot_id|>"}})->Encode("e\u0301"), decomposed);  // no normalizer
  j["normalizer"] = {{"type", "NFC"}};
  auto t = Load(d, j, {{"eos_token", "<|eot_id|>"}});
  EXPECT_EQ(t->Encode("e\u0301"), composed);
  EXPECT_EQ(t->Encode("\u00E9"), composed);
  EXPECT_EQ(t->Encode("\u212B"), (std::vector<int32_t>{0xC3, 0x85}));  // ANGSTROM SIGN -> U+00C5
  EXPECT_EQ(t->Encode("e\u0301<|eot_id|>e\u0301"), (std::vector<int32_t>{0xC3, 0xA9, 264, 0xC3, 0xA9}));
  j["normalizer"] = {{"type", "NFD"}};
  EXPECT_EQ(Load(d, j, {{"eos_token", "<|eot_id|>"}})->Encode("\u00E9"), decomposed);
  json replace = {{"type", "Replace"}, {"pattern", {{"String", "\u00E9"}}}, {"content", "he"}};
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, replace}}};
  EXPECT_EQ(Load(d, j, {{"eos_token", "<|eot_id|>"}})->Encode("e\u0301"), (std::vector<int32_t>{256}));  // "he"
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {replace, {{"type", "NFC"}}}}};  // Replace sees no U+00E9
  EXPECT_EQ(Load(d, j, {{"eos_token", "<|eot_id|>"}})->Encode("e\u0301"), composed);
}

TEST(HfByteLevel, AddBosTokenInConfigOverridesPostProcessor) {
  TempDir d;
  auto t = Load(d, ByteLevelJson(), {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}, {"add_bos_token", false}});
  EXPECT_FALSE(t->add_bos());
  EXPECT_EQ(t->EncodePrompt("hello"), (std::vector<int32_t>{259}));
  EXPECT_EQ(t->eos_ids(), (std::vector<int32_t>{264}));
}

TEST(HfSentencePiece, MergesCharactersWithByteFallbackAndPrependedSpace) {
  TempDir d;
  auto t = Load(d, SentencePieceJson(false), {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"add_bos_token", true}});
  const int32_t kC3 = 3 + 0xC3, kA9 = 3 + 0xA9;
  EXPECT_EQ(t->Encode("hello"), (std::vector<int32_t>{268}));
  EXPECT_EQ(t->Encode("hello hé"), (std::vector<int32_t>{268, 264, kC3, kA9}));
  EXPECT_EQ(t->Encode(" hello"), (std::vector<int32_t>{259, 268}));  // Prepend always adds one '▁'
  EXPECT_EQ(t->Encode("<s>hello</s>"), (std::vector<int32_t>{1, 268, 2}));  // each segment gets its '▁'
  EXPECT_EQ(t->EncodePrompt("hello"), (std::vector<int32_t>{1, 268}));
  EXPECT_EQ(t->DecodeBytes({1, 268, 264, kC3, kA9}, true), "hello hé");
  EXPECT_EQ(t->DecodeBytes({259, 268}, true), " hello");  // only the first '▁' is stripped
  EXPECT_EQ(t->strip_leading_spaces(), 1);
}

TEST(HfSentencePiece, StreamingStripsOnlyTheFirstSpaceAndHoldsPartialCharacters) {
  TempDir d;
  auto t = Load(d, SentencePieceJson(false), {{"eos_token", "</s>"}});
  IncrementalDetokenizer det(*t);
  EXPECT_EQ(det.Push(1), "");  // <s>: skipped, and it does not use up the strip
  EXPECT_EQ(det.Push(268), "hello");
  EXPECT_EQ(det.Push(264), " h");
  EXPECT_EQ(det.Push(3 + 0xC3), "");
  EXPECT_EQ(det.Push(3 + 0xA9), "\xC3\xA9");
  EXPECT_EQ(det.Push(268), " hello");
  EXPECT_EQ(det.Push(3 + 0xE6), "");
  EXPECT_EQ(det.Flush(), "\xEF\xBF\xBD");
}

TEST(HfSentencePiece, UnknownCharactersFuseIntoOneUnkWithoutByteFallback) {
  TempDir d;
  json j = SentencePieceJson(false);
  j["model"]["byte_fallback"] = false;
  auto t = Load(d, j, {{"eos_token", "</s>"}});
  EXPECT_EQ(t->Encode("hëëo"), (std::vector<int32_t>{264, 0, 263}));
}

TEST(HfSentencePiece, MetaspacePrependsOnlyAtTheStartOfTheText) {
  TempDir d;
  auto t = Load(d, SentencePieceJson(true), {{"bos_token", "<s>"}, {"eos_token", "</s>"}});
  EXPECT_EQ(t->Encode("hello"), (std::vector<int32_t>{268}));
  EXPECT_EQ(t->Encode(" hello"), (std::vector<int32_t>{268}));  // already starts with '▁'
  EXPECT_EQ(t->Encode("<s>hello"), (std::vector<int32_t>{1, 260, 265, 262, 263}));
  EXPECT_TRUE(t->add_bos());  // from the post-processor
}

TEST(SyntheticTokenizer, EveryTextIsItsBytes) {
  auto t = Tokenizer::ByteLevel(300);
  EXPECT_EQ(t->vocab_size(), 300);
  EXPECT_EQ(t->Encode("h\xC3\xA9 <|eos|>"), (std::vector<int32_t>{'h', 0xC3, 0xA9, ' ', '<', '|', 'e', 'o', 's', '|', '>'}));
  EXPECT_EQ(t->eos_id(), 299);
  EXPECT_EQ(t->TokenText(299), "<|eos|>");
  EXPECT_EQ(t->TokenText(256), "<|synthetic_256|>");
  EXPECT_TRUE(t->IsSpecial(256));
  EXPECT_FALSE(t->IsSpecial(255));
  EXPECT_FALSE(t->add_bos());
  EXPECT_EQ(t->DecodeBytes({'o', 'k', 256, 299}, true), "ok");
  std::string all;
  for (int b = 1; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::vector<int32_t> ids;
  for (int b = 1; b < 256; ++b) ids.push_back(b);
  EXPECT_EQ(t->DecodeBytes(ids, true), all);
  EXPECT_THROW(Tokenizer::ByteLevel(257), std::invalid_argument);
}

// Loading `tokenizer_json` (text) must throw FormatError whose message has `want`.
void ExpectFormatError(const std::string& tokenizer_json, const std::string& want, const json& config = {{"eos_token", "</s>"}}) {
  TempDir d;
  d.Write("tokenizer.json", tokenizer_json);
  d.Write("tokenizer_config.json", config.dump());
  try {
    Tokenizer::FromHuggingFace(d.path());
    ADD_FAILURE() << "no FormatError; wanted: " << want;
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(d.path()), std::string::npos) << e.what();
  }
}

TEST(HfTokenizerErrors, MalformedFilesAreFormatErrorsNamingFileAndComponent) {
  std::string good = SentencePieceJson(false).dump();
  ExpectFormatError("{\"model\": [1, 2", "tokenizer.json: not valid JSON");
  ExpectFormatError(good.substr(0, good.size() / 2), "tokenizer.json: not valid JSON");  // truncated
  ExpectFormatError("[]", "tokenizer.json: the top level is not an object");
  ExpectFormatError("{}", "tokenizer.json: model: missing 'model'");
  json j = SentencePieceJson(false);
  j["model"]["type"] = "Unigram";
  ExpectFormatError(j.dump(), "model: type 'Unigram' is not supported (BPE)");
  j = SentencePieceJson(false);
  j["model"]["vocab"] = "not a map";
  ExpectFormatError(j.dump(), "model: vocab is not a non-empty object");
  j = SentencePieceJson(false);
  j["model"]["vocab"]["h"] = "seven";
  ExpectFormatError(j.dump(), "tokenizer.json: model: vocab id \"seven\" is not an integer");
  j = SentencePieceJson(false);
  j["model"]["merges"].push_back("e zz");
  ExpectFormatError(j.dump(), "merge 5 ('e', 'zz') names a token not in the vocabulary");
  j["model"]["merges"].back() = "e l o";
  ExpectFormatError(j.dump(), "merge 5 ('e l o') is not two tokens separated by one space");
  j = SentencePieceJson(false);
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  ExpectFormatError(j.dump(), "tokenizer.json: pre_tokenizer: type 'Whitespace' is not supported (ByteLevel, Split, Digits, Metaspace, Sequence)");
  j = ByteLevelJson();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+|\\s+";
  ExpectFormatError(j.dump(), "Split: regex '\\w+|\\s+' is not one of the known patterns");
  j = SentencePieceJson(false);
  j["normalizer"] = {{"type", "NFKC"}};
  ExpectFormatError(j.dump(), "normalizer: type 'NFKC' is not supported (Prepend, Replace, NFC, NFD, Sequence)");
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}};
  ExpectFormatError(j.dump(), "normalizer: type 'Lowercase' is not supported");
  j = SentencePieceJson(false);
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectFormatError(j.dump(), "decoder: type 'WordPiece' is not supported");
  j = SentencePieceJson(false);
  j["added_tokens"][1]["rstrip"] = true;
  ExpectFormatError(j.dump(), "added token '<s>': rstrip is not supported");
  j = SentencePieceJson(false);
  j["model"]["unk_token"] = "<nope>";
  ExpectFormatError(j.dump(), "unk_token '<nope>' is not in the vocabulary");
  ExpectFormatError(good, "no eos token", json::object());
  ExpectFormatError(good, "tokenizer_config.json: eos_token '<eos>' is not in the vocabulary", {{"eos_token", "<eos>"}});
  ExpectFormatError(good, "tokenizer_config.json: the top level is not an object", "x");
}

// Found by fuzz/tokenizer_json_fuzz.cc: a float where an id belongs was converted by
// nlohmann's get<int64_t>(), which is undefined behaviour beyond int64's range (1e30).
TEST(HfTokenizerErrors, IdsMustBeIntegers) {
  json j = SentencePieceJson(false);
  j["model"]["vocab"]["h"] = 1e30;
  ExpectFormatError(j.dump(), "tokenizer.json: model: vocab id 1e+30 is not an integer");
  j = SentencePieceJson(false);
  j["added_tokens"][0]["id"] = 0.5;
  ExpectFormatError(j.dump(), "tokenizer.json: added_tokens: added token id 0.5 is not an integer");
  j = SentencePieceJson(false);
  j["decoder"]["decoders"][3]["start"] = 1e300;
  ExpectFormatError(j.dump(), "tokenizer.json: decoder: start 1e+300 is not an integer");
  TempDir d;
  d.Write("tokenizer.json", SentencePieceJson(false).dump());
  d.Write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  d.Write("generation_config.json", R"({"eos_token_id": [2, 1e30]})");
  try {
    Tokenizer::FromHuggingFace(d.path());
    ADD_FAILURE() << "no FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("generation_config.json: eos_token_id 1e+30 is not an integer"), std::string::npos)
        << e.what();
  }
}

TEST(HfTokenizerErrors, MissingTokenizerJson) {
  TempDir d;
  try {
    Tokenizer::FromHuggingFace(d.path());
    ADD_FAILURE() << "no FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json: cannot open"), std::string::npos) << e.what();
  }
}

}  // namespace
