#!/usr/bin/env bash
# On the GPU host: the whole build, the decode step benchmark with SVDq keys at 2.0 and 1.25
# bits (the warp-stream attention kernel) beside bf16, and, with PATCHES="a.patch b.patch", the
# attention benchmark at 32 x 32k with each patch applied in turn (logs named after the patch).
# Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
source tools/gpu/build.sh || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
timeout 240 build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" \
  --modes bf16_bf16,svdq_bf16 --svdq-schedules "8,4,2,1,1,0,0,0;8,2,0,0,0,0,0,0" ${STEP_ARGS:-} 2>&1 | tee $OUT/decode_step_bench.txt
for patch in ${PATCHES:-}; do
  name=$(basename "$patch" .patch)
  [ "$SECONDS" -lt "${PATCH_DEADLINE_S:-430}" ] || { echo "skipped $name: out of time"; continue; }
  git apply "$patch" || exit 1
  cmake --build build-gpu -j 16 --target svdq_attention_bench 2>&1 | tail -1
  echo "== $name"
  timeout 120 build-gpu/bench/svdq_attention_bench --batch 32 --pages 16 --values bf16 2>&1 | grep -v "ours\|SDPA" | tee $OUT/${name}_attention_bench.txt
  git apply -R "$patch"
done
