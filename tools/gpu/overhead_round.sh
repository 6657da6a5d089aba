#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps): where the SVDq attention's fixed cost goes (issue 17's
# short lists). sparse_attention_bench at 8 x 32k / 128k, budget 2048, with its split sweep and
# the "fixed" launch (same grid, no page), then ncu of the sparse attention kernel with source-line
# stall sampling (ncu_source.csv: per CUDA line). Logs to $OUT.
set -o pipefail
export BUILD_TARGETS="${BUILD_TARGETS:-sparse_attention_bench}"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
SCHED="${SCHED:-4,2,2,2,2,2,1,1}"
timeout 200 build-gpu/bench/sparse_attention_bench --date "$(date +%F)" --contexts ${CONTEXTS:-32768,131072} --budgets 2048 --pages 64 --ranks 16 \
  --schedules "$SCHED;4,2,2,1,1,0,0,0" --sweep-pps 0,1,2,4,8,16 --json $OUT/sparse_overhead.json 2>&1 | tee $OUT/sparse_overhead.txt | grep -v "^$"
echo "bench done at ${SECONDS}s"
if [ "${NCU:-1}" = 1 ]; then
  timeout 240 ncu --clock-control none --kernel-name regex:AttentionWarpKernel --launch-skip 0 --launch-count 1 --set full \
    --import-source yes -o /tmp/sparse_attn -f \
    build-gpu/bench/sparse_attention_bench --contexts 32768 --budgets 2048 --pages 64 --ranks 16 --schedules "$SCHED" \
    --sweep-pps 8 --iters 3 --dense 0 > $OUT/ncu_run.txt 2>&1
  tail -5 $OUT/ncu_run.txt
  ncu -i /tmp/sparse_attn.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
  ncu -i /tmp/sparse_attn.ncu-rep --page source --csv --print-source cuda > $OUT/ncu_source.csv 2>&1 || \
    ncu -i /tmp/sparse_attn.ncu-rep --page source --csv > $OUT/ncu_source.csv 2>&1
  ls -la $OUT
fi
echo "done at ${SECONDS}s"
