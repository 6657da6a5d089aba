#include "models/kv_view.h"

namespace svdq::models {

at::Tensor IndexToDevice(const std::vector<int64_t>& v, at::Device device) {
  at::Tensor host = at::tensor(v, at::kLong);
  if (!device.is_cuda()) return host.to(device);
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

at::Tensor ApplyRotaryHalf(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, int64_t pos0,
                           at::ScalarType out) {
  const int64_t T = x.size(0);
  return ApplyRotaryHalfRows(x, cos.narrow(0, pos0, T), sin.narrow(0, pos0, T), out);
}

at::Tensor ApplyRotaryHalfRows(const at::Tensor& x, const at::Tensor& cos_rows, const at::Tensor& sin_rows,
                               at::ScalarType out) {
  const int64_t D = x.size(-1);
  at::Tensor c = cos_rows.unsqueeze(1);  // [T, 1, D]
  at::Tensor s = sin_rows.unsqueeze(1);
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor rot = at::cat({-xf.narrow(-1, D / 2, D / 2), xf.narrow(-1, 0, D / 2)}, -1);
  return (xf * c + rot * s).to(out);
}

void SequenceKv::Grow(int layer, const at::Tensor& like) {
  if (static_cast<int>(k_.size()) <= layer) {
    k_.resize(layer + 1);
    v_.resize(layer + 1);
  }
  int64_t cap = k_[layer].defined() ? k_[layer].size(1) : 0;
  if (needed_ <= cap) return;
  int64_t grown = std::max<int64_t>(64, cap);
  while (grown < needed_) grown *= 2;
  auto opts = like.options();
  at::Tensor nk = at::empty({like.size(1), grown, like.size(2)}, opts);
  at::Tensor nv = at::empty({like.size(1), grown, like.size(2)}, opts);
  if (cap > 0 && length_ > 0) {
    nk.narrow(1, 0, length_).copy_(k_[layer].narrow(1, 0, length_));
    nv.narrow(1, 0, length_).copy_(v_[layer].narrow(1, 0, length_));
  }
  k_[layer] = nk;
  v_[layer] = nv;
}

void SequenceKv::Write(int layer, int64_t pos0, const at::Tensor&, const at::Tensor& k, const at::Tensor& v) {
  Grow(layer, k);
  k_[layer].narrow(1, pos0, k.size(0)).copy_(k.transpose(0, 1));
  v_[layer].narrow(1, pos0, v.size(0)).copy_(v.transpose(0, 1));
}

std::pair<at::Tensor, at::Tensor> SequenceKv::Read(int layer, int64_t n) {
  return {k_[layer].narrow(1, 0, n), v_[layer].narrow(1, 0, n)};
}

}  // namespace svdq::models
