set -o pipefail
export BUILD_TARGETS="svdq_storage_tests"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
timeout 120 build-gpu/tests/unit/svdq_storage_tests --gtest_filter='KvStorageCuda.PageLandmarks*' 2>&1 | tail -30
