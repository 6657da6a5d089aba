#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): the selection's integer-mma scores. The selection
# tests against the CPU reference, the sparse bench (served step, R = 128 and 16), then, if time
# allows, the server's sparse end-to-end tests. Logs to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="sparse_select_gpu_tests sparse_attention_bench svdq-server"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
timeout 60 build-gpu/tests/gpu/sparse_select_gpu_tests > $OUT/select_tests.txt 2>&1
echo "selection tests rc=$?"; grep -E "^\[  |Failure|Expected|Which" $OUT/select_tests.txt | head -20
timeout 60 build-gpu/bench/sparse_attention_bench --date "$(date +%F)" --contexts 131072 --budgets 2048 --pages 64,16 --ranks 128,16 \
  --schedules "4,2,2,1,1,0,0,0" --sweep-pps 0,16 --json $OUT/sparse_select_mma.json 2>&1 | tee $OUT/sparse_select_mma.txt | grep -v "^$"
echo "bench done at ${SECONDS}s"
if [ "$SECONDS" -lt 200 ]; then
  SVDQ_BUILD_DIR=build-gpu SVDQ_TEST_CUDA=1 timeout 60 python3 -m pytest -p no:cacheprovider -q -x -k gpu \
    tests/integration/test_sparse_attention.py 2>&1 | tail -5 | tee $OUT/sparse_e2e.txt
fi
echo "done at ${SECONDS}s"
