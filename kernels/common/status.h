// The result of a kernel launcher or reference op: ok, or a message saying what is wrong.
#pragma once

#include <string>
#include <utility>

namespace svdq::kernels {

class Status {
 public:
  static Status Ok() { return Status(); }
  static Status Invalid(std::string msg) { return Status(std::move(msg)); }
  bool ok() const { return ok_; }
  const std::string& message() const { return msg_; }

 private:
  Status() = default;
  explicit Status(std::string msg) : ok_(false), msg_(std::move(msg)) {}
  bool ok_ = true;
  std::string msg_;
};

}  // namespace svdq::kernels
