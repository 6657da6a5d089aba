#include "server/kv/kv_modes.h"

#include <algorithm>

#include "kernels/sparse/sparse_select.h"

namespace svdq::kv {

kernels::Schedule KvModes::CodecSchedule() const {
  if (key == KeyMode::kSvdq) return schedule;
  kernels::Schedule s;
  for (int& b : s.bits) b = key == KeyMode::kInt4 ? 4 : 2;
  return s;
}

std::string KvModes::KeyName() const {
  switch (key) {
    case KeyMode::kFull: return "bf16";
    case KeyMode::kFp8: return "fp8";
    case KeyMode::kInt4: return "int4";
    case KeyMode::kInt2: return "int2";
    case KeyMode::kSvdq:
      return "svdq(" + schedule.ToString() + "; " + (basis == BasisSource::kPrefill ? "prefill" : "calibrated") +
             " basis" + (scope == BasisScope::kLayer ? ", layer scope" : "") + ")";
  }
  return "?";
}

std::string KvModes::ValueName() const {
  switch (value) {
    case ValueMode::kFull: return "bf16";
    case ValueMode::kFp8: return "fp8";
    case ValueMode::kInt8: return "int8";
    case ValueMode::kInt4: return "int4";
  }
  return "?";
}

bool ParseKeyMode(const std::string& s, KeyMode* out) {
  if (s == "bf16") *out = KeyMode::kFull;
  else if (s == "fp8") *out = KeyMode::kFp8;
  else if (s == "int4") *out = KeyMode::kInt4;
  else if (s == "int2") *out = KeyMode::kInt2;
  else if (s == "svdq") *out = KeyMode::kSvdq;
  else return false;
  return true;
}

bool ParseValueMode(const std::string& s, ValueMode* out) {
  if (s == "bf16") *out = ValueMode::kFull;
  else if (s == "fp8") *out = ValueMode::kFp8;
  else if (s == "int8") *out = ValueMode::kInt8;
  else if (s == "int4") *out = ValueMode::kInt4;
  else return false;
  return true;
}

bool ParseBasisSource(const std::string& s, BasisSource* out) {
  if (s == "prefill") *out = BasisSource::kPrefill;
  else if (s == "calibrated") *out = BasisSource::kCalibrated;
  else return false;
  return true;
}

bool ParseBasisScope(const std::string& s, BasisScope* out) {
  if (s == "head") *out = BasisScope::kHead;
  else if (s == "layer") *out = BasisScope::kLayer;
  else return false;
  return true;
}

CodecShape CodecShapeOf(const KvModes& m, const KvShape& s) {
  if (m.layer_scope()) return {1, s.kv_heads * s.head_dim};
  return {s.kv_heads, s.head_dim};
}

double KvBytes::key_per_token() const { return static_cast<double>(key_per_block) / block_size; }
double KvBytes::value_per_token() const { return static_cast<double>(value_per_block) / block_size; }

int64_t Bf16BytesPerToken(const KvShape& s) { return 2LL * s.layers * s.kv_heads * s.head_dim; }

std::string ComputeKvBytes(const KvModes& m, const KvShape& s, KvBytes* out) {
  KvBytes b;
  b.block_size = s.block_size;
  const int64_t heads_layers = static_cast<int64_t>(s.layers) * s.kv_heads;
  const int64_t D = s.head_dim, P = s.block_size;
  const bool grouped = m.key == KeyMode::kFp8 || m.value != ValueMode::kFull;
  if (grouped && D % kTokenGroup != 0)
    return "head_dim " + std::to_string(D) + " is not a multiple of " + std::to_string(kTokenGroup) +
           ", which the fp8/int8/int4 per-token codecs need";
  const int64_t scales = 2 * (D / kTokenGroup);  // bf16 scale per group
  const int64_t full_token = D * s.dtype_bytes;
  switch (m.key) {
    case KeyMode::kFull: b.key_per_block = heads_layers * P * full_token; break;
    case KeyMode::kFp8: b.key_per_block = heads_layers * P * (D + scales); break;
    default: {
      const CodecShape c = CodecShapeOf(m, s);
      const int64_t units_layers = static_cast<int64_t>(s.layers) * c.units, W = c.width;
      kernels::SvdqLayout layout;
      kernels::Status st = kernels::MakeLayout(c.width, s.block_size, m.CodecSchedule(), &layout);
      if (!st.ok()) return st.message();
      b.key_per_block = units_layers * layout.page_bytes;
      // The tail page, pre-RoPE in the model's dtype; the basis (fp32 mean and vectors, and the
      // fp16 copy of the retained columns that the attention reads).
      const int64_t basis = units_layers * ((W * W + W) * 4 + W * layout.retained * 2);
      b.per_lane = heads_layers * P * full_token;
      if (m.key == KeyMode::kSvdq && m.basis == BasisSource::kPrefill) b.per_lane += basis;
      b.shared = basis;  // the calibrated basis, or the identity of the direct codecs
    }
  }
  if (m.sparse_budget > 0) {
    SparsePlan plan;
    if (std::string e = PlanSparse(m, s, &plan); !e.empty()) return e;
    // Of the sparse layers only: each page's landmarks (int8 + an fp16 scale), the tail page's
    // running sums (fp32) and the landmark basis.
    const int64_t heads_sparse = static_cast<int64_t>(plan.sparse_layers) * s.kv_heads;
    b.key_per_block += heads_sparse * plan.page_landmark_bytes();
    b.per_lane += heads_sparse * plan.landmark_subs * D * 4;
    if (m.landmark_basis()) b.per_lane += heads_sparse * D * plan.landmark_width * 4;
  }
  switch (m.value) {
    case ValueMode::kFull: b.value_per_block = heads_layers * P * full_token; break;
    case ValueMode::kFp8:
    case ValueMode::kInt8: b.value_per_block = heads_layers * P * (D + scales); break;
    case ValueMode::kInt4: b.value_per_block = heads_layers * P * (D / 2 + scales); break;
  }
  *out = b;
  return "";
}

std::string PlanSparse(const KvModes& m, const KvShape& s, SparsePlan* out) {
  const int P = s.block_size;
  if (!m.page_coded_keys() || m.layer_scope())
    return "sparse attention needs page-coded keys in head scope (--key-mode svdq, int4 or int2; --svdq-scope head)";
  const int R = m.sparse_landmark_rank;
  if (R < 0 || (R > 0 && (R >= s.head_dim || R > 128)))
    return "--sparse-landmark-rank must be 0 (the mean key itself) or in [1, " + std::to_string(std::min(s.head_dim - 1, 128)) +
           "] (below the head dim, " + std::to_string(s.head_dim) + ", and at most 128), not " + std::to_string(R);
  SparsePlan p;
  p.landmark_width = R > 0 ? R : s.head_dim;
  const int S = m.sparse_landmark_subs;
  if (S < 1 || S > kernels::kSparseMaxSubs || P % S != 0)
    return "--sparse-landmark-subs must divide the block size (" + std::to_string(P) + ") and be in [1, " +
           std::to_string(kernels::kSparseMaxSubs) + "], not " + std::to_string(S);
  if (S * p.landmark_width > 256)
    return "--sparse-landmark-subs " + std::to_string(S) + " of " + std::to_string(p.landmark_width) +
           " coordinates each is over the selection's 256 coordinates a page: lower it or --sparse-landmark-rank";
  p.landmark_subs = S;
  if (m.sparse_dense_layers < 0 || m.sparse_dense_layers >= s.layers)
    return "--sparse-dense-layers must be in [0, " + std::to_string(s.layers - 1) + "] (the model has " +
           std::to_string(s.layers) + " layers; at least one must select pages), not " +
           std::to_string(m.sparse_dense_layers);
  p.sparse_layers = s.layers - m.sparse_dense_layers;
  p.recent_pages = (128 + P - 1) / P;
  p.keep = m.sparse_budget / P - 1 - p.recent_pages;
  if (p.keep < 1)
    return "a sparse budget of " + std::to_string(m.sparse_budget) + " tokens leaves no page to choose: with " +
           std::to_string(P) + "-token pages it must be at least " + std::to_string((p.recent_pages + 2) * P) +
           " (the sink page, one chosen page and " + std::to_string(p.recent_pages) + " recent pages)";
  *out = p;
  return "";
}

int64_t DecodeKeyBytesRead(const KvModes& m, const KvShape& s, int64_t len) {
  const int64_t heads_layers = static_cast<int64_t>(s.layers) * s.kv_heads, D = s.head_dim, P = s.block_size;
  if (m.key == KeyMode::kFull) return heads_layers * len * D * s.dtype_bytes;
  if (m.key == KeyMode::kFp8) return heads_layers * len * (D + 2 * (D / kTokenGroup));
  const CodecShape c = CodecShapeOf(m, s);
  kernels::SvdqLayout l;
  if (!kernels::MakeLayout(c.width, s.block_size, m.CodecSchedule(), &l).ok()) return 0;
  const int64_t pages = len / P, tail = len % P;
  // Per unit and layer: the pages' records, the mean (fp32) and the retained basis columns (fp16
  // or fp32); per KV head and layer, the bf16 tail.
  const int64_t W = c.width, basis = 4 * W + (s.half_basis_read ? 2 : 4) * W * l.retained;
  auto layers_read = [&](int64_t layers, int64_t read_pages, int64_t landmarks) {
    return layers * (c.units * (read_pages * l.page_bytes + basis) + s.kv_heads * (tail * D * 2 + landmarks));
  };
  SparsePlan plan;
  if (m.sparse_budget <= 0 || !PlanSparse(m, s, &plan).empty()) return layers_read(s.layers, pages, 0);
  // Sparse layers read the chosen and recent pages, and the scored pages' landmarks (and the
  // landmark basis, staged by the selection); dense layers (sparse_dense_layers) every page.
  const int64_t recent = std::min<int64_t>(pages, plan.recent_pages), scored = pages - recent;
  int64_t landmarks = scored * plan.page_landmark_bytes();
  if (m.landmark_basis() && scored > 0) landmarks += D * plan.landmark_width * 4;
  return layers_read(s.layers - plan.sparse_layers, pages, 0) +
         layers_read(plan.sparse_layers, std::min<int64_t>(scored, plan.keep + 1) + recent, landmarks);
}

int64_t Bf16KeyBytes(const KvShape& s, int64_t len) {
  return static_cast<int64_t>(s.layers) * s.kv_heads * len * s.head_dim * 2;
}

}  // namespace svdq::kv
