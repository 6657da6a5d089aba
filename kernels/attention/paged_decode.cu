// bf16 paged decode attention. The tensor-core kernel (head dims 64, 128):
//
// One block of 4 warps per (split, KV head, group of <= 16 query heads, sequence). The
// group's query rows are the A operand of every score product (rows past the group are
// zero), kept in registers for the whole block. Each warp owns the 16-token chunks
// w, w + 4, w + 8, ... of the block's range and streams them on its own: keys and values of a
// chunk go to the warp's shared memory by cp.async, three chunks in flight, with no block-wide
// barrier until the end. Per chunk:
//   S [16 rows, 16 tokens] = Q K^T     (mma.sync m16n8k16 bf16, K by ldmatrix: K rows are
//                                       the B operand's columns as stored)
//   online softmax in registers        (exp2, the scale and log2 e applied to S in fp32)
//   O [16, D] += P V                   (P from S's accumulators repacked as bf16 A fragments,
//                                       V by ldmatrix.trans)
// Then the four warps' (m, l, O) are merged in shared memory and written out, or to the
// split workspace for kernels/attention/split_merge.cu.
//
// Bytes: 4 D bytes per token and KV head (key and value), each read once; the queries and
// page table are noise. The bound is HBM bandwidth, as for SDPA over a contiguous cache.
#include "kernels/attention/paged_decode.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cfloat>
#include <string>

#include "kernels/attention/split_merge.h"
#include "kernels/common/cuda_launch.h"
#include "kernels/common/mma.cuh"
#include "kernels/common/warp.cuh"

namespace svdq::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTok = 16;         // tokens per warp chunk
constexpr int kStages = 3;       // chunks in flight per warp
constexpr int kSplitAlign = 64;  // split sizes are multiples of this many tokens
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <int D>
struct MmaPlan {
  static constexpr int kLd = D + 8;                        // halves per staged row (no bank conflicts)
  static constexpr int kStageHalves = 2 * kTok * kLd;      // keys, then values
  static constexpr int kWarpHalves = kStages * kStageHalves;
  static constexpr int kStreamBytes = kWarps * kWarpHalves * 2;
  static constexpr int kMergeBytes = kWarps * 16 * (D + 2) * 4;  // per warp: O [16, D], m [16], l [16]
  static constexpr int kSmemBytes = kStreamBytes > kMergeBytes ? kStreamBytes : kMergeBytes;
};

int NumSplits(const PagedDecodeParams& p) {
  return p.tokens_per_split > 0 ? (p.max_seq_len + p.tokens_per_split - 1) / p.tokens_per_split : 1;
}

int RowGroups(const PagedDecodeParams& p) { return (p.num_heads / p.kv_heads + 15) / 16; }

