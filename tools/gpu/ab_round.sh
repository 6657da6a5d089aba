#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .old-src): the SVDq attention kernels at this tree against
# an older commit's (.old-src/old.tgz, made by `git archive`), in one run: the dense bench at
# SCHEDULES for both, the sparse bench for this tree, and the attention kernel tests (FILTER)
# while the old tree builds. Logs to $OUT.
set -o pipefail
export BUILD_TARGETS="svdq_gpu_tests svdq_attention_bench sparse_attention_bench"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
SCHEDULES="${SCHEDULES:-4,2,2,1,1,0,0,0;4,2,2,2,2,2,1,1}"
timeout 150 build-gpu/bench/svdq_attention_bench --date "$(date +%F)" --pages 64 --values bf16 --schedules "$SCHEDULES" \
  --json $OUT/attention_new.json 2>&1 | tee $OUT/attention_new.txt | grep -v "^$\|block"
timeout 150 build-gpu/bench/sparse_attention_bench --date "$(date +%F)" --contexts 131072 --budgets 2048 --pages 64,16 --ranks 128,16 \
  --schedules "4,2,2,1,1,0,0,0;4,2,2,2,2,2,1,1" --sweep-pps "${PPS:-0,4,8,16}" --json $OUT/sparse_new.json 2>&1 | tee $OUT/sparse_new.txt | grep -v "^$"
echo "benches done at ${SECONDS}s"
rm -rf /tmp/old && mkdir -p /tmp/old && tar xzf .old-src/old.tgz -C /tmp/old
( cd /tmp/old && cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" -DProtobuf_PROTOC_EXECUTABLE="$PROTOC" -DSVDQ_PYTHON=python3 > /tmp/old-cmake.log 2>&1 && \
  cmake --build build-gpu -j 12 --target svdq_attention_bench > /tmp/old-build.log 2>&1; echo "old build rc=$?" ) > $OUT/old_build.txt 2>&1 &
builder=$!
timeout ${TEST_TIMEOUT:-280} build-gpu/tests/gpu/svdq_gpu_tests --gtest_filter="${FILTER:-SvdqKernels.Attention*}" > $OUT/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; grep -E "^\[  |Failure|evaluates" $OUT/tests.txt | head -30
wait $builder; cat $OUT/old_build.txt; tail -3 /tmp/old-build.log
timeout 150 /tmp/old/build-gpu/bench/svdq_attention_bench --date "$(date +%F)" --pages 64 --values bf16 --schedules "$SCHEDULES" \
  --json $OUT/attention_old.json 2>&1 | tee $OUT/attention_old.txt | grep -v "^$\|block"
echo "done at ${SECONDS}s"
