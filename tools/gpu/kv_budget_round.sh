#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): synthetic Llama-3-8B through gRPC at 64 streams
# (256 tokens, ~1,400-token prompts, --max-running 64) with a KV budget that holds every stream
# (40G; serve_bench.sh's default 8G does not hold 64 x ~1,650 tokens in bf16 and barely in SVDq),
# bf16 and SVDq 2.0-bit keys, then SVDq at the 8G budget again. Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq-server"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
run() {  # $1 = modes, $2 = concurrency, $3 = budget
  MODEL=synthetic:llama-3-8b MODES="$1" CONCURRENCY="$2" PROMPT_WORDS=230 MAX_TOKENS=256 \
    EXTRA="--max-running 64 --kv-cache-bytes $3" bash tools/gpu/serve_bench.sh $OUT 2>&1 | grep -v "^$" | tail -3
  grep -h "KV cache" /tmp/serve_bench.log | head -2
}
run "bf16_bf16 svdq_bf16" "1 16 64" 40G
run "svdq_bf16" "64" 8G
echo "serving done at ${SECONDS}s"
