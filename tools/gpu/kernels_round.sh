#!/usr/bin/env bash
# On the GPU host: build the attention kernels' tests and benchmark only; run the bf16 paged
# decode and SVDq kernel tests, compute-sanitizer over the paged decode cases, and the attention
# benchmark. With PATCH=file, then apply that patch, rebuild, and run the SVDq tests and the
# benchmark again (logs prefixed patched_), and take the patch back off. Logs and JSON to $OUT.
# usage: bash tools/gpu/kernels_round.sh [bench args...]
set -o pipefail
args=("$@")
set --  # activate.sh reads its own arguments
source .gpu-deps/activate.sh || exit 1
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" -DProtobuf_PROTOC_EXECUTABLE="$PROTOC" -DSVDQ_PYTHON=python3 > /tmp/cmake-gpu.log 2>&1 || { tail -40 /tmp/cmake-gpu.log; exit 1; }
targets="svdq_gpu_tests paged_decode_gpu_tests svdq_attention_bench"
cmake --build build-gpu -j 16 --target $targets 2>&1 | tail -3 || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
build-gpu/tests/gpu/paged_decode_gpu_tests 2>&1 | tail -15 | tee $OUT/paged_decode_tests.txt
build-gpu/tests/gpu/svdq_gpu_tests 2>&1 | tail -6 | tee $OUT/svdq_tests.txt
timeout 120 compute-sanitizer --tool memcheck build-gpu/tests/gpu/paged_decode_gpu_tests \
  --gtest_filter='PagedDecode.GqaRatios:PagedDecode.LastSplit*:PagedDecode.OneTokenPages:PagedDecode.SmolShapes*' 2>&1 | tail -4 | tee $OUT/paged_decode_memcheck.txt
build-gpu/bench/svdq_attention_bench --json $OUT/attention_h200.json --date "$(date +%F)" "${args[@]}" 2>&1 | tee $OUT/attention_bench.txt
if [ -n "$PATCH" ]; then
  git apply "$PATCH" || patch -p1 < "$PATCH" || exit 1
  cmake --build build-gpu -j 16 --target svdq_gpu_tests svdq_attention_bench 2>&1 | tail -1
  build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.Attention*' 2>&1 | tail -6 | tee $OUT/patched_svdq_tests.txt
  build-gpu/bench/svdq_attention_bench --json $OUT/patched_attention_h200.json --date "$(date +%F)" "${args[@]}" 2>&1 | tee $OUT/patched_attention_bench.txt | grep -v "ours\|SDPA"
  git apply -R "$PATCH" || patch -p1 -R < "$PATCH"
fi
