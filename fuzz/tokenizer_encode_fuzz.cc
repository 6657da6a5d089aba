// Fuzzes encoding and decoding (models/tokenizer.cc, pre_tokenizer.cc, unicode.cc,
// unicode_normalize.cc) on fixed tokenizers: byte-level BPE with the Llama 3 split and the chat
// specials, the same with Qwen2's NFC normalizer and split, SentencePiece-style BPE with byte
// fallback (all from fuzz_common.h) and a GGUF byte-level one with SmolLM's digit split.
// Input: a text. Asserts: no ASan/UBSan report; invalid UTF-8 is refused with TokenizerError
// and valid UTF-8 never is; ids are inside the vocabulary; streaming the ids gives valid UTF-8;
// decode(encode(x)) == x for the byte-level tokenizers, NFC(x) under the NFC normalizer, and x
// for SentencePiece when x holds no '▁' and none of its special tokens; NFC and NFD are
// idempotent and NFC(NFD(x)) == NFC(x).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "models/gguf.h"
#include "models/tokenizer.h"
#include "models/unicode.h"
#include "models/unicode_normalize.h"
#include "tests/unit/gguf_writer.h"

using namespace svdq::models;

namespace {

// The ids of `text`, streamed back as valid UTF-8; false for invalid UTF-8 (refused).
bool Encode(const Tokenizer& tok, const std::string& text, std::vector<int32_t>* ids) {
  try {
    *ids = tok.Encode(text);
  } catch (const TokenizerError&) {
    FUZZ_CHECK(!IsValidUtf8(text));
    return false;
  }
  FUZZ_CHECK(IsValidUtf8(text));
  IncrementalDetokenizer d(tok);
  std::string streamed;
  for (int32_t id : *ids) {
    FUZZ_CHECK(id >= 0 && id < tok.vocab_size());
    streamed += d.Push(id);
  }
  streamed += d.Flush();
  FUZZ_CHECK(IsValidUtf8(streamed));
  return true;
}

void CheckRoundTrip(const Tokenizer& tok, const std::string& text, const std::string& want) {
  std::vector<int32_t> ids;
  if (Encode(tok, text, &ids)) FUZZ_CHECK(tok.DecodeBytes(ids, /*skip_special=*/false) == want);
}

std::unique_ptr<Tokenizer> QwenStyleTokenizer() {
  nlohmann::json j = svdq::fuzz::ByteLevelTokenizerJson();
  j["normalizer"] = {{"type", "NFC"}};
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return svdq::fuzz::LoadHfTokenizer(j.dump(), R"({"eos_token": "<|eot_id|>"})");
}

// tests/unit/tokenizer_test.cc's tokenizer: GPT-2 bytes, a control and a user-defined token.
std::unique_ptr<Tokenizer> GgufTokenizer() {
  std::vector<std::string> tokens = {"<|end|>"};
  for (unsigned b = 0; b < 256; ++b) tokens.push_back(svdq::fuzz::ByteChar(b));
  for (const std::string& t : {std::string("he"), std::string("hel"), svdq::fuzz::ByteChar(' ') + "h", std::string("<|u|>")})
    tokens.push_back(t);
  std::vector<int32_t> types(tokens.size(), 1);
  types[0] = 3;
  types.back() = 4;
  svdq::testing::GgufWriter w;
  w.KvString("tokenizer.ggml.model", "gpt2");
  w.KvString("tokenizer.ggml.pre", "smollm");
  w.KvStrings("tokenizer.ggml.tokens", tokens);
  w.KvI32s("tokenizer.ggml.token_type", types);
  w.KvStrings("tokenizer.ggml.merges", {"h e", "he l", svdq::fuzz::ByteChar(' ') + " h"});
  w.KvU32("tokenizer.ggml.eos_token_id", 0);
  const std::vector<uint8_t> bytes = w.Build();
  return Tokenizer::FromGguf(*GgufFile::FromBuffer(bytes.data(), bytes.size(), "tokenizer.gguf"));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<Tokenizer> byte_level = svdq::fuzz::ByteLevelTokenizer("");
  static const std::unique_ptr<Tokenizer> qwen = QwenStyleTokenizer();
  static const std::unique_ptr<Tokenizer> sentencepiece = svdq::fuzz::SentencePieceTokenizer();
  static const std::unique_ptr<Tokenizer> gguf = GgufTokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);
  CheckRoundTrip(*byte_level, text, text);
  CheckRoundTrip(*gguf, text, text);
  if (text.find("\xE2\x96\x81") == std::string::npos && text.find("<s>") == std::string::npos &&
      text.find("</s>") == std::string::npos && text.find("<unk>") == std::string::npos)
    CheckRoundTrip(*sentencepiece, text, text);

  std::u32string u;
  size_t bad;
  if (!DecodeUtf8(text, &u, &bad)) {
    FUZZ_CHECK(!IsValidUtf8(text) && bad < text.size());
    return 0;
  }
  FUZZ_CHECK(ToUtf8(u) == text);
  std::u32string nfc = u, nfd = u;
  ToNfc(&nfc);
  ToNfd(&nfd);
  std::u32string again = nfc;
  ToNfc(&again);
  FUZZ_CHECK(again == nfc);
  again = nfd;
  ToNfd(&again);
  FUZZ_CHECK(again == nfd);
  ToNfc(&again);
  FUZZ_CHECK(again == nfc);
  CheckRoundTrip(*qwen, text, ToUtf8(nfc));
  return 0;
}
