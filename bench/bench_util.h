// Helpers shared by the CUDA benchmarks: timing by CUDA events, flag lists, fatal errors.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/common/status.h"

namespace svdq::bench {

// Median over 5 runs of the mean time of fn over `iters` calls (after 3 warm-ups), by CUDA
// events on the current stream, in microseconds.
inline double TimeUs(const std::function<void()>& fn, int iters) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> runs;
  for (int rep = 0; rep < 5; ++rep) {
    cudaEventRecord(a, at::cuda::getCurrentCUDAStream());
    for (int i = 0; i < iters; ++i) fn();
    cudaEventRecord(b, at::cuda::getCurrentCUDAStream());
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    runs.push_back(1000.0 * ms / iters);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

// GPU time of fn without host launch gaps, as a server's captured decode step runs it: `reps`
// calls of fn(stream) captured in one CUDA graph, the graph replayed (median of 5 runs of 10
// replays after 2 warm-ups), microseconds per call. 0 if the capture failed.
inline double GraphUs(const std::function<void(cudaStream_t)>& fn, int reps = 20) {
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  for (int i = 0; i < reps; ++i) fn(s);
  if (cudaStreamEndCapture(s, &graph) != cudaSuccess || cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
    cudaGetLastError();
    cudaStreamDestroy(s);
    return 0;
  }
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 2; ++i) cudaGraphLaunch(exec, s);
  std::vector<double> runs;
  for (int rep = 0; rep < 5; ++rep) {
    cudaEventRecord(a, s);
    for (int i = 0; i < 10; ++i) cudaGraphLaunch(exec, s);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    runs.push_back(1000.0 * ms / (10.0 * reps));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

// The same for ATen ops (they allocate: at::cuda::CUDAGraph gives the capture a private pool),
// on a side stream made current for the capture.
inline double AtenGraphUs(const std::function<void()>& fn, int reps = 5) {
  at::cuda::CUDAGraph graph;
  at::cuda::CUDAStream side = at::cuda::getStreamFromPool();
  {
    at::cuda::CUDAStreamGuard guard(side);
    fn();  // warm-up outside the capture
    side.synchronize();
    graph.capture_begin();
    for (int i = 0; i < reps; ++i) fn();
    graph.capture_end();
  }
  return TimeUs([&] { graph.replay(); }, 10) / reps;
}

inline std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

inline void Die(const kernels::Status& st) {
  if (st.ok()) return;
  std::cerr << st.message() << "\n";
  std::exit(1);
}

}  // namespace svdq::bench
