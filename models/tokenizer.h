// BPE tokenizer built from a GGUF file's tokenizer.ggml.* metadata or a Hugging Face
// tokenizer.json (byte-level BPE, or SentencePiece-style BPE with byte fallback), a
// byte-level stand-in for synthetic models, and an incremental detokenizer that never
// emits half a UTF-8 character.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "models/pre_tokenizer.h"

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
  // Reads tokenizer.ggml.{model,pre,tokens,token_type,merges,bos/eos ids,add_bos_token}.
  // Only the byte-level BPE model ("gpt2") with the "gpt2" or "smollm" pre-tokenizers is
  // accepted; anything else throws FormatError naming it.
  static std::unique_ptr<Tokenizer> FromGguf(const GgufFile& f);

  // Reads DIR/tokenizer.json (required), DIR/tokenizer_config.json (bos/eos tokens,
  // add_bos_token, chat_template; else DIR/chat_template.jinja) and
  // DIR/generation_config.json (eos_token_id int or list, bos_token_id), all optional but
  // the first. Throws FormatError naming the file and the component it cannot accept
  // (tokenizer_json.cc lists what is supported).
  static std::unique_ptr<Tokenizer> FromHuggingFace(const std::string& dir);

  // For models with synthetic weights: ids 0..255 are the single bytes (any text encodes
  // to its bytes), 256..vocab_size-2 unused specials "<|synthetic_N|>", vocab_size-1 the
  // special "<|eos|>". No token is matched in text. Throws std::invalid_argument for
  // vocab_size < 258.
  static std::unique_ptr<Tokenizer> ByteLevel(int32_t vocab_size);

  // Added (special and user-defined) tokens in the text are matched whole, longest first;
  // the rest is normalized, pre-tokenized and merged by BPE. Never adds BOS.
  // Throws TokenizerError on invalid UTF-8.
  std::vector<int32_t> Encode(const std::string& text) const;
  // Encode, with bos_id() in front when add_bos().
  std::vector<int32_t> EncodePrompt(const std::string& text) const;
  // Concatenated bytes of the tokens, with the decoder's start-of-text strip applied; may
  // end in an incomplete UTF-8 sequence.
  std::string DecodeBytes(const std::vector<int32_t>& ids, bool skip_special) const;
  // The bytes one token contributes to decoded text, before that strip ("" out of range).
  const std::string& TokenBytes(int32_t id) const;
  // How many leading spaces the decoder removes at the very start of a decode
  // (SentencePiece's Strip after the prepended '▁': 1; byte-level: 0).
  int strip_leading_spaces() const { return strip_leading_spaces_; }

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  // Every end-of-sequence id: eos_id() first, then generation_config.json's others.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool IsEos(int32_t id) const;
  bool add_bos() const { return add_bos_; }
  bool IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id]; }
  const std::string& TokenText(int32_t id) const { return tokens_.at(id); }
  const std::string& chat_template() const { return chat_template_; }

 private:
  friend class HfTokenizerLoader;  // tokenizer_json.cc fills the fields below
  Tokenizer() = default;
  void InitByteMap();
  // After tokens_, special_, token_to_id_ and the decoder settings are set: sorts the
  // added tokens, and computes byte ids and every token's decoded bytes.
  void Finish();
  // Adds (left, right) -> merged at `rank`; false if a name is not in the vocabulary.
  bool AddMerge(const std::string& left, const std::string& right, int32_t rank, bool later_wins);
  void EncodeSegment(std::u32string text, bool at_text_start, std::vector<int32_t>* out) const;
  void EncodeWord(const std::string& word, std::vector<int32_t>* out) const;
  void MergeSymbols(std::vector<int32_t>* sym) const;

  std::vector<std::string> tokens_;          // as stored: byte-level stand-ins or '▁' text
  std::vector<bool> special_;
  std::unordered_map<std::string, int32_t> token_to_id_;  // the model vocabulary
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, merged)
  std::vector<std::pair<std::u32string, int32_t>> added_tokens_;      // matched whole in text
  std::vector<NormalizeStep> normalizer_;
  std::vector<PreTokenizeStep> pre_tokenizer_;
  bool byte_level_ = true;       // symbols are bytes through GPT-2's map; else characters
  bool ignore_merges_ = false;   // a word that is itself a token is emitted whole
  bool byte_fallback_ = false;   // an unknown character becomes its <0xXX> byte tokens
  bool fuse_unk_ = false;
  bool add_bos_ = false;
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1;
  std::vector<int32_t> eos_ids_;
  std::string chat_template_;
  // Decoder (SentencePiece kind): replacements applied to token text, <0xXX> -> byte.
  std::vector<std::pair<std::string, std::string>> decode_replace_;
  bool decode_byte_fallback_ = false;
  int strip_leading_spaces_ = 0;
  std::vector<std::string> token_bytes_;
  int32_t byte_ids_[256];                    // byte-level symbol id of each byte, or -1
  int32_t byte_fallback_ids_[256];           // id of "<0xXX>", or -1
  std::string byte_to_unicode_[256];         // UTF-8 of the printable stand-in for each byte
  std::unordered_map<uint32_t, uint8_t> unicode_to_byte_;
};

// Turns a stream of token ids into text deltas; holds back bytes of an unfinished
// UTF-8 character until it completes. Special tokens are skipped. Applies the decoder's
// start-of-text strip to the first text it emits only.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tok) : tok_(tok), strip_left_(tok.strip_leading_spaces()) {}
  std::string Push(int32_t id);
  // Whatever is pending at the end; an incomplete sequence becomes U+FFFD.
  std::string Flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  int strip_left_;
};

}  // namespace svdq::models
