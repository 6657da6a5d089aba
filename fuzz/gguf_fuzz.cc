// Fuzzes the GGUF reader (models/gguf.cc through GgufFile::FromBuffer, the same parser Open
// runs on a mapped file), the dequantizers and the GGUF tokenizer (Tokenizer::FromGguf).
// Input: the bytes of a .gguf file. Asserts: a malformed file ends in FormatError and nothing
// else escapes; no ASan/UBSan report; every tensor the reader accepts lies inside the buffer
// with nbytes matching its type and shape (and small ones dequantize, so that ASan sees each
// read); a tokenizer it accepts encodes probe strings to ids inside its vocabulary and decodes
// them back without a report.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "models/dequant.h"
#include "models/gguf.h"
#include "models/tokenizer.h"

using namespace svdq::models;

namespace {

constexpr int64_t kMaxDequantElems = 1 << 16;

void CheckTensors(const GgufFile& f, const uint8_t* data, size_t size) {
  for (const GgufTensorInfo& t : f.tensors()) {
    const uint8_t* p = f.TensorData(t);
    FUZZ_CHECK(p >= data && p <= data + size && t.nbytes <= static_cast<size_t>(data + size - p));
    FUZZ_CHECK(f.FindTensor(t.name) == &t);
    const int64_t n = t.numel();
    FUZZ_CHECK(n > 0);
    FUZZ_CHECK(t.nbytes == RowBytes(t.type, t.dims[0]) * static_cast<uint64_t>(n / t.dims[0]));
    if (n <= kMaxDequantElems && TypeTraits(t.type).supported) {
      std::vector<float> out(static_cast<size_t>(n));
      Dequantize(t.type, p, out.data(), n);
    }
  }
}

// Every ASCII character, so that a byte missing from the vocabulary shows.
std::string Ascii() {
  std::string s;
  for (int c = 1; c < 128; ++c) s.push_back(static_cast<char>(c));
  return s;
}

void CheckTokenizer(const GgufFile& f) {
  static const std::string ascii = Ascii();
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = Tokenizer::FromGguf(f);
  } catch (const FormatError&) {
    return;
  }
  const int32_t vocab = tok->vocab_size();
  FUZZ_CHECK(vocab > 0 && tok->eos_id() >= 0 && tok->eos_id() < vocab);
  for (const std::string& s : {ascii, std::string("h\xC3\xA9llo \xE6\x97\xA5 \xF0\x9F\xA4\x96\n\t"),
                               tok->TokenText(0), tok->TokenText(vocab - 1), tok->TokenText(vocab / 2)}) {
    std::vector<int32_t> ids;
    try {
      ids = tok->EncodePrompt(s);
    } catch (const TokenizerError&) {
      FUZZ_CHECK(!IsValidUtf8(s));  // only invalid UTF-8 is refused
      continue;
    }
    FUZZ_CHECK(IsValidUtf8(s));
    IncrementalDetokenizer d(*tok);
    std::string streamed;
    for (int32_t id : ids) {
      FUZZ_CHECK(id >= 0 && id < vocab);
      streamed += d.Push(id);
    }
    streamed += d.Flush();
    FUZZ_CHECK(IsValidUtf8(streamed));
    tok->DecodeBytes(ids, true);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<GgufFile> f;
  try {
    f = GgufFile::FromBuffer(data, size, "fuzz.gguf");
  } catch (const FormatError&) {
    return 0;
  }
  CheckTensors(*f, data, size);
  for (const auto& [key, value] : f->metadata()) {
    FUZZ_CHECK(f->Has(key) && &f->Get(key) == &value);
    try {
      f->GetInt(key, 0);
    } catch (const FormatError&) {
      FUZZ_CHECK(value.kind == GgufValue::Kind::kFloat || value.kind == GgufValue::Kind::kString ||
                 value.kind == GgufValue::Kind::kArray);
    }
  }
  CheckTokenizer(*f);
  return 0;
}
