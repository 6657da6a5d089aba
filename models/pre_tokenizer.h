// Pre-tokenizers: split text into the words BPE merges within. The split regexes of the
// GPT-2, Llama 3 and Qwen2 tokenizers are hand-written matchers over code points (C++'s
// std::regex has neither \p{L} nor lookahead), recognized by their exact pattern text.
#pragma once

#include <string>
#include <vector>

namespace svdq::models {

enum class SplitPattern { kGpt2, kLlama3, kQwen2 };

// The pattern whose regex source is exactly `regex`; false for any other text.
bool SplitPatternFromRegex(const std::string& regex, SplitPattern* out);

// End of the match of `p` that starts at s[i] (i < s.size()); always > i.
size_t SplitMatchEnd(SplitPattern p, const std::u32string& s, size_t i);

// A piece of text on its way through the pre-tokenizer steps. `at_text_start`: the piece
// begins at offset 0 of the whole input (Metaspace's prepend_scheme "first" looks at it).
struct PreToken {
  std::u32string text;
  bool at_text_start = false;
};

// One step of a Hugging Face pre_tokenizer Sequence, applied to every piece in turn.
struct PreTokenizeStep {
  enum class Kind {
    kDigits,     // numeric characters split off: one by one (individual) or as runs
    kSplit,      // matches of `pattern` isolated
    kByteLevel,  // optional prefix space, then (use_regex) the GPT-2 split
    kMetaspace,  // ' ' -> replacement, optional prepended replacement, optional split
  };
  enum class Prepend { kNever, kFirst, kAlways };
  Kind kind = Kind::kSplit;
  bool individual_digits = false;
  SplitPattern pattern = SplitPattern::kGpt2;
  bool add_prefix_space = false;
  bool use_regex = true;
  char32_t replacement = U'\u2581';
  Prepend prepend = Prepend::kFirst;
  bool split = false;
};

void ApplyPreTokenizeStep(const PreTokenizeStep& step, std::vector<PreToken>* pieces);

}  // namespace svdq::models

namespace svdq::models {

// One step of a Hugging Face normalizer (Sequence of Prepend, Replace, NFC, NFD): Llama 2's
// SentencePiece files turn spaces into '▁' and put one before every text segment; Qwen2's
// put text in NFC.
struct NormalizeStep {
  enum class Kind { kPrepend, kReplace, kNfc, kNfd };
  Kind kind = Kind::kReplace;
  std::u32string from;  // kReplace: the literal text replaced
  std::u32string to;    // kPrepend: the prefix; kReplace: the replacement
};

// Prepend applies to non-empty text only, as in `tokenizers`.
void ApplyNormalizeStep(const NormalizeStep& step, std::u32string* text);

}  // namespace svdq::models
