// Chunk selection on the device: one block per (sequence, KV head). The queries are staged (and,
// for landmarks, projected on the KV head's basis), every chunk is scored into shared memory, the keep-th largest score is
// found a byte at a time over its orderable key (4 passes of a 256-bin histogram), and the chosen
// chunks (all above it, then the lowest-indexed ties) are written in ascending order through a
// block prefix sum over contiguous slices of chunks. Scores use the reference's operations (landmarks:
// the query's coordinates quantized to int8 per query head, an exact integer dot product by
// dp4a, then two fp32 products; the bound likewise, as two dp4a streams: the query's positive
// part against hi, its negative part against lo), so both choose the same chunks.
#include "kernels/sparse/sparse_select.h"

#include "kernels/common/cuda_launch.h"
#include "kernels/common/pdl.cuh"

namespace svdq::kernels {
namespace {

constexpr int kThreads = 1024;  // a (sequence, KV head) per block: its chunks spread over many threads

__device__ __forceinline__ uint32_t OrderKeyDev(float s) {
  if (s != s) return 0;
  const uint32_t b = __float_as_uint(s);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// A score's orderable key from its exact integer sum: the reference's two fp32 products.
__device__ __forceinline__ uint32_t ScoreKey(int sum, float qscale, float scale) {
  return OrderKeyDev(__fmul_rn(__fmul_rn(__int2float_rn(sum), qscale), scale));
}

// Exclusive prefix of one int per thread, in thread order.
__device__ int BlockExclusive(int v, int* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int x = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += x;
  }
  __syncthreads();
  if (lane == 31) red[warp] = inc;
  __syncthreads();
  int before = 0;
  for (int w = 0; w < warp; ++w) before += red[w];
  return before + inc - v;
}

// Every chunk's key (the reference's SparseChunkScore): the integer dot products of the quantized
// query rows q8 [G, R] (16-byte aligned) with each of the chunk's S landmarks (int8 [S, R]), times
// the row's scale and the chunk's, the largest over rows and landmarks. kR > 0: R is kR (a
// multiple of 4), a landmark's coordinates come in 4-, 8- or 16-byte loads and four at a time
// through dp4a; 0: any R, a byte at a time.
template <int kR>
__device__ void ScoreChunks(const SparseSelectParams& p, const int8_t* q8, const float* qscale, int b, int g, int n,
                            uint32_t* keys) {
  const int G = p.H / p.KV, R = kR > 0 ? kR : p.R, S = p.S;
  for (int c = threadIdx.x; c < n; c += kThreads) {
    const int64_t row = SparseChunkRow(p, b, g, c);
    const float scale = SparseScaleValue(p.scales[row]);
    uint32_t best = 0;
    for (int j = 0; j < S; ++j) {
      const int8_t* co = p.coords + (row * S + j) * R;
      if constexpr (kR > 0) {
        static_assert(kR % 4 == 0, "4-byte loads");
        alignas(16) int w[kR / 4];  // the landmark's coordinates, four to a word (landmarks are kR bytes apart)
        if constexpr (kR % 16 == 0) {
#pragma unroll
          for (int i = 0; i < kR / 16; ++i) reinterpret_cast<int4*>(w)[i] = reinterpret_cast<const int4*>(co)[i];
        } else if constexpr (kR % 8 == 0) {
#pragma unroll
          for (int i = 0; i < kR / 8; ++i) reinterpret_cast<int2*>(w)[i] = reinterpret_cast<const int2*>(co)[i];
        } else {
#pragma unroll
          for (int i = 0; i < kR / 4; ++i) w[i] = reinterpret_cast<const int*>(co)[i];
        }
        for (int h = 0; h < G; ++h) {
          const int* qw = reinterpret_cast<const int*>(q8 + h * kR);
          int dot = 0;
#pragma unroll
          for (int i = 0; i < kR / 4; ++i) dot = __dp4a(w[i], qw[i], dot);
          const uint32_t k = ScoreKey(dot, qscale[h], scale);
          if ((h == 0 && j == 0) || k > best) best = k;
        }
      } else {
        for (int h = 0; h < G; ++h) {
          int dot = 0;
          for (int r = 0; r < R; ++r) dot += static_cast<int>(q8[h * R + r]) * static_cast<int>(co[r]);
          const uint32_t k = ScoreKey(dot, qscale[h], scale);
          if ((h == 0 && j == 0) || k > best) best = k;
        }
      }
    }
    keys[c] = best;
  }
}

// R = 2 with an even S (sub-chunk landmarks of rank 2): a page's landmarks two to a 4-byte word,
// each word's two dot products by two dp4a, against the query row's coordinates in the word's low
// half and in its high half.
__device__ void ScoreChunksRank2(const SparseSelectParams& p, const int8_t* q8, const float* qscale, int b, int g, int n,
                                 uint32_t* keys) {
  const int G = p.H / p.KV, words = p.S / 2;
  for (int c = threadIdx.x; c < n; c += kThreads) {
    const int64_t row = SparseChunkRow(p, b, g, c);
    const int* co = reinterpret_cast<const int*>(p.coords + row * p.S * 2);  // rows are 2 S bytes apart
    const float scale = SparseScaleValue(p.scales[row]);
    uint32_t best = 0;
    for (int i = 0; i < words; ++i) {
      const int w = co[i];
      for (int h = 0; h < G; ++h) {
        const uint32_t q = reinterpret_cast<const uint16_t*>(q8)[h];  // the row's two coordinates, low half
        const int lo = __dp4a(w, static_cast<int>(q), 0), hi = __dp4a(w, static_cast<int>(q << 16), 0);
        const uint32_t klo = ScoreKey(lo, qscale[h], scale);
        const uint32_t khi = ScoreKey(hi, qscale[h], scale);
        if ((h == 0 && i == 0) || klo > best) best = klo;
        if (khi > best) best = khi;
      }
    }
    keys[c] = best;
  }
}

// The bound's keys (the reference's SparseBoundScore): the query rows' positive parts qpos [G, D]
// against hi and negative parts qneg [G, D] against lo (both 16-byte aligned), 16 channels per
// load where D allows.
__device__ void ScoreBounds(const SparseSelectParams& p, const int8_t* qpos, const int8_t* qneg, const float* qscale,
                            int b, int g, int n, uint32_t* keys) {
  const int G = p.H / p.KV, D = p.D;
  for (int c = threadIdx.x; c < n; c += kThreads) {
    const int64_t row = SparseChunkRow(p, b, g, c);
    const int8_t* lo = p.coords + row * 2 * D;
    const int8_t* hi = lo + D;
    const float scale = SparseScaleValue(p.scales[row]);
    uint32_t best = 0;
    for (int h = 0; h < G; ++h) {
      int sum = 0;
      if (D % 16 == 0) {
        for (int d0 = 0; d0 < D; d0 += 16) {
          const int4 l4 = *reinterpret_cast<const int4*>(lo + d0), h4 = *reinterpret_cast<const int4*>(hi + d0);
          const int4 qp = *reinterpret_cast<const int4*>(qpos + h * D + d0);
          const int4 qn = *reinterpret_cast<const int4*>(qneg + h * D + d0);
          sum = __dp4a(h4.x, qp.x, sum), sum = __dp4a(h4.y, qp.y, sum), sum = __dp4a(h4.z, qp.z, sum), sum = __dp4a(h4.w, qp.w, sum);
          sum = __dp4a(l4.x, qn.x, sum), sum = __dp4a(l4.y, qn.y, sum), sum = __dp4a(l4.z, qn.z, sum), sum = __dp4a(l4.w, qn.w, sum);
        }
      } else {
        for (int d = 0; d < D; ++d) sum += qpos[h * D + d] * hi[d] + qneg[h * D + d] * lo[d];
      }
      const uint32_t k = ScoreKey(sum, qscale[h], scale);
      if (h == 0 || k > best) best = k;
    }
    keys[c] = best;
  }
}

// Dynamic shared memory, in floats: keys [max_chunks] (orderable keys of the scores), this KV
// head's basis [D, Rs] (landmarks with a basis), its query rows [G, D], their coordinates [G, R]
// and the coordinates' scales [G], then (16-byte aligned) the quantized coordinates int8 [G, W]
// (W = R, or D for the bound) and, for the bound, their positive and negative parts [G, D] each.
struct SelectSmem {
  int basis, qs, qr, qscale, q8, bytes;
};
__host__ __device__ inline SelectSmem PlanSelectSmem(const SparseSelectParams& p) {
  const int G = p.H / p.KV, Rs = p.score == SparseScore::kBound || !p.basis ? 0 : p.R;
  SelectSmem m{};
  m.basis = p.max_chunks;
  m.qs = m.basis + p.D * Rs;
  m.qr = m.qs + G * p.D;
  m.qscale = m.qr + G * p.R;
  m.q8 = (m.qscale + G + 3) / 4 * 4;
  const int w = p.score == SparseScore::kBound ? 3 * p.D : p.R;  // q8, then qpos and qneg
  m.bytes = 4 * m.q8 + (G * w + 15) / 16 * 16;
  return m;
}

__global__ void __launch_bounds__(kThreads) SparseSelectKernel(SparseSelectParams p) {
  // The attention after it may start its setup once every block of this grid has started
  // (SvdqAttentionParams::overlap_setup); it waits for this grid before reading the lists.
  pdl::DependentsMayLaunch();
  // Staged so that the sequential dot products read shared memory (PlanSelectSmem).
  extern __shared__ __align__(16) uint32_t keys[];
  __shared__ int red[kThreads / 32];
  const int unit = blockIdx.x, b = unit / p.KV, g = unit % p.KV, G = p.H / p.KV;
  const int n = p.chunks[b];
  int32_t* out = p.selected + static_cast<size_t>(unit) * (p.keep + 1);
  if (n <= 0) {
    for (int i = threadIdx.x; i < p.keep + 1; i += kThreads) out[i] = -1;
    if (threadIdx.x == 0) p.count[unit] = 0;
    return;
  }
  const bool bound = p.score == SparseScore::kBound;
  const int Rs = bound || !p.basis ? 0 : p.R;  // the basis is staged for landmarks with one only
  const SelectSmem m = PlanSelectSmem(p);
  float* basis = reinterpret_cast<float*>(keys + m.basis);  // [D, Rs]
  float* qs = reinterpret_cast<float*>(keys + m.qs);        // [G, D]
  float* qr = reinterpret_cast<float*>(keys + m.qr);        // [G, R]
  float* qscale = reinterpret_cast<float*>(keys + m.qscale);  // [G]
  int8_t* q8 = reinterpret_cast<int8_t*>(keys + m.q8);      // [G, R]
  const float* gb = Rs == 0 ? nullptr : SparseBasisOf(p, b, g);
  for (int i = threadIdx.x; i < p.D * Rs; i += kThreads) basis[i] = gb[i];
  const float* gq = p.q + (static_cast<size_t>(b) * p.H + g * G) * p.D;  // the KV head's G rows, contiguous
  for (int i = threadIdx.x; i < G * p.D; i += kThreads) qs[i] = gq[i];
  __syncthreads();
  for (int i = threadIdx.x; i < G * Rs; i += kThreads) {
    const int h = i / p.R, r = i % p.R;
    const float* q = qs + h * p.D;
    float s = 0;
    for (int d = 0; d < p.D; ++d) s = __fadd_rn(s, __fmul_rn(basis[d * p.R + r], q[d]));
    qr[i] = s;
  }
  if (!bound && !p.basis)  // the identity: the query itself (R = D)
    for (int i = threadIdx.x; i < G * p.D; i += kThreads) qr[i] = qs[i];
  __syncthreads();
  {
    // The reference's SparseQuantizeQuery, one warp per query row (G <= 16 < 32 warps): the
    // coordinates (landmarks) or the query itself (the bound, which also splits each row into its
    // positive and negative parts).
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, W = bound ? p.D : p.R;
    int8_t* qpos = q8 + G * p.D;
    int8_t* qneg = qpos + G * p.D;
    if (warp < G) {
      const float* row = (bound ? qs : qr) + warp * W;
      float mx = 0.f;
      for (int r = lane; r < W; r += 32) mx = fmaxf(mx, fabsf(row[r]));
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float sc = __fdiv_rn(mx, 127.0f);
      for (int r = lane; r < W; r += 32) {
        const float x = sc > 0 ? rintf(__fdiv_rn(row[r], sc)) : 0.f;  // NaN: a NaN coordinate or an infinite row
        const int8_t v = x != x ? 0 : static_cast<int8_t>(fminf(fmaxf(x, -127.0f), 127.0f));
        q8[warp * W + r] = v;
        if (bound) qpos[warp * W + r] = v > 0 ? v : 0, qneg[warp * W + r] = v < 0 ? v : 0;
      }
      if (lane == 0) qscale[warp] = sc;
    }
    __syncthreads();
  }
  if (bound) {
    ScoreBounds(p, q8 + G * p.D, q8 + 2 * G * p.D, qscale, b, g, n, keys);
  } else {
    switch (p.R) {  // the common widths with the chunk's coordinates in registers
    case 2:
      if (p.S % 2 == 0) ScoreChunksRank2(p, q8, qscale, b, g, n, keys);
      else ScoreChunks<0>(p, q8, qscale, b, g, n, keys);
      break;
    case 4: ScoreChunks<4>(p, q8, qscale, b, g, n, keys); break;
    case 8: ScoreChunks<8>(p, q8, qscale, b, g, n, keys); break;
    case 12: ScoreChunks<12>(p, q8, qscale, b, g, n, keys); break;
    case 16: ScoreChunks<16>(p, q8, qscale, b, g, n, keys); break;
    case 24: ScoreChunks<24>(p, q8, qscale, b, g, n, keys); break;
    case 32: ScoreChunks<32>(p, q8, qscale, b, g, n, keys); break;
    case 64: ScoreChunks<64>(p, q8, qscale, b, g, n, keys); break;
    case 128: ScoreChunks<128>(p, q8, qscale, b, g, n, keys); break;
    default: ScoreChunks<0>(p, q8, qscale, b, g, n, keys); break;
    }
  }
  __syncthreads();
  // Chunks 1 .. n-1 compete for `want` places; chunk 0 is always kept.
  const int want = min(p.keep, n - 1);
  // Each thread owns a contiguous slice, so thread order is chunk order for the prefix sums.
  const int per = (n - 1 + kThreads - 1) / kThreads;
  const int lo = 1 + threadIdx.x * per, hi = min(n, lo + per);
  // The want-th largest key, a byte at a time from the top (4 passes): each pass counts the keys
  // that match the bytes found so far by their next byte, and walks the 256 counts down from
  // the largest until `remaining` keys are covered.
  __shared__ int hist[256];
  __shared__ int pick[2];  // the byte found, the keys in larger bytes
  uint32_t thr = 0, mask = 0;
  int remaining = want;  // keys still to cover at the end: the ties at thr to take
  if (want > 0) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
      __syncthreads();
      for (int c = 1 + threadIdx.x; c < n; c += kThreads) {
        const uint32_t k = keys[c];
        if ((k & mask) == thr) atomicAdd(&hist[(k >> shift) & 255u], 1);
      }
      __syncthreads();
      if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        int local = 0;  // this lane's 8 bins, from bin 255 - 8 lane down
        for (int j = 0; j < 8; ++j) local += hist[255 - 8 * lane - j];
        int inc = local;
        for (int o = 1; o < 32; o <<= 1) {
          const int x = __shfl_up_sync(0xffffffffu, inc, o);
          if (lane >= o) inc += x;
        }
        const unsigned ballot = __ballot_sync(0xffffffffu, inc >= remaining);
        const int first = __ffs(ballot) - 1;  // the lane whose bins reach `remaining`
        if (lane == first) {
          int above = inc - local;
          for (int j = 0; j < 8; ++j) {
            const int bin = 255 - 8 * lane - j;
            if (above + hist[bin] >= remaining) {
              pick[0] = bin;
              pick[1] = above;
              break;
            }
            above += hist[bin];
          }
        }
      }
      __syncthreads();
      thr |= static_cast<uint32_t>(pick[0]) << shift;
      mask |= 255u << shift;
      remaining -= pick[1];
      __syncthreads();  // pick and hist are rewritten by the next pass
    }
  }
  int ties = 0;
  for (int i = lo; i < hi; ++i) ties += keys[i] == thr;
  const int tie_room = remaining;  // ties to take, lowest indices first
  const int ties_before = BlockExclusive(ties, red);
  int mine = 0;
  if (want > 0) {
    int t = ties_before;
    for (int i = lo; i < hi; ++i) mine += keys[i] > thr || (keys[i] == thr && t++ < tie_room);
  }
  const int at = 1 + BlockExclusive(mine, red);  // slot 0 holds chunk 0
  if (want > 0) {
    int t = ties_before, o = at;
    for (int i = lo; i < hi; ++i)
      if (keys[i] > thr || (keys[i] == thr && t++ < tie_room)) out[o++] = i;
  }
  if (threadIdx.x == 0) {
    out[0] = 0;
    p.count[unit] = 1 + want;
  }
  for (int i = 1 + want + threadIdx.x; i < p.keep + 1; i += kThreads) out[i] = -1;
}

}  // namespace

