// Byte-level BPE. The pre-tokenizer is the GPT-2 split, hand-written over generated
// Unicode class tables (no regex engine at hand has its lookahead and Unicode classes both), optionally preceded by splitting every
// numeric character apart (SmolLM2's "Digits(individual_digits)").
#include "models/tokenizer.h"

#include <algorithm>
#include <climits>

#include "models/gguf.h"

namespace svdq::models {
namespace {

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the UTF-8 sequence starting at s[i] if it is complete and valid, 0 if it is
// invalid, -1 if it is a valid prefix cut short by the end of the string.
int Utf8SeqLen(const std::string& s, size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  int len;
  uint32_t min_cp;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) { len = 2; min_cp = 0x80; }
  else if ((c & 0xF0) == 0xE0) { len = 3; min_cp = 0x800; }
  else if ((c & 0xF8) == 0xF0) { len = 4; min_cp = 0x10000; }
  else return 0;
  uint32_t cp = c & (0x7F >> len);
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -1;
    auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

std::u32string DecodeUtf8(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    int len = Utf8SeqLen(s, i);
    if (len <= 0) throw TokenizerError("input is not valid UTF-8 (at byte " + std::to_string(i) + ")");
    auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp = len == 1 ? c : (c & (0x7F >> len));
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += len;
  }
  return out;
}

struct CodeRange {
  char32_t lo, hi;
};
#include "models/unicode_tables.inc"

template <size_t N>
bool InRanges(const CodeRange (&r)[N], char32_t c) {
  size_t lo = 0, hi = N;  // binary search for the last range starting at or before c
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (r[mid].lo <= c) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 && c <= r[lo - 1].hi;
}

bool IsLetter(char32_t c) { return c < 0x80 ? ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') : InRanges(kLetterRanges, c); }
bool IsNumber(char32_t c) { return c < 0x80 ? (c >= '0' && c <= '9') : InRanges(kNumberRanges, c); }
bool IsSpace(char32_t c) { return InRanges(kSpaceRanges, c); }

// One match of the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// starting at i; returns its end.
size_t Gpt2MatchEnd(const std::u32string& s, size_t i) {
  size_t n = s.size();
  if (s[i] == U'\'' && i + 1 < n) {
    char32_t a = s[i + 1];
    if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
    if (i + 2 < n) {
      char32_t b = s[i + 2];
      if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return i + 3;
    }
  }
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
    while (j < n && !IsSpace(s[j]) && !IsLetter(s[j]) && !IsNumber(s[j])) ++j;
    return j;
  }
  size_t k = i;
  while (k < n && IsSpace(s[k])) ++k;
  if (k == n || k - i == 1) return k;  // at the end, or \s+ of one character
  return k - 1;                         // leave the last space to prefix the next word
}

}  // namespace

bool IsValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    int len = Utf8SeqLen(s, i);
    if (len <= 0) return false;
    i += len;
  }
  return true;
}

std::unique_ptr<Tokenizer> Tokenizer::FromGguf(const GgufFile& f) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  std::string model = f.GetString("tokenizer.ggml.model", "");
  if (model != "gpt2")
    throw FormatError(f.path() + ": tokenizer model '" + model + "' is not supported (only byte-level BPE, 'gpt2')");
  std::string pre = f.GetString("tokenizer.ggml.pre", "gpt2");
  if (pre == "smollm") {
    t->split_digits_ = true;
  } else if (pre != "gpt2" && pre != "default") {
    throw FormatError(f.path() + ": pre-tokenizer '" + pre + "' is not supported (gpt2, smollm)");
  }

  const GgufValue& tokens = f.Get("tokenizer.ggml.tokens");
  if (tokens.kind != GgufValue::Kind::kArray || tokens.array.empty())
    throw FormatError(f.path() + ": tokenizer.ggml.tokens is not a string array");
  size_t n = tokens.array.size();
  t->tokens_.reserve(n);
  t->special_.assign(n, false);
  for (size_t k = 0; k < n; ++k) {
    if (tokens.array[k].kind != GgufValue::Kind::kString) throw FormatError(f.path() + ": non-string token");
    t->tokens_.push_back(tokens.array[k].s);
    t->token_to_id_.emplace(tokens.array[k].s, static_cast<int32_t>(k));
  }
  if (f.Has("tokenizer.ggml.token_type")) {
    const GgufValue& types = f.Get("tokenizer.ggml.token_type");
    if (types.array.size() != n) throw FormatError(f.path() + ": token_type length differs from tokens");
    for (size_t k = 0; k < n; ++k) {
      int64_t ty = types.array[k].AsInt();
      // 3 = control, 4 = user defined: matched whole in input text.
      if (ty == 3 || ty == 4) {
        t->special_[k] = (ty == 3);
        t->special_tokens_.emplace_back(DecodeUtf8(t->tokens_[k]), static_cast<int32_t>(k));
      }
    }
  }
  // Longest first, so that a special token that prefixes another never shadows it.
  std::stable_sort(t->special_tokens_.begin(), t->special_tokens_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });

  const GgufValue& merges = f.Get("tokenizer.ggml.merges");
  for (size_t k = 0; k < merges.array.size(); ++k) t->merge_rank_.emplace(merges.array[k].s, static_cast<int32_t>(k));

  t->bos_id_ = static_cast<int32_t>(f.GetInt("tokenizer.ggml.bos_token_id", -1));
  t->eos_id_ = static_cast<int32_t>(f.GetInt("tokenizer.ggml.eos_token_id", -1));
  t->unk_id_ = static_cast<int32_t>(f.GetInt("tokenizer.ggml.unknown_token_id", -1));
  if (t->eos_id_ < 0 || t->eos_id_ >= static_cast<int32_t>(n)) throw FormatError(f.path() + ": missing or invalid eos token id");
  t->chat_template_ = f.GetString("tokenizer.chat_template", "");

  // GPT-2's byte -> printable character map.
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++);
    AppendUtf8(cp, &t->byte_to_unicode_[b]);
    t->unicode_to_byte_[cp] = static_cast<uint8_t>(b);
  }
  return t;
}

