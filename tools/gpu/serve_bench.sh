#!/usr/bin/env bash
# On the GPU host, after `source tools/gpu/build.sh`: serving throughput per KV mode at
# concurrency 1 and 16 (bench/serve_load.py), results appended to $1/serve_load.json.
set -u
out="${1:-/tmp}"
# MODES="keys values" pairs, e.g. MODES="bf16_bf16 svdq_int4" (underscore between key and value mode).
# MODEL: --model value (default: the bundled model), e.g. MODEL=synthetic:llama-3-8b; PROMPT_WORDS (1500),
# CONCURRENCY ("1 16"), MAX_TOKENS (128), EXTRA (more server flags, e.g. "--cuda-graphs false").
for m in ${MODES:-bf16_bf16 svdq_bf16 int4_bf16 svdq_int4 bf16_int8}; do
  m="${m/_/ }"
  set -- $m
  build-gpu/server/svdq-server ${MODEL:+--model "$MODEL"} --device cuda --port 50990 --metrics-port 0 --key-mode "$1" --value-mode "$2" \
    --kv-cache-bytes 8G ${EXTRA:-} > /tmp/serve_bench.log 2>&1 &
  pid=$!
  for _ in $(seq 900); do grep -q ready /tmp/serve_bench.log && break; sleep 0.2; done
  for c in ${CONCURRENCY:-1 16}; do
    python3 bench/serve_load.py --addr 127.0.0.1:50990 --concurrency "$c" --prompt-words "${PROMPT_WORDS:-1500}" \
      --max-tokens "${MAX_TOKENS:-128}" --label "${MODEL:-default model} keys $1 values $2 ${EXTRA:-}" --json "$out/serve_load.json"
  done
  kill "$pid"; wait "$pid"
done
