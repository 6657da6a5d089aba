#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): the sparse attention's chunk selection kernel
# against its CPU reference (sparse_select_gpu_tests) and its benchmark at issue 17's shape,
# landmark and bound scores. Logs and JSON to $OUT.
set -o pipefail
export BUILD_TARGETS="sparse_select_gpu_tests sparse_select_bench"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
timeout 120 build-gpu/tests/gpu/sparse_select_gpu_tests 2>&1 | tail -6 | tee $OUT/sparse_select_gpu_tests.txt
timeout 60 build-gpu/bench/sparse_select_bench --date "$(date +%F)" --json $OUT/sparse_select_h200.json | tee $OUT/sparse_select_bench.txt
timeout 60 build-gpu/bench/sparse_select_bench --batch 32 --chunks 512 --keep 29 | tee -a $OUT/sparse_select_bench.txt
timeout 60 build-gpu/bench/sparse_select_bench --score bound --date "$(date +%F)" --json $OUT/sparse_select_bound_h200.json | tee -a $OUT/sparse_select_bench.txt
