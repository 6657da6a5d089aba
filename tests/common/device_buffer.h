// A device copy of a host vector for the GPU kernel tests, with guard bytes on both sides so
// that a test can check its outputs were written inside their bounds.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace svdq::testing {

template <typename T>
class DeviceBuffer {
 public:
  static constexpr size_t kGuard = 256;
  explicit DeviceBuffer(const std::vector<T>& host) : n_(host.size()) {
    bytes_ = n_ * sizeof(T) + 2 * kGuard;
    EXPECT_EQ(cudaMalloc(&base_, bytes_), cudaSuccess);
    EXPECT_EQ(cudaMemset(base_, 0x5A, bytes_), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr(), host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(base_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* ptr() { return reinterpret_cast<T*>(static_cast<uint8_t*>(base_) + kGuard); }
  std::vector<T> Download() {
    std::vector<T> out(n_);
    EXPECT_EQ(cudaMemcpy(out.data(), ptr(), n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
  bool GuardsIntact() {
    std::vector<uint8_t> all(bytes_);
    EXPECT_EQ(cudaMemcpy(all.data(), base_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < kGuard; ++i)
      if (all[i] != 0x5A || all[bytes_ - 1 - i] != 0x5A) return false;
    return true;
  }

 private:
  void* base_ = nullptr;
  size_t n_, bytes_;
};

inline bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace svdq::testing
