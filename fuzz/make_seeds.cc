// Writes the seed corpus of each fuzz harness into DIR/NAME/ (fuzz/corpus/ in the repository):
// a few small valid inputs, and the inputs of bugs fixed, refused now. `fuzz/build.sh build-fuzz
// seeds` rebuilds and reruns it. The inputs follow each harness's format (see the comment at the
// top of each *_fuzz.cc).
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "models/dequant.h"
#include "svdq/v1/generation.pb.h"
#include "tests/unit/gguf_writer.h"

using nlohmann::json;
using svdq::fuzz::ByteChar;
using svdq::fuzz::JoinParts;
using svdq::models::GgmlType;

namespace {

std::string root;

void Save(const std::string& name, const std::string& file, const std::string& bytes) {
  const std::string dir = root + "/" + name;
  ::mkdir(root.c_str(), 0755);
  ::mkdir(dir.c_str(), 0755);
  std::ofstream(dir + "/" + file, std::ios::binary | std::ios::trunc) << bytes;
}

std::string Str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

// n elements of type t, with bytes that make finite scales (0x3C00 is fp16 1.0).
std::vector<uint8_t> TensorBytes(GgmlType t, int64_t n) {
  std::vector<uint8_t> b(svdq::models::RowBytes(t, n));
  for (size_t k = 0; k < b.size(); ++k) b[k] = static_cast<uint8_t>(k * 37 + 11);
  if (t != GgmlType::F32 && t != GgmlType::BF16)
    for (size_t k = 0; k + 1 < b.size(); k += svdq::models::TypeTraits(t).block_bytes) b[k] = 0x00, b[k + 1] = 0x3C;
  return b;
}

void GgufSeeds() {
  svdq::testing::GgufWriter w;
  w.KvString("general.architecture", "llama");
  w.KvU32("llama.block_count", 2);
  w.KvU32("general.alignment", 32);
  const std::pair<GgmlType, std::vector<uint64_t>> tensors[] = {
      {GgmlType::F32, {4, 2}}, {GgmlType::F16, {8}},   {GgmlType::BF16, {4}},   {GgmlType::Q4_0, {32}},
      {GgmlType::Q8_0, {32, 2}}, {GgmlType::Q5_1, {32}}, {GgmlType::Q4_K, {256}}, {GgmlType::Q6_K, {256}},
  };
  int k = 0;
  for (const auto& [type, dims] : tensors) {
    int64_t n = 1;
    for (uint64_t d : dims) n *= static_cast<int64_t>(d);
    w.Tensor("t" + std::to_string(k++), dims, static_cast<uint32_t>(type), TensorBytes(type, n));
  }
  Save("gguf", "tensors.gguf", Str(w.Build()));

  // A byte-level tokenizer as tests/unit/tokenizer_test.cc builds it, with a user-defined
  // token, an empty control token (never matched), an unknown-token id past the vocabulary
  // (ignored) and a chat template.
  svdq::testing::GgufWriter t;
  std::vector<std::string> tokens = {"<|end|>"};
  for (unsigned b = 0; b < 256; ++b) tokens.push_back(ByteChar(b));
  for (const std::string& s : {std::string("he"), std::string("hel"), ByteChar(' ') + "h", std::string("<|user|>"), std::string()})
    tokens.push_back(s);
  std::vector<int32_t> types(tokens.size(), 1);
  types[0] = 3;
  types[tokens.size() - 2] = 4;
  types.back() = 3;
  t.KvString("tokenizer.ggml.model", "gpt2");
  t.KvString("tokenizer.ggml.pre", "smollm");
  t.KvStrings("tokenizer.ggml.tokens", tokens);
  t.KvI32s("tokenizer.ggml.token_type", types);
  t.KvStrings("tokenizer.ggml.merges", {"h e", "he l", ByteChar(' ') + " h"});
  t.KvU32("tokenizer.ggml.eos_token_id", 0);
  t.KvU32("tokenizer.ggml.bos_token_id", 0);
  t.KvU32("tokenizer.ggml.add_bos_token", 1);
  t.KvU32("tokenizer.ggml.unknown_token_id", 100000);
  t.KvString("tokenizer.chat_template", "<|im_start|>");
  t.Tensor("token_embd.weight", {4, 2}, 0, TensorBytes(GgmlType::F32, 8));
  Save("gguf", "tokenizer.gguf", Str(t.Build()));
}

std::string Safetensors(const json& header, size_t data_bytes) {
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h.push_back(' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((h.size() >> (8 * i)) & 0xFF);
  out += h;
  for (size_t k = 0; k < data_bytes; ++k) out.push_back(static_cast<char>(k * 13 + 1));
  return out;
}

void SafetensorsSeeds() {
  Save("safetensors", "two.safetensors",
       Safetensors({{"__metadata__", {{"format", "pt"}}},
                    {"a", {{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}},
                    {"b", {{"dtype", "BF16"}, {"shape", {3}}, {"data_offsets", {16, 22}}}}},
                   22));
  Save("safetensors", "empty_and_f16.safetensors",
       Safetensors({{"e", {{"dtype", "F16"}, {"shape", {0, 4}}, {"data_offsets", {0, 0}}}},
                    {"h", {{"dtype", "F16"}, {"shape", {1, 2}}, {"data_offsets", {0, 4}}}}},
                   4));
  // Refused: a dimension of 2^64 - 1 after a zero.
  Save("safetensors", "huge_dim.safetensors",
       Safetensors({{"a", {{"dtype", "F32"}, {"shape", {0, UINT64_MAX}}, {"data_offsets", {0, 0}}}}}, 0));
}

void TokenizerJsonSeeds() {
  const json gen = {{"bos_token_id", 263}, {"eos_token_id", {264, 266}}};
  Save("tokenizer_json", "byte_level",
       JoinParts({svdq::fuzz::ByteLevelTokenizerJson().dump(),
                  json({{"bos_token", "<|begin_of_text|>"}, {"eos_token", {{"content", "<|eot_id|>"}}},
                        {"chat_template", "{{ '<|start_header_id|>' }}<|eot_id|>"}})
                      .dump(),
                  gen.dump(), "hello world 12345 it's\n\n  h\xC3\xA9llo <|eot_id|>[[x]]"}));
  json nfc = svdq::fuzz::ByteLevelTokenizerJson();
  nfc["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "NFD"}}}}};
  nfc["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Digits"}, {"individual_digits", true}},
                            {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}}}};
  Save("tokenizer_json", "nfc_digits",
       JoinParts({nfc.dump(), json({{"eos_token", "<|eot_id|>"}, {"add_bos_token", false}}).dump(), "{}",
                  "e\xCC\x81 \xE2\x84\xAB 2024"}));
  const json sp_config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"add_bos_token", true}};
  Save("tokenizer_json", "sentencepiece",
       JoinParts({svdq::fuzz::SentencePieceTokenizerJson().dump(), sp_config.dump(), json({{"eos_token_id", 2}}).dump(),
                  " hello h\xC3\xA9 <s>x</s>"}));
  json meta = svdq::fuzz::SentencePieceTokenizerJson();
  meta["normalizer"] = nullptr;
  meta["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", true}};
  Save("tokenizer_json", "metaspace", JoinParts({meta.dump(), sp_config.dump(), "{}", "hello  world"}));
}

