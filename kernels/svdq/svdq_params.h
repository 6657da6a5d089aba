// The SVDq key codec's page layout and the parameter structs of its ops, shared by the
// CPU reference (svdq_ref.cc) and the CUDA kernels (svdq_*.cu). Plain C++: no torch,
// no CUDA headers, so host code and nvcc both include it.
//
// One encoded (page, KV head) record, `page_bytes` long:
//   [codes of group 0][codes of group 1]...[codes of group 7][fp16 scale x r][fp16 zero x r]
// Group g (channels g*gs .. g*gs+gs-1 of the latent, gs = width/8) with b > 0 bits holds
// the P x gs codes of the page, token-major (code i = t*gs + c), as a little-endian bit
// stream, code i at bits [i*b, i*b + b); each group is padded to 4 bytes. Groups with 0
// bits take no bytes. Scales and zeros follow for the r retained channels, in channel
// order. A latent value is zero + code * scale (asymmetric min-max, round to nearest).
#pragma once

#include <cstdint>

#include "kernels/attention/kv_format.h"

#ifdef __CUDACC__
#define SVDQ_HOST_DEVICE __host__ __device__
#else
#define SVDQ_HOST_DEVICE
#endif

namespace svdq::kernels {

constexpr int kSvdqGroups = 8;
constexpr int kSvdqMaxBits = 8;

struct SvdqLayout {
  int width = 0;      // latent width d: head_dim for "head" scope
  int page_size = 0;  // P tokens per page
  int group_size = 0; // width / 8
  int bits[kSvdqGroups] = {};
  int retained = 0;                       // r: channels stored (groups with bits > 0)
  int group_offset[kSvdqGroups] = {};     // byte offset of each group's codes
  int retained_before[kSvdqGroups] = {};  // retained channels in groups before g
  int code_bytes = 0;
  int scale_offset = 0;  // fp16 [r]
  int zero_offset = 0;   // fp16 [r]
  int page_bytes = 0;    // padded to 16 bytes

