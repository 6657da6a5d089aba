#include "models/calibration.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "kernels/svdq/svdq_ref.h"
#include "models/llama.h"
#include "models/tokenizer.h"

namespace svdq::models {

std::vector<at::Tensor> CaptureKeys(LlamaModel& model, const Tokenizer& tok, const std::string& text_path,
                                    int max_tokens, int multiple) {
  std::ifstream in(text_path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + text_path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<int32_t> ids = tok.Encode(ss.str());
  int n = std::min<int>(static_cast<int>(ids.size()), std::min(max_tokens, model.config().max_context));
  n = n / multiple * multiple;
  if (n < 2) throw std::runtime_error(text_path + " gives too few tokens to calibrate on");
  ids.resize(n);
  ForwardCapture cap;
  SequenceKv kv;
  model.set_capture(&cap);
  model.Forward(ids, &kv);
  model.set_capture(nullptr);
  return cap.k_pre_rope;
}

BasisSet ComputeBases(const std::vector<at::Tensor>& keys, const std::string& scope, bool center) {
  if (keys.empty()) throw std::runtime_error("no keys to compute bases from");
  if (scope != "head" && scope != "layer") throw std::runtime_error("scope must be 'head' or 'layer', not '" + scope + "'");
  BasisSet b;
  const int64_t T = keys[0].size(0), H = keys[0].size(1), D = keys[0].size(2);
  b.layers = static_cast<int>(keys.size());
  b.units = scope == "head" ? static_cast<int>(H) : 1;
  b.width = static_cast<int>(scope == "head" ? D : H * D);
  b.scope = scope;
  b.centered = center;
  b.tokens = T;
  for (const auto& k : keys) {
    for (int u = 0; u < b.units; ++u) {
      at::Tensor x = (scope == "head" ? k.select(1, u) : k.reshape({T, H * D})).contiguous().to(at::kFloat);
      kernels::SvdqBasis basis;
      kernels::Status st = kernels::ComputeBasisRef(x.data_ptr<float>(), T, b.width, center, &basis);
      if (!st.ok()) throw std::runtime_error(st.message());
      b.mean.push_back(basis.mean);
      b.vectors.push_back(basis.vectors);
      b.singular_values.emplace_back(basis.singular_values.begin(), basis.singular_values.end());
    }
  }
  return b;
}

}  // namespace svdq::models
