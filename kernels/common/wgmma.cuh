// Warpgroup tensor-core primitives (sm_90a PTX, wgmma): one m64n128k16 product with A from
// registers and B from shared memory, its fences, and the shared-memory matrix descriptor.
// A warpgroup is 4 consecutive warps starting at a warp index divisible by 4; every wgmma
// instruction here is executed by all 128 threads together.
// Fragment layouts (PTX ISA, "Register Fragments and Shared Memory Matrix Layouts" of wgmma):
// warp w of the group holds rows 16 w .. 16 w + 15 of A and D, each in the layout of
// mma.m16n8k16 (kernels/common/mma.cuh): A as a0..a3, and D as 16 consecutive 8-column tiles
// d[i][0..3] = the m16n8 accumulator fragment of columns 8 i .. 8 i + 7.
// B (K x N, fp16) is read by the tensor cores from shared memory in the no-swizzle
// ("interleave") layout, K-major: 8 x 8 core matrices of 8 N rows of 16 contiguous bytes (8 K
// values), each core matrix 128 contiguous bytes; LBO is the byte distance between the two
// core matrices of a k16 step along K, SBO between neighbours along N.
// Shared memory that ordinary stores wrote and wgmma reads next needs FenceProxyAsync() in each
// writing thread before the barrier. Included by .cu files only.
#pragma once

#include <cstdint>

#include "kernels/common/mma.cuh"

namespace svdq::kernels::wgmma {

// The 64-bit matrix descriptor of a no-swizzle operand starting at `p` (16-byte aligned).
__device__ __forceinline__ uint64_t DescNoSwizzle(const void* p, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  uint64_t d = (mma::SmemAddr(p) & 0x3FFFFu) >> 4;  // bits 0-13: start address / 16
  d |= static_cast<uint64_t>((lbo_bytes & 0x3FFFFu) >> 4) << 16;  // bits 16-29
  d |= static_cast<uint64_t>((sbo_bytes & 0x3FFFFu) >> 4) << 32;  // bits 32-45
  return d;  // base offset 0 (bits 49-51), layout 0: no swizzle (bits 62-63)
}

// Generic-proxy shared-memory writes made visible to the async proxy (wgmma's B reads).
// Outside sm_90a code these compile to a trap: the dispatch never runs
// them there.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SVDQ_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define SVDQ_WGMMA_ASM(...) __trap()
#endif

__device__ __forceinline__ void FenceProxyAsync() { SVDQ_WGMMA_ASM("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Orders the registers that the next wgmma reads or accumulates into after the instructions
// that wrote them (needed before the first wgmma of a group).
__device__ __forceinline__ void Fence() { SVDQ_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void Commit() { SVDQ_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void Wait() {
  SVDQ_WGMMA_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving reads or writes of the accumulators across a wgmma fence or
// wait (they are in flight between the issue and the wait).
__device__ __forceinline__ void Pin(float (&d)[16][4]) {
#pragma unroll
  for (int i = 0; i < 16; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}

// d [64 x 128] += a [64 x 16] (this warp's 16 rows, registers) * B [16 x 128] (descriptor),
// fp16 inputs, fp32 accumulation. Asynchronous: Commit(), then Wait() before reading d.
__device__ __forceinline__ void MmaF16M64N128K16(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n"
      "}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]),
        "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
        "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
        "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]),
        "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
        "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
        "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]),
        "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
        "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]),
        "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
        "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]),
        "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),
        "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
        "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
#else
  __trap();  // built for a device without wgmma: the dispatch never launches this
#endif
}

#undef SVDQ_WGMMA_ASM

}  // namespace svdq::kernels::wgmma
