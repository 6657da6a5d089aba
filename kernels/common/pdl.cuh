// Programmatic dependent launch (Hopper, sm_90): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the kernel before it in the
// stream still runs, once every block of that one has called DependentsMayLaunch (or exited);
// it must call WaitForPrimary before it reads anything that kernel writes (the wait returns when
// that kernel has finished and its memory is visible). Both are no-ops elsewhere and without the
// attribute.
#pragma once

namespace svdq::kernels::pdl {

__device__ __forceinline__ void WaitForPrimary() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void DependentsMayLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

}  // namespace svdq::kernels::pdl
