#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): prefill_profile_round.sh with the page codec's kernel
# tests (SvdqKernels.Decode*, Encode*) and the storage's CUDA tests, then the 20k-token prefill of
# decode_step_bench (bf16 against SVDq, with the profiler over later steps); then issue 17's end-
# to-end run at a KV budget that holds fewer bf16 streams than SVDq ones (sparse_e2e_round.sh with
# KV_BUDGET, RANK, --max-batch-tokens 8192 for both modes), in the time left of a 600 s call.
set -o pipefail
export PYTHONUNBUFFERED=1
EXTRA_TARGETS=svdq-server TEST_FILTER="SvdqKernels.Decode*:SvdqKernels.Encode*" SELECT_FILTER="${SELECT_FILTER:-*}" BENCH_TIMEOUT=150 \
  bash tools/gpu/prefill_profile_round.sh || exit 1
source tools/gpu/build.sh > /dev/null 2>&1 || exit 1  # the environment (built already)
left=$((585 - SECONDS))
SKIP_BUILD=1 KV_BUDGET="${KV_BUDGET:-24G}" RANK="${RANK:-8}" SUBS="${SUBS:-1}" MAX_TOKENS="${MAX_TOKENS:-2048}" SPARSE_BUDGET=2048 \
  EXTRA_FLAGS="--max-batch-tokens 8192" timeout "$left" bash tools/gpu/sparse_e2e_round.sh 2>&1 | tee $OUT/e2e.txt
cp /tmp/serve_bench.log $OUT/ 2>/dev/null
echo "all done at ${SECONDS}s"