template <int D>
__global__ void __launch_bounds__(kThreads, 2) PagedDecodeMmaKernel(PagedDecodeParams p, int row_groups) {
  using Plan = MmaPlan<D>;
  constexpr int KS = D / 16;           // k-steps of the score product
  constexpr int NT = D / 8;            // 8-column tiles of O
  constexpr int kPieces = D / 8;       // 16-byte pieces per row
  constexpr int kLoads = kTok * kPieces / 32;  // per lane per tensor per chunk
  extern __shared__ __align__(16) uint8_t smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g8 = lane / 4, q4 = lane % 4;
  const int split = blockIdx.x, kvh = blockIdx.y / row_groups, rg = blockIdx.y % row_groups, b = blockIdx.z;
  const int G = p.num_heads / p.kv_heads, row0 = rg * 16, nrows = min(16, G - row0);
  const int P = p.page_size, KV = p.kv_heads;
  const int L = min(p.seq_len[b], p.max_pages * P);  // never past the page table's row
  int t_begin = 0, t_end = L;
  if (p.tokens_per_split > 0) {
    t_begin = split * p.tokens_per_split;
    // The last split takes whatever lies past the plan, so no key is ever dropped.
    t_end = split + 1 == static_cast<int>(gridDim.x) ? L : min(L, t_begin + p.tokens_per_split);
  }
  const int nchunks = max(0, (t_end - t_begin + kTok - 1) / kTok);
  const int mine = nchunks > warp ? (nchunks - warp + kWarps - 1) / kWarps : 0;

  // Query rows as A fragments: a0 = Q[g][2q..], a1 = Q[g+8][2q..], a2/a3 the same 8 columns on.
  const int head0 = kvh * G + row0;
  const uint32_t* qrow_lo = reinterpret_cast<const uint32_t*>(p.q + (static_cast<int64_t>(b) * p.num_heads + head0 + g8) * D);
  const uint32_t* qrow_hi = reinterpret_cast<const uint32_t*>(p.q + (static_cast<int64_t>(b) * p.num_heads + head0 + g8 + 8) * D);
  uint32_t qa[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    const int c = (ks * 16 + 2 * q4) / 2;
    qa[ks][0] = g8 < nrows ? qrow_lo[c] : 0u;
    qa[ks][1] = g8 + 8 < nrows ? qrow_hi[c] : 0u;
    qa[ks][2] = g8 < nrows ? qrow_lo[c + 4] : 0u;
    qa[ks][3] = g8 + 8 < nrows ? qrow_hi[c + 4] : 0u;
  }

  __nv_bfloat16* wsm = reinterpret_cast<__nv_bfloat16*>(smem) + warp * Plan::kWarpHalves;
  const auto* kp = reinterpret_cast<const __nv_bfloat16*>(p.key_pages);
  const auto* vp = reinterpret_cast<const __nv_bfloat16*>(p.value_pages);
  const int32_t* table = p.page_table + static_cast<int64_t>(b) * p.max_pages;
  auto issue = [&](int i) {  // the warp's i-th chunk into stage i % kStages
    const int t0 = t_begin + (warp + i * kWarps) * kTok;
    __nv_bfloat16* ks = wsm + (i % kStages) * Plan::kStageHalves;
    __nv_bfloat16* vs = ks + kTok * Plan::kLd;
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int idx = lane + 32 * j, row = idx / kPieces, piece = idx % kPieces;
      const int t = t0 + row;
      const bool ok = t < t_end;
      const int64_t off = ok ? ((static_cast<int64_t>(table[t / P]) * KV + kvh) * P + t % P) * D + piece * 8 : 0;
      mma::CpAsync16(ks + row * Plan::kLd + piece * 8, kp + off, ok ? 16 : 0);
      mma::CpAsync16(vs + row * Plan::kLd + piece * 8, vp + off, ok ? 16 : 0);
    }
  };

  const float scale = p.sm_scale * kLog2e;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g8, g8 + 8 (log2 units)
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  const int mrow = lane / 8, mr = lane % 8;  // ldmatrix: which 8x8 matrix this lane addresses, and its row

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < mine) issue(s);
    mma::CpAsyncCommit();
  }
  for (int i = 0; i < mine; ++i) {
    if (i + kStages - 1 < mine) issue(i + kStages - 1);
    mma::CpAsyncCommit();
    mma::CpAsyncWait<kStages - 1>();
    __syncwarp();
    const __nv_bfloat16* ks = wsm + (i % kStages) * Plan::kStageHalves;
    const __nv_bfloat16* vs = ks + kTok * Plan::kLd;
    const int t0 = t_begin + (warp + i * kWarps) * kTok;

    float s[2][4] = {};
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      uint32_t r[4];
      mma::LdMatrixX4(r, ks + ((mrow / 2) * 8 + mr) * Plan::kLd + k * 16 + (mrow % 2) * 8);
      mma::MmaBf16(s[0], qa[k], r[0], r[1]);
      mma::MmaBf16(s[1], qa[k], r[2], r[3]);
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int t = t0 + n * 8 + 2 * q4 + (j & 1);
        s[n][j] = t < t_end ? s[n][j] * scale : -INFINITY;
        mx[j / 2] = fmaxf(mx[j / 2], s[n][j]);
      }
    float corr[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);
      base[r] = mn == -INFINITY ? 0.f : mn;
      corr[r] = Exp2(m[r] - base[r]);
      m[r] = mn;
      l[r] *= corr[r];
    }
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[n][j] = Exp2(s[n][j] - base[j / 2]);
        l[j / 2] += s[n][j];
      }
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }
    const uint32_t pa[4] = {mma::PackBf162(s[0][0], s[0][1]), mma::PackBf162(s[0][2], s[0][3]),
                            mma::PackBf162(s[1][0], s[1][1]), mma::PackBf162(s[1][2], s[1][3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t r[4];
      mma::LdMatrixX4Trans(r, vs + ((mrow % 2) * 8 + mr) * Plan::kLd + dp * 16 + (mrow / 2) * 8);
      mma::MmaBf16(o[2 * dp], pa, r[0], r[1]);
      mma::MmaBf16(o[2 * dp + 1], pa, r[2], r[3]);
    }
    __syncwarp();  // every lane has read this stage before it is refilled
  }
  mma::CpAsyncWait<0>();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }

  // Merge the warps: O [warp][16][D], then m and l [warp][16], over the stream buffers.
  __syncthreads();
  float* os = reinterpret_cast<float*>(smem);
  float* ms = os + kWarps * 16 * D;
  float* ls = ms + kWarps * 16;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    float* lo = os + (warp * 16 + g8) * D + n * 8 + 2 * q4;
    lo[0] = o[n][0];
    lo[1] = o[n][1];
    lo[8 * D] = o[n][2];
    lo[8 * D + 1] = o[n][3];
  }
  if (q4 == 0) {
    ms[warp * 16 + g8] = m[0];
    ms[warp * 16 + g8 + 8] = m[1];
    ls[warp * 16 + g8] = l[0];
    ls[warp * 16 + g8 + 8] = l[1];
  }
  __syncthreads();
  const int splits = gridDim.x;
  for (int idx = threadIdx.x; idx < nrows * D; idx += kThreads) {
    const int row = idx / D, col = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, ms[w * 16 + row]);
    float acc = 0.f, sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float e = M == -INFINITY ? 0.f : Exp2(ms[w * 16 + row] - M);
      acc += e * os[(w * 16 + row) * D + col];
      sum += e * ls[w * 16 + row];
    }
    const int64_t head = static_cast<int64_t>(b) * p.num_heads + head0 + row;
    if (p.tokens_per_split == 0) {
      p.out[head * D + col] = sum > 0.f ? acc / sum : 0.f;
    } else {
      float* ws = p.workspace + (head * splits + split) * (D + 2);
      ws[col] = acc;
      if (col == 0) {
        ws[D] = M == -INFINITY ? -INFINITY : M * kLn2;
        ws[D + 1] = sum;
      }
    }
  }
}

