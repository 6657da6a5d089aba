// GGUF reader. Every read goes through a bounds-checked cursor, so a truncated or
// corrupt file ends in FormatError, never in a read past the map.
#include "models/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "models/dequant.h"

namespace svdq::models {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kMaxStringBytes = 1ull << 30;
constexpr uint64_t kMaxArrayElems = 1ull << 28;
constexpr uint32_t kMaxDims = 4;
// Elements of one tensor at most: numel() then never overflows, nor nbytes (<= 4 bytes each).
constexpr uint64_t kMaxTensorElems = 1ull << 60;

enum ValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  template <typename T>
  T Read(const char* what) {
    Need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string ReadString(const char* what) {
    uint64_t len = Read<uint64_t>(what);
    if (len > kMaxStringBytes) Fail(std::string("string too long in ") + what);
    Need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }
  [[noreturn]] void Fail(const std::string& msg) const {
    throw FormatError(path_ + ": " + msg + " (at byte " + std::to_string(pos_) + ")");
  }

 private:
  void Need(uint64_t k, const char* what) const {
    if (k > n_ - pos_) Fail(std::string("file truncated while reading ") + what);
  }
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& path_;
};

GgufValue ReadScalar(Cursor& c, uint32_t type, const char* what) {
  GgufValue v;
  switch (type) {
    case kU8: v.kind = GgufValue::Kind::kUInt; v.u = c.Read<uint8_t>(what); break;
    case kI8: v.kind = GgufValue::Kind::kInt; v.i = c.Read<int8_t>(what); break;
    case kU16: v.kind = GgufValue::Kind::kUInt; v.u = c.Read<uint16_t>(what); break;
    case kI16: v.kind = GgufValue::Kind::kInt; v.i = c.Read<int16_t>(what); break;
    case kU32: v.kind = GgufValue::Kind::kUInt; v.u = c.Read<uint32_t>(what); break;
    case kI32: v.kind = GgufValue::Kind::kInt; v.i = c.Read<int32_t>(what); break;
    case kU64: v.kind = GgufValue::Kind::kUInt; v.u = c.Read<uint64_t>(what); break;
    case kI64: v.kind = GgufValue::Kind::kInt; v.i = c.Read<int64_t>(what); break;
    case kF32: v.kind = GgufValue::Kind::kFloat; v.f = c.Read<float>(what); break;
    case kF64: v.kind = GgufValue::Kind::kFloat; v.f = c.Read<double>(what); break;
    case kBool: v.kind = GgufValue::Kind::kBool; v.b = c.Read<uint8_t>(what) != 0; break;
    case kString: v.kind = GgufValue::Kind::kString; v.s = c.ReadString(what); break;
    default: c.Fail("unknown metadata value type " + std::to_string(type) + " for " + what);
  }
  return v;
}

GgufValue ReadValue(Cursor& c, uint32_t type, const std::string& key) {
  if (type != kArray) return ReadScalar(c, type, key.c_str());
  GgufValue v;
  v.kind = GgufValue::Kind::kArray;
  uint32_t elem = c.Read<uint32_t>(key.c_str());
  if (elem == kArray) c.Fail("nested arrays are not supported (key " + key + ")");
  uint64_t count = c.Read<uint64_t>(key.c_str());
  if (count > kMaxArrayElems) c.Fail("array too long for key " + key);
  v.array.reserve(std::min<uint64_t>(count, c.remaining()));  // each element takes a byte or more
  for (uint64_t k = 0; k < count; ++k) v.array.push_back(ReadScalar(c, elem, key.c_str()));
  return v;
}

}  // namespace

int64_t GgufValue::AsInt() const {
  switch (kind) {
    case Kind::kInt: return i;
    case Kind::kUInt: return static_cast<int64_t>(u);
    case Kind::kBool: return b ? 1 : 0;
    default: throw FormatError("metadata value is not an integer");
  }
}

