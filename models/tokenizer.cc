// The BPE tokenizer core shared by every source: added-token matching, normalization,
// pre-tokenization, merges over byte or character symbols, and decoding. Also the GGUF
// and synthetic constructors; tokenizer_json.cc holds the Hugging Face one.
#include "models/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <queue>
#include <tuple>

#include "models/gguf.h"
#include "models/unicode.h"

namespace svdq::models {
namespace {

uint64_t PairKey(int32_t a, int32_t b) { return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b); }

const std::string kEmpty;

// The byte of a "<0xXX>" token, or -1.
int ByteFallbackValue(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    char c = t[k];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

std::string ReplaceAll(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
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

void Tokenizer::InitByteMap() {
  // GPT-2's byte -> printable character map.
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++);
    byte_to_unicode_[b].clear();
    AppendUtf8(cp, &byte_to_unicode_[b]);
    unicode_to_byte_[cp] = static_cast<uint8_t>(b);
  }
}

bool Tokenizer::AddMerge(const std::string& left, const std::string& right, int32_t rank, bool later_wins) {
  auto a = token_to_id_.find(left), b = token_to_id_.find(right), m = token_to_id_.find(left + right);
  if (a == token_to_id_.end() || b == token_to_id_.end() || m == token_to_id_.end()) return false;
  auto entry = std::make_pair(rank, m->second);
  if (later_wins) merges_[PairKey(a->second, b->second)] = entry;
  else merges_.emplace(PairKey(a->second, b->second), entry);
  return true;
}

void Tokenizer::Finish() {
  // Longest first, so that an added token that prefixes another never shadows it.
  std::stable_sort(added_tokens_.begin(), added_tokens_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id_.find(byte_to_unicode_[b]);
    byte_ids_[b] = it == token_to_id_.end() ? -1 : it->second;
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    it = token_to_id_.find(name);
    byte_fallback_ids_[b] = it == token_to_id_.end() ? -1 : it->second;
  }
  token_bytes_.assign(tokens_.size(), std::string());
  for (size_t id = 0; id < tokens_.size(); ++id) {
    const std::string& t = tokens_[id];
    std::string& out = token_bytes_[id];
    if (special_[id]) {
      out = t;
    } else if (byte_level_) {
      for (size_t i = 0; i < t.size();) {
        int len = Utf8SeqLen(t, i);
        if (len <= 0) break;
        std::u32string cp;
        size_t bad;
        DecodeUtf8(t.substr(i, len), &cp, &bad);
        auto it = unicode_to_byte_.find(cp[0]);
        if (it != unicode_to_byte_.end()) out.push_back(static_cast<char>(it->second));
        else out.append(t, i, len);  // not a byte stand-in (user-defined token text): keep as is
        i += len;
      }
    } else if (int v = decode_byte_fallback_ ? ByteFallbackValue(t) : -1; v >= 0) {
      out.push_back(static_cast<char>(v));
    } else {
      out = t;
      for (const auto& r : decode_replace_) out = ReplaceAll(out, r.first, r.second);
    }
  }
}

std::unique_ptr<Tokenizer> Tokenizer::FromGguf(const GgufFile& f) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  std::string model = f.GetString("tokenizer.ggml.model", "");
  if (model != "gpt2")
    throw FormatError(f.path() + ": tokenizer model '" + model + "' is not supported (only byte-level BPE, 'gpt2')");
  // The pre-tokenizer llama.cpp's converter names: GPT-2's split (SmolLM's with digits one by
  // one), or Llama 3's / Qwen2's split regex before a byte-level step without its own regex
  // (Qwen2 also puts text in NFC first), as their tokenizer.json files say.
  std::string pre = f.GetString("tokenizer.ggml.pre", "gpt2");
  PreTokenizeStep bytes;
  bytes.kind = PreTokenizeStep::Kind::kByteLevel;
  if (pre == "smollm") {
    PreTokenizeStep digits;
    digits.kind = PreTokenizeStep::Kind::kDigits;
    digits.individual_digits = true;
    t->pre_tokenizer_.push_back(digits);
  } else if (pre == "qwen2" || pre == "llama-bpe") {
    if (pre == "qwen2") t->normalizer_.push_back({NormalizeStep::Kind::kNfc, {}, {}});
    PreTokenizeStep split;
    split.kind = PreTokenizeStep::Kind::kSplit;
    split.pattern = pre == "qwen2" ? SplitPattern::kQwen2 : SplitPattern::kLlama3;
    t->pre_tokenizer_.push_back(split);
    bytes.use_regex = false;
  } else if (pre != "gpt2" && pre != "default") {
    throw FormatError(f.path() + ": pre-tokenizer '" + pre + "' is not supported (gpt2, smollm, qwen2, llama-bpe)");
  }
  t->pre_tokenizer_.push_back(bytes);

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
      // 3 = control, 4 = user defined: matched whole in input text (an empty one never: it
      // would match everywhere without consuming anything).
      if (ty == 3 || ty == 4) {
        t->special_[k] = (ty == 3);
        if (t->tokens_[k].empty()) continue;
        std::u32string text;
        size_t bad;
        if (!DecodeUtf8(t->tokens_[k], &text, &bad)) throw FormatError(f.path() + ": token " + std::to_string(k) + " is not UTF-8");
        t->added_tokens_.emplace_back(std::move(text), static_cast<int32_t>(k));
      }
    }
  }
  t->InitByteMap();
  // Merges are "left right"; one naming a token not in the vocabulary can never apply.
  const GgufValue& merges = f.Get("tokenizer.ggml.merges");
  for (size_t k = 0; k < merges.array.size(); ++k) {
    const std::string& m = merges.array[k].s;
    size_t sp = m.find(' ', 1);
    if (sp != std::string::npos) t->AddMerge(m.substr(0, sp), m.substr(sp + 1), static_cast<int32_t>(k), false);
  }

  // Special ids outside the vocabulary count as absent (as llama.cpp treats them): an unknown
  // token emitted for a byte with no token of its own, or a BOS, would index past the
  // embedding. EOS is required.
  auto id_or_none = [&](const char* key) {
    const int64_t id = f.GetInt(key, -1);
    return id >= 0 && id < static_cast<int64_t>(n) ? static_cast<int32_t>(id) : -1;
  };
  t->bos_id_ = id_or_none("tokenizer.ggml.bos_token_id");
  t->eos_id_ = id_or_none("tokenizer.ggml.eos_token_id");
  t->unk_id_ = id_or_none("tokenizer.ggml.unknown_token_id");
  if (t->eos_id_ < 0) throw FormatError(f.path() + ": missing or invalid eos token id");
  t->eos_ids_ = {t->eos_id_};
  t->add_bos_ = f.GetInt("tokenizer.ggml.add_bos_token", 0) != 0 && t->bos_id_ >= 0;
  t->chat_template_ = f.GetString("tokenizer.chat_template", "");
  t->Finish();
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::ByteLevel(int32_t vocab_size) {
  if (vocab_size < 258)
    throw std::invalid_argument("Tokenizer::ByteLevel: vocab_size " + std::to_string(vocab_size) +
                                " is below 258 (256 bytes, one unused token, <|eos|>)");
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->InitByteMap();
  t->special_.assign(vocab_size, true);
  for (int b = 0; b < 256; ++b) {
    t->tokens_.push_back(t->byte_to_unicode_[b]);
    t->token_to_id_.emplace(t->byte_to_unicode_[b], b);
    t->special_[b] = false;
  }
  for (int32_t id = 256; id < vocab_size - 1; ++id) t->tokens_.push_back("<|synthetic_" + std::to_string(id) + "|>");
  t->tokens_.push_back("<|eos|>");
  t->eos_id_ = vocab_size - 1;
  t->eos_ids_ = {t->eos_id_};
  t->Finish();
  return t;
}

