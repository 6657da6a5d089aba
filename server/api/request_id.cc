#include "server/api/request_id.h"

#include <algorithm>
#include <cstdio>
#include <random>

namespace svdq::api {

bool ValidRequestId(const std::string& id) {
  if (id.empty() || id.size() > kMaxRequestIdBytes) return false;
  return std::all_of(id.begin(), id.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

std::string NewRequestId() {
  thread_local std::random_device rd;  // /dev/urandom
  char buf[40];
  std::snprintf(buf, sizeof(buf), "req-%08x%08x%08x%08x", rd(), rd(), rd(), rd());
  return buf;
}

}  // namespace svdq::api