Status SparseSelect(const SparseSelectParams& p, cudaStream_t stream) {
  if (Status st = CheckSparseSelect(p); !st.ok()) return st;
  if (p.B == 0) return Status::Ok();
  const size_t smem = static_cast<size_t>(PlanSelectSmem(p).bytes);
  if (Status st = AllowSmem(reinterpret_cast<const void*>(SparseSelectKernel), smem); !st.ok()) return st;
  SparseSelectKernel<<<p.B * p.KV, kThreads, smem, stream>>>(p);
  return LaunchStatus("SparseSelectKernel");
}

}  // namespace svdq::kernels

// ---- Page landmarks: one block of D threads per (row, KV head), a thread per channel.
namespace svdq::kernels {
namespace {

__global__ void SparseLandmarkKernel(SparseLandmarkParams p) {
  const int r = blockIdx.x, g = blockIdx.y, d = threadIdx.x;
  __shared__ float red[8];
  const int64_t off = p.offset[r];
  const int S = p.S, slice = p.P / S, j = static_cast<int>(off) / slice;
  float* sums = p.acc + (p.lanes[r] * p.KV + g) * S * p.D;  // [S, D]: the page's slices
  const uint16_t bits = p.k[r * p.k_stride + static_cast<int64_t>(g) * p.D + d];
  const float x = __uint_as_float(static_cast<uint32_t>(bits) << 16);
  const float sum = __fadd_rn(off % slice == 0 ? 0.0f : sums[j * p.D + d], x);
  sums[j * p.D + d] = sum;
  if (off != p.P - 1) return;  // the whole block takes the same branch (one row)
  // The reference's QuantizeLandmark: mean = sum * (1 / slice) per slice (this row's in a
  // register, the others from the accumulator); with a basis, value t = s R + r is slice s's
  // coordinate r (added in d order, unfused); one scale = max |x| / 127 over the S W values.
  const float inv = __fdiv_rn(1.0f, static_cast<float>(slice));
  const int W = SparseLandmarkWidth(p), n = S * W;
  __shared__ float ms[kSparseMaxSubs * 256];  // [S, D] the slices' means
  __shared__ float xs[256];                   // [S, W] the values to quantize
  for (int s = 0; s < S; ++s) ms[s * p.D + d] = __fmul_rn(s == j ? sum : sums[s * p.D + d], inv);
  __syncthreads();
  float mx = 0.f;
  for (int t = d; t < n; t += p.D) {
    const int s = t / W, c = t % W;
    float v = ms[s * p.D + c];
    if (p.basis) {
      const float* basis = p.basis + (p.lanes[r] * p.KV + g) * p.D * p.R;
      v = 0;
      for (int e = 0; e < p.D; ++e) v = __fadd_rn(v, __fmul_rn(basis[e * p.R + c], ms[s * p.D + e]));
    }
    xs[t] = v;
    mx = fmaxf(mx, fabsf(v));
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if ((d & 31) == 0) red[d >> 5] = mx;
  __syncthreads();
  mx = 0;
  for (int w = 0; w < (p.D + 31) / 32; ++w) mx = fmaxf(mx, red[w]);
  // The reference's SparseQuantizeLandmark: max |x| / 127, capped at 65504, rounded to fp16.
  float s = __fdiv_rn(mx, 127.0f);
  s = s < 65504.0f ? s : 65504.0f;
  const __half hs = __float2half_rn(s);
  s = __half2float(hs);
  const int64_t row = p.block[r] * p.KV + g;
  // The reference's rule: 0 for a NaN quotient (a NaN coordinate).
  for (int t = d; t < n; t += p.D) {
    const float c = s > 0 ? rintf(__fdiv_rn(xs[t], s)) : 0.0f;
    p.coords[row * n + t] = c != c ? 0 : static_cast<int8_t>(fminf(fmaxf(c, -127.0f), 127.0f));
  }
  if (d == 0) p.scales[row] = __half_as_ushort(hs);
}

}  // namespace

Status SparseLandmarkAppend(const SparseLandmarkParams& p, cudaStream_t stream) {
  if (Status st = CheckSparseLandmarks(p); !st.ok()) return st;
  if (p.D < 32 || p.D % 32 != 0) return Status::Invalid("sparse landmarks: bad shape (D a multiple of 32, at most 256)");
  if (p.rows == 0) return Status::Ok();
  SparseLandmarkKernel<<<dim3(p.rows, p.KV), p.D, 0, stream>>>(p);
  return LaunchStatus("SparseLandmarkKernel");
}

}  // namespace svdq::kernels