bool Tokenizer::IsEos(int32_t id) const { return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end(); }

const std::string& Tokenizer::TokenBytes(int32_t id) const {
  return id >= 0 && id < vocab_size() ? token_bytes_[id] : kEmpty;
}

// Applies merges lowest rank first, leftmost among equal ranks (as `tokenizers` does), in
// O(n log n): a heap of candidate pairs over a linked list of symbols.
void Tokenizer::MergeSymbols(std::vector<int32_t>* sym) const {
  size_t n = sym->size();
  if (n < 2 || merges_.empty()) return;
  std::vector<int32_t>& id = *sym;
  std::vector<int> prev(n), next(n);
  for (size_t k = 0; k < n; ++k) {
    prev[k] = static_cast<int>(k) - 1;
    next[k] = k + 1 < n ? static_cast<int>(k) + 1 : -1;
  }
  using Cand = std::tuple<int32_t, int, int32_t, int32_t>;  // rank, left position, left id, right id
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    auto it = merges_.find(PairKey(id[left], id[next[left]]));
    if (it != merges_.end()) heap.emplace(it->second.first, left, id[left], id[next[left]]);
  };
  for (size_t k = 0; k + 1 < n; ++k) push(static_cast<int>(k));
  std::vector<bool> dead(n, false);
  while (!heap.empty()) {
    auto [rank, left, a, b] = heap.top();
    heap.pop();
    int right = next[left];
    if (dead[left] || right < 0 || id[left] != a || id[right] != b) continue;  // stale candidate
    id[left] = merges_.at(PairKey(a, b)).second;
    dead[right] = true;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    push(prev[left]);
    push(left);
  }
  size_t w = 0;
  for (int k = 0; k >= 0; k = next[k]) id[w++] = id[k];
  id.resize(w);
}

