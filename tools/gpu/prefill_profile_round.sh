#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps): build the decode step bench and the kernel and storage tests;
# run the tests not yet run on the device (TEST_FILTER, SELECT_FILTER; the storage's CUDA tests,
# whose page decode and encode take basis_index since 2026-12-04), then decode_step_bench's prefill
# of long prompts with the profiler over later steps (STEP_ARGS). The prompt-chunk tests (later
# chunks through the flash op since 2026-12-05) run first, always. Logs to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="decode_step_bench svdq_gpu_tests sparse_select_gpu_tests svdq_storage_tests svdq_prefill_chunk_tests ${EXTRA_TARGETS:-}"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
timeout 120 build-gpu/tests/unit/svdq_prefill_chunk_tests 2>&1 \
  | grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |Failure|evaluates|Which is" | head -30 | tee $OUT/prefill_chunk_tests.txt
if [ -n "${TEST_FILTER:-SvdqKernels.AttentionSparsePages}" ]; then
  timeout 200 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter="${TEST_FILTER:-SvdqKernels.AttentionSparsePages}" 2>&1 \
    | grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |Failure|evaluates|Which is" | head -30 | tee $OUT/gpu_tests.txt
  timeout 120 build-gpu/tests/gpu/sparse_select_gpu_tests --gtest_filter="${SELECT_FILTER:-*}" 2>&1 \
    | grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |Failure|evaluates|Which is" | head -30 | tee -a $OUT/gpu_tests.txt
  timeout 120 build-gpu/tests/unit/svdq_storage_tests --gtest_filter="KvStorageCuda.*" 2>&1 \
    | grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |Failure|evaluates|Which is" | head -30 | tee -a $OUT/gpu_tests.txt
  echo "tests done at ${SECONDS}s"
fi
timeout ${BENCH_TIMEOUT:-300} build-gpu/bench/decode_step_bench --prefill-json $OUT/prefill_h200.json --json $OUT/decode_step_h200.json \
  --date "$(date +%F)" ${STEP_ARGS:---model synthetic:llama-3.1-8b --streams 1 --context 20480 --steps 8 --modes bf16_bf16,svdq_bf16 --svdq-schedules 4,2,2,1,1,0,0,0 --profile-prefill --profile-from 6} \
  2>&1 | grep -v "Assertion" | head -250 | tee $OUT/decode_step_bench.txt
echo "bench done at ${SECONDS}s"
