#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): the first device check of sub-chunk landmarks
# (--sparse-landmark-subs, 2026-12-05) and of the flash prompt chunks, in one build. Runs the
# prompt-chunk tests (later chunks through the flash op), the selection and landmark kernels against
# their references (sparse_select_gpu_tests, S = 1 / 2 / 3 / 4), the storage's CUDA tests, the step's
# time with sub-chunk landmarks at 128k (sparse_attention_bench --ranks RxS), then the 20k-token
# prefill of decode_step_bench (bf16 against SVDq, the profiler over later steps). Logs to $OUT.
#   bash tools/gpu/subchunk_round.sh
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq-server decode_step_bench svdq_gpu_tests sparse_select_gpu_tests svdq_storage_tests svdq_prefill_chunk_tests sparse_attention_bench"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
pick() { grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |Failure|evaluates|Which is" | head -40; }
timeout 120 build-gpu/tests/unit/svdq_prefill_chunk_tests 2>&1 | pick | tee $OUT/prefill_chunk_tests.txt
timeout 120 build-gpu/tests/gpu/sparse_select_gpu_tests 2>&1 | pick | tee $OUT/gpu_tests.txt
timeout 120 build-gpu/tests/unit/svdq_storage_tests --gtest_filter="KvStorageCuda.*" 2>&1 | pick | tee -a $OUT/gpu_tests.txt
echo "tests done at ${SECONDS}s"
timeout 120 build-gpu/bench/sparse_attention_bench --contexts 131072 --budgets 2048 --pages 64 \
  --ranks ${RANKS:-8,4x4,3x4,2x4} --schedules 4,2,2,1,1,0,0,0 --date "$(date +%F)" \
  --json $OUT/sparse_subchunk_h200.json 2>&1 | tail -30 | tee $OUT/sparse_bench.txt
echo "sparse bench done at ${SECONDS}s"
timeout ${BENCH_TIMEOUT:-150} build-gpu/bench/decode_step_bench --prefill-json $OUT/prefill_h200.json --json $OUT/decode_step_h200.json \
  --date "$(date +%F)" --model synthetic:llama-3.1-8b --streams 1 --context 20480 --steps 8 --modes bf16_bf16,svdq_bf16 \
  --svdq-schedules 4,2,2,1,1,0,0,0 --profile-prefill --profile-from 6 \
  2>&1 | grep -v "Assertion" | head -250 | tee $OUT/decode_step_bench.txt
echo "prefill bench done at ${SECONDS}s"
left=$((585 - SECONDS))
SVDQ_BUILD_DIR=build-gpu SVDQ_TEST_CUDA=1 timeout "$left" python3 -m pytest -p no:cacheprovider -q -k gpu \
  tests/integration/test_sparse_attention.py 2>&1 | tail -20 | tee $OUT/sparse_e2e.txt
echo "all done at ${SECONDS}s"
