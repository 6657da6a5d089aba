#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): the storage's CUDA tests and the page codec's kernel
# tests (SvdqKernels.Decode*, Encode*), the 20k-token prefill of
# decode_step_bench (bf16 against SVDq, with the profiler over later steps), then issue 17's end-
# to-end run at a KV budget that holds fewer bf16 streams than SVDq ones (sparse_e2e_round.sh with
# KV_BUDGET, RANK, --max-batch-tokens 8192 for both modes), in the time left of a 600 s call.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq-server svdq_storage_tests svdq_gpu_tests decode_step_bench"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
timeout 60 build-gpu/tests/unit/svdq_storage_tests --gtest_filter="KvStorageCuda.*" 2>&1 \
  | grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |Failure|evaluates|Which is" | head -20 | tee $OUT/gpu_tests.txt
timeout 60 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter="SvdqKernels.Decode*:SvdqKernels.Encode*" 2>&1 \
  | grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |Failure|evaluates|Which is" | head -20 | tee -a $OUT/gpu_tests.txt
timeout 150 build-gpu/bench/decode_step_bench --prefill-json $OUT/prefill_h200.json --json $OUT/decode_step_h200.json \
  --date "$(date +%F)" --model synthetic:llama-3.1-8b --streams 1 --context 20480 --steps 8 --modes bf16_bf16,svdq_bf16 \
  --svdq-schedules 4,2,2,1,1,0,0,0 --profile-prefill --profile-from 6 2>&1 | grep -v "Assertion" | head -120 | tee $OUT/decode_step_bench.txt
echo "prefill bench done at ${SECONDS}s"
left=$((585 - SECONDS))
SKIP_BUILD=1 KV_BUDGET="${KV_BUDGET:-24G}" RANK="${RANK:-8}" MAX_TOKENS="${MAX_TOKENS:-1024}" SPARSE_BUDGET=2048 \
  EXTRA_FLAGS="--max-batch-tokens 8192" timeout "$left" bash tools/gpu/sparse_e2e_round.sh 2>&1 | tee $OUT/e2e.txt
cp /tmp/serve_bench.log $OUT/ 2>/dev/null
echo "all done at ${SECONDS}s"
