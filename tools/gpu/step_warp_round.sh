#!/usr/bin/env bash
# On the GPU host: the whole build, the decode step benchmark with SVDq keys at 2.0 and 1.25
# bits (the warp-stream attention kernel) beside bf16, the attention benchmark at 32 x 32k, and,
# with PATCH=file, the attention benchmark again with that patch applied (logs prefixed
# patched_). Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
source tools/gpu/build.sh || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
timeout 240 build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" \
  --modes bf16_bf16,svdq_bf16 --svdq-schedules "8,4,2,1,1,0,0,0;8,2,0,0,0,0,0,0" ${STEP_ARGS:-} 2>&1 | tee $OUT/decode_step_bench.txt
if [ -n "$PATCH" ]; then
  git apply "$PATCH" || exit 1
  cmake --build build-gpu -j 16 --target svdq_attention_bench 2>&1 | tail -1
  timeout 120 build-gpu/bench/svdq_attention_bench --batch 32 --pages 16 --values bf16 --json $OUT/patched_attention.json 2>&1 | tee $OUT/patched_attention_bench.txt
  git apply -R "$PATCH"
fi
