// A whole file mapped read-only into memory, unmapped with the object: what the checkpoint
// readers (gguf.*, safetensors.*) parse and hand tensor data out of. No torch here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace svdq::models {

class MappedFile {
 public:
  // Maps `path`; throws FormatError naming it if it cannot be opened, is empty or cannot be mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return static_cast<const uint8_t*>(map_); }
  size_t size() const { return size_; }

 private:
  void* map_ = nullptr;
  size_t size_ = 0;
};

}  // namespace svdq::models
