#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): the attention's setup overlapped with the kernel
# before it (SvdqAttentionParams::overlap_setup, programmatic dependent launch). Builds the server,
# the kernel tests and the benches; runs the sparse attention kernel test and the KV write tests,
# the server's sparse end-to-end tests (the server launches attention that way), the sparse bench
# (step with and without the overlap) and decode_step_bench. Logs to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq-server decode_step_bench sparse_attention_bench svdq_gpu_tests"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
timeout 60 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionSparsePages:*KvWrite*' > $OUT/tests.txt 2>&1
echo "kernel tests rc=$?"; grep -E "^\[  |Failure|evaluates" $OUT/tests.txt | head -20
SVDQ_BUILD_DIR=build-gpu SVDQ_TEST_CUDA=1 timeout 100 python3 -m pytest -p no:cacheprovider -q -x -k gpu \
  tests/integration/test_sparse_attention.py 2>&1 | tail -5 | tee $OUT/sparse_e2e.txt
echo "e2e done at ${SECONDS}s"
timeout 100 build-gpu/bench/sparse_attention_bench --date "$(date +%F)" --contexts 131072 --budgets 2048 --pages 64 --ranks 128,16 \
  --schedules "4,2,2,1,1,0,0,0;4,2,2,2,2,2,1,1" --sweep-pps 0,8,16 --json $OUT/sparse_overlap.json 2>&1 | tee $OUT/sparse_overlap.txt | grep -v "^$"
echo "sparse bench done at ${SECONDS}s"
timeout 120 build-gpu/bench/decode_step_bench --json $OUT/decode_step_overlap.json --date "$(date +%F)" \
  --streams 1,16,64 --modes bf16_bf16,svdq_bf16 2>&1 | grep -v "^prefill basis" | tee $OUT/decode_step_overlap.txt
echo "done at ${SECONDS}s"
