#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): the first device check of rank-R landmarks
# (--sparse-landmark-rank, 2026-12-05, written without a GPU). Builds the kernel, storage and
# end-to-end test targets; runs the landmark kernel and per-sequence selection against their
# references (sparse_select_gpu_tests), the storage's CUDA tests (KvStorageCuda.*), the sparse
# attention kernel's test, the sparse end-to-end tests (their configurations include rank 16),
# then the step's time at R = 16 and 128, pages of 16 and 64 (sparse_attention_bench). Logs to $OUT.
#   bash tools/gpu/rank_round.sh
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq-server sparse_select_gpu_tests svdq_storage_tests svdq_gpu_tests sparse_attention_bench ${EXTRA_BUILD_TARGETS:-}"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
pick() { grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |Failure|evaluates|Which is" | head -40; }
timeout 120 build-gpu/tests/gpu/sparse_select_gpu_tests 2>&1 | pick | tee $OUT/gpu_tests.txt
timeout 120 build-gpu/tests/unit/svdq_storage_tests --gtest_filter="KvStorageCuda.*" 2>&1 | pick | tee -a $OUT/gpu_tests.txt
timeout 240 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter="${ATTN_FILTER:-SvdqKernels.AttentionWarpStreams:SvdqKernels.AttentionSparsePages}" 2>&1 | pick | tee -a $OUT/gpu_tests.txt
echo "kernel tests done at ${SECONDS}s"
SVDQ_BUILD_DIR=build-gpu SVDQ_TEST_CUDA=1 timeout 240 python3 -m pytest -p no:cacheprovider -q -k gpu \
  tests/integration/test_sparse_attention.py 2>&1 | tail -20 | tee $OUT/sparse_e2e.txt
echo "e2e done at ${SECONDS}s"
timeout 120 build-gpu/bench/sparse_attention_bench --contexts 131072 --budgets 2048 --pages 64,16 --ranks ${RANKS:-128,16,12,8} \
  --schedules 4,2,2,1,1,0,0,0 --date "$(date +%F)" --json $OUT/sparse_rank_h200.json 2>&1 | tail -30 | tee $OUT/sparse_bench.txt
echo "done at ${SECONDS}s"
