#!/usr/bin/env bash
# On the GPU host: build the SVDq kernel tests and the attention benchmark, run the SVDq
# attention tests (the warp-stream kernel first), the benchmark over bf16 values (BENCH_ARGS),
# and an ncu summary of both SVDq kernels at 32 x 32k (NCU=0 skips it). Logs and JSON to $OUT.
# usage: bash tools/gpu/warp_round.sh
set -o pipefail
set --  # activate.sh reads its own arguments
source .gpu-deps/activate.sh || exit 1
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" -DProtobuf_PROTOC_EXECUTABLE="$PROTOC" -DSVDQ_PYTHON=python3 > /tmp/cmake-gpu.log 2>&1 || { tail -40 /tmp/cmake-gpu.log; exit 1; }
cmake --build build-gpu -j 16 --target svdq_gpu_tests svdq_attention_bench 2>&1 | tail -3 || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
timeout 240 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionWarp*:SvdqKernels.Attention*' 2>&1 | grep -v "^\[ RUN\|^\[       OK" | tail -40 | tee $OUT/svdq_tests.txt
timeout 300 build-gpu/bench/svdq_attention_bench --json $OUT/attention_h200.json --date "$(date +%F)" ${BENCH_ARGS:---pages 16 --values bf16} 2>&1 | tee $OUT/attention_bench.txt
if [ "${NCU:-1}" = 1 ]; then
  for k in AttentionWarpKernel AttentionMmaKernel; do
    timeout 120 ncu --kernel-name regex:"$k" --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
      --section ComputeWorkloadAnalysis --section InstructionStats --section MemoryWorkloadAnalysis \
      build-gpu/bench/svdq_attention_bench --batch 32 --pages 16 --values bf16 --schedules "${NCU_SCHED:-8,2,0,0,0,0,0,0}" --iters 4 \
      2>&1 | grep -v "^svdq_attention_bench\|^bf16-eq\|x 32k\|x 128k\|^batch" > "$OUT/ncu_${k}_32x32k.txt"
  done
fi
