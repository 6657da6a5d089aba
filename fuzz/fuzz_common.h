// What the fuzz harnesses share: a check that aborts (so that libFuzzer keeps the input as a
// crash), the split of one input into NUL-separated parts, a scratch directory for readers that
// take a directory, and the two hand-written tokenizers (byte-level BPE with the chat formats'
// special tokens, SentencePiece-style BPE with byte fallback) that the harnesses encode with.
// make_seeds.cc writes the seed corpus from the same builders.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "tests/common/byte_char.h"

#include "models/tokenizer.h"

#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

namespace svdq::fuzz {

// Splits `data` at its first max_parts - 1 NUL bytes (the last part keeps any later NULs).
inline std::vector<std::string> SplitParts(const uint8_t* data, size_t size, size_t max_parts) {
  std::vector<std::string> parts(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0 && parts.size() < max_parts) parts.emplace_back();
    else parts.back().push_back(static_cast<char>(data[i]));
  }
  return parts;
}

// The parts joined back, for make_seeds.cc.
inline std::string JoinParts(const std::vector<std::string>& parts) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? std::string(1, '\0') : "") + parts[i];
  return out;
}

// A fresh directory under $TMPDIR (or /tmp) holding the files written to it; all removed
// with the object.
class ScratchDir {
 public:
  ScratchDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/svdq_fuzz_XXXXXX";
    if (!mkdtemp(tmpl.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    path_ = tmpl;
  }
  ~ScratchDir() {
    for (const std::string& f : files_) std::remove((path_ + "/" + f).c_str());
    rmdir(path_.c_str());
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  void Write(const std::string& name, const std::string& bytes) {
    std::ofstream(path_ + "/" + name, std::ios::binary | std::ios::trunc) << bytes;
    files_.insert(name);
  }
  void Remove(const std::string& name) { std::remove((path_ + "/" + name).c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::set<std::string> files_;
};

// GPT-2's printable stand-in for a byte, as UTF-8 (a dependency-free header of the tests).
using svdq::testing::ByteChar;

// The special tokens of every chat format chat_format.h renders, added to the byte-level
// tokenizer so that rendered prompts tokenize as the server tokenizes them.
inline const std::vector<std::string>& ChatSpecials() {
  static const std::vector<std::string> specials = {
      "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>",
      "<|im_end|>",        "<s>",        "</s>",                "[INST]",             "[/INST]"};
  return specials;
}

// Byte-level BPE with the Llama 3 split: ids 0..255 the bytes, a few merges, the chat specials
// (ids 263...) and one non-special added token. Every UTF-8 text round-trips through it.
inline nlohmann::json ByteLevelTokenizerJson() {
  using nlohmann::json;
  const char* const llama3_regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  json vocab = json::object();
  for (unsigned b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  const std::string sp = ByteChar(' ');
  int id = 256;
  for (const std::string& t : {std::string("he"), std::string("ll"), std::string("hell"), std::string("hello"), sp + "w",
                               sp + "world", std::string("34")})
    vocab[t] = id++;
  json added = json::array();
  for (const std::string& s : ChatSpecials()) added.push_back({{"id", id++}, {"content", s}, {"special", true}});
  added.push_back({{"id", id++}, {"content", "[[x]]"}, {"special", false}});
  return {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", llama3_regex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}}}}, {{"Sequence", {{"id", "A"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab},
        {"merges", json::array({"3 4", "h e", "l l", json::array({"he", "ll"}), "hell o", sp + " w"})}}},
  };
}

// SentencePiece-style BPE (Llama 2's normalizer and decoder): <unk> <s> </s>, <0x00>..<0xFF>,
// then characters and merges up to "▁hello". Text without '▁' and without the three specials
// round-trips through it.
inline nlohmann::json SentencePieceTokenizerJson() {
  using nlohmann::json;
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (unsigned b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  int id = 259;
  for (const char* t : {"▁", "h", "e", "l", "o", "▁h", "el", "▁hel", "▁hell", "▁hello"}) vocab[t] = id++;
  json added = json::array();
  for (int k = 0; k < 3; ++k) added.push_back({{"id", k}, {"content", k == 0 ? "<unk>" : k == 1 ? "<s>" : "</s>"}, {"special", true}});
  return {
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "▁"}}, {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}}}},
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

// Loads a tokenizer from the given file contents through Tokenizer::FromHuggingFace, in a
// scratch directory removed before returning. Throws what the loader throws.
inline std::unique_ptr<models::Tokenizer> LoadHfTokenizer(const std::string& tokenizer_json,
                                                          const std::string& tokenizer_config) {
  ScratchDir dir;
  dir.Write("tokenizer.json", tokenizer_json);
  dir.Write("tokenizer_config.json", tokenizer_config);
  return models::Tokenizer::FromHuggingFace(dir.path());
}

// The byte-level tokenizer with BOS and EOS set and `chat_template` as its template.
inline std::unique_ptr<models::Tokenizer> ByteLevelTokenizer(const std::string& chat_template) {
  nlohmann::json config = {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}, {"chat_template", chat_template}};
  return LoadHfTokenizer(ByteLevelTokenizerJson().dump(), config.dump());
}

inline std::unique_ptr<models::Tokenizer> SentencePieceTokenizer() {
  nlohmann::json config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"add_bos_token", true}};
  return LoadHfTokenizer(SentencePieceTokenizerJson().dump(), config.dump());
}

// Chat templates that select each format (the canonical ones are longer; these carry the
// markers and the [INST] expressions ChatFormat::FromTemplate reads).
inline const std::vector<std::string>& ChatTemplates() {
  static const std::vector<std::string> templates = {
      // ChatML with SmolLM2's default system message.
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
      "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
      "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}",
      // Llama 3.
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
      "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
      "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}",
      // Llama 3.1's dated system header.
      "<|start_header_id|> <|eot_id|> {{- \"Cutting Knowledge Date: December 2023\\n\" }} date_string = \"26 Jul 2024\"",
      // Llama 2 (<<SYS>> in the first [INST]).
      "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
      "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
      "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
      "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
      "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' "
      "+ message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == "
      "'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
      "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
      // Mistral v0.3.
      "{{bos_token}}{% for message in messages %}{% if message['role'] == 'user' %}{% if tools %}"
      "{{'[AVAILABLE_TOOLS]'+ tools|string + '[/AVAILABLE_TOOLS]'}}{% endif %}{{ '[INST]' + message['content'] + '[/INST]' }}"
      "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token}}{% endif %}{% endfor %}",
  };
  return templates;
}

}  // namespace svdq::fuzz
