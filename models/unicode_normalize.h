// Unicode canonical normalization (NFC and NFD, UAX #15) for the tokenizer.json normalizers
// Qwen2-family tokenizers use. The tables are Unicode 9.0.0, the version Hugging Face
// `tokenizers` normalizes with, so that svdq's token ids equal its ids (see
// tools/gen_unicode_nfc_tables.py); characters assigned later are starters with no mapping.
#pragma once

#include <string>

namespace svdq::models {

// Canonical combining class of c (0 for starters and unassigned code points).
int CanonicalCombiningClass(char32_t c);

// Canonical decomposition, Hangul syllables included, then canonical ordering: stable sort
// of every run of non-starters by combining class.
void ToNfd(std::u32string* text);

// NFD, then canonical composition: each character joins the last starter before it when
// nothing between blocks it and the pair is a primary composite (Hangul L+V, LV+T included).
// Text whose code points are all below U+0300 is already NFC and is left untouched.
void ToNfc(std::u32string* text);

}  // namespace svdq::models
