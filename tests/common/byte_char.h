// GPT-2's printable stand-in for a byte (the byte-level BPE alphabet), as UTF-8: for tests
// that write byte-level vocabularies by hand.
#pragma once

#include <string>

namespace svdq::testing {

inline std::string ByteChar(unsigned b) {
  auto printable = [](unsigned x) { return (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE; };
  unsigned cp = b;
  if (!printable(b)) {
    cp = 256;
    for (unsigned x = 0; x < b; ++x) cp += !printable(x);
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

}  // namespace svdq::testing
