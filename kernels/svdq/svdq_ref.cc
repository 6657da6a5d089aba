#include "kernels/svdq/svdq_ref.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "kernels/common/half.h"

namespace svdq::kernels {
namespace {

const uint8_t* PageRecord(const uint8_t* base, const SvdqLayout& l, int64_t page, int kv_heads, int head) {
  return base + (page * kv_heads + head) * static_cast<int64_t>(l.page_bytes);
}

// Latent values of one encoded record: out[t * width + c] (dropped channels are 0).
void DequantLatent(const SvdqLayout& l, const uint8_t* rec, std::vector<float>* out) {
  out->assign(static_cast<size_t>(l.page_size) * l.width, 0.f);
  const auto* scales = reinterpret_cast<const uint16_t*>(rec + l.scale_offset);
  const auto* zeros = reinterpret_cast<const uint16_t*>(rec + l.zero_offset);
  for (int c = 0; c < l.width; ++c) {
    int j = l.RetainedIndex(c);
    if (j < 0) continue;
    int g = c / l.group_size, cl = c - g * l.group_size;
    float scale = HalfBitsToFloat(scales[j]), zero = HalfBitsToFloat(zeros[j]);
    for (int t = 0; t < l.page_size; ++t) {
      uint32_t code = ReadCode(rec + l.group_offset[g], static_cast<int64_t>(t) * l.group_size + cl, l.bits[g]);
      (*out)[static_cast<size_t>(t) * l.width + c] = zero + static_cast<float>(code) * scale;
    }
  }
}

// key = mean + V z for one token (z over all width channels; dropped ones are 0).
void Rebuild(const SvdqLayout& l, const float* mean, const float* basis, const float* z, float* key) {
  for (int i = 0; i < l.width; ++i) {
    double acc = mean[i];
    for (int c = 0; c < l.width; ++c) {
      if (l.RetainedIndex(c) >= 0) acc += static_cast<double>(basis[static_cast<size_t>(i) * l.width + c]) * z[c];
    }
    key[i] = static_cast<float>(acc);
  }
}

}  // namespace

uint32_t ReadCode(const uint8_t* group, int64_t index, int bits) {
  uint32_t v = 0;
  int64_t bit = index * bits;
  for (int k = 0; k < bits; ++k, ++bit) v |= static_cast<uint32_t>((group[bit >> 3] >> (bit & 7)) & 1u) << k;
  return v;
}

void WriteCode(uint8_t* group, int64_t index, int bits, uint32_t code) {
  int64_t bit = index * bits;
  for (int k = 0; k < bits; ++k, ++bit) {
    uint8_t mask = static_cast<uint8_t>(1u << (bit & 7));
    if ((code >> k) & 1u) group[bit >> 3] |= mask;
    else group[bit >> 3] &= static_cast<uint8_t>(~mask);
  }
}

void ApplyRopeRef(float* x, int width, const float* cos_row, const float* sin_row) {
  int h = width / 2;
  for (int i = 0; i < h; ++i) {
    float a = x[i], b = x[i + h];
    x[i] = a * cos_row[i] - b * sin_row[i];
    x[i + h] = b * cos_row[i + h] + a * sin_row[i + h];
  }
}

Status ComputeBasisRef(const float* keys, int64_t tokens, int width, bool center, SvdqBasis* out) {
  if (tokens < 1 || width < 1) return Status::Invalid("basis needs at least one token and one channel");
  const int n = width;
  std::vector<double> mean(n, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < n; ++i) {
      float v = keys[t * n + i];
      if (!std::isfinite(v)) return Status::Invalid("non-finite key at token " + std::to_string(t));
      if (center) mean[i] += v;
    }
  }
  for (auto& m : mean) m /= static_cast<double>(tokens);
  // Gram matrix A = K~' K~ (n x n), symmetric.
  std::vector<double> a(static_cast<size_t>(n) * n, 0.0), row(n);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < n; ++i) row[i] = keys[t * n + i] - mean[i];
    for (int i = 0; i < n; ++i)
      for (int j = i; j < n; ++j) a[i * n + j] += row[i] * row[j];
  }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j) a[i * n + j] = a[j * n + i];
  // Cyclic Jacobi: rotate away off-diagonal entries until they are negligible.
  std::vector<double> v(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) v[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, diag = 0;
    for (int i = 0; i < n; ++i) {
      diag += a[i * n + i] * a[i * n + i];
      for (int j = i + 1; j < n; ++j) off += a[i * n + j] * a[i * n + j];
    }
    if (off <= 1e-24 * std::max(diag, 1e-300)) break;
    for (int p = 0; p < n; ++p) {
      for (int q = p + 1; q < n; ++q) {
        double apq = a[p * n + q];
        if (std::abs(apq) < 1e-300) continue;
        double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
        double tt = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
        double c = 1.0 / std::sqrt(tt * tt + 1.0), s = tt * c;
        for (int k = 0; k < n; ++k) {  // columns p, q of A
          double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q of A
          double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (int k = 0; k < n; ++k) {
          double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return a[x * n + x] > a[y * n + y]; });
  SvdqBasis b;
  b.width = n;
  b.mean.assign(mean.begin(), mean.end());
  b.vectors.assign(static_cast<size_t>(n) * n, 0.f);
  b.singular_values.resize(n);
  for (int j = 0; j < n; ++j) {
    int src = order[j];
    b.singular_values[j] = std::sqrt(std::max(0.0, a[src * n + src]));
    int big = 0;
    for (int i = 1; i < n; ++i)
      if (std::abs(v[i * n + src]) > std::abs(v[big * n + src])) big = i;
    double sign = v[big * n + src] < 0 ? -1.0 : 1.0;
    for (int i = 0; i < n; ++i) b.vectors[static_cast<size_t>(i) * n + j] = static_cast<float>(sign * v[i * n + src]);
  }
  *out = std::move(b);
  return Status::Ok();
}

Status SymEigDescendingRef(const SymEigParams& p) {
  if (p.batch < 0 || p.n < 1 || (p.batch > 0 && (!p.matrices || !p.vectors)))
    return Status::Invalid("sym eig: missing matrices or output, or n < 1");
  const int n = p.n;
  std::vector<double> a(static_cast<size_t>(n) * n), v(a.size());
  for (int b = 0; b < p.batch; ++b) {
    const float* in = p.matrices + static_cast<size_t>(b) * n * n;
    for (int i = 0; i < n * n; ++i) {
      a[i] = in[i];
      v[i] = i / n == i % n ? 1.0 : 0.0;
    }
    for (int sweep = 0; sweep < std::max(p.max_sweeps, 30); ++sweep) {
      double off = 0, all = 0;
      for (int i = 0; i < n * n; ++i) {
        all += a[i] * a[i];
        if (i / n != i % n) off += a[i] * a[i];
      }
      if (off <= 1e-28 * all) break;
      for (int pi = 0; pi < n - 1; ++pi)
        for (int qi = pi + 1; qi < n; ++qi) {
          const double apq = a[pi * n + qi];
          if (apq == 0.0) continue;
          const double tau = (a[qi * n + qi] - a[pi * n + pi]) / (2 * apq);
          const double t = (tau >= 0 ? 1.0 : -1.0) / (std::fabs(tau) + std::sqrt(1 + tau * tau));
          const double c = 1 / std::sqrt(1 + t * t), s = t * c;
          for (int j = 0; j < n; ++j) {  // rows, then columns (and V's columns)
            const double x = a[pi * n + j], y = a[qi * n + j];
            a[pi * n + j] = c * x - s * y;
            a[qi * n + j] = s * x + c * y;
          }
          for (int r = 0; r < n; ++r) {
            const double x = a[r * n + pi], y = a[r * n + qi];
            a[r * n + pi] = c * x - s * y;
            a[r * n + qi] = s * x + c * y;
            const double vx = v[r * n + pi], vy = v[r * n + qi];
            v[r * n + pi] = c * vx - s * vy;
            v[r * n + qi] = s * vx + c * vy;
          }
        }
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return a[x * n + x] > a[y * n + y]; });
    float* out = p.vectors + static_cast<size_t>(b) * n * n;
    for (int j = 0; j < n; ++j) {
      const int i = order[j];
      double big = 0;
      for (int r = 0; r < n; ++r)
        if (std::fabs(v[r * n + i]) > std::fabs(big)) big = v[r * n + i];
      const double sign = big < 0 ? -1.0 : 1.0;
      for (int r = 0; r < n; ++r) out[static_cast<size_t>(r) * n + j] = static_cast<float>(sign * v[r * n + i]);
      if (p.values) p.values[static_cast<size_t>(b) * n + j] = static_cast<float>(a[i * n + i]);
    }
  }
  return Status::Ok();
}

Status SvdqEncodeRef(const SvdqEncodeParams& p) {
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, W = l.width;
  if (!(p.keys || (p.key_lane && p.keys_bf16)) || !p.mean || !p.basis || !p.out)
    return Status::Invalid("SvdqEncodeRef: null pointer");
  std::vector<float> z(static_cast<size_t>(P) * W), kbuf(static_cast<size_t>(P) * W);
  for (int64_t page = 0; page < p.num_pages; ++page) {
    if (p.encode_if_last && p.encode_if_last[page] != P - 1) continue;  // page not complete
    for (int h = 0; h < p.kv_heads; ++h) {
      const int64_t ph = page * p.kv_heads + h;
      const int64_t bh = p.basis_index ? static_cast<int64_t>(p.basis_index[page]) * p.kv_heads + h : ph;
      const int64_t oh = p.out_page ? p.out_page[page] * p.kv_heads + h : ph;
      const float* k = p.key_lane ? kbuf.data() : p.keys + ph * P * W;
      if (p.key_lane)  // a tail page [P, kv_heads, W] of lane key_lane[page]
        for (int t = 0; t < P; ++t)
          for (int i = 0; i < W; ++i) {
            const int64_t off = ((p.key_lane[page] * P + t) * p.kv_heads + h) * W + i;
            kbuf[static_cast<size_t>(t) * W + i] = p.keys_bf16 ? Bf16BitsToFloat(p.keys_bf16[off]) : p.keys[off];
          }
      const float* mean = p.mean + bh * W;
      const float* basis = p.basis + bh * W * W;
      uint8_t* rec = p.out + oh * l.page_bytes;
      std::fill(rec, rec + l.page_bytes, 0);
      bool finite = true;
      for (int64_t e = 0; e < static_cast<int64_t>(P) * W && finite; ++e) finite = std::isfinite(k[e]);
      if (!finite) {  // as the kernel: the page stays zero and the flag is raised, or an error
        if (!p.nonfinite)
          return Status::Invalid("non-finite key in page " + std::to_string(page) + ", KV head " + std::to_string(h));
        p.nonfinite[p.key_lane ? p.key_lane[page] : 0] = 1;
        continue;
      }
      for (int t = 0; t < P; ++t) {
        for (int c = 0; c < W; ++c) {
          if (l.RetainedIndex(c) < 0) continue;
          float acc = 0.f;  // fp32 accumulation in channel order, as the kernel does
          for (int i = 0; i < W; ++i) acc += (k[t * W + i] - mean[i]) * basis[static_cast<size_t>(i) * W + c];
          z[static_cast<size_t>(t) * W + c] = acc;
        }
      }
      auto* scales = reinterpret_cast<uint16_t*>(rec + l.scale_offset);
      auto* zeros = reinterpret_cast<uint16_t*>(rec + l.zero_offset);
      for (int c = 0; c < W; ++c) {
        int j = l.RetainedIndex(c);
        if (j < 0) continue;
        int g = c / l.group_size, cl = c - g * l.group_size, b = l.bits[g];
        float mn = z[c], mx = z[c];
        for (int t = 1; t < P; ++t) {
          mn = std::min(mn, z[static_cast<size_t>(t) * W + c]);
          mx = std::max(mx, z[static_cast<size_t>(t) * W + c]);
        }
        const float levels = static_cast<float>((1u << b) - 1u);
        scales[j] = FloatToHalfBits((mx - mn) / levels);
        zeros[j] = FloatToHalfBits(mn);
        float scale = HalfBitsToFloat(scales[j]), zero = HalfBitsToFloat(zeros[j]);
        for (int t = 0; t < P; ++t) {
          float q = scale > 0.f ? std::nearbyint((z[static_cast<size_t>(t) * W + c] - zero) / scale) : 0.f;
          q = std::min(std::max(q, 0.f), levels);
          WriteCode(rec + l.group_offset[g], static_cast<int64_t>(t) * l.group_size + cl, b, static_cast<uint32_t>(q));
        }
      }
    }
  }
  return Status::Ok();
}

Status SvdqDecodeRef(const SvdqDecodeParams& p) {
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, W = l.width;
  std::vector<float> z;
  for (int64_t page = 0; page < p.num_pages; ++page) {
    for (int h = 0; h < p.kv_heads; ++h) {
      const int64_t ph = page * p.kv_heads + h;
      const int64_t bh = p.basis_index ? static_cast<int64_t>(p.basis_index[page]) * p.kv_heads + h : ph;
      DequantLatent(l, PageRecord(p.pages, l, page, p.kv_heads, h), &z);
      for (int t = 0; t < P; ++t) {
        float* key = p.out + (ph * P + t) * W;
        Rebuild(l, p.mean + bh * W, p.basis + bh * W * W, &z[static_cast<size_t>(t) * W], key);
        if (p.rope_cos) {
          int64_t pos = p.first_pos[page] + t;
          ApplyRopeRef(key, W, p.rope_cos + pos * W, p.rope_sin + pos * W);
        }
      }
    }
  }
  return Status::Ok();
}

Status SvdqDequantLatentRef(const SvdqDecodeParams& p, float* z) {
  const SvdqLayout& l = p.layout;
  if (p.num_pages < 0 || p.kv_heads <= 0 || !p.pages || !z) return Status::Invalid("SvdqDequantLatentRef: bad arguments");
  const size_t rec = static_cast<size_t>(l.page_size) * l.width;
  std::vector<float> one;
  for (int64_t page = 0; page < p.num_pages; ++page)
    for (int h = 0; h < p.kv_heads; ++h) {
      DequantLatent(l, PageRecord(p.pages, l, page, p.kv_heads, h), &one);
      std::copy(one.begin(), one.end(), z + (page * p.kv_heads + h) * rec);
    }
  return Status::Ok();
}

void PackAttentionBasisHalf(const SvdqLayout& l, const float* basis, int64_t rows, uint16_t* out) {
  const int W = l.width;
  for (int64_t row = 0; row < rows * W; ++row)  // (basis row, dim)
    for (int c = 0; c < W; ++c)
      if (const int j = l.RetainedIndex(c); j >= 0) out[row * l.retained + j] = FloatToHalfBits(basis[row * W + c]);
}

Status ValidateAttention(const SvdqAttentionParams& p) {
  const SvdqLayout& l = p.layout;
  if (l.width <= 0 || l.width % 2 != 0 || l.width > 256) return Status::Invalid("attention width must be even and <= 256");
  if (p.batch < 0 || p.kv_heads <= 0 || p.num_heads <= 0) return Status::Invalid("batch, num_heads and kv_heads must be positive");
  if (p.num_heads % p.kv_heads != 0) return Status::Invalid("num_heads must be a multiple of kv_heads");
  if (p.num_heads / p.kv_heads > 16) return Status::Invalid("at most 16 query heads per KV head");
  if (p.max_pages < 0) return Status::Invalid("max_pages must be >= 0");
  if (!p.q || !p.out || !p.page_table || !p.num_pages || !p.mean || !p.basis || !p.tail_len || !p.rope_cos ||
      !p.rope_sin || (p.max_pages > 0 && (!p.key_pages || !p.value_pages)))
    return Status::Invalid("a required attention pointer is null");
  if (p.value_format != KvFormat::kBf16 && (!p.value_scales || l.width % kKvScaleGroup != 0))
    return Status::Invalid("quantized values need value_scales and a width that is a multiple of 32");
  if (p.tail_value_page && !p.value_pages) return Status::Invalid("tail_value_page needs value_pages");
  if (p.sparse_pages && (!p.sparse_count || !p.sparse_recent || p.sparse_stride <= 0))
    return Status::Invalid("sparse attention needs sparse_count, sparse_recent and a positive sparse_stride");
  return Status::Ok();
}

namespace {

// Row t of value page `pool`, KV head h, as attention reads it: bf16, or bf16(code * scale).
void ValueRow(const SvdqAttentionParams& p, int64_t pool, int h, int t, float* out) {
  const int W = p.layout.width, P = p.layout.page_size;
  const int64_t row = (pool * p.kv_heads + h) * P + t;
  if (p.value_format == KvFormat::kBf16) {
    const uint16_t* v = static_cast<const uint16_t*>(p.value_pages) + row * W;
    for (int i = 0; i < W; ++i) out[i] = Bf16BitsToFloat(v[i]);
    return;
  }
  const uint8_t* codes = static_cast<const uint8_t*>(p.value_pages) + row * KvRowBytes(p.value_format, W);
  const uint16_t* scales = p.value_scales + row * (W / kKvScaleGroup);
  for (int i = 0; i < W; ++i) {
    float c;
    if (p.value_format == KvFormat::kFp8) c = Fp8E4m3BitsToFloat(codes[i]);
    else if (p.value_format == KvFormat::kInt8) c = static_cast<float>(static_cast<int8_t>(codes[i]));
    else c = static_cast<float>(((codes[i / 2] >> (4 * (i % 2))) & 0xf) - 8);
    out[i] = Bf16BitsToFloat(FloatToBf16Bits(c * Bf16BitsToFloat(scales[i / kKvScaleGroup])));
  }
}

}  // namespace

Status SvdqAttentionRef(const SvdqAttentionParams& p) {
  Status st = ValidateAttention(p);
  if (!st.ok()) return st;
  const SvdqLayout& l = p.layout;
  const int P = l.page_size, W = l.width, G = p.num_heads / p.kv_heads;
  std::vector<float> z, keys, vals;
  for (int b = 0; b < p.batch; ++b) {
    const int np = p.num_pages[b], tail = p.tail_len[b];
    if (np < 0 || np > p.max_pages || tail < 0 || tail >= P)
      return Status::Invalid("sequence " + std::to_string(b) + " has an invalid page count or tail length");
    if (np == 0 && tail == 0) return Status::Invalid("sequence " + std::to_string(b) + " has no tokens");
    if (p.sparse_pages && (p.sparse_recent[b] < 0 || p.sparse_recent[b] > np))
      return Status::Invalid("sequence " + std::to_string(b) + " has an invalid sparse_recent");
    for (int h = 0; h < p.kv_heads; ++h) {
      // Attended pages in order (all of them, or the sparse list), then the tail; rows are
      // compacted, positions are the pages' own.
      const int pages = AttendedPages(p, b, h);
      if (p.sparse_pages) {
        const int count = p.sparse_count[b * p.kv_heads + h];
        if (count < 0 || count > p.sparse_stride)
          return Status::Invalid("sequence " + std::to_string(b) + " has an invalid sparse_count");
        for (int e = 0; e < count; ++e) {
          const int pg = AttendedPage(p, b, h, e);
          if (pg < 0 || pg >= p.sparse_recent[b] || (e > 0 && pg <= AttendedPage(p, b, h, e - 1)))
            return Status::Invalid("sequence " + std::to_string(b) + ": sparse pages must ascend below sparse_recent");
        }
      }
      const int64_t n = static_cast<int64_t>(pages) * P + tail;
      keys.assign(n * W, 0.f);
      vals.assign(n * W, 0.f);
      const int64_t brow = static_cast<int64_t>(p.basis_index ? p.basis_index[b] : b) * p.kv_heads + h;
      const float* mean = p.mean + brow * W;
      const float* basis = p.basis + brow * W * W;
      for (int e = 0; e < pages; ++e) {
        const int pg = AttendedPage(p, b, h, e);
        int64_t pool = p.page_table[static_cast<int64_t>(b) * p.max_pages + pg];
        DequantLatent(l, PageRecord(p.key_pages, l, pool, p.kv_heads, h), &z);
        for (int t = 0; t < P; ++t) {
          const int64_t pos = static_cast<int64_t>(pg) * P + t, row = static_cast<int64_t>(e) * P + t;
          float* key = &keys[row * W];
          Rebuild(l, mean, basis, &z[static_cast<size_t>(t) * W], key);
          ApplyRopeRef(key, W, p.rope_cos + pos * W, p.rope_sin + pos * W);
          ValueRow(p, pool, h, t, &vals[row * W]);
        }
      }
      for (int t = 0; t < tail; ++t) {
        const int64_t row = static_cast<int64_t>(pages) * P + t;
        const int64_t src = ((static_cast<int64_t>(b) * p.kv_heads + h) * P + t) * W;
        for (int i = 0; i < W; ++i) keys[row * W + i] = Bf16BitsToFloat(p.tail_keys[src + i]);
        if (p.tail_value_page) {
          ValueRow(p, p.tail_value_page[b], h, t, &vals[row * W]);
        } else {
          for (int i = 0; i < W; ++i) vals[row * W + i] = Bf16BitsToFloat(p.tail_values[src + i]);
        }
      }
      for (int g = 0; g < G; ++g) {
        const int head = h * G + g;
        const uint16_t* q = p.q + (static_cast<int64_t>(b) * p.num_heads + head) * W;
        std::vector<double> s(n);
        double mx = -INFINITY;
        for (int64_t t = 0; t < n; ++t) {
          double acc = 0;
          for (int i = 0; i < W; ++i) acc += static_cast<double>(Bf16BitsToFloat(q[i])) * keys[t * W + i];
          s[t] = acc * p.sm_scale;
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (auto& x : s) sum += (x = std::exp(x - mx));
        float* out = p.out + (static_cast<int64_t>(b) * p.num_heads + head) * W;
        for (int i = 0; i < W; ++i) {
          double acc = 0;
          for (int64_t t = 0; t < n; ++t) acc += s[t] * vals[t * W + i];
          out[i] = static_cast<float>(acc / sum);
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace svdq::kernels
