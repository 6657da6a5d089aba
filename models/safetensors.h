// Reader for Hugging Face safetensors checkpoints: one file, or a directory of shards named by
// model.safetensors.index.json. Files are memory-mapped; headers are validated before any
// tensor is handed out (known dtype, shape, offsets inside the data section, size = shape x
// dtype, no overlaps), with errors that name the file and the tensor. No torch here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/mapped_file.h"

namespace svdq::models {

enum class StDtype { kF32, kF16, kBF16 };
const char* StDtypeName(StDtype t);
int StDtypeBytes(StDtype t);

struct StTensor {
  std::string name;
  StDtype dtype = StDtype::kF32;
  std::vector<int64_t> shape;  // slowest-varying first (torch order)
  const uint8_t* data = nullptr;  // inside the file's mapping
  uint64_t nbytes = 0;
  std::string file;  // the shard that holds it, for error messages
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates one file; throws FormatError naming the file (and tensor) on any problem.
  static std::unique_ptr<SafetensorsFile> Open(const std::string& path);
  // The same for a file already in memory (the fuzzer's input): `data` must outlive the
  // object, whose tensors point into it; `name` stands for the path in messages.
  static std::unique_ptr<SafetensorsFile> FromBuffer(const uint8_t* data, size_t size, const std::string& name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, StTensor>& tensors() const { return tensors_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::map<std::string, StTensor> tensors_;
  std::unique_ptr<MappedFile> map_;
};

// Every tensor of a checkpoint directory: model.safetensors, or the shards listed by
// model.safetensors.index.json (each shard must hold the tensors the index maps to it; others
// in it are ignored).
class SafetensorsCheckpoint {
 public:
  static std::unique_ptr<SafetensorsCheckpoint> Open(const std::string& dir);
  const StTensor* Find(const std::string& name) const;  // nullptr if absent
  // The tensor, checked against the expected shape; throws FormatError naming file and tensor.
  const StTensor& Get(const std::string& name, const std::vector<int64_t>& shape) const;
  const std::string& dir() const { return dir_; }
  size_t size() const { return index_.size(); }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const StTensor*> index_;
};

}  // namespace svdq::models
