// Host-side helpers for kernel launchers: dynamic shared memory opt-in and launch errors.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "kernels/common/status.h"

namespace svdq::kernels {

// Allows `kernel` to use `bytes` of dynamic shared memory (Hopper: up to 227 KiB a block).
inline Status AllowSmem(const void* kernel, size_t bytes) {
  if (bytes > 227 * 1024) return Status::Invalid("needs " + std::to_string(bytes) + " bytes of shared memory; at most 227 KiB");
  if (bytes > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (e != cudaSuccess) return Status::Invalid(std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(e));
  }
  return Status::Ok();
}

inline Status LaunchStatus(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return Status::Invalid(std::string(what) + ": " + cudaGetErrorString(e));
  return Status::Ok();
}

}  // namespace svdq::kernels
