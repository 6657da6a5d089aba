#!/usr/bin/env bash
# On the GPU host, when device time is short: build the attention benchmark and kernel tests,
# the awkward-shape kernel tests, the benchmark (16-token pages), then the random-shape tests. Logs to $OUT.
set -o pipefail
source .gpu-deps/activate.sh > /dev/null || exit 1
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" -DProtobuf_PROTOC_EXECUTABLE="$PROTOC" -DSVDQ_PYTHON=python3 > /tmp/cmake-gpu.log 2>&1 || { tail -40 /tmp/cmake-gpu.log; exit 1; }
cmake --build build-gpu -j 16 --target svdq_gpu_tests svdq_attention_bench 2>&1 | tail -1 || exit 1
build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionAwkwardShapes' 2>&1 | tail -4 | tee $OUT/attention_tests_awkward.txt
build-gpu/bench/svdq_attention_bench --json $OUT/attention_h200.json --date "$(date +%F)" --iters 10 --pages 16 2>&1 | tee $OUT/attention_bench.txt | grep -v "ours, paged"
build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionMatchesReference' 2>&1 | tail -4 | tee $OUT/attention_tests.txt
