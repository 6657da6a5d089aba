#!/usr/bin/env bash
# On the GPU host, when device time is short: validate a change to the SVDq write path. Builds
# the codec's kernel tests, the decode graph and storage tests and the decode step benchmark
# only; runs the encode kernel tests, the graph and storage tests, then the decode step
# benchmark in SVDq mode (STEP_ARGS: more arguments). Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq_gpu_tests svdq_decode_graph_tests svdq_storage_tests decode_step_bench"
source tools/gpu/build.sh || exit 1
(build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.Encode*'; build-gpu/tests/unit/svdq_decode_graph_tests;
 build-gpu/tests/unit/svdq_storage_tests --gtest_filter='KvStorageCuda.*') 2>&1 | grep -E "^\[  (PASSED|FAILED) |^\[  FAILED|Failure|error" | tee $OUT/validate_tests.txt
build-gpu/bench/decode_step_bench --steps 8 --modes svdq_bf16 --json $OUT/decode_step_svdq.json --date "$(date +%F)" ${STEP_ARGS:-} 2>&1 | tee $OUT/decode_step_svdq.txt
