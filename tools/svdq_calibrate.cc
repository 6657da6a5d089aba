// svdq_calibrate: computes a model's calibrated SVDq bases from a calibration text and
// writes them beside the model (format: models/basis_file.h).
//   svdq_calibrate MODEL.gguf [--text FILE] [--tokens N] [--scope head|layer] [--no-center] [--out FILE]
// Defaults: the text /usr/share/common-licenses/GFDL-1.3 (Debian's base-files), 2048
// tokens, head scope, centred, output MODEL.gguf.svdq-basis.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <filesystem>
#include <iostream>

#include "models/basis_file.h"
#include "models/calibration.h"
#include "models/gguf.h"
#include "models/llama.h"
#include "models/tokenizer.h"

int main(int argc, char** argv) {
  using namespace svdq::models;
  if (argc < 2) {
    std::cerr << "usage: svdq_calibrate MODEL.gguf [--text FILE] [--tokens N] [--scope head|layer] [--no-center] [--out FILE]\n";
    return 2;
  }
  std::string model_path = argv[1], text = "/usr/share/common-licenses/GFDL-1.3", scope = "head", out;
  int tokens = 2048;
  bool center = true;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--text") text = next();
      else if (a == "--tokens") tokens = std::stoi(next());
      else if (a == "--scope") scope = next();
      else if (a == "--out") out = next();
      else if (a == "--no-center") center = false;
      else throw std::invalid_argument("unknown option " + a);
    } catch (const std::exception& e) {
      std::cerr << "svdq_calibrate: " << e.what() << "\n";
      return 2;
    }
  }
  if (out.empty()) out = model_path + ".svdq-basis";
  try {
    c10::InferenceMode guard;
    auto file = GgufFile::Open(model_path);
    auto tok = Tokenizer::FromGguf(*file);
    auto model = LlamaModel::LoadGguf(*file, at::kCPU, at::kFloat);
    BasisSet b = ComputeBases(CaptureKeys(*model, *tok, text, tokens), scope, center);
    b.model_name = model->config().name;
    b.model_file_bytes = std::filesystem::file_size(model_path);
    b.text = text;
    WriteBasisFile(out, b);
    std::cout << "svdq_calibrate: " << b.layers << " layers x " << b.units << " bases of width " << b.width << " ("
              << scope << " scope" << (center ? ", centred" : "") << ") from " << b.tokens << " tokens of " << text
              << " -> " << out << "\n";
  } catch (const std::exception& e) {
    std::cerr << "svdq_calibrate: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
