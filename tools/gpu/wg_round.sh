#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps): the warp-stream SVDq kernel's warpgroup (wgmma) rebuild.
# Its tests against the CPU reference, then svdq_attention_bench (warp = wgmma rebuild from 6
# k-steps, sync = the mma.sync rebuild) at the schedules of issue 14 and sparse_attention_bench
# at issue 17's shape. The attention tests take about 4 minutes (FILTER: a gtest filter;
# SCHEDULES: the dense bench's; PPS: the sparse bench's split sweep). Logs to $OUT.
set -o pipefail
export BUILD_TARGETS="${BUILD_TARGETS:-svdq_gpu_tests svdq_attention_bench sparse_attention_bench}"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
filter="${FILTER:-SvdqKernels.Attention*}"
timeout ${TEST_TIMEOUT:-300} build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter="$filter" > $OUT/tests.txt 2>&1 || { grep -E "^\[  |Failure|evaluates" $OUT/tests.txt | head -30; exit 1; }
grep -E "^\[  " $OUT/tests.txt
echo "tests done at ${SECONDS}s"
timeout 200 build-gpu/bench/svdq_attention_bench --date "$(date +%F)" --pages 64 --values bf16 \
  --schedules "${SCHEDULES:-8,2,0,0,0,0,0,0;4,2,2,1,1,0,0,0;8,4,2,1,1,0,0,0;4,2,2,2,2,2,1,1;8,4,2,2,2,2,1,1}" \
  --json $OUT/attention_h200_wg.json 2>&1 | tee $OUT/attention_bench.txt | grep -v "^$"
timeout 150 build-gpu/bench/sparse_attention_bench --date "$(date +%F)" --contexts 131072 --budgets 2048 --pages 64,16 --ranks 128,16 \
  --schedules "4,2,2,1,1,0,0,0;4,2,2,2,2,2,1,1" --sweep-pps "${PPS:-0,1,2,4,8,16}" --json $OUT/sparse_h200_wg.json 2>&1 | tee $OUT/sparse_attention_bench.txt | grep -v "^$"
echo "done at ${SECONDS}s"
