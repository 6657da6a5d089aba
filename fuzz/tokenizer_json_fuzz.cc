// Fuzzes the Hugging Face tokenizer loader (models/tokenizer_json.cc: tokenizer.json,
// tokenizer_config.json, generation_config.json) and the tokenizer it builds (normalizers,
// pre-tokenizers, BPE, decoders in models/tokenizer.cc, pre_tokenizer.cc, unicode*.cc).
// Input: up to four parts separated by NUL bytes: tokenizer.json, tokenizer_config.json,
// generation_config.json (a missing part is a missing file) and a text to encode.
// Asserts: a file the loader cannot accept ends in FormatError and nothing else escapes; no
// ASan/UBSan report; an accepted tokenizer has its BOS and EOS ids inside the vocabulary,
// encodes the text to ids inside it (or throws TokenizerError, for invalid UTF-8 only), and
// streams them back as valid UTF-8. Encoding round trips on fixed tokenizers:
// tokenizer_encode_fuzz.cc.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "models/gguf.h"  // FormatError
#include "models/tokenizer.h"

using namespace svdq::models;
using svdq::fuzz::ScratchDir;

namespace {

const char* const kFiles[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};

ScratchDir& Dir() {
  static ScratchDir dir;
  return dir;
}

// Encodes `text` with BOS where the tokenizer adds one and streams the ids back.
void EncodeAndStream(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  try {
    ids = tok.EncodePrompt(text);
  } catch (const TokenizerError&) {
    FUZZ_CHECK(!IsValidUtf8(text));  // only invalid UTF-8 is refused
    return;
  }
  FUZZ_CHECK(IsValidUtf8(text));
  IncrementalDetokenizer d(tok);
  std::string streamed;
  for (int32_t id : ids) {
    FUZZ_CHECK(id >= 0 && id < tok.vocab_size());
    streamed += d.Push(id);
  }
  streamed += d.Flush();
  FUZZ_CHECK(IsValidUtf8(streamed));
  tok.DecodeBytes(ids, /*skip_special=*/true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> parts = svdq::fuzz::SplitParts(data, size, 4);
  for (size_t k = 0; k < 3; ++k) {
    if (k < parts.size()) Dir().Write(kFiles[k], parts[k]);
    else Dir().Remove(kFiles[k]);
  }
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = Tokenizer::FromHuggingFace(Dir().path());
  } catch (const FormatError&) {
    return 0;
  }
  const int32_t vocab = tok->vocab_size();
  FUZZ_CHECK(vocab > 0 && tok->eos_id() >= 0 && tok->eos_id() < vocab && tok->bos_id() < vocab);
  for (int32_t id : tok->eos_ids()) FUZZ_CHECK(id >= 0 && id < vocab);
  EncodeAndStream(*tok, parts.size() > 3 ? parts[3] : "hello world");
  return 0;
}
