#!/usr/bin/env bash
# On the GPU host: build the attention kernels' test and benchmark only, run the kernel tests
# (and compute-sanitizer over the awkward shapes), then the attention benchmark. Logs and the
# JSON go to $OUT.  usage: bash tools/gpu/attention_round.sh [bench args...]
set -o pipefail
args=("$@")
set --  # activate.sh reads its own arguments
source .gpu-deps/activate.sh || exit 1
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" -DProtobuf_PROTOC_EXECUTABLE="$PROTOC" -DSVDQ_PYTHON=python3 > /tmp/cmake-gpu.log 2>&1 || { tail -40 /tmp/cmake-gpu.log; exit 1; }
cmake --build build-gpu -j 16 --target svdq_gpu_tests svdq_attention_bench 2>&1 | tail -3 || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.Attention*' 2>&1 | tail -15 | tee $OUT/attention_tests.txt
if [ -z "$SKIP_SANITIZER" ]; then
  timeout 180 compute-sanitizer --tool memcheck build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionAwkwardShapes' 2>&1 | tail -8 | tee $OUT/attention_memcheck.txt
fi
build-gpu/bench/svdq_attention_bench --json $OUT/attention_h200.json --date "$(date +%F)" "${args[@]}" 2>&1 | tee $OUT/attention_bench.txt
if [ -n "$NCU" ]; then
  ncu --clock-control none --kernel-name regex:AttentionMma --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section Occupancy --section SchedulerStats \
    build-gpu/bench/svdq_attention_bench --batch 32 --pages 16 --schedules "8,4,2,1,1,0,0,0" --iters 1 > $OUT/ncu_attention_mma_32x32k.txt 2>&1
  grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Issue Slots Busy|Registers Per|Achieved Occupancy|Stall|Warp Cycles Per Issued|No Eligible|Shared Memory" $OUT/ncu_attention_mma_32x32k.txt | head -40
fi
