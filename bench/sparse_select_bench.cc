// The chunk selection kernel (kernels/sparse/sparse_select.cu) at issue 17's shape: Llama-3-8B
// attention (32 query / 8 KV heads, head dim 128), 128k tokens in 2,048 chunks of 64, a 2,048-
// token budget (the sink, 29 chunks, the recent window), R = 16 landmark coordinates. Prints the
// time per call (CUDA events over many calls) beside the time its bytes take at the copy
// bandwidth measured in the same run, and writes JSON.
//   sparse_select_bench [--batch 8] [--chunks 2048] [--keep 29] [--rank 16] [--score landmark|bound]
//                       [--json FILE] [--date D]
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/sparse/sparse_select.h"
#include "tests/common/sparse_select_case.h"

namespace {

template <typename T>
T* Upload(const std::vector<T>& v) {
  T* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), v.size() * sizeof(T));
  cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

float TimeMs(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  int batch = 8, chunks = 2048, keep = 29, rank = 16, iters = 200;
  bool bound = false;
  std::string json, date = "unknown";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--batch") batch = std::stoi(v);
    else if (a == "--chunks") chunks = std::stoi(v);
    else if (a == "--keep") keep = std::stoi(v);
    else if (a == "--rank") rank = std::stoi(v);
    else if (a == "--json") json = v;
    else if (a == "--score") bound = v == "bound";
    else if (a == "--date") date = v;
    else { std::fprintf(stderr, "unknown flag %s\n", a.c_str()); return 2; }
  }
  const int H = 32, KV = 8, D = 128;
  auto c = svdq::testing::MakeSparseCase(batch, H, KV, D, bound ? 0 : rank, chunks, keep,
                                         std::vector<int32_t>(batch, chunks), 0, 1u, bound);
  svdq::kernels::SparseSelectParams p = c.Params();
  p.q = Upload(c.q), p.basis = Upload(c.basis), p.coords = Upload(c.coords), p.scales = Upload(c.scales);
  p.chunks = Upload(c.chunks);
  p.selected = Upload(c.selected), p.count = Upload(c.count);
  // Copy bandwidth in this run: 1 GiB device to device.
  const size_t big = size_t(1) << 30;
  void *x = nullptr, *y = nullptr;
  cudaMalloc(&x, big);
  cudaMalloc(&y, big);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemcpy(y, x, big, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e0);
  for (int i = 0; i < 5; ++i) cudaMemcpy(y, x, big, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  const double copy_tbps = 2.0 * 5 * big / (TimeMs(e0, e1) * 1e-3) / 1e12;
  svdq::kernels::Status st = svdq::kernels::SparseSelect(p, nullptr);
  if (!st.ok()) { std::fprintf(stderr, "%s\n", st.message().c_str()); return 1; }
  cudaEventRecord(e0);
  for (int i = 0; i < iters; ++i) svdq::kernels::SparseSelect(p, nullptr);
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  if (cudaGetLastError() != cudaSuccess) { std::fprintf(stderr, "launch failed\n"); return 1; }
  const double us = TimeMs(e0, e1) * 1e3 / iters;
  const int width = bound ? 2 * D : rank;
  const double bytes = double(batch) * KV * chunks * (width + 2) + double(batch) * H * D * 4 + (bound ? 0.0 : double(KV) * D * rank * 4);
  const double floor_us = bytes / (copy_tbps * 1e12) * 1e6;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s, copy %.2f TB/s\n", prop.name, copy_tbps);
  std::printf("sparse select (%s): batch %d, %d KV heads, %d chunks, keep %d + sink, %d bytes a chunk: %.1f us a call; "
              "metadata %.2f MB, %.2f us at the copy bandwidth (%.0f%% of it)\n",
              bound ? "bound" : "landmark", batch, KV, chunks, keep, width + 2, us, bytes / 1e6, floor_us, 100.0 * floor_us / us);
  if (!json.empty()) {
    nlohmann::json j = {{"device", prop.name}, {"date", date}, {"batch", batch}, {"kv_heads", KV}, {"chunks", chunks},
                        {"keep", keep}, {"rank", rank}, {"score", bound ? "bound" : "landmark"}, {"us", us}, {"bytes", bytes}, {"copy_tbps", copy_tbps},
                        {"floor_us", floor_us}};
    std::ofstream(json) << j.dump(1) << "\n";
  }
  return 0;
}