void TokenizerEncodeSeeds() {
  Save("tokenizer_encode", "ascii", "hello world, it's 12345 + x = f(3);\n\n  two  spaces\r\n\t");
  Save("tokenizer_encode", "unicode", "h\xC3\xA9llo w\xC3\xB6rld \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\xA4\x96 \xE2\x96\x81x");
  // Decomposed accents, ANGSTROM SIGN, Hangul jamo, marks out of canonical order.
  Save("tokenizer_encode", "nfc", "Cafe\xCC\x81 \xE2\x84\xAB \xE1\x84\x80\xE1\x85\xA1 a\xCC\x81\xCC\xA3");
  Save("tokenizer_encode", "specials", "<|begin_of_text|>hi<|eot_id|>[[x]]<s>a</s><|end|><|u|>");
}

void ChatFormatSeeds() {
  const std::vector<std::string> chat = {"system", " Be brief. ", "user", " Hi \n", "assistant", "Hello.", "user", "Bye"};
  const char* const names[] = {"chatml", "llama3", "llama31", "llama2", "mistral"};
  for (size_t k = 0; k < svdq::fuzz::ChatTemplates().size(); ++k) {
    std::vector<std::string> parts = {svdq::fuzz::ChatTemplates()[k]};
    const size_t first = k == 4 ? 2 : 0;  // Mistral refuses a system message
    parts.insert(parts.end(), chat.begin() + first, chat.end());
    Save("chat_format", names[k], JoinParts(parts));
  }
}

// A request message prefixed with its selector byte: type (0 Generate, 1 Tokenize, 2 Abort)
// and the template index << 2.
void SaveRequest(const std::string& file, int type, int tpl, const google::protobuf::Message& m) {
  Save("request", file, std::string(1, static_cast<char>(type | tpl << 2)) + m.SerializeAsString());
}

void RequestSeeds() {
  svdq::v1::GenerateRequest text;
  text.set_text("hello world");
  text.set_max_tokens(8);
  text.add_stop("\n");
  text.mutable_sampling()->set_temperature(0.7f);
  text.mutable_sampling()->set_top_p(0.9f);
  SaveRequest("generate_text", 0, 0, text);

  svdq::v1::GenerateRequest chat;
  chat.set_request_id("job-1");
  auto* m = chat.mutable_chat()->add_messages();
  m->set_role("system");
  m->set_content("Be brief.");
  m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hi <|eot_id|>");
  chat.set_min_tokens(2);
  chat.set_logprobs(3);
  SaveRequest("generate_chat_llama3", 0, 1, chat);
  SaveRequest("generate_chat_llama2", 0, 3, chat);

  svdq::v1::GenerateRequest ids;
  for (int id : {263, 104, 101, 108}) ids.mutable_token_ids()->add_ids(id);
  ids.add_stop_token_ids(264);
  ids.mutable_sampling()->set_top_k(40);
  ids.mutable_sampling()->set_seed(7);
  ids.mutable_sampling()->set_min_p(0.05f);
  ids.mutable_sampling()->set_repetition_penalty(1.1f);
  ids.mutable_sampling()->set_presence_penalty(-0.5f);
  ids.set_prompt_logprobs(true);
  SaveRequest("generate_ids", 0, 2, ids);

  svdq::v1::TokenizeRequest tok;
  tok.set_text("h\xC3\xA9llo <|im_start|>");
  SaveRequest("tokenize_text", 1, 0, tok);
  svdq::v1::TokenizeRequest tok_chat;
  m = tok_chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Hi");
  SaveRequest("tokenize_chat", 1, 4, tok_chat);

  svdq::v1::AbortRequest abort;
  abort.set_request_id("req-0123456789abcdef");
  SaveRequest("abort", 2, 0, abort);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR (writes DIR/NAME/ for each harness)\n", argv[0]);
    return 2;
  }
  root = argv[1];
  GgufSeeds();
  SafetensorsSeeds();
  TokenizerJsonSeeds();
  TokenizerEncodeSeeds();
  ChatFormatSeeds();
  RequestSeeds();
  return 0;
}
