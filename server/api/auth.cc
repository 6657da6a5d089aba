#include "server/api/auth.h"

#include <algorithm>
#include <cctype>
#include <fstream>

namespace svdq::api {
namespace {

std::string Trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

// Equal in time that depends only on the lengths, not on the first differing byte.
bool SameKey(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

}  // namespace

bool ApiKeys::Load(const std::string& key, const std::string& file, ApiKeys* out, std::string* error) {
  out->keys_.clear();
  if (!key.empty()) out->keys_.push_back(key);
  if (file.empty()) return true;
  std::ifstream in(file);
  if (!in) {
    *error = "cannot read the API key file " + file;
    return false;
  }
  size_t n = 0;
  for (std::string line; std::getline(in, line);) {
    line = Trim(line);
    if (line.empty() || line[0] == '#') continue;
    out->keys_.push_back(line);
    ++n;
  }
  if (n == 0) {
    *error = "the API key file " + file + " holds no key";
    return false;
  }
  return true;
}

bool ApiKeys::Check(std::string_view authorization, std::string* owner) const {
  owner->clear();
  if (keys_.empty()) return true;
  // The scheme is case-insensitive (RFC 7235); the key is not.
  constexpr std::string_view kBearer = "bearer ";
  if (authorization.size() <= kBearer.size()) return false;
  for (size_t i = 0; i < kBearer.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kBearer[i]) return false;
  const std::string_view given = authorization.substr(kBearer.size());
  size_t found = 0;  // every key is compared, so the time does not say which one matched
  for (size_t i = 0; i < keys_.size(); ++i)
    if (SameKey(given, keys_[i]) && found == 0) found = i + 1;
  if (found == 0) return false;
  *owner = "key-" + std::to_string(found);
  return true;
}

}  // namespace svdq::api
