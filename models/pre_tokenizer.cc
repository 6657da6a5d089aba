// Split matchers and pre-tokenizer steps. Each matcher follows its regex alternative by
// alternative, in order, as the regex engine (Oniguruma, leftmost-first) would.
#include "models/pre_tokenizer.h"

#include "models/unicode.h"
#include "models/unicode_normalize.h"

namespace svdq::models {
namespace {

const char* const kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool IsPunct(char32_t c) { return !IsSpace(c) && !IsLetter(c) && !IsNumber(c); }
bool IsNewline(char32_t c) { return c == U'\r' || c == U'\n'; }

// \s+(?!\S)|\s+ at a whitespace character s[i].
size_t TrailingSpaceEnd(const std::u32string& s, size_t i) {
  size_t n = s.size(), k = i;
  while (k < n && IsSpace(s[k])) ++k;
  if (k == n || k - i == 1) return k;  // at the end, or \s+ of one character
  return k - 1;                         // leave the last space to prefix the next word
}

// The contractions 's 't 're 've 'm 'll 'd, case-sensitive or not; 0 if none at i.
size_t ContractionEnd(const std::u32string& s, size_t i, bool ignore_case) {
  size_t n = s.size();
  if (s[i] != U'\'' || i + 1 >= n) return 0;
  auto low = [ignore_case](char32_t c) -> char32_t {
    if (!ignore_case) return c;
    if (c == U'\u017F') return U's';  // LATIN SMALL LETTER LONG S folds to s
    return (c >= U'A' && c <= U'Z') ? c + 32 : c;
  };
  char32_t a = low(s[i + 1]);
  if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
  if (i + 2 < n) {
    char32_t b = low(s[i + 2]);
    if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return i + 3;
  }
  return 0;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t Gpt2MatchEnd(const std::u32string& s, size_t i) {
  size_t n = s.size();
  if (size_t e = ContractionEnd(s, i, false)) return e;
  size_t j = (s[i] == U' ' && i + 1 < n) ? i + 1 : i;
  if (IsLetter(s[j])) {
    while (j < n && IsLetter(s[j])) ++j;
    return j;
  }
  if (IsNumber(s[j])) {
    while (j < n && IsNumber(s[j])) ++j;
    return j;
  }
  if (!IsSpace(s[j])) {
    while (j < n && IsPunct(s[j])) ++j;
    return j;
  }
  return TrailingSpaceEnd(s, i);
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
//  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
size_t Llama3MatchEnd(const std::u32string& s, size_t i, size_t max_digits) {
  size_t n = s.size();
  if (size_t e = ContractionEnd(s, i, true)) return e;
  char32_t c = s[i];
  size_t j = i;
  if (!IsLetter(c) && !IsNumber(c) && !IsNewline(c) && i + 1 < n && IsLetter(s[i + 1])) j = i + 1;
  if (IsLetter(s[j])) {
    while (j < n && IsLetter(s[j])) ++j;
    return j;
  }
  if (IsNumber(c)) {
    while (j < n && j - i < max_digits && IsNumber(s[j])) ++j;
    return j;
  }
  j = (c == U' ' && i + 1 < n && IsPunct(s[i + 1])) ? i + 1 : i;
  if (IsPunct(s[j])) {
    while (j < n && IsPunct(s[j])) ++j;
    while (j < n && IsNewline(s[j])) ++j;
    return j;
  }
  // s[i] is whitespace. \s*[\r\n]+ ends just after the run's last newline, if it has one.
  size_t k = i, last_newline = n;
  while (k < n && IsSpace(s[k])) {
    if (IsNewline(s[k])) last_newline = k;
    ++k;
  }
  if (last_newline != n) return last_newline + 1;
  return TrailingSpaceEnd(s, i);
}

}  // namespace

bool SplitPatternFromRegex(const std::string& regex, SplitPattern* out) {
  if (regex == kGpt2Regex) *out = SplitPattern::kGpt2;
  else if (regex == kLlama3Regex) *out = SplitPattern::kLlama3;
  else if (regex == kQwen2Regex) *out = SplitPattern::kQwen2;
  else return false;
  return true;
}

size_t SplitMatchEnd(SplitPattern p, const std::u32string& s, size_t i) {
  switch (p) {
    case SplitPattern::kGpt2: return Gpt2MatchEnd(s, i);
    case SplitPattern::kLlama3: return Llama3MatchEnd(s, i, 3);
    case SplitPattern::kQwen2: return Llama3MatchEnd(s, i, 1);
  }
  return i + 1;
}

namespace {

// Replaces every piece by its parts [0, e1), [e1, e2), ... where e = end(text, start).
template <typename EndFn>
void SplitEach(std::vector<PreToken>* pieces, EndFn end) {
  std::vector<PreToken> out;
  out.reserve(pieces->size());
  for (auto& p : *pieces) {
    for (size_t i = 0; i < p.text.size();) {
      size_t j = end(p.text, i);
      out.push_back({p.text.substr(i, j - i), p.at_text_start && i == 0});
      i = j;
    }
  }
  *pieces = std::move(out);
}

}  // namespace

void ApplyPreTokenizeStep(const PreTokenizeStep& step, std::vector<PreToken>* pieces) {
  using Kind = PreTokenizeStep::Kind;
  switch (step.kind) {
    case Kind::kDigits:
      SplitEach(pieces, [&](const std::u32string& s, size_t i) {
        size_t j = i + 1;
        bool num = IsNumber(s[i]);
        if (num && step.individual_digits) return j;
        while (j < s.size() && IsNumber(s[j]) == num) ++j;
        return j;
      });
      break;
    case Kind::kSplit:
      SplitEach(pieces, [&](const std::u32string& s, size_t i) { return SplitMatchEnd(step.pattern, s, i); });
      break;
    case Kind::kByteLevel:
      if (step.add_prefix_space)
        for (auto& p : *pieces)
          if (!p.text.empty() && p.text[0] != U' ') p.text.insert(p.text.begin(), U' ');
      if (step.use_regex) SplitEach(pieces, Gpt2MatchEnd);
      break;
    case Kind::kMetaspace:
      for (auto& p : *pieces) {
        for (auto& c : p.text)
          if (c == U' ') c = step.replacement;
        bool prepend = step.prepend == PreTokenizeStep::Prepend::kAlways ||
                       (step.prepend == PreTokenizeStep::Prepend::kFirst && p.at_text_start);
        if (prepend && !p.text.empty() && p.text[0] != step.replacement) p.text.insert(p.text.begin(), step.replacement);
      }
      if (step.split)  // each part starts at a replacement character (MergedWithNext)
        SplitEach(pieces, [&](const std::u32string& s, size_t i) {
          size_t j = i + 1;
          while (j < s.size() && s[j] != step.replacement) ++j;
          return j;
        });
      break;
  }
}

}  // namespace svdq::models

namespace svdq::models {

void ApplyNormalizeStep(const NormalizeStep& step, std::u32string* text) {
  if (step.kind == NormalizeStep::Kind::kNfc) {
    ToNfc(text);
    return;
  }
  if (step.kind == NormalizeStep::Kind::kNfd) {
    ToNfd(text);
    return;
  }
  if (step.kind == NormalizeStep::Kind::kPrepend) {
    if (!text->empty()) text->insert(0, step.to);
    return;
  }
  if (step.from.empty()) return;
  std::u32string out;
  for (size_t i = 0; i < text->size();) {
    if (text->compare(i, step.from.size(), step.from) == 0) {
      out += step.to;
      i += step.from.size();
    } else {
      out.push_back((*text)[i++]);
    }
  }
  *text = std::move(out);
}

}  // namespace svdq::models
