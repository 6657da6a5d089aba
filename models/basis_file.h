// The calibrated SVDq basis file: per model, one basis (mean, vectors, singular values)
// per layer and KV head ("head" scope) or per layer ("layer" scope), computed once from a
// calibration text by tools/svdq_calibrate and stored beside the model.
//
// Format, version 1 (little-endian):
//   offset 0   8 bytes   magic "SVDQBAS1"
//          8   u32       format version (1)
//         12   u32       header length H
//         16   H bytes   JSON header: {"model_name", "model_file_bytes", "layers", "units",
//                        "width", "scope": "head"|"layer", "centered", "tokens", "text"}
//     16 + H   payload   for each layer, for each unit (KV head, or the whole layer):
//                        mean f32[width], vectors f32[width * width] (row-major; column j is
//                        basis vector j, by descending singular value), singular values f32[width]
//        end   u32       CRC-32 (zlib) of every byte before it
// Readers reject a wrong magic, an unknown version, a size that does not match the
// header, and a checksum mismatch, naming the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace svdq::models {

struct BasisSet {
  std::string model_name;
  uint64_t model_file_bytes = 0;
  int layers = 0;
  int units = 0;  // bases per layer: KV heads ("head" scope) or 1 ("layer" scope)
  int width = 0;  // head_dim, or kv_heads * head_dim
  std::string scope = "head";
  bool centered = true;
  int64_t tokens = 0;
  std::string text;
  // [layers * units] entries, each: mean [width], vectors [width * width], singular values [width].
  std::vector<std::vector<float>> mean, vectors, singular_values;
};

// Throws FormatError (models/gguf.h) on any problem.
void WriteBasisFile(const std::string& path, const BasisSet& b);
BasisSet ReadBasisFile(const std::string& path);

}  // namespace svdq::models