double GgufValue::AsFloat() const {
  if (kind == Kind::kFloat) return f;
  return static_cast<double>(AsInt());
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::unique_ptr<GgufFile> GgufFile::Open(const std::string& path) {
  auto map = std::make_unique<MappedFile>(path);
  std::unique_ptr<GgufFile> f = FromBuffer(map->data(), map->size(), path);
  f->map_ = std::move(map);
  return f;
}

std::unique_ptr<GgufFile> GgufFile::FromBuffer(const uint8_t* base, size_t size, const std::string& name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = name;
  Cursor c(base, size, f->path_);

  if (c.Read<uint32_t>("magic") != kMagic) c.Fail("not a GGUF file (bad magic)");
  f->version_ = c.Read<uint32_t>("version");
  if (f->version_ < 2 || f->version_ > 3) c.Fail("unsupported GGUF version " + std::to_string(f->version_));
  uint64_t n_tensors = c.Read<uint64_t>("tensor count");
  uint64_t n_kv = c.Read<uint64_t>("metadata count");
  if (n_tensors > (1u << 20) || n_kv > (1u << 20)) c.Fail("implausible tensor or metadata count");

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.ReadString("metadata key");
    uint32_t type = c.Read<uint32_t>("metadata type");
    f->metadata_[key] = ReadValue(c, type, key);
  }

  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = c.ReadString("tensor name");
    uint32_t nd = c.Read<uint32_t>("tensor rank");
    if (nd == 0 || nd > kMaxDims) c.Fail("tensor " + t.name + " has unsupported rank " + std::to_string(nd));
    uint64_t elems = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      uint64_t dim = c.Read<uint64_t>("tensor dim");
      if (dim == 0 || dim > (1ull << 40)) c.Fail("tensor " + t.name + " has invalid dimension");
      if (elems > kMaxTensorElems / dim) c.Fail("tensor " + t.name + " has too many elements");
      elems *= dim;
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    t.type = static_cast<GgmlType>(c.Read<uint32_t>("tensor type"));
    t.offset = c.Read<uint64_t>("tensor offset");
    try {
      t.nbytes = RowBytes(t.type, t.dims[0]) * static_cast<uint64_t>(t.numel() / t.dims[0]);
    } catch (const FormatError& e) {
      c.Fail("tensor " + t.name + ": " + e.what());
    }
    if (f->tensor_index_.count(t.name)) c.Fail("duplicate tensor " + t.name);
    f->tensor_index_[t.name] = f->tensors_.size();
    f->tensors_.push_back(std::move(t));
  }

  uint64_t alignment = static_cast<uint64_t>(f->GetInt("general.alignment", 32));
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) c.Fail("general.alignment is not a power of two");
  uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  if (data_start > size) c.Fail("file truncated before the tensor data");
  f->data_ = base + data_start;
  uint64_t data_size = size - data_start;
  for (const auto& t : f->tensors_) {
    if (t.offset % alignment != 0) c.Fail("tensor " + t.name + " is misaligned");
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      c.Fail("tensor " + t.name + " extends past the end of the file (truncated?)");
  }
  return f;
}

GgufFile::~GgufFile() = default;

const GgufValue& GgufFile::Get(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) throw FormatError(path_ + ": missing metadata key " + key);
  return it->second;
}

int64_t GgufFile::GetInt(const std::string& key, int64_t fallback) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) return fallback;
  try {
    return it->second.AsInt();
  } catch (const FormatError&) {
    throw FormatError(path_ + ": metadata key " + key + " is not an integer");
  }
}

double GgufFile::GetFloat(const std::string& key, double fallback) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) return fallback;
  try {
    return it->second.AsFloat();
  } catch (const FormatError&) {
    throw FormatError(path_ + ": metadata key " + key + " is not a number");
  }
}

std::string GgufFile::GetString(const std::string& key, const std::string& fallback) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) return fallback;
  if (it->second.kind != GgufValue::Kind::kString) throw FormatError(path_ + ": metadata key " + key + " is not a string");
  return it->second.s;
}

const GgufTensorInfo* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const char* GgmlTypeName(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::BF16: return "BF16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
  }
  return "unknown";
}

}  // namespace svdq::models
