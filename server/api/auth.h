// API keys for both fronts: `authorization: Bearer <key>` (gRPC metadata or HTTP header).
// Keys come from --api-key and/or --api-key-file; none means authentication is off. A
// client is known by its key's position ("key-1", "key-2", ...), never by the key itself,
// so that keys stay out of logs, metrics and error messages.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace svdq::api {

class ApiKeys {
 public:
  // `key` (may be empty) and the keys of `file` (one per line; blank lines and lines
  // starting with '#' skipped; surrounding whitespace trimmed). False with *error when the
  // file cannot be read or holds no key.
  static bool Load(const std::string& key, const std::string& file, ApiKeys* out, std::string* error);

  bool enabled() const { return !keys_.empty(); }
  size_t size() const { return keys_.size(); }
  // Checks an Authorization value ("Bearer <key>"). With keys off, every value passes and
  // *owner is empty. Compares in time independent of where the keys differ.
  bool Check(std::string_view authorization, std::string* owner) const;

 private:
  std::vector<std::string> keys_;
};

}  // namespace svdq::api
