#!/usr/bin/env bash
# On the GPU host, in one call (carry .gpu-deps and .whl): the warp-stream SVDq kernel tests,
# the attention benchmark over bf16 values (Llama-3-8B shapes, 16-token pages), an ncu summary
# of the bf16 paged decode kernel at 32 x 32k, the decode step benchmark with --profile-decode
# (kernels and host time per step), then serving through gRPC (tools/gpu/serve_round.sh) with
# the time left. Logs and JSON to $OUT.
set -o pipefail
export BUILD_TARGETS="svdq_gpu_tests svdq_attention_bench decode_step_bench svdq-server"
source tools/gpu/build.sh > /dev/null 2>&1 || { echo "build failed"; exit 1; }
echo "built at ${SECONDS}s"
timeout 150 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionWarp*:SvdqKernels.AttentionAwkward*' \
  > $OUT/tests_full.txt 2>&1
grep -v "^\[ RUN\|^\[       OK" $OUT/tests_full.txt | grep -B4 -A8 "Failure\|FAILED\|PASSED" | head -40
echo "tests done at ${SECONDS}s"
timeout 120 build-gpu/bench/svdq_attention_bench --json $OUT/attention_h200.json --date "$(date +%F)" --pages 16 \
  --values bf16 > $OUT/attention_bench.txt 2>&1
grep "32 x 32k\|8 x 128k" $OUT/attention_bench.txt
timeout 60 ncu --clock-control none --kernel-name regex:PagedDecodeMmaKernel --launch-skip 3 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  build-gpu/bench/svdq_attention_bench --batch 32 --pages 16 --values bf16 --schedules "8,2,0,0,0,0,0,0" --iters 4 \
  2>&1 | grep -v "^svdq_attention_bench\|^bf16-eq\|x 32k\|x 128k\|^batch" > $OUT/ncu_paged_decode_32x32k.txt
grep -E "Duration|DRAM Throughput|Achieved Occupancy|Issue Slots Busy|Registers Per" $OUT/ncu_paged_decode_32x32k.txt
echo "bench done at ${SECONDS}s"
timeout 90 build-gpu/bench/decode_step_bench --streams 1,64 --steps 8 --modes bf16_bf16,svdq_bf16 --profile-decode \
  --date "$(date +%F)" 2>&1 | grep -v Assertion > $OUT/decode_profile.txt
grep -E "^bf16|^svdq|per step" $OUT/decode_profile.txt
echo "decode profile done at ${SECONDS}s"
BUILD_TARGETS=svdq-server timeout $((590 - SECONDS)) bash tools/gpu/serve_round.sh
echo "serving done at ${SECONDS}s"
