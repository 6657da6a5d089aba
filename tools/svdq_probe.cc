// svdq-probe: exposes the model layer to the reference checks in tests/ (which compare
// it with the `gguf`, `tokenizers` and `transformers` Python packages). Writes JSON.
//   svdq-probe tensor MODEL NAME OUT.f32      dequantized tensor, raw little-endian fp32
//   svdq-probe tokenize MODEL < in.json       in: ["text", ...]; out: [[ids], ...]
//   svdq-probe detokenize MODEL < in.json     in: [[ids], ...]; out: ["text", ...] (streamed)
//   svdq-probe logits MODEL OUT.f32 < in.json in: [[ids], ...]; out: last-position logits
//                                             (MODEL: .gguf, Hugging Face directory or synthetic:NAME;
//                                             SVDQ_PROBE_DEVICE=cuda and SVDQ_PROBE_DTYPE=bfloat16 optional)
//   svdq-probe generate MODEL N < in.json     greedy continuation of each prompt: [[ids], ...]
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "models/checkpoint.h"
#include "models/dequant.h"
#include "models/gguf.h"
#include "models/llama.h"
#include "models/tokenizer.h"

using namespace svdq::models;
using nlohmann::json;

namespace {

int Tensor(const GgufFile& f, const std::string& name, const std::string& out) {
  const GgufTensorInfo* t = f.FindTensor(name);
  if (!t) {
    std::cerr << "no tensor " << name << "\n";
    return 1;
  }
  std::vector<float> buf(t->numel());
  Dequantize(t->type, f.TensorData(*t), buf.data(), t->numel());
  std::ofstream(out, std::ios::binary).write(reinterpret_cast<const char*>(buf.data()), buf.size() * 4);
  std::cout << json{{"type", GgmlTypeName(t->type)}, {"dims", t->dims}}.dump() << "\n";
  return 0;
}

// Last-position logits of each id list, fp32, through the loader every source goes through.
int Logits(const std::string& model_path, const std::string& out_path) {
  const char* dev = std::getenv("SVDQ_PROBE_DEVICE");
  const char* dt = std::getenv("SVDQ_PROBE_DTYPE");
  at::Device device = dev && std::string(dev) == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  at::ScalarType dtype = !dt ? at::kFloat
                         : std::string(dt) == "bfloat16" ? at::kBFloat16
                         : std::string(dt) == "float16" ? at::kHalf
                                                        : at::kFloat;
  auto model = LoadModel(model_path, device, dtype);
  json in = json::parse(std::cin);
  c10::InferenceMode ng;
  std::ofstream os(out_path, std::ios::binary);
  for (const auto& ids : in) {
    SequenceKv kv;
    at::Tensor l = model->Forward(ids.get<std::vector<int32_t>>(), &kv).to(at::kCPU, at::kFloat).contiguous();
    os.write(reinterpret_cast<const char*>(l.data_ptr<float>()), l.numel() * 4);
  }
  std::cout << json::array({model->config().vocab_size}).dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: svdq-probe tensor|tokenize|detokenize|logits|generate MODEL ...\n";
    return 2;
  }
  std::string cmd = argv[1];
  try {
    if (cmd == "logits" && argc == 4) return Logits(argv[2], argv[3]);
    auto f = GgufFile::Open(argv[2]);
    if (cmd == "tensor" && argc == 5) return Tensor(*f, argv[3], argv[4]);
    auto tok = Tokenizer::FromGguf(*f);
    json in = json::parse(std::cin);
    json out = json::array();
    if (cmd == "tokenize") {
      for (const auto& s : in) out.push_back(tok->Encode(s.get<std::string>()));
    } else if (cmd == "detokenize") {
      for (const auto& ids : in) {
        IncrementalDetokenizer d(*tok);
        std::string text;
        for (int32_t id : ids.get<std::vector<int32_t>>()) text += d.Push(id);
        out.push_back(text + d.Flush());
      }
    } else if (cmd == "generate" && argc == 4) {
      auto model = LlamaModel::LoadGguf(*f, at::kCPU, at::kFloat);
      c10::InferenceMode ng;
      int n = std::stoi(argv[3]);
      for (const auto& ids : in) {
        SequenceKv kv;
        std::vector<int32_t> prompt = ids.get<std::vector<int32_t>>(), gen;
        at::Tensor l = model->Forward(prompt, &kv);
        for (int k = 0; k < n; ++k) {
          gen.push_back(static_cast<int32_t>(l.argmax().item<int64_t>()));
          l = model->Forward({gen.back()}, &kv);
        }
        out.push_back(gen);
      }
    } else {
      std::cerr << "bad command or arguments\n";
      return 2;
    }
    std::cout << out.dump() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "svdq-probe: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
