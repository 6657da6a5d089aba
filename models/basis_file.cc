#include "models/basis_file.h"

#include <zlib.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/gguf.h"

namespace svdq::models {
namespace {

constexpr char kMagic[8] = {'S', 'V', 'D', 'Q', 'B', 'A', 'S', '1'};
constexpr uint32_t kVersion = 1;

template <typename T>
void Put(std::string* out, const T& v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

void PutFloats(std::string* out, const std::vector<float>& v, size_t expect, const std::string& what) {
  if (v.size() != expect) throw FormatError("basis " + what + " has " + std::to_string(v.size()) + " values, expected " + std::to_string(expect));
  out->append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

}  // namespace

void WriteBasisFile(const std::string& path, const BasisSet& b) {
  const size_t n = static_cast<size_t>(b.layers) * b.units;
  if (b.layers <= 0 || b.units <= 0 || b.width <= 0 || b.mean.size() != n || b.vectors.size() != n ||
      b.singular_values.size() != n)
    throw FormatError(path + ": inconsistent basis set");
  nlohmann::json h = {{"model_name", b.model_name}, {"model_file_bytes", b.model_file_bytes}, {"layers", b.layers},
                      {"units", b.units}, {"width", b.width}, {"scope", b.scope}, {"centered", b.centered},
                      {"tokens", b.tokens}, {"text", b.text}};
  std::string header = h.dump(), out(kMagic, 8);
  Put(&out, kVersion);
  Put(&out, static_cast<uint32_t>(header.size()));
  out += header;
  const size_t w = static_cast<size_t>(b.width);
  for (size_t k = 0; k < n; ++k) {
    PutFloats(&out, b.mean[k], w, "mean");
    PutFloats(&out, b.vectors[k], w * w, "vectors");
    PutFloats(&out, b.singular_values[k], w, "singular values");
  }
  uint32_t crc = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(out.data()), static_cast<uInt>(out.size())));
  Put(&out, crc);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f || !f.write(out.data(), static_cast<std::streamsize>(out.size())))
    throw FormatError(path + ": cannot write the basis file");
}

BasisSet ReadBasisFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw FormatError(path + ": cannot open the basis file");
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (data.size() < 20 || std::memcmp(data.data(), kMagic, 8) != 0) throw FormatError(path + ": not an SVDq basis file");
  uint32_t version, hlen, crc_stored;
  std::memcpy(&version, data.data() + 8, 4);
  std::memcpy(&hlen, data.data() + 12, 4);
  if (version != kVersion)
    throw FormatError(path + ": basis file version " + std::to_string(version) + " is not supported (1)");
  if (16ull + hlen + 4 > data.size()) throw FormatError(path + ": basis file truncated");
  std::memcpy(&crc_stored, data.data() + data.size() - 4, 4);
  uint32_t crc = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size() - 4)));
  if (crc != crc_stored) throw FormatError(path + ": basis file checksum mismatch (corrupt or truncated)");
  BasisSet b;
  try {
    nlohmann::json h = nlohmann::json::parse(data.substr(16, hlen));
    b.model_name = h.at("model_name");
    b.model_file_bytes = h.at("model_file_bytes");
    b.layers = h.at("layers");
    b.units = h.at("units");
    b.width = h.at("width");
    b.scope = h.at("scope");
    b.centered = h.at("centered");
    b.tokens = h.at("tokens");
    b.text = h.at("text");
  } catch (const std::exception& e) {
    throw FormatError(path + ": bad basis file header: " + e.what());
  }
  if (b.layers <= 0 || b.units <= 0 || b.width <= 0 || b.width > 8192)
    throw FormatError(path + ": basis file header has invalid dimensions");
  const size_t n = static_cast<size_t>(b.layers) * b.units, w = static_cast<size_t>(b.width);
  const size_t per = (2 * w + w * w) * sizeof(float);
  if (data.size() != 16 + hlen + n * per + 4) throw FormatError(path + ": basis file size does not match its header");
  const char* p = data.data() + 16 + hlen;
  auto take = [&](size_t count) {
    std::vector<float> v(count);
    std::memcpy(v.data(), p, count * sizeof(float));
    p += count * sizeof(float);
    return v;
  };
  for (size_t k = 0; k < n; ++k) {
    b.mean.push_back(take(w));
    b.vectors.push_back(take(w * w));
    b.singular_values.push_back(take(w));
  }
  return b;
}

}  // namespace svdq::models
