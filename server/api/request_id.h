// Request ids: the rule for caller-chosen ones and the server's own.
#pragma once

#include <string>

namespace svdq::api {

constexpr size_t kMaxRequestIdBytes = 128;
constexpr const char* kRequestIdRule = "request_id must be 1 to 128 printable ASCII characters, without spaces";

// Caller-chosen ids are 1 to 128 printable ASCII characters without spaces, so that they can
// be echoed in messages and logs; anything else is refused, and never echoed.
bool ValidRequestId(const std::string& id);

// A server-assigned id: "req-" and 128 random bits from the OS in hex, so that nobody can
// guess another client's id (Abort takes any id).
std::string NewRequestId();

}  // namespace svdq::api
