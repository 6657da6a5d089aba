// ToNfc / ToNfd against hand-checked cases of UAX #15: composition, Hangul arithmetic,
// singletons, composition exclusions, canonical ordering, blocking. Parity with Python's
// unicodedata and with `tokenizers` on generated text is in tests/integration.
#include "models/unicode_normalize.h"

#include <gtest/gtest.h>

#include <string>

using namespace svdq::models;

namespace {

std::u32string Nfc(std::u32string s) {
  ToNfc(&s);
  return s;
}

std::u32string Nfd(std::u32string s) {
  ToNfd(&s);
  return s;
}

TEST(UnicodeNormalize, CombiningClasses) {
  EXPECT_EQ(CanonicalCombiningClass(U'a'), 0);
  EXPECT_EQ(CanonicalCombiningClass(U'\u0301'), 230);
  EXPECT_EQ(CanonicalCombiningClass(U'\u0323'), 220);
  EXPECT_EQ(CanonicalCombiningClass(U'\u031B'), 216);
  EXPECT_EQ(CanonicalCombiningClass(U'\u093C'), 7);  // Devanagari nukta
  EXPECT_EQ(CanonicalCombiningClass(U'\u05B0'), 10);
  EXPECT_EQ(CanonicalCombiningClass(U'\U0001D165'), 216);
  EXPECT_EQ(CanonicalCombiningClass(U'\U0010FFFF'), 0);
  // Assigned in Unicode 10.0 (class 232 there): a starter in 9.0's tables, as in `tokenizers`.
  EXPECT_EQ(CanonicalCombiningClass(U'\u1DF6'), 0);
}

TEST(UnicodeNormalize, ComposesBaseAndMark) {
  EXPECT_EQ(Nfc(U"e\u0301"), U"\u00E9");
  EXPECT_EQ(Nfd(U"\u00E9"), U"e\u0301");
  EXPECT_EQ(Nfc(U"cafe\u0301 e\u0301\u0301"), U"caf\u00E9 \u00E9\u0301");  // the second acute has no composite
  // Chained: s + dot below -> U+1E63, + dot above -> U+1E69, whatever order the marks came in.
  EXPECT_EQ(Nfc(U"s\u0307\u0323"), U"\u1E69");
  EXPECT_EQ(Nfd(U"\u1E69"), U"s\u0323\u0307");
  // Vietnamese: e + circumflex + acute -> U+1EBF; U+1EC7 (dot below, circumflex) round-trips.
  EXPECT_EQ(Nfc(U"e\u0302\u0301"), U"\u1EBF");
  EXPECT_EQ(Nfc(Nfd(U"\u1EC7")), U"\u1EC7");
  EXPECT_EQ(Nfd(U"\u1EC7"), U"e\u0323\u0302");
}

TEST(UnicodeNormalize, HangulJamoAndSyllables) {
  EXPECT_EQ(Nfc(U"\u1100\u1161\u11A8"), U"\uAC01");  // L V T
  EXPECT_EQ(Nfc(U"\u1100\u1161"), U"\uAC00");         // L V
  EXPECT_EQ(Nfc(U"\uAC00\u11A8"), U"\uAC01");         // LV T
  EXPECT_EQ(Nfc(U"\uAC01\u11A8"), U"\uAC01\u11A8");   // LVT takes no second T
  EXPECT_EQ(Nfc(U"\u1100\u11A7"), U"\u1100\u11A7");   // U+11A7 is not a trailing consonant
  EXPECT_EQ(Nfc(U"\uAC00\u11A7"), U"\uAC00\u11A7");
  EXPECT_EQ(Nfd(U"\uAC01"), U"\u1100\u1161\u11A8");
  EXPECT_EQ(Nfd(U"\uD7A3"), U"\u1112\u1175\u11C2");   // the last syllable
  EXPECT_EQ(Nfc(U"\u1112\u1175\u11C2"), U"\uD7A3");
  EXPECT_EQ(Nfc(U"\u1100\u0301\u1161"), U"\u1100\u0301\u1161");  // the mark blocks L from V
}

TEST(UnicodeNormalize, SingletonsAndCompositionExclusions) {
  EXPECT_EQ(Nfc(U"\u212B"), U"\u00C5");  // ANGSTROM SIGN -> A WITH RING ABOVE
  EXPECT_EQ(Nfd(U"\u212B"), U"A\u030A");
  EXPECT_EQ(Nfc(U"\u2126"), U"\u03A9");  // OHM SIGN -> OMEGA
  EXPECT_EQ(Nfc(U"\uF900"), U"\u8C48");  // CJK compatibility ideograph
  // U+0958 DEVANAGARI QA is excluded from composition: it stays decomposed.
  EXPECT_EQ(Nfc(U"\u0958"), U"\u0915\u093C");
  EXPECT_EQ(Nfc(U"\u0915\u093C"), U"\u0915\u093C");
  // ...while U+0929 (NNNA) is a primary composite.
  EXPECT_EQ(Nfc(U"\u0928\u093C"), U"\u0929");
  // Non-starter decomposition: U+0344 -> U+0308 U+0301, never recomposed.
  EXPECT_EQ(Nfc(U"\u0344"), U"\u0308\u0301");
  // Greek with tonos: U+0386 decomposes to alpha + U+0301 and comes back as U+03AC's
  // capital; U+1F71 (oxia) is a singleton to U+03AC.
  EXPECT_EQ(Nfc(U"\u0391\u0301"), U"\u0386");
  EXPECT_EQ(Nfc(U"\u1F71"), U"\u03AC");
  EXPECT_EQ(Nfc(U"\U0001D15E"), U"\U0001D157\U0001D165");  // excluded musical symbol
}

TEST(UnicodeNormalize, CanonicalOrderingAndBlocking) {
  // Dot below (220) sorts before acute (230); a + dot below composes first.
  EXPECT_EQ(Nfd(U"a\u0301\u0323"), U"a\u0323\u0301");
  EXPECT_EQ(Nfc(U"a\u0301\u0323"), U"\u1EA1\u0301");
  // Equal classes keep their order: the first 230 mark composes, the second is blocked.
  EXPECT_EQ(Nfc(U"a\u0310\u0301"), U"a\u0310\u0301");  // U+0310 has no composite with a
  EXPECT_EQ(Nfc(U"a\u0301\u0310"), U"\u00E1\u0310");
  // A lower class between does not block: horn (216) then acute.
  EXPECT_EQ(Nfc(U"a\u031B\u0301"), U"\u00E1\u031B");
  // A starter between blocks.
  EXPECT_EQ(Nfc(U"ab\u0301"), U"ab\u0301");
  // Leading non-starters are ordered but compose with nothing.
  EXPECT_EQ(Nfc(U"\u0301\u0323e"), U"\u0323\u0301e");
  // Reordered, but neither mark has a composite with q.
  EXPECT_EQ(Nfc(U"q\u0301\u0323"), U"q\u0323\u0301");
}

TEST(UnicodeNormalize, FastPathsLeaveTextUntouched) {
  std::u32string latin = U"Hello, w\u00F6rld! \u00C5ngstr\u00F6m \u02FF";  // all below U+0300
  EXPECT_EQ(Nfc(latin), latin);
  EXPECT_EQ(Nfd(U"plain ascii ~"), U"plain ascii ~");
  EXPECT_EQ(Nfd(U"\u00C5"), U"A\u030A");  // Latin-1 letters do decompose
  EXPECT_EQ(Nfc(U""), U"");
  EXPECT_EQ(Nfd(U""), U"");
  // Beyond the fast path, text already in NFC comes back equal.
  std::u32string mixed = U"\u65E5\u672C\u8A9E \uD55C\uAD6D\uC5B4 \u0928\u092E\u0938\u094D\u0924\u0947 \U0001F916";
  EXPECT_EQ(Nfc(mixed), mixed);
}

}  // namespace
