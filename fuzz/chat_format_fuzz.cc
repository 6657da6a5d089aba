// Fuzzes chat rendering (models/chat_format.cc): template recognition, including the [INST]
// expression parser, and the ChatML, Llama 3 and [INST] renderers. Input: NUL-separated parts:
// a chat template, then role and content of each message in turn.
// Asserts: no ASan/UBSan report; Render either succeeds or fails with a message; a successful
// render of a valid UTF-8 template and messages is valid UTF-8 (and for ChatML holds every
// message verbatim); and, as the server then tokenizes it, the prompt round-trips through the
// byte-level tokenizer that knows the formats' special tokens: decode(encode(p)) == p.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "models/chat_format.h"
#include "models/tokenizer.h"

using namespace svdq::models;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<Tokenizer> tok = svdq::fuzz::ByteLevelTokenizer("");
  const std::vector<std::string> parts = svdq::fuzz::SplitParts(data, size, 65);
  ChatFormat fmt;
  if (!ChatFormat::FromTemplate(parts[0], &fmt)) return 0;
  FUZZ_CHECK(!fmt.name().empty());
  bool all_utf8 = IsValidUtf8(parts[0]);
  std::vector<ChatTurn> turns;
  for (size_t k = 1; k + 1 < parts.size(); k += 2) {
    turns.push_back({parts[k], parts[k + 1]});
    all_utf8 = all_utf8 && IsValidUtf8(parts[k]) && IsValidUtf8(parts[k + 1]);
  }
  std::string prompt, error;
  if (!fmt.Render(turns, &prompt, &error)) {
    FUZZ_CHECK(!error.empty());
    return 0;
  }
  FUZZ_CHECK(!prompt.empty() || fmt.name() == "mistral" || fmt.name() == "llama2");
  if (fmt.name() == "chatml")
    for (const ChatTurn& t : turns) FUZZ_CHECK(prompt.find(t.content) != std::string::npos);
  if (!all_utf8) return 0;
  FUZZ_CHECK(IsValidUtf8(prompt));
  FUZZ_CHECK(tok->DecodeBytes(tok->Encode(prompt), /*skip_special=*/false) == prompt);
  return 0;
}
