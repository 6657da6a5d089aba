// UTF-8 encoding and decoding, and the Unicode classes (\p{L}, \p{N}, White_Space) the
// pre-tokenizers split on. No allocation beyond the output strings; no locale.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace svdq::models {

void AppendUtf8(char32_t cp, std::string* out);
std::string ToUtf8(const std::u32string& s);

// Length of the UTF-8 sequence starting at s[i] if it is complete and valid, 0 if it is
// invalid (overlong, surrogate, stray continuation byte), -1 if it is a valid prefix cut
// short by the end of the string.
int Utf8SeqLen(const std::string& s, size_t i);
// Where Utf8SeqLen(s, i) is 0: the length of the maximal invalid subpart at i (the lead byte and
// the continuation bytes that were still valid), which becomes one U+FFFD, as Unicode
// recommends and Python's and Rust's lossy decoders do.
int Utf8MaximalSubpart(const std::string& s, size_t i);

// Decodes all of `s`; on invalid UTF-8 returns false with *bad_at the offending byte offset.
bool DecodeUtf8(const std::string& s, std::u32string* out, size_t* bad_at);

bool IsLetter(char32_t c);   // general category L*
bool IsNumber(char32_t c);   // general category N*
bool IsSpace(char32_t c);    // the White_Space property (what \s matches in the split regexes)
// What Python's str.isspace() accepts (Jinja's trim and str.strip() in chat templates).
bool IsPythonSpace(char32_t c);

}  // namespace svdq::models