// Any head dim up to 256: one block per (sequence, query head), scores in shared memory.
constexpr int kScalarThreads = 128;

__device__ float BlockReduce(float v, float* scratch, bool is_max) {
  v = is_max ? WarpMax(v) : WarpSum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kScalarThreads / 32; ++w) v = is_max ? fmaxf(v, scratch[w]) : v + scratch[w];
  return v;
}

__global__ void __launch_bounds__(kScalarThreads) PagedDecodeScalarKernel(PagedDecodeParams p) {
  extern __shared__ float fsmem[];
  const int b = blockIdx.x / p.num_heads, h = blockIdx.x % p.num_heads;
  const int kvh = h / (p.num_heads / p.kv_heads);
  const int D = p.head_dim, P = p.page_size, L = min(p.seq_len[b], p.max_seq_len);
  float* q = fsmem;                             // [D]
  float* scratch = q + D;                       // [kScalarThreads / 32]
  float* score = scratch + kScalarThreads / 32;  // [max_seq_len]
  const auto* qb = reinterpret_cast<const __nv_bfloat16*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h) * D;
  for (int d = threadIdx.x; d < D; d += kScalarThreads) q[d] = __bfloat162float(qb[d]) * p.sm_scale;
  __syncthreads();
  auto row = [&](const uint16_t* pages, int t) {
    const int64_t page = p.page_table[static_cast<int64_t>(b) * p.max_pages + t / P];
    return reinterpret_cast<const __nv_bfloat16*>(pages) + ((page * p.kv_heads + kvh) * P + t % P) * D;
  };
  float m = -FLT_MAX;
  for (int t = threadIdx.x; t < L; t += kScalarThreads) {
    const __nv_bfloat16* k = row(p.key_pages, t);
    float s = 0.f;
    for (int d = 0; d < D; ++d) s += q[d] * __bfloat162float(k[d]);
    score[t] = s;
    m = fmaxf(m, s);
  }
  m = BlockReduce(m, scratch, true);
  float sum = 0.f;
  for (int t = threadIdx.x; t < L; t += kScalarThreads) {
    const float e = __expf(score[t] - m);
    score[t] = e;
    sum += e;
  }
  sum = BlockReduce(sum, scratch, false);
  __syncthreads();
  float* out = p.out + (static_cast<int64_t>(b) * p.num_heads + h) * D;
  for (int d = threadIdx.x; d < D; d += kScalarThreads) {
    float acc = 0.f;
    for (int t = 0; t < L; ++t) acc += score[t] * __bfloat162float(row(p.value_pages, t)[d]);
    out[d] = sum > 0.f ? acc / sum : 0.f;
  }
}

