#include "server/kv/paged_storage.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/sparse/sparse_select.h"
#include "kernels/svdq/schedule.h"
#include "kernels/svdq/svdq_ref.h"
#ifdef SVDQ_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/attention/kv_write.h"
#include "kernels/attention/paged_decode.h"
#include "kernels/model/fused_ops.h"
#include "kernels/svdq/svdq_cuda.h"
#endif

namespace svdq::kv {
namespace {

using at::indexing::Slice;

TokenStore::Kind KindOf(ValueMode m) {
  switch (m) {
    case ValueMode::kFp8: return TokenStore::Kind::kFp8;
    case ValueMode::kInt8: return TokenStore::Kind::kInt8;
    case ValueMode::kInt4: return TokenStore::Kind::kInt4;
    default: return TokenStore::Kind::kFull;
  }
}

void Check(const kernels::Status& s, const char* what) {
  if (!s.ok()) throw std::runtime_error(std::string(what) + ": " + s.message());
}

at::Tensor ToDevice(const std::vector<int64_t>& v, at::Device d) { return models::IndexToDevice(v, d); }

kernels::KvFormat FormatOf(TokenStore::Kind k) {
  switch (k) {
    case TokenStore::Kind::kFp8: return kernels::KvFormat::kFp8;
    case TokenStore::Kind::kInt8: return kernels::KvFormat::kInt8;
    case TokenStore::Kind::kInt4: return kernels::KvFormat::kInt4;
    default: return kernels::KvFormat::kBf16;
  }
}

const uint16_t* ScalesOf(const TokenStore& s) {
  return s.scale().defined() ? static_cast<const uint16_t*>(s.scale().data_ptr()) : nullptr;
}

// Page landmarks from the sums of `count` post-RoPE keys of each page's S slices [n, kv, S, D]
// (fp32): int8 [n, kv, S W] and fp16 scales [n, kv], as kernels::QuantizeLandmark makes them
// (mean = sum / count, or its coordinates in `basis` [kv, D, R] or [n, kv, D, R] (W = R); one
// scale = max |x| / 127 over the page's S W values, capped at 65504 and rounded to fp16, codes
// rint(x / scale); a zero x gives scale 0 and zero codes), not bit for bit (the sums add in another
// order, and ATen may divide by multiplying): selection reads the stored landmarks, whichever path
// wrote them.
std::pair<at::Tensor, at::Tensor> QuantizeLandmarks(const at::Tensor& sums, int64_t count, const at::Tensor& basis = {}) {
  at::Tensor mean = sums * (1.0f / static_cast<float>(count));
  if (basis.defined()) mean = at::matmul(mean, basis);  // [n, kv, S, R]
  mean = mean.flatten(-2);
  at::Tensor scale = (mean.abs().amax(-1) / 127.0f).clamp_max(65504.0f).to(at::kHalf);
  at::Tensor s = scale.to(at::kFloat).unsqueeze(-1);
  at::Tensor codes = (mean / s.clamp_min(1e-38f)).round().clamp(-127, 127);
  codes = at::where(s > 0, codes, at::zeros_like(codes)).to(at::kChar);
  return {codes, scale};
}

#ifdef SVDQ_WITH_CUDA
// Rows [B, kv, D] with unit stride inside a row: their row stride, or 0 where they must be
// copied first.
int64_t RowStride(const at::Tensor& x) {
  if (x.dim() != 3 || x.stride(2) != 1 || x.stride(1) != x.size(2)) return 0;
  // One row: any stride reads it, and ATen leaves a size-1 dimension's stride arbitrary (it was
  // under a row's length here, and the landmark kernel refused it as a bad shape).
  return x.size(0) == 1 ? x.size(1) * x.size(2) : x.stride(0);
}
#endif

}  // namespace

TokenStore::TokenStore(Kind kind, int32_t num_blocks, const KvShape& s, at::ScalarType dtype, at::Device device)
    : kind_(kind), dtype_(dtype), head_dim_(s.head_dim) {
  auto o = at::TensorOptions().device(device);
  const int64_t B = num_blocks, KV = s.kv_heads, P = s.block_size, D = s.head_dim;
  switch (kind) {
    case Kind::kFull: data_ = at::zeros({B, KV, P, D}, o.dtype(dtype)); break;
    case Kind::kFp8: data_ = at::zeros({B, KV, P, D}, o.dtype(at::kFloat8_e4m3fn)); break;
    case Kind::kInt8: data_ = at::zeros({B, KV, P, D}, o.dtype(at::kChar)); break;
    case Kind::kInt4: data_ = at::zeros({B, KV, P, D / 2}, o.dtype(at::kByte)); break;
  }
  if (kind != Kind::kFull) scale_ = at::zeros({B, KV, P, D / kTokenGroup}, o.dtype(at::kBFloat16));
}

int64_t TokenStore::bytes() const {
  int64_t b = data_.numel() * static_cast<int64_t>(data_.element_size());
  if (scale_.defined()) b += scale_.numel() * static_cast<int64_t>(scale_.element_size());
  return b;
}

void TokenStore::Write(const at::Tensor& block, const at::Tensor& offset, const at::Tensor& x) {
  if (kind_ == Kind::kFull) {
    data_.index_put_({block, Slice(), offset}, x.to(dtype_));
    return;
  }
  // Symmetric absmax scale per token and group of 32 channels, rounded to bf16 first so
  // that the codes are computed against the scale that is stored.
  const int64_t T = x.size(0), KV = x.size(1), D = x.size(2), G = D / kTokenGroup;
  const double qmax = kind_ == Kind::kFp8 ? 448.0 : kind_ == Kind::kInt8 ? 127.0 : 7.0;
  at::Tensor xg = x.to(at::kFloat).reshape({T, KV, G, kTokenGroup});
  at::Tensor scale = (xg.abs().amax(-1) / qmax).clamp_min(1e-30).to(at::kBFloat16);
  at::Tensor y = (xg / scale.to(at::kFloat).unsqueeze(-1)).clamp(-qmax, qmax).reshape({T, KV, D});
  at::Tensor q;
  if (kind_ == Kind::kFp8) {
    q = y.to(at::kFloat8_e4m3fn);
  } else if (kind_ == Kind::kInt8) {
    q = y.round().to(at::kChar);
  } else {
    // Two codes per byte, code + 8 in [1, 15]: channel 2i in the low nibble, 2i + 1 in the high.
    at::Tensor u = (y.round() + 8).to(at::kShort).reshape({T, KV, D / 2, 2});
    q = (u.select(-1, 0) + u.select(-1, 1) * 16).to(at::kByte);
  }
  data_.index_put_({block, Slice(), offset}, q);
  scale_.index_put_({block, Slice(), offset}, scale);
}

at::Tensor TokenStore::Read(const at::Tensor& block, const at::Tensor& offset) const {
  at::Tensor q = data_.index({block, Slice(), offset});  // [n, KV, X]
  if (kind_ == Kind::kFull) return q;
  const int64_t n = q.size(0), KV = q.size(1), D = head_dim_, G = D / kTokenGroup;
  at::Tensor y;
  if (kind_ == Kind::kInt4) {
    at::Tensor b = q.to(at::kShort);
    y = at::stack({at::remainder(b, 16), at::div(b, 16, "floor")}, -1).reshape({n, KV, D}).to(at::kFloat) - 8;
  } else {
    y = q.to(at::kFloat);
  }
  at::Tensor scale = scale_.index({block, Slice(), offset}).to(at::kFloat);  // [n, KV, G]
  return (y.reshape({n, KV, G, kTokenGroup}) * scale.unsqueeze(-1)).reshape({n, KV, D}).to(dtype_);
}

PagedKvStorage::PagedKvStorage(StorageSpec spec) : spec_(std::move(spec)) {
  const KvShape& s = spec_.shape;
  const KvModes& m = spec_.modes;
  auto o = at::TensorOptions().device(spec_.device);
  const int64_t KV = s.kv_heads, D = s.head_dim, P = s.block_size;
  for (int l = 0; l < s.layers; ++l) {
    values_.emplace_back(KindOf(m.value), spec_.num_blocks, s, spec_.dtype, spec_.device);
    if (!m.page_coded_keys())
      keys_.emplace_back(m.key == KeyMode::kFp8 ? TokenStore::Kind::kFp8 : TokenStore::Kind::kFull, spec_.num_blocks, s,
                         spec_.dtype, spec_.device);
  }
  if (!m.page_coded_keys()) {
    PlanKernels();
    return;
  }
  codec_ = CodecShapeOf(m, s);
  const int64_t U = codec_.units, W = codec_.width;
  Check(kernels::MakeLayout(codec_.width, s.block_size, m.CodecSchedule(), &layout_), "key page layout");
  const bool per_lane = m.key == KeyMode::kSvdq && m.basis == BasisSource::kPrefill;
  const bool calibrated = m.key == KeyMode::kSvdq && m.basis == BasisSource::kCalibrated;
  if (calibrated && static_cast<int>(spec_.calibrated_vectors.size()) != s.layers)
    throw std::invalid_argument("the calibrated SVDq basis source needs a basis for every layer");
  retained_channels_ = at::tensor(kernels::RetainedChannels(layout_), at::kLong).to(spec_.device);
  for (int l = 0; l < s.layers; ++l) {
    codes_.push_back(at::zeros({spec_.num_blocks, U, layout_.page_bytes}, o.dtype(at::kByte)));
    tail_.push_back(at::zeros({spec_.lanes, P, KV, D}, o.dtype(spec_.dtype)));
    if (per_lane) {
      mean_.push_back(at::zeros({spec_.lanes, U, W}, o.dtype(at::kFloat)));
      vectors_.push_back(at::zeros({spec_.lanes, U, W, W}, o.dtype(at::kFloat)));
    } else if (calibrated) {
      if (spec_.calibrated_vectors[l].numel() != U * W * W || spec_.calibrated_mean[l].numel() != U * W)
        throw std::invalid_argument("the calibrated SVDq basis does not match the scope's units and width");
      mean_.push_back(spec_.calibrated_mean[l].to(spec_.device, at::kFloat).reshape({1, U, W}).contiguous());
      vectors_.push_back(spec_.calibrated_vectors[l].to(spec_.device, at::kFloat).reshape({1, U, W, W}).contiguous());
    } else {  // direct per-channel quantization: identity basis, no centring
      mean_.push_back(at::zeros({1, U, W}, o.dtype(at::kFloat)));
      vectors_.push_back(at::eye(W, o.dtype(at::kFloat)).expand({1, U, W, W}).contiguous());
    }
    vectors_half_.push_back(at::zeros({vectors_[l].size(0), U, W, layout_.retained}, o.dtype(at::kHalf)));
    if (!per_lane) RefreshHalfBasis(l, 0);
  }
  lane_basis_set_.assign(static_cast<size_t>(spec_.lanes) * s.layers, 0);
  nonfinite_ = at::zeros({spec_.lanes}, o.dtype(at::kInt));
  if (m.sparse_budget > 0) {
    if (std::string e = PlanSparse(m, s, &sparse_); !e.empty()) throw std::invalid_argument(e);
    const int64_t max_pages = spec_.rope_cos.defined() ? (spec_.rope_cos.size(0) + P - 1) / P : 0;
    if (max_pages > kernels::kSparseMaxChunks)
      throw std::invalid_argument("sparse attention scores at most " + std::to_string(kernels::kSparseMaxChunks) +
                                  " pages a sequence, and the model's context is " + std::to_string(max_pages) +
                                  " pages of " + std::to_string(P) + " tokens: raise --block-size");
    const int64_t W = sparse_.landmark_width, S = sparse_.landmark_subs;
    for (int l = 0; l < s.layers; ++l) {
      if (!sparse_layer(l)) {  // a dense layer's: none (kept undefined, so that layers index them)
        landmarks_.emplace_back();
        landmark_scales_.emplace_back();
        landmark_sums_.emplace_back();
        if (m.landmark_basis()) landmark_basis_.emplace_back();
        continue;
      }
      landmarks_.push_back(at::zeros({spec_.num_blocks, KV, S * W}, o.dtype(at::kChar)));
      landmark_scales_.push_back(at::zeros({spec_.num_blocks, KV}, o.dtype(at::kHalf)));
      landmark_sums_.push_back(at::zeros({spec_.lanes, KV, S, D}, o.dtype(at::kFloat)));
      if (m.landmark_basis()) landmark_basis_.push_back(at::zeros({spec_.lanes, KV, D, W}, o.dtype(at::kFloat)));
    }
    if (m.landmark_basis()) landmark_basis_set_.assign(static_cast<size_t>(spec_.lanes) * s.layers, 0);
  }
  PlanKernels();
#ifdef SVDQ_WITH_CUDA
  // Sparse attention is the warp-stream SVDq kernel's: it must take this layout (schedule, page).
  if (sparse() && spec_.device.is_cuda() && !WarpKernelTakes(static_cast<int>(KV)))
    throw std::invalid_argument("sparse attention: the warp-stream SVDq kernel does not take this key schedule, "
                                "block size and value mode (bf16 values, head dim 64 or 128, blocks of 16 x 2^n)");
#endif
}

void PagedKvStorage::ReleaseLane(int lane) {
  if (lane < 0 || lane >= spec_.lanes) return;
  if (!landmark_basis_set_.empty())
    std::fill_n(landmark_basis_set_.begin() + static_cast<size_t>(lane) * spec_.shape.layers, spec_.shape.layers, 0);
  if (lane_basis_set_.empty()) return;  // empty: no prefill bases in this mode
  std::fill_n(lane_basis_set_.begin() + static_cast<size_t>(lane) * spec_.shape.layers, spec_.shape.layers, 0);
  if (nonfinite_.defined()) nonfinite_[lane].zero_();
}

std::vector<int> PagedKvStorage::NonFiniteLanes() const {
  std::vector<int> out;
  if (!nonfinite_.defined()) return out;
  at::Tensor f = nonfinite_.to(at::kCPU);
  const int32_t* v = f.data_ptr<int32_t>();
  for (int i = 0; i < f.numel(); ++i)
    if (v[i] != 0) out.push_back(i);
  return out;
}

int64_t PagedKvStorage::bytes() const {
  int64_t b = 0;
  for (const auto& t : keys_) b += t.bytes();
  for (const auto& t : values_) b += t.bytes();
  for (const auto* v : {&codes_, &tail_, &mean_, &vectors_, &vectors_half_, &landmarks_, &landmark_scales_, &landmark_sums_, &landmark_basis_})
    for (const auto& t : *v)
      if (t.defined()) b += t.numel() * static_cast<int64_t>(t.element_size());  // a dense layer has no landmarks
  return b;
}

void PagedKvStorage::RefreshHalfBasis(int layer, int64_t row) {
  vectors_half_[layer][row].copy_(vectors_[layer][row].index_select(-1, retained_channels_));
}

#ifdef SVDQ_WITH_CUDA
bool PagedKvStorage::WarpKernelTakes(int num_heads) const {
  kernels::SvdqAttentionParams p;
  p.layout = layout_;
  p.kv_heads = static_cast<int>(codec_.units);
  p.num_heads = num_heads;
  p.value_format = FormatOf(values_[0].kind());
  return kernels::SvdqAttentionWarpSupported(p);
}
#endif

bool PagedKvStorage::AttentionReadsHalfBasis(int num_heads) const {
#ifdef SVDQ_WITH_CUDA
  return spec_.modes.page_coded_keys() && spec_.device.is_cuda() && kernels_fit_ && !vectors_half_.empty() &&
         WarpKernelTakes(num_heads);
#else
  (void)num_heads;
  return false;
#endif
}

void PagedKvStorage::PlanKernels() {
#ifdef SVDQ_WITH_CUDA
  const KvModes& m = spec_.modes;
  const int D = spec_.shape.head_dim;
  if (!spec_.device.is_cuda() || spec_.dtype != at::kBFloat16 || D > 256) return;
  fused_write_ = D == 64 || D == 128 || D == 256;
  const bool quantized_values = m.value != ValueMode::kFull;
  if (!m.page_coded_keys()) {
    kernels_fit_ = (m.key == KeyMode::kFull && !quantized_values) || kernels::PagedDecodeTensorCores(D);
    return;
  }
  if (m.layer_scope()) return;
  if (!quantized_values) {
    kernels_fit_ = true;
    return;
  }
  kernels::SvdqAttentionParams p;  // the shape the mma kernel would be asked for
  p.layout = layout_;
  p.num_heads = spec_.shape.kv_heads;  // G = 1 bounds nothing; the kernel takes G <= 16
  p.kv_heads = spec_.shape.kv_heads;
  p.value_format = FormatOf(values_[0].kind());
  p.rope_inv_freq = spec_.rope_inv_freq.defined() ? spec_.rope_inv_freq.data_ptr<float>() : nullptr;
  kernels_fit_ = kernels::SvdqAttentionMmaSupported(p);
#endif
}

int PagedKvStorage::BasisSlot(int lane) const { return mean_.empty() || mean_[0].size(0) == 1 ? 0 : lane; }

void PagedKvStorage::WriteDecode(int layer, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v,
                                 const DecodeWrites& w) {
  const bool coded = spec_.modes.page_coded_keys();
  at::Tensor tail = coded ? tail_[layer] : at::Tensor();
  bool written = false;
#ifdef SVDQ_WITH_CUDA
  if (fused_write_ && k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16 &&
      k_pre.scalar_type() == at::kBFloat16) {
    // One launch: values, per-token keys or the pre-RoPE key into the lane's tail.
    at::Tensor kc = RowStride(k) ? k : k.contiguous(), vc = RowStride(v) ? v : v.contiguous();
    at::Tensor pc = RowStride(k_pre) ? k_pre : k_pre.contiguous();
    kernels::KvWriteParams p;
    p.rows = static_cast<int>(v.size(0));
    p.kv_heads = static_cast<int>(spec_.shape.kv_heads);
    p.head_dim = static_cast<int>(spec_.shape.head_dim);
    p.page_size = static_cast<int>(spec_.shape.block_size);
    p.v = static_cast<const uint16_t*>(vc.data_ptr());
    p.v_stride = RowStride(vc);
    p.block = w.block.data_ptr<int64_t>();
    p.offset = w.offset.data_ptr<int64_t>();
    const TokenStore& vs = values_[layer];
    p.value_format = FormatOf(vs.kind());
    p.value_pages = vs.data().data_ptr();
    p.value_scales = const_cast<uint16_t*>(ScalesOf(vs));
    if (!coded) {
      const TokenStore& ks = keys_[layer];
      p.k = static_cast<const uint16_t*>(kc.data_ptr());
      p.k_stride = RowStride(kc);
      p.key_format = FormatOf(ks.kind());
      p.key_pages = ks.data().data_ptr();
      p.key_scales = const_cast<uint16_t*>(ScalesOf(ks));
    } else {
      p.k_pre = static_cast<const uint16_t*>(pc.data_ptr());
      p.k_pre_stride = RowStride(pc);
      p.lanes = w.lanes.data_ptr<int64_t>();
      p.tail = static_cast<uint16_t*>(tail.data_ptr());
    }
    Check(kernels::KvWrite(p, at::cuda::getCurrentCUDAStream()), "KV write");
    written = true;
  }
#endif
  if (!written) {
    values_[layer].Write(w.block, w.offset, v);
    if (!coded) keys_[layer].Write(w.block, w.offset, k);
    else tail.index_put_({w.lanes, w.offset}, k_pre.to(tail.scalar_type()));
  }
  if (sparse_layer(layer)) AppendLandmarks(layer, k, w);
  if (!coded) return;
  // A row whose token completes its page has that page encoded into its block: decided on the
  // device (encode_if_last), read straight from the lane's tail, written straight to the codes.
  at::Tensor tail_f32;  // the codec reads bf16 or fp32 tails; fp16 ones go through fp32
  if (tail.scalar_type() != at::kBFloat16 && tail.scalar_type() != at::kFloat) tail_f32 = tail.to(at::kFloat);
  kernels::SvdqEncodeParams p;
  p.layout = layout_;
  p.num_pages = static_cast<int>(k.size(0));
  p.kv_heads = static_cast<int>(codec_.units);
  if (tail.scalar_type() == at::kBFloat16) p.keys_bf16 = static_cast<const uint16_t*>(tail.data_ptr());
  else p.keys = tail_f32.defined() ? tail_f32.data_ptr<float>() : tail.data_ptr<float>();
  p.key_lane = w.lanes.data_ptr<int64_t>();
  p.encode_if_last = w.offset.data_ptr<int64_t>();
  p.out_page = w.block.data_ptr<int64_t>();
  p.out = codes_[layer].data_ptr<uint8_t>();
  p.mean = mean_[layer].data_ptr<float>();
  p.basis = vectors_[layer].data_ptr<float>();
  p.basis_index = w.basis_index.data_ptr<int32_t>();
  p.nonfinite = nonfinite_.data_ptr<int32_t>();  // indexed by lane
#ifdef SVDQ_WITH_CUDA
  if (spec_.device.is_cuda()) Check(kernels::SvdqEncode(p, at::cuda::getCurrentCUDAStream()), "SVDq encode");
  else
#endif
    Check(kernels::SvdqEncodeRef(p), "SVDq encode");
}

void PagedKvStorage::AppendLandmarks(int layer, const at::Tensor& k, const DecodeWrites& w) {
  const int64_t B = k.size(0), KV = spec_.shape.kv_heads, D = spec_.shape.head_dim, P = spec_.shape.block_size;
#ifdef SVDQ_WITH_CUDA
  if (k.is_cuda() && k.scalar_type() == at::kBFloat16) {
    // One launch: each row's key into its lane's sum; a row that fills its page writes the landmark.
    at::Tensor kc = RowStride(k) ? k : k.contiguous();
    kernels::SparseLandmarkParams p;
    p.rows = static_cast<int>(B);
    p.KV = static_cast<int>(KV);
    p.D = static_cast<int>(D);
    p.P = static_cast<int>(P);
    p.S = sparse_.landmark_subs;
    p.k = static_cast<const uint16_t*>(kc.data_ptr());
    p.k_stride = RowStride(kc);
    p.block = w.block.data_ptr<int64_t>();
    p.offset = w.offset.data_ptr<int64_t>();
    p.lanes = w.lanes.data_ptr<int64_t>();
    p.acc = landmark_sums_[layer].data_ptr<float>();
    p.coords = landmarks_[layer].data_ptr<int8_t>();
    p.scales = static_cast<uint16_t*>(landmark_scales_[layer].data_ptr());  // fp16
    if (!landmark_basis_.empty()) {
      p.basis = landmark_basis_[layer].data_ptr<float>();  // each row's lane's
      p.R = sparse_.landmark_width;
    }
    Check(kernels::SparseLandmarkAppend(p, at::cuda::getCurrentCUDAStream()), "page landmarks");
    return;
  }
#endif
  // The same in ATen ops, with no host decision: every row's key is added to its slice's sum
  // (restarted at the slice's first offset), every row's landmarks are computed, and written over
  // the stored ones only where the row fills its page.
  const int64_t S = sparse_.landmark_subs, L = P / S;
  at::Tensor& sums = landmark_sums_[layer];  // [lanes, KV, S, D]
  at::Tensor kf = k.to(at::kFloat).reshape({B, KV, 1, D});
  at::Tensor mine = (at::arange(S, w.offset.options()).view({1, 1, S, 1}) == at::floor_divide(w.offset, L).view({B, 1, 1, 1}));
  at::Tensor restart = (at::remainder(w.offset, L) == 0).view({B, 1, 1, 1});
  at::Tensor old = sums.index_select(0, w.lanes);
  at::Tensor sum = at::where(mine, at::where(restart, at::zeros_like(kf), old) + kf, old);
  sums.index_copy_(0, w.lanes, sum);
  auto [codes, scale] =
      QuantizeLandmarks(sum, L, landmark_basis_.empty() ? at::Tensor() : landmark_basis_[layer].index_select(0, w.lanes));
  at::Tensor full = (w.offset == P - 1);
  landmarks_[layer].index_copy_(
      0, w.block, at::where(full.view({B, 1, 1}), codes, landmarks_[layer].index_select(0, w.block)));
  landmark_scales_[layer].index_copy_(
      0, w.block, at::where(full.view({B, 1}), scale, landmark_scales_[layer].index_select(0, w.block)));
}

void PagedKvStorage::SelectPages(int layer, const at::Tensor& q, const DecodeTables& t, at::Tensor* pages,
                                 at::Tensor* count) {
  const int64_t B = q.size(0), NH = q.size(1), KV = spec_.shape.kv_heads, D = spec_.shape.head_dim;
  if (!t.sparse_from.defined()) throw std::logic_error("sparse attention: the step's tables have no sparse_from");
  *pages = at::empty({B, KV, sparse_.keep + 1}, t.len.options());
  *count = at::empty({B, KV}, t.len.options());
  at::Tensor qf = q.to(at::kFloat).contiguous();
  kernels::SparseSelectParams p;
  p.score = kernels::SparseScore::kLandmark;
  p.q = qf.data_ptr<float>();
  if (!landmark_basis_.empty()) {
    p.basis = landmark_basis_[layer].data_ptr<float>();  // each sequence's: its lane's
    p.basis_row = t.lanes.data_ptr<int64_t>();
  }  // else null: landmarks are the mean keys themselves
  p.coords = landmarks_[layer].data_ptr<int8_t>();
  p.scales = static_cast<const uint16_t*>(landmark_scales_[layer].data_ptr());  // fp16
  p.table = t.table.data_ptr<int32_t>();
  p.chunks = t.sparse_from.data_ptr<int32_t>();  // the pages before each row's recent window
  p.selected = pages->data_ptr<int32_t>();
  p.count = count->data_ptr<int32_t>();
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(NH);
  p.KV = static_cast<int>(KV);
  p.D = static_cast<int>(D);
  p.R = sparse_.landmark_width;
  p.S = sparse_.landmark_subs;
  p.max_chunks = static_cast<int>(t.max_pages);
  p.keep = sparse_.keep;
#ifdef SVDQ_WITH_CUDA
  if (qf.is_cuda()) {
    Check(kernels::SparseSelect(p, at::cuda::getCurrentCUDAStream()), "sparse page selection");
    return;
  }
#endif
  Check(kernels::SparseSelectRef(p), "sparse page selection");  // the same choice, on the host
}

at::Tensor PagedKvStorage::AttendDecode(int layer, const at::Tensor& q, const DecodeTables& t) {
#ifdef SVDQ_WITH_CUDA
  // Both callers (AttendMany, the decode graphs) ask only where DecodeKernelsFit.
  if (!kernels_fit_) throw std::logic_error("AttendDecode: no decode kernel serves this KV mode and shape");
  const int64_t B = q.size(0), NH = q.size(1), D = spec_.shape.head_dim, KV = spec_.shape.kv_heads;
  const int64_t P = spec_.shape.block_size;
  at::Tensor qb = q.to(at::kBFloat16).contiguous();
  at::Tensor out = at::empty({B, NH, D}, q.options().dtype(at::kFloat));
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  static const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor ws;
  auto workspace = [&](size_t floats) {
    ws = at::empty({static_cast<int64_t>(floats)}, q.options().dtype(at::kFloat));
    return ws.data_ptr<float>();
  };
  if (!spec_.modes.page_coded_keys()) {
    kernels::PagedDecodeParams p;
    p.batch = static_cast<int>(B);
    p.num_heads = static_cast<int>(NH);
    p.kv_heads = static_cast<int>(KV);
    p.head_dim = static_cast<int>(D);
    p.page_size = static_cast<int>(P);
    p.max_pages = static_cast<int>(t.max_pages);
    p.max_seq_len = static_cast<int>(t.max_len);
    p.sm_scale = scale;
    p.q = static_cast<const uint16_t*>(qb.data_ptr());
    p.key_format = FormatOf(keys_[layer].kind());
    p.value_format = FormatOf(values_[layer].kind());
    p.key_pages = keys_[layer].data().data_ptr();
    p.value_pages = values_[layer].data().data_ptr();
    p.key_scales = ScalesOf(keys_[layer]);
    p.value_scales = ScalesOf(values_[layer]);
    p.page_table = t.table.data_ptr<int32_t>();
    p.seq_len = t.len.data_ptr<int32_t>();
    p.out = out.data_ptr<float>();
    // The split plan depends on the shapes only, so a captured step keeps a valid one.
    p.num_splits = kernels::PagedDecodeNumSplits(p, num_sms);
    if (const size_t n = kernels::PagedDecodeWorkspaceFloats(p); n > 0) p.workspace = workspace(n);
    Check(kernels::PagedDecodeAttention(p, stream), "paged decode attention");
    return out;
  }
  // Each sequence's tail page (pre-RoPE in its lane) rotated at its positions, and the value
  // page it shares; the bases stay where they are, addressed through basis_index.
  at::Tensor rows = tail_[layer].index_select(0, t.lanes).reshape({B * P, KV, D});
  at::Tensor rotated = at::empty({B * P, KV, D}, rows.options());  // one fused kernel (kernels/model)
  Check(kernels::RopeQk(static_cast<const uint16_t*>(rows.data_ptr()), KV * D, static_cast<int>(B * P),
                        static_cast<int>(KV), 0, static_cast<int>(D), t.tail_pos.data_ptr<int64_t>(),
                        spec_.rope_cos.data_ptr<float>(), spec_.rope_sin.data_ptr<float>(),
                        static_cast<uint16_t*>(rotated.data_ptr()), nullptr, stream),
        "tail RoPE");
  at::Tensor tail_k = rotated.reshape({B, P, KV, D}).permute({0, 2, 1, 3}).contiguous();
  kernels::SvdqAttentionParams p;
  p.layout = layout_;
  p.batch = static_cast<int>(B);
  p.num_heads = static_cast<int>(NH);
  p.kv_heads = static_cast<int>(KV);
  p.max_pages = static_cast<int>(t.max_pages);
  p.sm_scale = scale;
  p.q = static_cast<const uint16_t*>(qb.data_ptr());
  p.key_pages = codes_[layer].data_ptr<uint8_t>();
  p.value_pages = values_[layer].data().data_ptr();
  p.value_format = FormatOf(values_[layer].kind());
  p.value_scales = ScalesOf(values_[layer]);
  p.page_table = t.table.data_ptr<int32_t>();
  p.num_pages = t.len.data_ptr<int32_t>();
  p.mean = mean_[layer].data_ptr<float>();
  p.basis = vectors_[layer].data_ptr<float>();
  p.basis_half = static_cast<const uint16_t*>(vectors_half_[layer].data_ptr());
  p.basis_index = t.basis_index.data_ptr<int32_t>();
  p.tail_keys = static_cast<const uint16_t*>(tail_k.data_ptr());
  p.tail_len = t.tail_len.data_ptr<int32_t>();
  p.rope_cos = spec_.rope_cos.data_ptr<float>();
  p.rope_sin = spec_.rope_sin.data_ptr<float>();
  if (spec_.rope_inv_freq.defined()) p.rope_inv_freq = spec_.rope_inv_freq.data_ptr<float>();
  // The tail's values are read where they are stored (the mma kernel); the other kernels take
  // a gathered bf16 copy.
  at::Tensor tail_v;
  p.tail_value_page = t.tail_block.data_ptr<int64_t>();
  if (!kernels::SvdqAttentionMmaSupported(p)) {
    p.tail_value_page = nullptr;
    tail_v = values_[layer].data().index_select(0, t.tail_block).contiguous();
    p.tail_values = static_cast<const uint16_t*>(tail_v.data_ptr());
  }
  p.out = out.data_ptr<float>();
  int plan_pages = p.max_pages;
  at::Tensor sparse_pages, sparse_count;
  if (sparse_layer(layer)) {
    // Sparse attention: the chosen pages, the recent ones and the tail (kernels/sparse).
    SelectPages(layer, q, t, &sparse_pages, &sparse_count);
    p.sparse_pages = sparse_pages.data_ptr<int32_t>();
    p.sparse_count = sparse_count.data_ptr<int32_t>();
    p.sparse_recent = t.sparse_from.data_ptr<int32_t>();
    p.sparse_stride = sparse_.keep + 1;
    p.sparse_max_pages = plan_pages = std::min(p.max_pages, sparse_.keep + 1 + sparse_.recent_pages);
  }
  // The split is planned for the longest list. (At 8 sequences, one block per sequence and KV
  // head was faster for lists of up to 2,048 tokens: bench/results/sparse_h200.json,
  // attention_us_by_pages_per_split, 16.3 against the planner's 24.0 us at a 256-token budget;
  // slower at 4,096, 88.1 against 71.3. Smaller batches were not measured, where fewer blocks
  // leave more SMs idle: the planner is kept until a batch-aware plan is measured.)
  p.pages_per_split = kernels::SvdqAttentionPagesPerSplit(p.batch, p.kv_heads, plan_pages, static_cast<int>(P), num_sms,
                                                          kernels::SvdqAttentionBlocksPerSm(p));
  // The warp-stream kernel's setup overlaps the selection before it (SvdqAttentionParams::
  // overlap_setup; with dense lists the kernel before it does not let it start early).
  p.overlap_setup = true;
  if (p.pages_per_split > 0) p.workspace = workspace(kernels::SvdqAttentionWorkspaceFloats(p));
  Check(kernels::SvdqAttention(p, stream), "SVDq attention");
  return out;
#else
  (void)layer, (void)q, (void)t;
  throw std::logic_error("AttendDecode needs CUDA");
#endif
}

PagedSeqView::PagedSeqView(PagedKvStorage* storage, const std::vector<BlockId>& blocks, int64_t length, int lane)
    : st_(storage), blocks_(blocks), length_(length), lane_(lane) {
  if (lane < 0 || lane >= storage->spec().lanes) throw std::logic_error("KV view with an invalid lane");
}

void PagedSeqView::Reserve(int64_t n) {
  const int64_t have = static_cast<int64_t>(blocks_.size()) * st_->block_size();
  if (n > have)
    throw std::logic_error("paged KV view needs " + std::to_string(n) + " tokens but its blocks hold " +
                           std::to_string(have));
}

std::pair<at::Tensor, at::Tensor> PagedSeqView::Where(int64_t from, int64_t to) const {
  auto hit = where_cache_.find({from, to});
  if (hit != where_cache_.end()) return hit->second;
  const int64_t P = st_->block_size();
  std::vector<int64_t> blk, off;
  for (int64_t p = from; p < to; ++p) {
    blk.push_back(blocks_[p / P]);
    off.push_back(p % P);
  }
  auto r = std::make_pair(ToDevice(blk, st_->spec().device), ToDevice(off, st_->spec().device));
  where_cache_.emplace(std::make_pair(from, to), r);
  return r;
}

at::Tensor PagedSeqView::BlockIds(int64_t first_page, int64_t pages) const {
  auto hit = block_cache_.find({first_page, pages});
  if (hit != block_cache_.end()) return hit->second;
  at::Tensor t = ToDevice(std::vector<int64_t>(blocks_.begin() + first_page, blocks_.begin() + first_page + pages),
                          st_->spec().device);
  block_cache_.emplace(std::make_pair(first_page, pages), t);
  return t;
}

int PagedSeqView::BasisSlot() const { return st_->BasisSlot(lane_); }

namespace {

// Eigenvectors of a batch of Gram matrices [n, W, W], as columns by descending eigenvalue, fp32.
at::Tensor EigenvectorsDescending(const at::Tensor& gram) {
  const int64_t n = gram.size(-1);
#ifdef SVDQ_WITH_CUDA
  if (gram.is_cuda() && (n == 64 || n == 128)) {
    // One launch for the batch, no host sync (cuSOLVER's syevd took 1.6 ms a matrix).
    at::Tensor m = gram.to(at::kFloat).contiguous(), vec = at::empty_like(m);
    kernels::SymEigParams p;
    p.matrices = m.data_ptr<float>();
    p.vectors = vec.data_ptr<float>();
    p.batch = static_cast<int>(m.size(0));
    p.n = static_cast<int>(n);
    Check(kernels::SymEigDescending(p, at::cuda::getCurrentCUDAStream()), "SVDq prefill basis");
    return vec;
  }
#endif
  // LAPACK / cuSOLVER in fp64, then the kernel's order and signs: descending, each vector's
  // largest component positive.
  at::Tensor vec = std::get<1>(at::linalg_eigh(gram.to(at::kDouble))).flip({-1});
  at::Tensor big = vec.gather(-2, vec.abs().argmax(-2, /*keepdim=*/true));
  return (vec * at::where(big < 0, -1.0, 1.0)).to(at::kFloat);
}

}  // namespace

bool PagedSeqView::BeginBasis(int layer, const at::Tensor& k_pre) {
  const auto& sp = st_->spec();
  const int64_t T = k_pre.size(0), U = st_->codec_.units, W = st_->codec_.width;
  at::Tensor mean = st_->mean_[layer][lane_], vectors = st_->vectors_[layer][lane_];
  if (T < W && !sp.calibrated_vectors.empty()) {
    // Too few prompt keys to span the head: the calibrated basis stands in.
    mean.copy_(sp.calibrated_mean[layer].reshape_as(mean));
    vectors.copy_(sp.calibrated_vectors[layer].reshape_as(vectors));
    st_->RefreshHalfBasis(layer, lane_);
    return false;
  }
  // The centred Gram matrix per unit (fp64, on the device); its eigenvectors come in
  // FinishBasis, for every layer of the forward at once.
  at::Tensor kf = k_pre.to(at::kDouble).reshape({T, U, W}).transpose(0, 1);  // [U, T, W]
  at::Tensor mu = kf.mean(1, /*keepdim=*/true);
  at::Tensor c = kf - mu;
  mean.copy_(mu.squeeze(1));
  if (pending_gram_.empty()) {
    pending_gram_.resize(sp.shape.layers);
    pending_keys_.resize(sp.shape.layers);
  }
  pending_gram_[layer] = at::matmul(c.transpose(1, 2), c);
  return true;
}

void PagedSeqView::FinishBasis() {
  std::vector<int> layers;
  std::vector<at::Tensor> grams;
  for (int l = 0; l < static_cast<int>(pending_gram_.size()); ++l)
    if (pending_gram_[l].defined()) {
      layers.push_back(l);
      grams.push_back(pending_gram_[l]);
    }
  if (layers.empty()) return;
  const int64_t U = st_->codec_.units, W = st_->codec_.width;
  at::Tensor vec = EigenvectorsDescending(at::cat(grams, 0)).view({static_cast<int64_t>(layers.size()), U, W, W});
  const int layer_count = st_->spec().shape.layers;
  for (size_t i = 0; i < layers.size(); ++i) {
    const int l = layers[i];
    st_->vectors_[l][lane_].copy_(vec[static_cast<int64_t>(i)]);
    st_->RefreshHalfBasis(l, lane_);
    st_->lane_basis_set_[static_cast<size_t>(lane_) * layer_count + l] = 1;
    pending_gram_[l] = at::Tensor();
  }
  for (int l : layers)
    if (pending_keys_[l].defined()) {
      EncodePages(l, 0, pending_keys_[l]);
      pending_keys_[l] = at::Tensor();
    }
}

at::Tensor PagedSeqView::BasisIndex(int64_t pages) const {
  // Every page of the sequence takes its basis row (the lane's, or the shared one) in place.
  return at::full({pages}, BasisSlot(), at::TensorOptions().dtype(at::kInt).device(st_->spec().device));
}

void PagedSeqView::EncodePages(int layer, int64_t first_page, const at::Tensor& keys_pre) {
  const auto& sp = st_->spec();
  const int64_t P = sp.shape.block_size, U = st_->codec_.units, W = st_->codec_.width;
  const int64_t n = keys_pre.size(0) / P;
  if (n == 0) return;
  // The fp32 copies below are bounded to ~64 MiB a call (a long first chunk comes in pieces).
  if (const int64_t most = std::max<int64_t>(1, (64LL << 20) / (P * U * W * 4)); n > most) {
    for (int64_t c = 0; c < n; c += most)
      EncodePages(layer, first_page + c, keys_pre.narrow(0, c * P, std::min(most, n - c) * P));
    return;
  }
  at::Tensor x = keys_pre.to(at::kFloat).reshape({n, P, U, W}).permute({0, 2, 1, 3}).contiguous();
  at::Tensor out = at::empty({n, U, st_->layout_.page_bytes}, x.options().dtype(at::kByte));
  at::Tensor basis_index = BasisIndex(n);
  kernels::SvdqEncodeParams p;
  p.layout = st_->layout_;
  p.num_pages = static_cast<int>(n);
  p.kv_heads = static_cast<int>(U);
  p.keys = x.data_ptr<float>();
  p.mean = st_->mean_[layer].data_ptr<float>();
  p.basis = st_->vectors_[layer].data_ptr<float>();
  p.basis_index = basis_index.data_ptr<int32_t>();
  p.out = out.data_ptr<uint8_t>();
  p.nonfinite = st_->nonfinite_.data_ptr<int32_t>() + lane_;  // this sequence's flag
#ifdef SVDQ_WITH_CUDA
  if (sp.device.is_cuda()) Check(kernels::SvdqEncode(p, nullptr), "SVDq encode");
  else
#endif
    Check(kernels::SvdqEncodeRef(p), "SVDq encode");
  st_->codes_[layer].index_copy_(0, BlockIds(first_page, n), out);
}

at::Tensor PagedSeqView::DecodePages(int layer, const std::vector<int64_t>& ids) {
  const auto& sp = st_->spec();
  const int64_t P = sp.shape.block_size, KV = sp.shape.kv_heads, D = sp.shape.head_dim;
  const int64_t U = st_->codec_.units, W = st_->codec_.width, pages = static_cast<int64_t>(ids.size());
  const bool layer_scope = sp.modes.layer_scope();
  const bool range = pages > 0 && ids.back() - ids.front() == pages - 1;  // consecutive (ids ascend)
  std::vector<int64_t> blocks, firsts;
  for (int64_t pg : ids) {
    if (!range) blocks.push_back(blocks_[pg]);
    firsts.push_back(pg * P);
  }
  at::Tensor out = at::empty({pages, U, P, W}, sp.rope_cos.options().dtype(at::kFloat));
  at::Tensor block_ids = range ? BlockIds(ids.front(), pages) : ToDevice(blocks, sp.device);
  at::Tensor codes = st_->codes_[layer].index_select(0, block_ids).contiguous();
  at::Tensor basis_index = BasisIndex(pages);
  at::Tensor first = ToDevice(firsts, sp.device).to(at::kInt);
  kernels::SvdqDecodeParams p;
  p.layout = st_->layout_;
  p.num_pages = static_cast<int>(pages);
  p.kv_heads = static_cast<int>(U);
  p.pages = codes.data_ptr<uint8_t>();
  p.mean = st_->mean_[layer].data_ptr<float>();
  p.basis = st_->vectors_[layer].data_ptr<float>();
  p.basis_index = basis_index.data_ptr<int32_t>();
  p.first_pos = first.data_ptr<int32_t>();
  bool rotated = false;
#ifdef SVDQ_WITH_CUDA
  if (sp.device.is_cuda()) {
    if (!layer_scope) {  // a layer-wide latent is rotated per head below, once decoded
      p.rope_cos = sp.rope_cos.data_ptr<float>();
      p.rope_sin = sp.rope_sin.data_ptr<float>();
      rotated = true;
    }
    p.out = out.data_ptr<float>();
    Check(kernels::SvdqDecode(p, nullptr), "SVDq decode");
  } else
#endif
  {
    // On the host: the latents by the reference, the keys as one matrix product (BLAS, on every
    // core; the reference's per-key fp64 loop took most of a CPU decode step), RoPE below.
    Check(kernels::SvdqDequantLatentRef(p, out.data_ptr<float>()), "SVDq decode");
    const int slot = BasisSlot();
    out = at::matmul(out, st_->vectors_[layer][slot].transpose(-1, -2)) + st_->mean_[layer][slot].unsqueeze(1);
  }
  at::Tensor keys = out.permute({0, 2, 1, 3}).reshape({pages * P, KV, D});
  if (rotated) return keys;
  at::Tensor pos = (first.to(at::kLong).unsqueeze(1) + at::arange(P, first.options().dtype(at::kLong))).reshape({-1});
  return models::ApplyRotaryHalfRows(keys, sp.rope_cos.index_select(0, pos), sp.rope_sin.index_select(0, pos), at::kFloat);
}

void PagedSeqView::Write(int layer, int64_t pos0, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v) {
  const auto& sp = st_->spec();
  const int64_t T = k.size(0), to = pos0 + T, P = sp.shape.block_size;
  fresh_layer_ = layer;
  fresh_pos0_ = pos0;
  fresh_k_ = k;
  fresh_v_ = v;
  auto [blk, off] = Where(pos0, to);
  st_->values_[layer].Write(blk, off, v);
  if (!sp.modes.page_coded_keys()) {
    st_->keys_[layer].Write(blk, off, k);
    return;
  }
  bool deferred = false;
  if (sp.modes.key == KeyMode::kSvdq && sp.modes.basis == BasisSource::kPrefill) {
    char& set = st_->lane_basis_set_[static_cast<size_t>(lane_) * sp.shape.layers + layer];
    if (pos0 == 0) {
      deferred = BeginBasis(layer, k_pre);
      if (!deferred) set = 1;
    } else if (!set) {
      throw std::logic_error("SVDq prefill basis: the sequence's first forward did not start at position 0");
    }
  }
  // Pages completed by this write are encoded (with the tail's earlier rows); the rest of
  // the new keys wait in the lane's tail page, pre-RoPE. A first chunk's pages wait for its
  // basis (FinishBasis, once the last layer is written): attention in this forward reads its
  // keys as written.
  at::Tensor tail = st_->tail_[layer][lane_];  // [P, KV, D]
  const int64_t page0 = pos0 / P, start = page0 * P, full_end = to / P * P;
  if (full_end > start) {
    at::Tensor keys = k_pre.narrow(0, 0, full_end - pos0);
    if (pos0 > start) keys = at::cat({tail.narrow(0, 0, pos0 - start), keys.to(tail.scalar_type())}, 0);
    if (deferred) {
      pending_keys_[layer] = keys.clone(at::MemoryFormat::Contiguous);  // not a view of the step's q|k|v
    } else {
      EncodePages(layer, page0, keys);
    }
  }
  const int64_t rest = std::max(pos0, full_end);
  if (to > rest) tail.narrow(0, rest % P, to - rest).copy_(k_pre.narrow(0, rest - pos0, to - rest));
  if (st_->sparse_layer(layer)) WriteLandmarks(layer, pos0, k);
  if (layer == sp.shape.layers - 1) FinishBasis();
}

void PagedSeqView::WriteLandmarks(int layer, int64_t pos0, const at::Tensor& k) {
  const int64_t P = st_->block_size(), T = k.size(0), to = pos0 + T, KV = k.size(1), D = k.size(2);
  at::Tensor kf = k.to(at::kFloat);
  at::Tensor basis;  // [KV, D, R]: the lane's landmark basis (kv_modes.h sparse_landmark_rank)
  if (!st_->landmark_basis_.empty()) {
    basis = st_->landmark_basis_[layer][lane_];
    char& set = st_->landmark_basis_set_[static_cast<size_t>(lane_) * st_->spec().shape.layers + layer];
    if (pos0 > 0 && !set)
      throw std::logic_error("landmark basis: the sequence's first forward did not start at position 0");
    set = 1;
    if (pos0 == 0) {
      // A sequence's first forward fits it: per KV head, the R leading eigenvectors of the keys'
      // (uncentred) Gram matrix, the directions that hold most of their energy (and so of a page
      // mean's). A non-finite key (the sequence ends with an error) must not fail the solver.
      const int64_t n = std::min<int64_t>(T, st_->spec().modes.sparse_landmark_basis_tokens);
      at::Tensor kd = kf.narrow(0, 0, n).to(at::kDouble).transpose(0, 1);  // [KV, n, D]
      at::Tensor gram = at::nan_to_num(at::matmul(kd.transpose(1, 2), kd), 0.0, 0.0, 0.0);
      basis.copy_(EigenvectorsDescending(gram).narrow(-1, 0, basis.size(-1)));
    }
  }
  // [KV, S, D]: the sums of the unfilled page's slices so far (kv_modes.h sparse_landmark_subs)
  at::Tensor sums = st_->landmark_sums_[layer][lane_];
  const int64_t S = sums.size(1), L = P / S;
  auto store = [&](int64_t first_page, const at::Tensor& page_sums) {  // [n, KV, S, D]
    auto [codes, scale] = QuantizeLandmarks(page_sums, L, basis);
    at::Tensor ids = BlockIds(first_page, page_sums.size(0));
    st_->landmarks_[layer].index_copy_(0, ids, codes);
    st_->landmark_scales_[layer].index_copy_(0, ids, scale);
  };
  // Positions [from, end) of the page that starts at `page` into its slices' sums: a slice that
  // starts in this forward restarts, one started before goes on.
  auto accumulate = [&](int64_t page, int64_t from, int64_t end) {
    for (int64_t j = 0; j < S; ++j) {
      const int64_t first = page + j * L, a = std::max(from, first), b = std::min(end, first + L);
      if (a >= b) continue;
      at::Tensor part = kf.narrow(0, a - pos0, b - a).sum(0);
      at::Tensor slot = sums.select(1, j);
      if (a > first) slot.add_(part);
      else slot.copy_(part);
    }
  };
  int64_t p = pos0;
  if (pos0 % P != 0) {  // the page this lane had started
    const int64_t end = std::min(to, (pos0 / P + 1) * P);
    accumulate(pos0 / P * P, pos0, end);
    if (end % P == 0) store(pos0 / P, sums.unsqueeze(0));
    p = end;
  }
  const int64_t full_end = to / P * P;
  if (full_end > p) {
    const int64_t n = (full_end - p) / P;
    store(p / P, kf.narrow(0, p - pos0, full_end - p).reshape({n, S, L, KV, D}).sum(2).transpose(1, 2));
    p = full_end;
  }
  if (to > p) accumulate(p, p, to);
}

at::Tensor PagedSeqView::StoredKeys(int layer, int64_t start, int64_t n) {
  const auto& sp = st_->spec();
  if (!sp.modes.page_coded_keys()) {
    auto [blk, off] = Where(start, n);
    return st_->keys_[layer].Read(blk, off);
  }
  const int64_t P = sp.shape.block_size;
  // Full pages are encoded; the page being filled is in the tail.
  const int64_t filled = fresh_layer_ == layer ? fresh_pos0_ + fresh_k_.size(0) : length_;
  const int64_t pages = std::min((n + P - 1) / P, filled / P), first = start / P;
  if (start % P != 0 || first > pages) throw std::logic_error("StoredKeys: start must be a page boundary before the tail");
  std::vector<at::Tensor> parts;
  if (pages > first) {
    std::vector<int64_t> ids;
    for (int64_t pg = first; pg < pages; ++pg) ids.push_back(pg);
    parts.push_back(DecodePages(layer, ids).narrow(0, 0, std::min(n, pages * P) - start).to(sp.dtype));
  }
  const int64_t from = pages * P;
  if (n > from) {
    at::Tensor t = st_->tail_[layer][lane_].narrow(0, 0, n - from);
    parts.push_back(models::ApplyRotaryHalf(t, sp.rope_cos, sp.rope_sin, from, sp.dtype));
  }
  return at::cat(parts, 0);
}

std::pair<at::Tensor, at::Tensor> PagedSeqView::Read(int layer, int64_t n) { return ReadFrom(layer, 0, n); }

std::pair<at::Tensor, at::Tensor> PagedSeqView::ReadFrom(int layer, int64_t start, int64_t n) {
  const auto& sp = st_->spec();
  const int64_t stored = fresh_layer_ == layer ? fresh_pos0_ : n;
  if (start > stored) throw std::logic_error("ReadFrom: start is past the stored positions");
  at::Tensor k, v;
  if (stored > start) {
    k = StoredKeys(layer, start, stored);
    auto [blk, off] = Where(start, stored);
    v = st_->values_[layer].Read(blk, off);
  }
  if (stored < n) {
    at::Tensor fk = fresh_k_.narrow(0, 0, n - stored).to(sp.dtype), fv = fresh_v_.narrow(0, 0, n - stored).to(sp.dtype);
    k = k.defined() ? at::cat({k, fk}, 0) : fk;
    v = v.defined() ? at::cat({v, fv}, 0) : fv;
  }
  return {k.transpose(0, 1), v.transpose(0, 1)};
}

at::Tensor PagedSeqView::Attend(int layer, const at::Tensor& q) {
  // One sequence is a batch of one: the same tables and kernels as AttendMany.
  if (fresh_layer_ != layer || !fresh_k_.defined() || fresh_k_.size(0) != 1) return {};
  at::Tensor out = AttendMany(layer, q, {this});
  if (!out.defined() && st_->sparse_layer(layer) && !prompt_) out = AttendSparse(layer, q);
  return out;
}

at::Tensor PagedSeqView::AttendSparse(int layer, const at::Tensor& q) {
  const auto& sp = st_->spec();
  const int64_t P = sp.shape.block_size, KV = sp.shape.kv_heads;
  const int64_t NH = q.size(1), G = NH / KV, L = fresh_pos0_ + 1;
  // The selection as the device runs it (PagedKvStorage::SelectPages over this view's tables).
  const DecodeTables& t = Tables({this});
  at::Tensor pages, counts;
  st_->SelectPages(layer, q, t, &pages, &counts);
  pages = pages.to(at::kCPU).contiguous();
  counts = counts.to(at::kCPU).contiguous();
  const int32_t* selected = pages.data_ptr<int32_t>();  // [KV, keep + 1]
  const int32_t* count = counts.data_ptr<int32_t>();    // [KV]
  const int64_t from = st_->SparseFrom(L / P, prompt_), stride = pages.size(-1);
  // The pages any KV head chose are decoded once, for every KV head (the codec decodes a page's
  // heads together: with several KV heads this reads more than the kernel, which reads each
  // head's own list; the key-bytes metric counts the kernel's), then every position from the
  // recent window on, as Read gives them.
  std::vector<int64_t> chosen;
  for (int64_t g = 0; g < KV; ++g)
    for (int i = 0; i < count[g]; ++i) chosen.push_back(selected[g * stride + i]);
  std::sort(chosen.begin(), chosen.end());
  chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
  auto [k_recent, v_recent] = ReadFrom(layer, from * P, L);  // [KV, n, D]
  at::Tensor k_chosen, v_chosen;  // [KV, chosen * P, D]
  if (!chosen.empty()) {
    k_chosen = DecodePages(layer, chosen).to(sp.dtype).transpose(0, 1);
    std::vector<int64_t> blk, off;
    for (int64_t pg : chosen)
      for (int64_t t = 0; t < P; ++t) {
        blk.push_back(blocks_[pg]);
        off.push_back(t);
      }
    v_chosen = st_->values_[layer].Read(ToDevice(blk, sp.device), ToDevice(off, sp.device)).transpose(0, 1);
  }
  std::vector<at::Tensor> outs;
  for (int64_t g = 0; g < KV; ++g) {
    std::vector<int64_t> rows;  // this head's chosen pages' rows of k_chosen
    for (int i = 0; i < count[g]; ++i) {
      const int64_t c = std::lower_bound(chosen.begin(), chosen.end(), selected[g * stride + i]) - chosen.begin();
      for (int64_t t = 0; t < P; ++t) rows.push_back(c * P + t);
    }
    at::Tensor kg = k_recent[g], vg = v_recent[g];
    if (!rows.empty()) {
      at::Tensor r = ToDevice(rows, k_chosen.device());
      kg = at::cat({k_chosen[g].index_select(0, r), kg}, 0);
      vg = at::cat({v_chosen[g].index_select(0, r), vg}, 0);
    }
    at::Tensor qg = q.narrow(1, g * G, G).transpose(0, 1).unsqueeze(0).to(kg.scalar_type());  // [1, G, 1, D]
    outs.push_back(at::scaled_dot_product_attention(qg, kg.unsqueeze(0).unsqueeze(0), vg.unsqueeze(0).unsqueeze(0), {},
                                                    0.0, false, {}, /*enable_gqa=*/true));
  }
  return at::cat(outs, 1).squeeze(2);  // [1, NH, D]
}

const PagedSeqView::WriteTables& PagedSeqView::Writes(const std::vector<models::KvView*>& views) {
  if (writes_ && writes_->views == views) return *writes_;
  const auto& sp = st_->spec();
  const int64_t P = sp.shape.block_size;
  auto w = std::make_unique<WriteTables>();
  w->views = views;
  std::vector<int64_t> block, offset, lanes, basis;
  for (models::KvView* kv : views) {
    const auto* v = static_cast<const PagedSeqView*>(kv);
    const int64_t pos = v->length_;
    block.push_back(v->blocks_[pos / P]);
    offset.push_back(pos % P);  // a token's place in its tail page is its place in its block
    lanes.push_back(v->lane_);
    basis.push_back(v->BasisSlot());
  }
  w->block = ToDevice(block, sp.device);
  w->offset = ToDevice(offset, sp.device);
  if (sp.modes.page_coded_keys()) {
    w->lanes = ToDevice(lanes, sp.device);
    w->basis_index = ToDevice(basis, sp.device).to(at::kInt);
  }
  writes_ = std::move(w);
  return *writes_;
}

bool PagedSeqView::WriteMany(int layer, const at::Tensor& k_pre, const at::Tensor& k, const at::Tensor& v,
                             const std::vector<models::KvView*>& views) {
  const auto& sp = st_->spec();
  const int64_t P = sp.shape.block_size;
  std::vector<PagedSeqView*> seqs;
  for (models::KvView* kv : views) {
    auto* s = dynamic_cast<PagedSeqView*>(kv);
    // A sequence's first forward computes its prefill basis: that one goes through Write.
    if (!s || s->st_ != st_ || s->length_ == 0 || s->length_ >= static_cast<int64_t>(s->blocks_.size()) * P) return false;
    seqs.push_back(s);
  }
  const bool prefill_basis = sp.modes.key == KeyMode::kSvdq && sp.modes.basis == BasisSource::kPrefill;
  for (PagedSeqView* s : seqs) {
    const size_t at = static_cast<size_t>(s->lane_) * sp.shape.layers + layer;
    if (prefill_basis && !st_->lane_basis_set_[at])
      throw std::logic_error("SVDq prefill basis: the sequence's first forward did not start at position 0");
    if (!st_->landmark_basis_set_.empty() && st_->sparse_layer(layer) && !st_->landmark_basis_set_[at])
      throw std::logic_error("landmark basis: the sequence's first forward did not start at position 0");
  }
  for (size_t b = 0; b < seqs.size(); ++b) {
    PagedSeqView* s = seqs[b];
    s->fresh_layer_ = layer;
    s->fresh_pos0_ = s->length_;
    s->fresh_k_ = k.narrow(0, static_cast<int64_t>(b), 1);
    s->fresh_v_ = v.narrow(0, static_cast<int64_t>(b), 1);
  }
  st_->WriteDecode(layer, k_pre, k, v, Writes(views));
  return true;
}

const PagedSeqView::BatchTables& PagedSeqView::Tables(const std::vector<models::KvView*>& views) {
  if (batch_ && batch_->views == views) return *batch_;
  const auto& sp = st_->spec();
  const int64_t P = sp.shape.block_size, B = static_cast<int64_t>(views.size());
  const bool coded = sp.modes.page_coded_keys();
  auto t = std::make_unique<BatchTables>();
  t->views = views;
  std::vector<int64_t> pages(B), lens(B);
  for (int64_t b = 0; b < B; ++b) {
    const auto* v = static_cast<const PagedSeqView*>(views[b]);
    lens[b] = v->fresh_pos0_ + 1;
    // bf16 keys: every page that holds a token; page-coded: the full (encoded) pages only.
    pages[b] = coded ? lens[b] / P : (lens[b] + P - 1) / P;
    t->max_pages = std::max(t->max_pages, pages[b]);
    t->max_len = std::max(t->max_len, lens[b]);
  }
  t->max_pages = std::max<int64_t>(t->max_pages, 1);
  std::vector<int64_t> table(B * t->max_pages, 0), len, tail_len, basis_index, lanes, tail_block, tail_pos;
  const int64_t max_pos = sp.rope_cos.size(0) - 1;
  for (int64_t b = 0; b < B; ++b) {
    const auto* v = static_cast<const PagedSeqView*>(views[b]);
    std::copy(v->blocks_.begin(), v->blocks_.begin() + pages[b], table.begin() + b * t->max_pages);
    if (!coded) {
      len.push_back(lens[b]);
      continue;
    }
    len.push_back(pages[b]);
    tail_len.push_back(lens[b] - pages[b] * P);
    basis_index.push_back(v->BasisSlot());
    lanes.push_back(v->lane_);
    tail_block.push_back(tail_len.back() > 0 ? v->blocks_[pages[b]] : v->blocks_[0]);
    for (int64_t i = 0; i < P; ++i) tail_pos.push_back(std::min(pages[b] * P + i, max_pos));
  }
  const at::Device d = sp.device;
  auto int32 = [&](const std::vector<int64_t>& x) { return ToDevice(x, d).to(at::kInt); };
  t->table = int32(table).reshape({B, t->max_pages});
  t->len = int32(len);
  if (coded) {
    t->tail_len = int32(tail_len);
    t->basis_index = int32(basis_index);
    t->lanes = ToDevice(lanes, d);
    t->tail_block = ToDevice(tail_block, d);
    t->tail_pos = ToDevice(tail_pos, d);
    if (st_->sparse()) {
      // Prompt rows (a last prompt chunk of one token) attend densely.
      std::vector<int64_t> from;
      for (int64_t b = 0; b < B; ++b) from.push_back(st_->SparseFrom(pages[b], static_cast<const PagedSeqView*>(views[b])->prompt_));
      t->sparse_from = int32(from);
    }
  }
  batch_ = std::move(t);
  return *batch_;
}

at::Tensor PagedSeqView::AttendMany(int layer, const at::Tensor& q, const std::vector<models::KvView*>& views) {
#ifdef SVDQ_WITH_CUDA
  const auto& sp = st_->spec();
  if (!st_->DecodeKernelsFit()) return {};
  const bool coded = sp.modes.page_coded_keys();
  for (models::KvView* kv : views) {
    auto* v = dynamic_cast<PagedSeqView*>(kv);
    if (!v || v->st_ != st_ || v->fresh_layer_ != layer || v->fresh_k_.size(0) != 1) return {};
  }
  if (!coded && !kernels::PagedDecodeTensorCores(static_cast<int>(sp.shape.head_dim))) {
    // The CUDA-core paged decode kernel keeps each sequence's scores in shared memory.
    int64_t longest = 0;
    for (models::KvView* kv : views) longest = std::max(longest, static_cast<PagedSeqView*>(kv)->fresh_pos0_ + 1);
    if ((sp.shape.head_dim + 4 + longest) * 4 > 200 * 1024) return {};
  }
  return st_->AttendDecode(layer, q, Tables(views));
#else
  (void)layer;
  (void)q;
  (void)views;
  return {};
#endif
}

}  // namespace svdq::kv
