#!/usr/bin/env bash
# On the GPU host: build the attention and decode step benchmarks and the SVDq kernel tests;
# run the warp-stream kernel's tests, the attention benchmark (ATTN_ARGS), the decode step
# benchmark with SVDq keys at 2.0 and 1.25 bits beside bf16 (STEP_ARGS), and, with
# PATCHES="a.patch ...", each patch in turn: its kernel tests and the attention benchmark at
# 32 x 32k (logs named after the patch; skipped past PATCH_DEADLINE_S). Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq_attention_bench decode_step_bench svdq_gpu_tests"
source tools/gpu/build.sh || exit 1
echo "built at ${SECONDS}s"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
timeout 120 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionWarp*' 2>&1 | tail -3 | tee $OUT/svdq_warp_tests.txt
timeout 180 build-gpu/bench/svdq_attention_bench --json $OUT/attention_h200.json --date "$(date +%F)" \
  ${ATTN_ARGS:---pages 16,64 --values bf16,int4} 2>&1 | tee $OUT/attention_bench.txt
timeout 240 build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" \
  --modes bf16_bf16,svdq_bf16 --svdq-schedules "8,4,2,1,1,0,0,0;8,2,0,0,0,0,0,0" ${STEP_ARGS:-} 2>&1 | tee $OUT/decode_step_bench.txt
for patch in ${PATCHES:-}; do
  name=$(basename "$patch" .patch)
  [ "$SECONDS" -lt "${PATCH_DEADLINE_S:-430}" ] || { echo "skipped $name: out of time"; continue; }
  git apply "$patch" || exit 1
  cmake --build build-gpu -j 16 --target svdq_attention_bench svdq_gpu_tests 2>&1 | tail -1
  echo "== $name"
  timeout 120 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionWarp*' 2>&1 | tail -3 | tee $OUT/${name}_tests.txt
  timeout 120 build-gpu/bench/svdq_attention_bench --batch 32 --pages 16 --values bf16 2>&1 | grep -v "ours\|SDPA" | tee $OUT/${name}_attention_bench.txt
  git apply -R "$patch"
done
