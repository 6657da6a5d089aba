#!/usr/bin/env bash
# On the GPU host, in two calls that fit the 10-minute limit (the build folder survives while
# the machine stays warm):
#   STAGE=kernels: the whole build; every GPU-labelled test but the end-to-end one; memcheck
#                  over the quantized paged decode and in-place SVDq value cases; the attention
#                  benchmark (ATTN_ARGS, default 16-token pages, values bf16,fp8,int4).
#   STAGE=step:    the decode step benchmark in every kind of KV mode (STEP_ARGS), and an ncu
#                  summary of the attention kernels at 8 x 32k (NCU=1).
# Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
stage=${STAGE:-kernels}
source tools/gpu/build.sh || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
if [ "$stage" = kernels ]; then
  ctest --test-dir build-gpu -L gpu -E gpu_server_e2e --output-on-failure 2>&1 | tail -40 | tee $OUT/gpu_tests.txt
  timeout 150 compute-sanitizer --tool memcheck build-gpu/tests/gpu/paged_decode_gpu_tests \
    --gtest_filter='PagedDecode.QuantizedValuesAndFp8Keys:PagedDecode.SequencesLongerThanThePlan' 2>&1 | tail -4 | tee $OUT/paged_decode_memcheck.txt
  timeout 150 compute-sanitizer --tool memcheck build-gpu/tests/gpu/svdq_gpu_tests \
    --gtest_filter='SvdqKernels.AttentionValuesInPlaceEveryFormat' 2>&1 | tail -4 | tee $OUT/svdq_memcheck.txt
  build-gpu/bench/svdq_attention_bench --json $OUT/attention_h200.json --date "$(date +%F)" \
    ${ATTN_ARGS:---pages 16 --values bf16,fp8,int4} 2>&1 | tee $OUT/attention_bench.txt
else
  build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" \
    ${STEP_ARGS:---modes bf16_bf16,svdq_bf16,bf16_fp8,fp8_fp8,svdq_int4} 2>&1 | tee $OUT/decode_step_bench.txt
  if [ -n "$NCU" ]; then  # one launch of each kernel at 8 x 32k, 16-token pages, 2.0-bit SVDq
    for kv in "PagedDecodeMma bf16" "PagedDecodeMma int4" "AttentionMma bf16" "AttentionMma int4"; do
      set -- $kv
      timeout 120 ncu --kernel-name regex:"$1" --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
        build-gpu/bench/svdq_attention_bench --batch 8 --pages 16 --values "$2" --schedules "8,4,2,1,1,0,0,0" --iters 2 \
        2>&1 | grep -v "^svdq_attention_bench\|^bf16-eq\|x 32k\|x 128k\|^batch" > "$OUT/ncu_${1}_${2}_8x32k.txt"
    done
  fi
fi