void Tokenizer::EncodeWord(const std::string& word, std::vector<int32_t>* out) const {
  std::vector<std::string> sym;
  for (unsigned char c : word) sym.push_back(byte_to_unicode_[c]);
  while (sym.size() > 1) {
    int best = INT_MAX;
    size_t at = 0;
    for (size_t k = 0; k + 1 < sym.size(); ++k) {
      auto it = merge_rank_.find(sym[k] + " " + sym[k + 1]);
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        at = k;
      }
    }
    if (best == INT_MAX) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + at + 1);
  }
  for (const auto& s : sym) {
    auto it = token_to_id_.find(s);
    if (it != token_to_id_.end()) {
      out->push_back(it->second);
    } else if (unk_id_ >= 0) {
      out->push_back(unk_id_);
    }
  }
}

void Tokenizer::EncodeOrdinary(const std::u32string& text, std::vector<int32_t>* out) const {
  // Stage 1: numeric characters become pieces of their own.
  std::vector<std::u32string> pieces;
  if (split_digits_) {
    std::u32string cur;
    for (char32_t c : text) {
      if (IsNumber(c)) {
        if (!cur.empty()) pieces.push_back(std::move(cur));
        cur.clear();
        pieces.emplace_back(1, c);
      } else {
        cur.push_back(c);
      }
    }
    if (!cur.empty()) pieces.push_back(std::move(cur));
  } else {
    pieces.push_back(text);
  }
  // Stage 2: the GPT-2 split, then BPE on each word's bytes.
  for (const auto& p : pieces) {
    for (size_t i = 0; i < p.size();) {
      size_t j = Gpt2MatchEnd(p, i);
      std::string word;
      for (size_t k = i; k < j; ++k) AppendUtf8(p[k], &word);
      EncodeWord(word, out);
      i = j;
    }
  }
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text) const {
  std::u32string s = DecodeUtf8(text);
  std::vector<int32_t> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    const std::pair<std::u32string, int32_t>* hit = nullptr;
    for (const auto& st : special_tokens_) {
      if (st.first.size() <= s.size() - i && s.compare(i, st.first.size(), st.first) == 0) {
        hit = &st;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    if (i > start) EncodeOrdinary(s.substr(start, i - start), &out);
    out.push_back(hit->second);
    i += hit->first.size();
    start = i;
  }
  if (start < s.size()) EncodeOrdinary(s.substr(start), &out);
  return out;
}

std::string Tokenizer::DecodeBytes(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (special_[id]) {
      if (!skip_special) out += tokens_[id];
      continue;
    }
    const std::string& t = tokens_[id];
    for (size_t i = 0; i < t.size();) {
      int len = Utf8SeqLen(t, i);
      if (len <= 0) break;
      auto c = static_cast<unsigned char>(t[i]);
      uint32_t cp = len == 1 ? c : (c & (0x7F >> len));
      for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(t[i + k]) & 0x3F);
      auto it = unicode_to_byte_.find(cp);
      if (it != unicode_to_byte_.end()) {
        out.push_back(static_cast<char>(it->second));
      } else {
        out.append(t, i, len);  // not a byte stand-in (user-defined token text): keep as is
      }
      i += len;
    }
  }
  return out;
}

std::string IncrementalDetokenizer::Push(int32_t id) {
  pending_ += tok_.DecodeBytes({id}, /*skip_special=*/true);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    int len = Utf8SeqLen(pending_, i);
    if (len < 0) break;  // incomplete: wait for the next token
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // invalid byte: U+FFFD, as HF's lossy decode does
      ++i;
      continue;
    }
    out.append(pending_, i, len);
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out;
  if (!pending_.empty()) out = "\xEF\xBF\xBD";
  pending_.clear();
  return out;
}

}  // namespace svdq::models
