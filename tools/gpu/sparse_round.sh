#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): the sparse attention kernels against their CPU
# references (page selection, page landmarks, the SVDq kernel over selected pages, and the dense
# SVDq kernel's tests again), then sparse_attention_bench at issue 17's shapes. Logs and JSON to $OUT.
set -o pipefail
export BUILD_TARGETS="${BUILD_TARGETS:-sparse_select_gpu_tests svdq_gpu_tests sparse_attention_bench svdq_attention_bench}"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
timeout 120 build-gpu/tests/gpu/sparse_select_gpu_tests 2>&1 | tail -8 | tee $OUT/sparse_select_gpu_tests.txt
timeout 300 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.Attention*' 2>&1 | grep -E "OK|FAILED|Failure|PASSED|error" | head -30 | tee $OUT/svdq_gpu_tests.txt
echo "tests done at ${SECONDS}s"
timeout 200 build-gpu/bench/sparse_attention_bench --date "$(date +%F)" --json $OUT/sparse_h200.json 2>&1 | tee $OUT/sparse_attention_bench.txt
