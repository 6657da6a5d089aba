// GGUF container reader: header, metadata key/values, tensor directory, and a
// read-only memory map of the tensor data. Knows nothing of torch or models; the
// dequantizers in dequant.h turn a tensor's bytes into floats.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/mapped_file.h"

namespace svdq::models {

// Thrown for malformed or unsupported files; the message names the file and what is wrong.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// GGML tensor types (the numeric values are part of the file format).
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};
const char* GgmlTypeName(GgmlType t);

// One metadata value. Arrays hold scalars or strings (nested arrays are rejected).
struct GgufValue {
  enum class Kind { kInt, kUInt, kFloat, kBool, kString, kArray };
  Kind kind = Kind::kInt;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<GgufValue> array;

  int64_t AsInt() const;  // any integer kind; throws FormatError otherwise
  double AsFloat() const; // float or integer kinds
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the fastest-varying (columns)
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;        // relative to the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
};

class GgufFile {
 public:
  // Opens and validates the whole directory; throws FormatError with the path on any problem.
  static std::unique_ptr<GgufFile> Open(const std::string& path);
  // The same for a file already in memory (the fuzzer's input): `data` must outlive the
  // object, whose TensorData points into it; `name` stands for the path in messages.
  static std::unique_ptr<GgufFile> FromBuffer(const uint8_t* data, size_t size, const std::string& name);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  bool Has(const std::string& key) const { return metadata_.count(key) != 0; }
  const GgufValue& Get(const std::string& key) const;  // throws FormatError naming the key
  int64_t GetInt(const std::string& key, int64_t fallback) const;
  double GetFloat(const std::string& key, double fallback) const;
  std::string GetString(const std::string& key, const std::string& fallback) const;

  const GgufTensorInfo* FindTensor(const std::string& name) const;  // nullptr if absent
  const uint8_t* TensorData(const GgufTensorInfo& t) const { return data_ + t.offset; }

 private:
  GgufFile() = default;
  std::string path_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
  std::unique_ptr<MappedFile> map_;
  const uint8_t* data_ = nullptr;
};

}  // namespace svdq::models