template <int D>
Status LaunchMma(const PagedDecodeParams& p, cudaStream_t stream) {
  const int smem = MmaPlan<D>::kSmemBytes;
  if (Status s = AllowSmem(reinterpret_cast<const void*>(PagedDecodeMmaKernel<D>), smem); !s.ok()) return s;
  const int splits = NumSplits(p), groups = RowGroups(p);
  PagedDecodeMmaKernel<D><<<dim3(splits, p.kv_heads * groups, p.batch), kThreads, smem, stream>>>(p, groups);
  if (Status s = LaunchStatus("paged decode attention"); !s.ok()) return s;
  if (p.tokens_per_split == 0) return Status::Ok();
  return MergeSplits(p.workspace, p.out, p.batch * p.num_heads, splits, D, stream);
}

}  // namespace

bool PagedDecodeTensorCores(int head_dim) { return head_dim == 64 || head_dim == 128; }

int PagedDecodeTokensPerSplit(int batch, int num_heads, int kv_heads, int max_seq_len, int num_sms) {
  if (batch < 1 || kv_heads < 1 || num_heads < kv_heads || max_seq_len < 1 || num_sms < 1) return 0;
  const int64_t units = static_cast<int64_t>(batch) * kv_heads * ((num_heads / kv_heads + 15) / 16);
  const int64_t target = 4LL * num_sms;
  if (units * 2 >= target) return 0;
  const int64_t splits = (target + units - 1) / units;
  int64_t tokens = (max_seq_len + splits - 1) / splits;
  tokens = std::max<int64_t>(4 * kSplitAlign, (tokens + kSplitAlign - 1) / kSplitAlign * kSplitAlign);
  return tokens >= max_seq_len ? 0 : static_cast<int>(tokens);
}

size_t PagedDecodeWorkspaceFloats(const PagedDecodeParams& p) {
  if (p.tokens_per_split <= 0 || !PagedDecodeTensorCores(p.head_dim) || p.max_seq_len < 1) return 0;
  return static_cast<size_t>(p.batch) * p.num_heads * NumSplits(p) * (p.head_dim + 2);
}

Status PagedDecodeAttention(const PagedDecodeParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.num_heads < 1 || p.kv_heads < 1 || p.num_heads % p.kv_heads != 0)
    return Status::Invalid("paged decode: batch >= 0, num_heads and kv_heads positive, num_heads a multiple of kv_heads");
  if (p.head_dim < 1 || p.head_dim > 256 || p.head_dim % 8 != 0)
    return Status::Invalid("paged decode: head_dim must be a multiple of 8 in [8, 256]");
  if (p.page_size < 1 || p.max_pages < 1 || p.max_seq_len < 1 ||
      p.max_seq_len > static_cast<int64_t>(p.max_pages) * p.page_size)
    return Status::Invalid("paged decode: max_seq_len must be in [1, max_pages * page_size]");
  if (p.batch == 0) return Status::Ok();
  if (!p.q || !p.key_pages || !p.value_pages || !p.page_table || !p.seq_len || !p.out)
    return Status::Invalid("paged decode: a pointer is null");
  if (PagedDecodeTensorCores(p.head_dim)) {
    if (p.tokens_per_split < 0 || p.tokens_per_split % kSplitAlign != 0)
      return Status::Invalid("paged decode: tokens_per_split must be 0 or a positive multiple of 64");
    if (p.tokens_per_split > 0 && !p.workspace) return Status::Invalid("paged decode: a split needs a workspace");
    return p.head_dim == 64 ? LaunchMma<64>(p, stream) : LaunchMma<128>(p, stream);
  }
  const size_t smem = (static_cast<size_t>(p.head_dim) + kScalarThreads / 32 + p.max_seq_len) * sizeof(float);
  if (Status s = AllowSmem(reinterpret_cast<const void*>(PagedDecodeScalarKernel), smem); !s.ok()) return s;
  PagedDecodeScalarKernel<<<p.batch * p.num_heads, kScalarThreads, smem, stream>>>(p);
  return LaunchStatus("paged decode attention");
}

}  // namespace svdq::kernels
