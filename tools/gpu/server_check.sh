#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): build the server and the decode-step bench, run the
# sparse attention end-to-end tests (tests/integration/test_sparse_attention.py, label gpu), then
# decode_step_bench in bf16 and SVDq modes (STEP_ARGS). Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq-server decode_step_bench"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
SVDQ_BUILD_DIR=build-gpu SVDQ_TEST_CUDA=1 timeout 200 python3 -m pytest -p no:cacheprovider -q -x -k gpu \
  tests/integration/test_sparse_attention.py 2>&1 | tail -15 | tee $OUT/sparse_e2e.txt
echo "e2e tests done at ${SECONDS}s"
timeout 240 build-gpu/bench/decode_step_bench --json $OUT/decode_step_h200.json --date "$(date +%F)" \
  ${STEP_ARGS:---streams 1,16,64 --modes bf16_bf16,svdq_bf16} 2>&1 | tee $OUT/decode_step_bench.txt
echo "done at ${SECONDS}s"
