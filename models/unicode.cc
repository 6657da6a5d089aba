// UTF-8 helpers and Unicode class lookups over the generated range tables.
#include "models/unicode.h"

namespace svdq::models {
namespace {

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

}  // namespace

void AppendUtf8(char32_t cp, std::string* out) {
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

std::string ToUtf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) AppendUtf8(c, &out);
  return out;
}

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

int Utf8MaximalSubpart(const std::string& s, size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  int need;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c >= 0xE0 && c <= 0xEF) need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4) need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else return 1;
  int n = 1;
  for (int k = 0; k < need && i + n < s.size(); ++k, ++n) {
    auto cc = static_cast<unsigned char>(s[i + n]);
    if (cc < (k == 0 ? lo : 0x80) || cc > (k == 0 ? hi : 0xBF)) break;
  }
  return n;
}

bool DecodeUtf8(const std::string& s, std::u32string* out, size_t* bad_at) {
  out->clear();
  for (size_t i = 0; i < s.size();) {
    int len = Utf8SeqLen(s, i);
    if (len <= 0) {
      *bad_at = i;
      return false;
    }
    auto c = static_cast<unsigned char>(s[i]);
    char32_t cp = len == 1 ? c : (c & (0x7F >> len));
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out->push_back(cp);
    i += len;
  }
  return true;
}

bool IsLetter(char32_t c) { return c < 0x80 ? ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') : InRanges(kLetterRanges, c); }
bool IsNumber(char32_t c) { return c < 0x80 ? (c >= '0' && c <= '9') : InRanges(kNumberRanges, c); }
bool IsSpace(char32_t c) { return InRanges(kSpaceRanges, c); }
bool IsPythonSpace(char32_t c) { return IsSpace(c) || (c >= 0x1C && c <= 0x1F); }

}  // namespace svdq::models
