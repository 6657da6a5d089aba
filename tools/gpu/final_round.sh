#!/usr/bin/env bash
# On the GPU host, when device time is short: build the server, the decode step benchmark and
# the paged decode tests only; compute-sanitizer over the paged decode tests; the decode step
# benchmark; the serving benchmark (tools/gpu/serve_round.sh). Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq-server decode_step_bench paged_decode_gpu_tests"
source tools/gpu/build.sh || exit 1
timeout 120 compute-sanitizer --tool memcheck build-gpu/tests/gpu/paged_decode_gpu_tests 2>&1 | tail -4 | tee $OUT/paged_decode_memcheck.txt
build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" ${STEP_ARGS:-} 2>&1 | tee $OUT/decode_step_bench.txt
bash tools/gpu/serve_round.sh
