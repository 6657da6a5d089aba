#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): sparse attention (issue 17). The kernels against
# their CPU references (page selection, page landmarks, the SVDq kernel over selected pages and the
# dense SVDq kernel's tests again), the storage's landmarks on CUDA, the server end to end
# (tests/integration/test_sparse_attention.py, label gpu), then sparse_attention_bench at issue
# 17's shapes. STAGE=kernels skips the server; STAGE=select runs only the selection's tests and
# the bench (CONTEXTS, default 131072,32768). Logs and JSON to $OUT.
set -o pipefail
targets="sparse_select_gpu_tests svdq_gpu_tests sparse_attention_bench"
[ "${STAGE:-all}" = select ] && targets="sparse_select_gpu_tests sparse_attention_bench"
[ "${STAGE:-all}" = all ] && targets="$targets svdq_storage_tests svdq-server"
export BUILD_TARGETS="${BUILD_TARGETS:-$targets}"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
timeout 120 build-gpu/tests/gpu/sparse_select_gpu_tests 2>&1 | grep -E "^\[  |Failure|error|Expected|Which|actual" | head -40 | tee $OUT/sparse_select_gpu_tests.txt
[ "${STAGE:-all}" = select ] || timeout 300 build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter='SvdqKernels.AttentionSparse*:SvdqKernels.AttentionWarp*' 2>&1 | grep -E "^\[  |Failure|error|Expected|Which" | head -40 | tee $OUT/svdq_gpu_tests.txt
if [ "${STAGE:-all}" = all ]; then
  timeout 300 build-gpu/tests/unit/svdq_storage_tests --gtest_filter='KvStorageCuda.*' 2>&1 | grep -E "^\[  |Failure|error" | head -30 | tee $OUT/storage_tests.txt
  echo "unit tests done at ${SECONDS}s"
  SVDQ_BUILD_DIR=build-gpu SVDQ_TEST_CUDA=1 timeout 400 python3 -m pytest -p no:cacheprovider -q -x -k gpu \
    tests/integration/test_sparse_attention.py 2>&1 | tail -30 | tee $OUT/pytest_sparse.txt
fi
echo "tests done at ${SECONDS}s"
timeout 200 build-gpu/bench/sparse_attention_bench --date "$(date +%F)" --contexts "${CONTEXTS:-131072,32768}" --json $OUT/sparse_h200.json 2>&1 | tee $OUT/sparse_attention_bench.txt
