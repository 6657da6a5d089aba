#!/usr/bin/env bash
# On the GPU host: build the decode step benchmark and the SVDq kernel tests; run the
# eigensolver test, then decode_step_bench (prefill and decode, bf16 and SVDq keys; STEP_ARGS,
# STEP_ENV), time allowing.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="decode_step_bench svdq_gpu_tests svdq_storage_tests svdq_decode_graph_tests ${EXTRA_TARGETS:-}"
source tools/gpu/build.sh || exit 1
echo "built at ${SECONDS}s"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
timeout 120 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter="${TEST_FILTER:-SvdqKernels.SymEig*}" 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
for t in svdq_storage_tests svdq_decode_graph_tests; do
  timeout 120 build-gpu/tests/unit/$t 2>&1 | grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |FAILED|Failure" | tail -30 | tee -a $OUT/gpu_tests.txt
done
env ${STEP_ENV:-} timeout 400 build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --prefill-json $OUT/prefill_h200.json \
  --date "$(date +%F)" ${STEP_ARGS:---modes bf16_bf16,svdq_bf16 --svdq-schedules "8,4,2,1,1,0,0,0;8,2,0,0,0,0,0,0"} \
  2>&1 | grep -v "Assertion" | head -150 | tee $OUT/decode_step_bench.txt
echo "bench done at ${SECONDS}s"
