// NFC and NFD over the generated Unicode 9.0.0 tables (binary search in sorted arrays) and
// the Hangul syllable arithmetic of Unicode's chapter 3.12.
#include "models/unicode_normalize.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace svdq::models {
namespace {

struct CccRun {
  char32_t lo, hi;
  uint8_t ccc;
};
struct Decomposition {
  char32_t cp, first, second;  // second: 0 for a singleton
};
struct Composition {
  char32_t first, second, composite;
};
#include "models/unicode_nfc_tables.inc"

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

const Decomposition* FindDecomposition(char32_t c) {
  auto end = std::end(kDecompositions);
  auto it = std::lower_bound(std::begin(kDecompositions), end, c,
                             [](const Decomposition& d, char32_t x) { return d.cp < x; });
  return it != end && it->cp == c ? it : nullptr;
}

// Appends the full canonical decomposition of c. The generator checks that the second
// element of a pair never decomposes, so only the first needs recursion (depth <= 3).
void Decompose(char32_t c, std::u32string* out) {
  if (c < kNfdFastLimit) {
    out->push_back(c);
  } else if (c >= kSBase && c < kSBase + kSCount) {
    char32_t s = c - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
  } else if (const Decomposition* d = FindDecomposition(c)) {
    Decompose(d->first, out);
    if (d->second != 0) out->push_back(d->second);
  } else {
    out->push_back(c);
  }
}

// The primary composite of (a, b), or 0 if there is none.
char32_t Compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  auto end = std::end(kCompositions);
  auto before = [](const Composition& x, const Composition& y) {
    return x.first != y.first ? x.first < y.first : x.second < y.second;
  };
  auto it = std::lower_bound(std::begin(kCompositions), end, Composition{a, b, 0}, before);
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

bool AllBelow(const std::u32string& text, char32_t limit) {
  return std::all_of(text.begin(), text.end(), [limit](char32_t c) { return c < limit; });
}

// Decomposes and orders `text` into *out, with the class of each output character in *ccc.
void DecomposeAndOrder(const std::u32string& text, std::u32string* out, std::vector<uint8_t>* ccc) {
  out->clear();
  out->reserve(text.size() + text.size() / 2);
  for (char32_t c : text) Decompose(c, out);
  ccc->resize(out->size());
  for (size_t i = 0; i < out->size(); ++i) (*ccc)[i] = static_cast<uint8_t>(CanonicalCombiningClass((*out)[i]));
  // Runs of non-starters are short (a few marks), so insertion sort: stable, in place.
  for (size_t i = 1; i < out->size(); ++i) {
    uint8_t k = (*ccc)[i];
    if (k == 0) continue;
    char32_t c = (*out)[i];
    size_t j = i;
    for (; j > 0 && (*ccc)[j - 1] > k; --j) {
      (*out)[j] = (*out)[j - 1];
      (*ccc)[j] = (*ccc)[j - 1];
    }
    (*out)[j] = c;
    (*ccc)[j] = k;
  }
}

}  // namespace

int CanonicalCombiningClass(char32_t c) {
  if (c < kNfcFastLimit) return 0;
  auto end = std::end(kCccRuns);
  auto it = std::upper_bound(std::begin(kCccRuns), end, c, [](char32_t x, const CccRun& r) { return x < r.lo; });
  if (it == std::begin(kCccRuns)) return 0;
  --it;  // the last run starting at or before c
  return c <= it->hi ? it->ccc : 0;
}

void ToNfd(std::u32string* text) {
  if (AllBelow(*text, kNfdFastLimit)) return;
  std::u32string out;
  std::vector<uint8_t> ccc;
  DecomposeAndOrder(*text, &out, &ccc);
  *text = std::move(out);
}

void ToNfc(std::u32string* text) {
  if (AllBelow(*text, kNfcFastLimit)) return;
  std::u32string buf;
  std::vector<uint8_t> ccc;
  DecomposeAndOrder(*text, &buf, &ccc);
  // Canonical composition in place: `starter` is the output index of the last starter (none
  // yet: the text opens with non-starters), `last` the class of the last character kept,
  // which is 0 exactly when that character is the starter itself (adjacent). A character is
  // blocked from the starter when one kept between them has class 0 or >= its own; the
  // classes kept after a starter never decrease, so the last one decides.
  size_t kept = 0, starter = 0;
  bool have_starter = false;
  int last = 0;
  for (size_t i = 0; i < buf.size(); ++i) {
    char32_t c = buf[i];
    int k = ccc[i];
    if (have_starter && (last == 0 || last < k)) {
      if (char32_t comp = Compose(buf[starter], c)) {
        buf[starter] = comp;
        continue;
      }
    }
    if (k == 0) {
      starter = kept;
      have_starter = true;
    }
    last = k;
    buf[kept++] = c;
  }
  buf.resize(kept);
  *text = std::move(buf);
}

}  // namespace svdq::models
