#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): build the server and run the sparse attention end-to-end
# tests (tests/integration/test_sparse_attention.py, label gpu). Logs to $OUT.
set -o pipefail
export BUILD_TARGETS="svdq-server"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
SVDQ_BUILD_DIR=build-gpu SVDQ_TEST_CUDA=1 timeout 200 python3 -m pytest -p no:cacheprovider -q -x -k gpu \
  tests/integration/test_sparse_attention.py 2>&1 | tail -30
