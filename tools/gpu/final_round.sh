#!/usr/bin/env bash
# On the GPU host, when device time is short: build the server, the decode step benchmark and
# the tests of the decode step's parts only; run those tests, compute-sanitizer over the paged
# decode tests; the decode step benchmark; the serving benchmark (tools/gpu/serve_round.sh).
# Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq-server decode_step_bench paged_decode_gpu_tests svdq_storage_tests svdq_decode_graph_tests svdq_fused_ops_tests"
source tools/gpu/build.sh || exit 1
(build-gpu/tests/unit/svdq_fused_ops_tests; build-gpu/tests/unit/svdq_decode_graph_tests;
 build-gpu/tests/unit/svdq_storage_tests --gtest_filter='KvStorageCuda.*') 2>&1 | grep -E "^\[  (PASSED|FAILED) |Failure|error" | tee $OUT/step_parts_tests.txt
build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" ${STEP_ARGS:-} 2>&1 | tee $OUT/decode_step_bench.txt
bash tools/gpu/serve_round.sh
timeout 90 compute-sanitizer --tool memcheck build-gpu/tests/gpu/paged_decode_gpu_tests \
  --gtest_filter='PagedDecode.GqaRatios:PagedDecode.LastSplit*:PagedDecode.OneTokenPages:PagedDecode.SmolShapes*' 2>&1 | tail -4 | tee $OUT/paged_decode_memcheck.txt
