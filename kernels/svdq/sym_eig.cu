// Eigendecomposition of small symmetric matrices on the device, for the SVDq prefill basis
// (the centred Gram matrix of a sequence's prompt keys, one per KV head and layer). One
// thread block per matrix, the matrix and its rotations in shared memory: cyclic Jacobi, each
// sweep n - 1 rounds of n / 2 disjoint (p, q) pairs (the round-robin "circle" order), so a
// round's rotations touch disjoint rows and columns and run side by side. No host sync, no
// cuSOLVER: one launch for a whole batch (cuSOLVER's syevd took 12.9 ms for one layer's eight
// 128 x 128 matrices on the H200, 1.6 ms a matrix, plus a sync).
#include <cuda_runtime.h>

#include <string>

#include "kernels/common/cuda_launch.h"
#include "kernels/svdq/svdq_cuda.h"

namespace svdq::kernels {
namespace {

constexpr int kEigThreads = 512;

// Sums x over the block (every thread gets the total). `scratch`: kEigThreads / 32 floats.
__device__ float BlockSum(float x, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float t = 0;
  for (int w = 0; w < kEigThreads / 32; ++w) t += scratch[w];
  return t;
}

template <int N>
__global__ void __launch_bounds__(kEigThreads) SymEigKernel(const float* __restrict__ in, float* __restrict__ vectors,
                                                            float* __restrict__ values, int max_sweeps, float tol) {
  constexpr int S = N + 1;  // padded row stride: a column walk changes bank every row
  constexpr int H = N / 2;
  extern __shared__ float smem[];
  float* a = smem;        // [N][S] the matrix, rotated towards diagonal
  float* v = a + N * S;   // [N][S] the product of the rotations (columns: eigenvectors)
  float* cs = v + N * S;  // [H][2] this round's cosines and sines
  int* pq = reinterpret_cast<int*>(cs + 2 * H);  // [H][2] this round's pairs
  __shared__ float scratch[kEigThreads / 32];
  const size_t base = static_cast<size_t>(blockIdx.x) * N * N;
  for (int i = threadIdx.x; i < N * N; i += kEigThreads) {
    const int r = i / N, c = i % N;
    a[r * S + c] = in[base + i];
    v[r * S + c] = r == c ? 1.f : 0.f;
  }
  __syncthreads();
  // An off-diagonal entry below tol times the matrix's Frobenius norm, or below fp32's
  // resolution of its two diagonal entries, is zero already: its rotation is skipped, and the
  // sweeps stop after one that rotated nothing. (A fixed relative bound on the whole
  // off-diagonal mass is never met in fp32 at n = 128, and every extra sweep adds rounding.)
  float sq = 0;
  for (int i = threadIdx.x; i < N * N; i += kEigThreads) sq += a[(i / N) * S + i % N] * a[(i / N) * S + i % N];
  const float floor = tol * sqrtf(BlockSum(sq, scratch));
  __shared__ int rotated;
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    if (threadIdx.x == 0) rotated = 0;
    __syncthreads();
    for (int round = 0; round < N - 1; ++round) {
      float t = 0.f, dp = 0.f, dq = 0.f;  // this thread's pair: tangent and new diagonal
      int p = 0, q = 0;
      if (threadIdx.x < H) {
        const int k = threadIdx.x;
        // Circle method: N - 1 rotates around the fixed player N - 1.
        p = k == 0 ? round : (round + k) % (N - 1);
        q = k == 0 ? N - 1 : (round - k + N - 1) % (N - 1);
        const float app = a[p * S + p], aqq = a[q * S + q], apq = a[p * S + q];
        float c = 1.f, s = 0.f;
        t = 0.f;
        if (fabsf(apq) > floor && fabsf(apq) > 1e-7f * sqrtf(fabsf(app * aqq))) {
          // The rotation that zeroes a_pq (Golub and Van Loan, sym.schur2), the smaller angle.
          const float tau = (aqq - app) / (2.f * apq);
          t = (tau >= 0.f ? 1.f : -1.f) / (fabsf(tau) + sqrtf(1.f + tau * tau));
          c = rsqrtf(1.f + t * t);
          s = t * c;
          rotated = 1;
        }
        // What the rotation makes of the pair's 2 x 2 block, exactly (Rutishauser's form: the
        // diagonal moves by t a_pq), written over the row and column passes' rounding below.
        dp = app - t * apq;
        dq = aqq + t * apq;
        pq[2 * k] = p;
        pq[2 * k + 1] = q;
        cs[2 * k] = c;
        cs[2 * k + 1] = s;
      }
      __syncthreads();
      // Rows: A <- J^T A.
      for (int i = threadIdx.x; i < H * N; i += kEigThreads) {
        const int k = i / N, j = i % N, p = pq[2 * k], q = pq[2 * k + 1];
        const float c = cs[2 * k], s = cs[2 * k + 1];
        const float ap = a[p * S + j], aq = a[q * S + j];
        a[p * S + j] = c * ap - s * aq;
        a[q * S + j] = s * ap + c * aq;
      }
      __syncthreads();
      // Columns: A <- A J, V <- V J.
      for (int i = threadIdx.x; i < H * N; i += kEigThreads) {
        const int k = i % H, r = i / H, p = pq[2 * k], q = pq[2 * k + 1];
        const float c = cs[2 * k], s = cs[2 * k + 1];
        const float ap = a[r * S + p], aq = a[r * S + q];
        a[r * S + p] = c * ap - s * aq;
        a[r * S + q] = s * ap + c * aq;
        const float vp = v[r * S + p], vq = v[r * S + q];
        v[r * S + p] = c * vp - s * vq;
        v[r * S + q] = s * vp + c * vq;
      }
      __syncthreads();
      if (threadIdx.x < H && t != 0.f) {
        a[p * S + p] = dp;
        a[q * S + q] = dq;
        a[p * S + q] = 0.f;
        a[q * S + p] = 0.f;
      }
      __syncthreads();
    }
    const bool again = rotated != 0;
    __syncthreads();  // every thread has read the flag before thread 0 clears it for the next sweep
    if (!again) break;
  }
  // Column i of V goes to column rank(i) of the output, by descending eigenvalue (ties by
  // index), signed so that its largest component is positive.
  for (int i = threadIdx.x; i < N; i += kEigThreads) {
    const float di = a[i * S + i];
    int rank = 0;
    for (int j = 0; j < N; ++j) {
      const float dj = a[j * S + j];
      rank += (dj > di) || (dj == di && j < i);
    }
    float big = 0.f, norm = 0.f;
    for (int r = 0; r < N; ++r) {
      const float x = v[r * S + i];
      norm += x * x;
      if (fabsf(x) > fabsf(big)) big = x;
    }
    const float sign = (big < 0.f ? -1.f : 1.f) * rsqrtf(norm);  // unit length again, after the rounding of the sweeps
    for (int r = 0; r < N; ++r) vectors[base + static_cast<size_t>(r) * N + rank] = sign * v[r * S + i];
    if (values) values[static_cast<size_t>(blockIdx.x) * N + rank] = di;
  }
}

template <int N>
Status Launch(const SymEigParams& p, cudaStream_t stream) {
  const size_t smem = (2 * N * (N + 1) + 2 * N) * sizeof(float);
  auto kernel = SymEigKernel<N>;
  Status st = AllowSmem(reinterpret_cast<const void*>(kernel), smem);
  if (!st.ok()) return st;
  kernel<<<p.batch, kEigThreads, smem, stream>>>(p.matrices, p.vectors, p.values, p.max_sweeps, p.tolerance);
  return LaunchStatus("sym eig");
}

}  // namespace

Status SymEigDescending(const SymEigParams& p, cudaStream_t stream) {
  if (p.batch < 0 || !p.matrices || !p.vectors) return Status::Invalid("sym eig: missing matrices or output");
  if (p.batch == 0) return Status::Ok();
  if (p.max_sweeps < 1 || !(p.tolerance > 0.f)) return Status::Invalid("sym eig: max_sweeps >= 1 and tolerance > 0");
  switch (p.n) {
    case 64: return Launch<64>(p, stream);
    case 128: return Launch<128>(p, stream);
    default: return Status::Invalid("sym eig: n must be 64 or 128, got " + std::to_string(p.n));
  }
}

}  // namespace svdq::kernels
