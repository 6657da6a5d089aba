// Byte-level BPE tokenizer built from a GGUF file's tokenizer.ggml.* metadata, and an
// incremental detokenizer that never emits half a UTF-8 character.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace svdq::models {

class GgufFile;

// Thrown for text the tokenizer cannot accept (invalid UTF-8).
class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

bool IsValidUtf8(const std::string& s);

class Tokenizer {
 public:
  // Reads tokenizer.ggml.{model,pre,tokens,token_type,merges,bos/eos ids}. Only the
  // byte-level BPE model ("gpt2") with the "gpt2" or "smollm" pre-tokenizers is accepted;
  // anything else throws FormatError naming it.
  static std::unique_ptr<Tokenizer> FromGguf(const GgufFile& f);

  // Special (control / user-defined) tokens in the text are matched whole, the rest is
  // split by the pre-tokenizer and merged by BPE. Throws TokenizerError on invalid UTF-8.
  std::vector<int32_t> Encode(const std::string& text) const;
  // Concatenated bytes of the tokens; may end in an incomplete UTF-8 sequence.
  std::string DecodeBytes(const std::vector<int32_t>& ids, bool skip_special) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  bool IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id]; }
  const std::string& TokenText(int32_t id) const { return tokens_.at(id); }
  const std::string& chat_template() const { return chat_template_; }

 private:
  Tokenizer() = default;
  void EncodeWord(const std::string& word, std::vector<int32_t>* out) const;
  void EncodeOrdinary(const std::u32string& text, std::vector<int32_t>* out) const;

  std::vector<std::string> tokens_;          // byte-level encoded strings
  std::vector<bool> special_;
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::unordered_map<std::string, int32_t> merge_rank_;  // "left right" -> rank
  std::vector<std::pair<std::u32string, int32_t>> special_tokens_;  // matched in text
  bool split_digits_ = false;
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1;
  std::string chat_template_;
  std::string byte_to_unicode_[256];         // UTF-8 of the printable stand-in for each byte
  std::unordered_map<uint32_t, uint8_t> unicode_to_byte_;
};

// Turns a stream of token ids into text deltas; holds back bytes of an unfinished
// UTF-8 character until it completes. Special tokens are skipped.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tok) : tok_(tok) {}
  std::string Push(int32_t id);
  // Whatever is pending at the end; an incomplete sequence becomes U+FFFD.
  std::string Flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace svdq::models