  // Index among retained channels of latent channel c, or -1 if c is dropped.
  inline int RetainedIndex(int c) const {
    int g = c / group_size;
    return bits[g] == 0 ? -1 : retained_before[g] + (c - g * group_size);
  }
};

// Eigenvectors of `batch` symmetric n x n matrices (row-major, fp32), by descending eigenvalue:
// vectors[b][r][j] is component r of matrix b's j-th eigenvector, signed so that its largest
// component is positive; values[b][j] (optional) its eigenvalue. A Jacobi rotation is skipped
// where the off-diagonal entry is below `tolerance` times the matrix's Frobenius norm (or below
// fp32's resolution of its diagonal pair); sweeps stop after one without a rotation, or after
// max_sweeps.
struct SymEigParams {
  const float* matrices = nullptr;  // [batch, n, n]
  float* vectors = nullptr;         // [batch, n, n]
  float* values = nullptr;          // [batch, n] or null
  int batch = 0, n = 0;
  int max_sweeps = 20;
  float tolerance = 1e-6f;
};

// Encodes full pages. Pointers are device pointers for the CUDA launcher, host pointers
// for the reference.
struct SvdqEncodeParams {
  SvdqLayout layout;
  int num_pages = 0;   // pages to encode
  int kv_heads = 0;
  const float* keys = nullptr;    // pre-RoPE keys [num_pages, kv_heads, P, width] fp32
  const float* mean = nullptr;    // [num_pages, kv_heads, width]: each page's sequence mean
  const float* basis = nullptr;   // [num_pages, kv_heads, width, width]: column j = basis vector j
  uint8_t* out = nullptr;         // [num_pages, kv_heads, page_bytes]
  // Optional: set to 1 when a page holds a NaN or infinite key (that page is written as zeros):
  // nonfinite[0], or nonfinite[key_lane[page]] where key_lane is set (one flag per lane).
  // Without it the reference returns an error instead.
  int32_t* nonfinite = nullptr;
  // Optional: page n takes its mean and basis from row basis_index[n] of mean and basis
  // (then [rows, kv_heads, ...]) instead of row n, so pages share a basis without copies.
  const int32_t* basis_index = nullptr;  // [num_pages]
  // Optional, for encoding running sequences' tail pages in place (the decode step):
  //   key_lane [num_pages]: the keys are tail pages [lanes, P, kv_heads, width] (keys in fp32,
  //     or keys_bf16 in bf16), and page n is lane key_lane[n];
  //   encode_if_last [num_pages]: page n is encoded only where encode_if_last[n] == P - 1 (the
  //     row of the token just written: the page is complete); otherwise nothing is written;
  //   out_page [num_pages]: page n goes to page out_page[n] of out instead of page n.
  const int64_t* key_lane = nullptr;
  const uint16_t* keys_bf16 = nullptr;
  const int64_t* encode_if_last = nullptr;
  const int64_t* out_page = nullptr;
};

// Decodes full pages back to keys at their positions (RoPE applied when rope_cos is set).
struct SvdqDecodeParams {
  SvdqLayout layout;
  int num_pages = 0;
  int kv_heads = 0;
  const uint8_t* pages = nullptr;    // [num_pages, kv_heads, page_bytes]
  const float* mean = nullptr;       // [num_pages, kv_heads, width]
  const float* basis = nullptr;      // [num_pages, kv_heads, width, width]
  const int32_t* first_pos = nullptr;  // [num_pages]: position of each page's token 0
  const float* rope_cos = nullptr;   // [max_pos, width] rotate-half tables (halves duplicated); null: no RoPE
  const float* rope_sin = nullptr;   // [max_pos, width]
  float* out = nullptr;              // [num_pages, kv_heads, P, width]
  // Optional: page n takes its mean and basis from row basis_index[n] of mean and basis (then
  // [rows, kv_heads, ...]) instead of row n, so pages share a basis without copies.
  const int32_t* basis_index = nullptr;  // [num_pages]
};

// Decode attention, one query token per sequence, over the sequence's encoded pages plus
// a bf16 tail of fewer than P tokens. Keys are rebuilt as RoPE_t(mean + V_r z_t).
struct SvdqAttentionParams {
  SvdqLayout layout;
  int batch = 0;
  int num_heads = 0;  // query heads; num_heads / kv_heads share each KV head (GQA)
  int kv_heads = 0;
  int max_pages = 0;  // row stride of page_table
  float sm_scale = 0.f;
  const uint16_t* q = nullptr;             // bf16 [batch, num_heads, width], post-RoPE
  const uint8_t* key_pages = nullptr;      // [pool_pages, kv_heads, page_bytes]
  // [pool_pages, kv_heads, P, row] in value_format (kernels/attention/kv_format.h): bf16 rows,
  // or codes with bf16 value_scales [pool_pages, kv_heads, P, width / 32]. Quantized values
  // need the mma kernel (svdq_attention_mma.cu).
  const void* value_pages = nullptr;
  KvFormat value_format = KvFormat::kBf16;
  const uint16_t* value_scales = nullptr;
  const int32_t* page_table = nullptr;     // [batch, max_pages]: pool page ids
  const int32_t* num_pages = nullptr;      // [batch]: encoded full pages
  const float* mean = nullptr;             // [basis_rows, kv_heads, width]
  const float* basis = nullptr;            // [basis_rows, kv_heads, width, width]
  // [batch], optional: the mean/basis row of each sequence (sequences that share a basis, or a
  // pool of per-sequence bases); null: row b for sequence b (basis_rows = batch).
  const int32_t* basis_index = nullptr;
  // Optional: fp16 [basis_rows, kv_heads, width, layout.retained], the basis's retained columns in
  // channel order, rounded to nearest (PackAttentionBasisHalf in svdq_ref.h). The warp-stream
  // kernel reads it instead of `basis` (which it rounds to the same fp16 values): half the
  // bytes of V_r a step, the same output bit for bit. The other kernels read `basis`.
  const uint16_t* basis_half = nullptr;
  const uint16_t* tail_keys = nullptr;     // bf16 [batch, kv_heads, P, width], post-RoPE
  const uint16_t* tail_values = nullptr;   // bf16 [batch, kv_heads, P, width]
  // Optional, instead of tail_values: the tail's values are rows 0 .. tail_len - 1 of value page
  // tail_value_page[b] (where the tail's tokens are stored), read in place; the mma kernel and
  // the reference only.
  const int64_t* tail_value_page = nullptr;
  const int32_t* tail_len = nullptr;       // [batch]: 0 .. P-1
  const float* rope_cos = nullptr;         // [max_pos, width]
  const float* rope_sin = nullptr;         // [max_pos, width]
  // [width / 2], optional: the RoPE frequencies the tables were built from (angle = pos *
  // inv_freq[i], pairs i and i + width/2). When set, the fast kernel computes its rotations
  // in registers from these and never reads the tables; the reference always uses the tables.
  const float* rope_inv_freq = nullptr;
  float* out = nullptr;                    // [batch, num_heads, width] fp32
  // Flash-decoding split: each thread block takes `pages_per_split` pages of one sequence
  // and KV head, and a second kernel merges the partial softmax states. 0: one block per
  // sequence and KV head, no workspace needed.
  int pages_per_split = 0;
  float* workspace = nullptr;  // [batch, num_heads, ceil(max_pages / pages_per_split), width + 2]
  // Rebuild keys on tensor cores (TF32 inputs, fp32 accumulation) where the shape allows.
  bool use_tensor_cores = true;
  // Which tensor-core kernel: the fastest that takes the shape (the warp-stream kernel, then
  // the block mma kernel), or one of them forced (tests and the benchmark compare them).
  // kWarpStreamsSync: the warp-stream kernel without its warpgroup (wgmma) rebuild, which it
  // otherwise uses at head dim 128 from 6 k-steps on (svdq_attention_warp.cu).
  enum class Kernel { kAuto, kBlockMma, kWarpStreams, kWarpStreamsSync };
  Kernel kernel = Kernel::kAuto;
  // Launch the warp-stream kernel as a programmatic dependent of the kernel before it in the
  // stream (Hopper's PDL): its blocks may start while that kernel still runs, stage what no
  // earlier kernel writes (V_r^T, the mean, the RoPE table) and wait for it
  // (griddepcontrol.wait) before anything else: the pages, the lists, the query. It gains where
  // the kernel before calls pdl::DependentsMayLaunch (SparseSelect does). Compute capability 9.0
  // and up; elsewhere the launch is a plain one.
  bool overlap_setup = false;
  // Sparse attention (issue 17), optional (the warp-stream kernel and the reference): sequence
  // b and KV head h attend to the pages listed in sparse_pages[(b * kv_heads + h) * sparse_stride
  // + i] for i < sparse_count[b * kv_heads + h] (logical page indices, ascending, each below
  // sparse_recent[b]: kernels/sparse/sparse_select.h writes them), then to every page from
  // sparse_recent[b] to num_pages[b] - 1, then to the tail. Keys keep their own positions.
  const int32_t* sparse_pages = nullptr;
  const int32_t* sparse_count = nullptr;
  const int32_t* sparse_recent = nullptr;
  int sparse_stride = 0;
  // The list length the split is planned for (0: max_pages); a longer list (a prompt row, which
  // attends to every page) is still attended whole, its overflow by the last split.
  int sparse_max_pages = 0;
};

// Splits launched for lists of up to max_pages pages in ranges of pps (pps 0: one).
SVDQ_HOST_DEVICE inline int SplitCount(int max_pages, int pps) { return pps > 0 && max_pages > pps ? (max_pages + pps - 1) / pps : 1; }
// What split `split` of `splits` takes of a list of np pages in ranges of pps (pps 0: one split
// takes all): pages [first, last), and the tail (the unfilled page after the list) if it holds
// the list's last page (split 0 with no page), so that no split exists for the tail alone. A
// list longer than splits * pps (a prompt row in a sparse step attends to every page, while the
// split was planned for the selection's bound) leaves its overflow and its tail to the last split.
struct SplitSlice {
  int first, last;
  bool tail;
};
SVDQ_HOST_DEVICE inline SplitSlice SplitPages(int np, int pps, int split, int splits) {
  if (pps <= 0) pps = np + 1;
  const int last_split = splits - 1, first = split * pps, tail_split = np > 0 ? (np - 1) / pps : 0;
  const int end = first + pps < np ? first + pps : np;
  return {first, split == last_split ? np : end, split == (tail_split < last_split ? tail_split : last_split)};
}

// The pages a (sequence, KV head) attends to, as a list: its length, and entry e's logical page.
SVDQ_HOST_DEVICE inline int AttendedPages(const SvdqAttentionParams& p, int b, int h) {
  if (!p.sparse_pages) return p.num_pages[b];
  return p.sparse_count[b * p.kv_heads + h] + p.num_pages[b] - p.sparse_recent[b];
}
SVDQ_HOST_DEVICE inline int AttendedPage(const SvdqAttentionParams& p, int b, int h, int e) {
  if (!p.sparse_pages) return e;
  const int bh = b * p.kv_heads + h, n = p.sparse_count[bh];
  return e < n ? p.sparse_pages[static_cast<int64_t>(bh) * p.sparse_stride + e] : p.sparse_recent[b] + (e - n);
}

}  // namespace svdq::kernels
