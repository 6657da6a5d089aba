// A minimal GGUF writer for tests: builds small files in memory, so reader and
// tokenizer tests need no model download and can corrupt bytes on purpose.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace svdq::testing {

class GgufWriter {
 public:
  void KvString(const std::string& k, const std::string& v) {
    Key(k, 8);
    Str(v);
    ++n_kv_;
  }
  void KvU32(const std::string& k, uint32_t v) {
    Key(k, 4);
    Pod(v);
    ++n_kv_;
  }
  void KvStrings(const std::string& k, const std::vector<std::string>& v) {
    Key(k, 9);
    Pod<uint32_t>(8);
    Pod<uint64_t>(v.size());
    for (const auto& s : v) Str(s);
    ++n_kv_;
  }
  void KvI32s(const std::string& k, const std::vector<int32_t>& v) {
    Key(k, 9);
    Pod<uint32_t>(5);
    Pod<uint64_t>(v.size());
    for (int32_t x : v) Pod(x);
    ++n_kv_;
  }
  // dims fastest-first, as GGUF stores them; bytes are the tensor's raw data.
  void Tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, const std::vector<uint8_t>& bytes) {
    tensors_.push_back({name, dims, type, bytes});
  }
  std::vector<uint8_t> Build() const {
    std::vector<uint8_t> out;
    auto put = [&](const void* p, size_t n) {
      out.insert(out.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    };
    uint32_t magic = 0x46554747, version = 3;
    uint64_t nt = tensors_.size();
    put(&magic, 4);
    put(&version, 4);
    put(&nt, 8);
    put(&n_kv_, 8);
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      uint64_t len = t.name.size();
      put(&len, 8);
      put(t.name.data(), len);
      uint32_t nd = static_cast<uint32_t>(t.dims.size());
      put(&nd, 4);
      for (uint64_t d : t.dims) put(&d, 8);
      put(&t.type, 4);
      put(&offset, 8);
      offset += (t.bytes.size() + 31) / 32 * 32;
    }
    while (out.size() % 32) out.push_back(0);
    for (const auto& t : tensors_) {
      out.insert(out.end(), t.bytes.begin(), t.bytes.end());
      while (out.size() % 32) out.push_back(0);
    }
    return out;
  }
  static void Save(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }

 private:
  struct T {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> bytes;
  };
  template <typename P>
  void Pod(P v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    kv_.insert(kv_.end(), p, p + sizeof(P));
  }
  void Str(const std::string& s) {
    Pod<uint64_t>(s.size());
    kv_.insert(kv_.end(), s.begin(), s.end());
  }
  void Key(const std::string& k, uint32_t type) {
    Str(k);
    Pod(type);
  }
  std::vector<uint8_t> kv_;
  uint64_t n_kv_ = 0;
  std::vector<T> tensors_;
};

}  // namespace svdq::testing
