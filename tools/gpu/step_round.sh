#!/usr/bin/env bash
# On the GPU host: the whole build, every GPU-labelled test but the end-to-end one (it needs
# the bundled model), and the decode step benchmark (STEP_ARGS: more arguments for it).
# Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
source tools/gpu/build.sh || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
ctest --test-dir build-gpu -L gpu -E gpu_server_e2e --output-on-failure 2>&1 | tail -30 | tee $OUT/gpu_tests.txt
build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" ${STEP_ARGS:-} 2>&1 | tee $OUT/decode_step_bench.txt
