#include "models/safetensors.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "models/gguf.h"  // FormatError

namespace svdq::models {
namespace {

using nlohmann::json;

std::string Shape(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool ParseDtype(const std::string& s, StDtype* out) {
  if (s == "F32") *out = StDtype::kF32;
  else if (s == "F16") *out = StDtype::kF16;
  else if (s == "BF16") *out = StDtype::kBF16;
  else return false;
  return true;
}

}  // namespace

const char* StDtypeName(StDtype t) {
  switch (t) {
    case StDtype::kF32: return "F32";
    case StDtype::kF16: return "F16";
    case StDtype::kBF16: return "BF16";
  }
  return "?";
}

int StDtypeBytes(StDtype t) { return t == StDtype::kF32 ? 4 : 2; }

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  auto map = std::make_unique<MappedFile>(path);
  std::unique_ptr<SafetensorsFile> f = FromBuffer(map->data(), map->size(), path);
  f->map_ = std::move(map);
  return f;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::FromBuffer(const uint8_t* base, size_t size, const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  if (size < 8) throw FormatError(path + ": too short for a safetensors header (" + std::to_string(size) + " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | base[i];
  if (header_len > size - 8)
    throw FormatError(path + ": header of " + std::to_string(header_len) + " bytes runs past the end of the file (" +
                      std::to_string(size) + " bytes)");
  json header;
  try {
    header = json::parse(base + 8, base + 8 + header_len);
  } catch (const json::exception& e) {
    throw FormatError(path + ": header is not valid JSON (" + e.what() + ")");
  }
  if (!header.is_object()) throw FormatError(path + ": header is not a JSON object");
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_len = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string where = path + ": tensor " + it.key();
    const json& v = it.value();
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
        !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      throw FormatError(where + ": entry needs a dtype string, a shape array and two data_offsets");
    StTensor t;
    t.name = it.key();
    t.file = path;
    const std::string dt = v["dtype"].get<std::string>();
    if (!ParseDtype(dt, &t.dtype)) throw FormatError(where + ": dtype " + dt + " is not supported (F32, F16, BF16)");
    for (const json& d : v["shape"]) {
      // Below 2^63, so that the entry stays non-negative as an int64 (the size check below
      // does not see one that follows a zero).
      if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t{INT64_MAX})
        throw FormatError(where + ": shape entries must be non-negative integers below 2^63");
      t.shape.push_back(d.get<int64_t>());
    }
    for (const json& o : v["data_offsets"])
      if (!o.is_number_unsigned()) throw FormatError(where + ": data_offsets must be non-negative integers");
    const uint64_t begin = v["data_offsets"][0].get<uint64_t>(), end = v["data_offsets"][1].get<uint64_t>();
    if (begin > end || end > data_len)
      throw FormatError(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                        ") fall outside the data section of " + std::to_string(data_len) + " bytes");
    // numel * bytes, guarding against overflow from absurd shapes.
    uint64_t want = static_cast<uint64_t>(StDtypeBytes(t.dtype));
    for (int64_t d : t.shape) {
      if (d != 0 && want > (uint64_t{1} << 62) / static_cast<uint64_t>(d)) throw FormatError(where + ": shape too large");
      want *= static_cast<uint64_t>(d);
    }
    if (end - begin != want)
      throw FormatError(where + ": " + std::to_string(end - begin) + " bytes of data, but " + StDtypeName(t.dtype) + " " +
                        Shape(t.shape) + " needs " + std::to_string(want));
    t.data = data + begin;
    t.nbytes = want;
    // The mapping is page-aligned; the format pads its header so that tensors stay aligned.
    if ((8 + header_len + begin) % static_cast<uint64_t>(StDtypeBytes(t.dtype)) != 0)
      throw FormatError(where + ": data is not aligned to its " + StDtypeName(t.dtype) + " elements");
    if (want) ranges.emplace_back(begin, end);
    f->tensors_.emplace(t.name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) throw FormatError(path + ": tensors' data ranges overlap");
  return f;
}

SafetensorsFile::~SafetensorsFile() = default;

std::unique_ptr<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(const std::string& dir) {
  auto c = std::make_unique<SafetensorsCheckpoint>();
  c->dir_ = dir;
  const std::string index_path = dir + "/model.safetensors.index.json";
  std::ifstream index_file(index_path);
  if (!index_file) {
    c->files_.push_back(SafetensorsFile::Open(dir + "/model.safetensors"));
    for (const auto& [name, t] : c->files_[0]->tensors()) c->index_[name] = &t;
    return c;
  }
  json index;
  try {
    index = json::parse(index_file);
  } catch (const json::exception& e) {
    throw FormatError(index_path + ": not valid JSON (" + e.what() + ")");
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw FormatError(index_path + ": no weight_map object");
  std::map<std::string, std::set<std::string>> by_file;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (!it.value().is_string()) throw FormatError(index_path + ": weight_map entry " + it.key() + " is not a file name");
    const std::string file = it.value().get<std::string>();
    if (file.find('/') != std::string::npos || file.find("..") != std::string::npos)
      throw FormatError(index_path + ": shard name '" + file + "' must be a plain file name");
    by_file[file].insert(it.key());
  }
  for (const auto& [file, names] : by_file) {
    c->files_.push_back(SafetensorsFile::Open(dir + "/" + file));
    const SafetensorsFile& f = *c->files_.back();
    for (const std::string& n : names) {
      auto hit = f.tensors().find(n);
      if (hit == f.tensors().end())
        throw FormatError(f.path() + ": tensor " + n + " is missing (model.safetensors.index.json puts it there)");
      c->index_[n] = &hit->second;
    }
  }
  return c;
}

const StTensor* SafetensorsCheckpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const StTensor& SafetensorsCheckpoint::Get(const std::string& name, const std::vector<int64_t>& shape) const {
  const StTensor* t = Find(name);
  if (!t) throw FormatError(dir_ + ": missing tensor " + name);
  if (t->shape != shape)
    throw FormatError(t->file + ": tensor " + name + " has shape " + Shape(t->shape) + ", the config implies " +
                      Shape(shape));
  return *t;
}

}  // namespace svdq::models
