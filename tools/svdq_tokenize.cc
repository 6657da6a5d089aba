// svdq-tokenize: the tokenizer and chat formats without torch, for the parity tests in
// tests/integration and for looking at a model's tokenization. Reads JSON on stdin,
// writes JSON on stdout; errors go to stderr with exit status 1.
//   svdq-tokenize SOURCE encode < in.json         in: ["text", ...]; out: [[ids], ...]
//   svdq-tokenize SOURCE encode-prompt < in.json  the same, BOS added when the model adds it
//   svdq-tokenize SOURCE decode < in.json         in: [[ids], ...]; out: ["text", ...]
//                                                 (streamed through IncrementalDetokenizer)
//   svdq-tokenize SOURCE chat < in.json           in: [[{"role", "content"}, ...], ...];
//                                                 out: ["rendered prompt", ...]
//   svdq-tokenize nfc|nfd < in.json               in: ["text", ...]; out: ["normalized", ...]
//                                                 (the tokenizer.json normalizers, no SOURCE)
// SOURCE is a .gguf file or a Hugging Face tokenizer directory.
#include <sys/stat.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "models/chat_format.h"
#include "models/gguf.h"
#include "models/tokenizer.h"
#include "models/unicode.h"
#include "models/unicode_normalize.h"

using namespace svdq::models;
using nlohmann::json;

namespace {

std::unique_ptr<Tokenizer> Load(const std::string& source) {
  struct stat st {};
  if (stat(source.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return Tokenizer::FromHuggingFace(source);
  auto f = GgufFile::Open(source);
  return Tokenizer::FromGguf(*f);
}

json Run(const Tokenizer& tok, const std::string& cmd, const json& in) {
  json out = json::array();
  if (cmd == "encode" || cmd == "encode-prompt") {
    for (const auto& s : in) out.push_back(cmd == "encode" ? tok.Encode(s.get<std::string>()) : tok.EncodePrompt(s.get<std::string>()));
  } else if (cmd == "decode") {
    for (const auto& ids : in) {
      IncrementalDetokenizer d(tok);
      std::string text;
      for (int32_t id : ids.get<std::vector<int32_t>>()) text += d.Push(id);
      out.push_back(text + d.Flush());
    }
  } else if (cmd == "chat") {
    ChatFormat fmt;
    if (!ChatFormat::FromTemplate(tok.chat_template(), &fmt))
      throw std::runtime_error("the chat template is not one svdq knows (chatml, llama3, [INST])");
    for (const auto& chat : in) {
      std::vector<ChatTurn> turns;
      for (const auto& m : chat) turns.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
      std::string prompt, error;
      if (!fmt.Render(turns, &prompt, &error)) throw std::runtime_error("chat: " + error);
      out.push_back(prompt);
    }
  } else {
    throw std::runtime_error("unknown command '" + cmd + "' (encode, encode-prompt, decode, chat)");
  }
  return out;
}

json Normalize(const std::string& form, const json& in) {
  json out = json::array();
  for (const auto& s : in) {
    std::u32string text;
    size_t bad = 0;
    if (!DecodeUtf8(s.get<std::string>(), &text, &bad))
      throw std::runtime_error("input is not valid UTF-8 (at byte " + std::to_string(bad) + ")");
    if (form == "nfc") ToNfc(&text);
    else ToNfd(&text);
    out.push_back(ToUtf8(text));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool normalize = argc == 2 && (std::string(argv[1]) == "nfc" || std::string(argv[1]) == "nfd");
  if (argc != 3 && !normalize) {
    std::cerr << "usage: svdq-tokenize SOURCE encode|encode-prompt|decode|chat < in.json\n"
                 "       svdq-tokenize nfc|nfd < in.json\n";
    return 1;
  }
  try {
    if (normalize) {
      std::cout << Normalize(argv[1], json::parse(std::cin)).dump() << "\n";
      return 0;
    }
    auto tok = Load(argv[1]);
    json in = json::parse(std::cin);
    std::cout << Run(*tok, argv[2], in).dump() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "svdq-tokenize: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