void Tokenizer::EncodeWord(const std::string& word, std::vector<int32_t>* out) const {
  std::vector<int32_t> sym;
  if (byte_level_) {
    if (ignore_merges_) {
      std::string key;
      for (unsigned char c : word) key += byte_to_unicode_[c];
      auto it = token_to_id_.find(key);
      if (it != token_to_id_.end()) {
        out->push_back(it->second);
        return;
      }
    }
    for (unsigned char c : word) sym.push_back(byte_ids_[c]);
  } else {
    if (ignore_merges_) {
      auto it = token_to_id_.find(word);
      if (it != token_to_id_.end()) {
        out->push_back(it->second);
        return;
      }
    }
    bool last_unk = false;
    for (size_t i = 0; i < word.size();) {
      int len = Utf8SeqLen(word, i);
      std::string ch = word.substr(i, len);
      i += len;
      auto it = token_to_id_.find(ch);
      if (it != token_to_id_.end()) {
        sym.push_back(it->second);
        last_unk = false;
        continue;
      }
      if (byte_fallback_ && std::all_of(ch.begin(), ch.end(), [&](char c) { return byte_fallback_ids_[static_cast<unsigned char>(c)] >= 0; })) {
        for (unsigned char c : ch) sym.push_back(byte_fallback_ids_[c]);
        last_unk = false;
        continue;
      }
      if (unk_id_ < 0 || (fuse_unk_ && last_unk)) continue;
      sym.push_back(unk_id_);
      last_unk = true;
    }
  }
  MergeSymbols(&sym);
  for (int32_t s : sym) {
    if (s >= 0) out->push_back(s);
    else if (unk_id_ >= 0) out->push_back(unk_id_);
  }
}

void Tokenizer::EncodeSegment(std::u32string text, bool at_text_start, std::vector<int32_t>* out) const {
  for (const auto& step : normalizer_) ApplyNormalizeStep(step, &text);
  std::vector<PreToken> pieces{{std::move(text), at_text_start}};
  for (const auto& step : pre_tokenizer_) ApplyPreTokenizeStep(step, &pieces);
  for (const auto& p : pieces)
    if (!p.text.empty()) EncodeWord(ToUtf8(p.text), out);
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text) const {
  std::u32string s;
  size_t bad = 0;
  if (!DecodeUtf8(text, &s, &bad)) throw TokenizerError("input is not valid UTF-8 (at byte " + std::to_string(bad) + ")");
  std::vector<int32_t> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    const std::pair<std::u32string, int32_t>* hit = nullptr;
    for (const auto& st : added_tokens_) {
      if (st.first.size() <= s.size() - i && s.compare(i, st.first.size(), st.first) == 0) {
        hit = &st;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    if (i > start) EncodeSegment(s.substr(start, i - start), start == 0, &out);
    out.push_back(hit->second);
    i += hit->first.size();
    start = i;
  }
  if (start < s.size()) EncodeSegment(s.substr(start), start == 0, &out);
  return out;
}

std::vector<int32_t> Tokenizer::EncodePrompt(const std::string& text) const {
  std::vector<int32_t> ids;
  if (add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
  std::vector<int32_t> rest = Encode(text);
  ids.insert(ids.end(), rest.begin(), rest.end());
  return ids;
}

std::string Tokenizer::DecodeBytes(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  int strip = strip_leading_spaces_;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || (skip_special && special_[id])) continue;
    const std::string& b = token_bytes_[id];
    size_t k = 0;
    while (strip > 0 && k < b.size() && b[k] == ' ') ++k, --strip;
    if (k < b.size()) strip = 0;
    out.append(b, k, std::string::npos);
  }
  return out;
}

std::string IncrementalDetokenizer::Push(int32_t id) {
  if (tok_.IsSpecial(id)) return "";
  const std::string& b = tok_.TokenBytes(id);
  size_t k = 0;
  while (strip_left_ > 0 && k < b.size() && b[k] == ' ') ++k, --strip_left_;
  if (k < b.size()) strip_left_ = 0;
  pending_.append(b, k, std::string::npos);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    int len = Utf8SeqLen(pending_, i);
    if (len < 0) break;  // incomplete: wait for the next token
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // one U+FFFD per maximal invalid subpart, as HF's lossy decode does
      i += Utf8MaximalSubpart(pending_, i);
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
