#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): issue 17's end-to-end check. Synthetic Llama-3-8B at
# 128k context (synthetic:llama-3.1-8b) through gRPC, long prompts and long generations at one KV
# budget, bf16 keys against SVDq 1.25-bit keys with sparse attention (and dense SVDq); prompts of
# PROMPT_WORDS words, MAX_TOKENS generated, CONCURRENCY streams, landmarks of RANK coordinates (0: the
# mean key) and SUBS landmarks a page, EXTRA_FLAGS for both modes. Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="${BUILD_TARGETS:-svdq-server}"
if [ -z "${SKIP_BUILD:-}" ]; then  # SKIP_BUILD: built and sourced by the caller
  source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
  echo "built at ${SECONDS}s"
fi
budget="${KV_BUDGET:-40G}"
common="--max-running 16 --kv-cache-bytes $budget --block-size 64 ${EXTRA_FLAGS:-}"
svdq="--svdq-schedule 4,2,2,1,1,0,0,0"
for run in "bf16_bf16|" "svdq_bf16|$svdq --sparse-budget ${SPARSE_BUDGET:-2048} --sparse-landmark-rank ${RANK:-0} --sparse-landmark-subs ${SUBS:-1}" ${DENSE_SVDQ:+"svdq_bf16|$svdq"}; do
  modes="${run%%|*}" extra="${run#*|}"
  MODEL=synthetic:llama-3.1-8b MODES="$modes" CONCURRENCY="${CONCURRENCY:-16}" PROMPT_WORDS="${PROMPT_WORDS:-3300}" \
    MAX_TOKENS="${MAX_TOKENS:-2048}" EXTRA="$common $extra" bash tools/gpu/serve_bench.sh $OUT 2>&1 | grep -v "^$" | tail -4
  grep -h "KV cache\|sparse\|error" /tmp/serve_bench.log | head -4
  echo "run done at ${SECONDS}s"
done
