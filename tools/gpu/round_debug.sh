#!/usr/bin/env bash
# On the GPU host, one call: the kernel, storage and graph tests, the attention benchmark with a
# split sweep (planner check), and the decode step benchmark in several KV modes. Logs to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
BUILD_TARGETS="paged_decode_gpu_tests svdq_gpu_tests svdq_storage_tests svdq_decode_graph_tests svdq_attention_bench decode_step_bench" \
  source tools/gpu/build.sh || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
for t in "svdq_storage_tests --gtest_filter=KvStorageCuda.*" "svdq_decode_graph_tests" ; do
  set -- $t; build-gpu/tests/unit/$1 $2 > $OUT/$1.txt 2>&1; echo "$1 rc $?"; grep -B2 -A8 "Failure" $OUT/$1.txt | head -40
done
build-gpu/tests/gpu/paged_decode_gpu_tests > $OUT/paged_decode_tests.txt 2>&1; echo "paged rc $?"; tail -3 $OUT/paged_decode_tests.txt
build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionValuesInPlace*:SvdqKernels.AttentionAwkward*:SvdqKernels.Encode*' > $OUT/svdq_tests.txt 2>&1; echo "svdq rc $?"; tail -3 $OUT/svdq_tests.txt
timeout 200 build-gpu/bench/svdq_attention_bench --pages 16 --values bf16,fp8,int4 --sweep-splits 1,2,3,4,8,16,33 \
  --json $OUT/attention_h200.json --date "$(date +%F)" > $OUT/attention_bench.txt 2>&1
awk '/x [0-9]+k/ {print $1,$2,$3,$5,$6,$7,$8,$10,$(NF-2),$NF}' $OUT/attention_bench.txt | head -130
timeout 200 build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" \
  --modes bf16_bf16,svdq_bf16,fp8_fp8,bf16_int4,svdq_int4 > $OUT/decode_step_bench.txt 2>&1
tail -18 $OUT/decode_step_bench.txt
