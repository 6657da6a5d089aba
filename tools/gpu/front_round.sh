#!/usr/bin/env bash
# On the GPU host: the OpenAI HTTP front against gRPC on synthetic Llama-3-8B (bf16 KV),
# serve_load.py through each front in turn at CONCURRENCY (default "16 64"), twice each,
# prompts of PROMPT_WORDS (230: ~1,400 tokens) and MAX_TOKENS (256) generated, --max-running 64.
# STAGE=tests first builds and runs every GPU-labelled test. Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
tail -3 $OUT/build.txt
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
if [ "${STAGE:-bench}" = tests ]; then
  timeout 420 ctest --test-dir build-gpu -L gpu --output-on-failure 2>&1 | tail -30 | tee $OUT/gpu_tests.txt
  exit 0
fi
build-gpu/server/svdq-server --model synthetic:llama-3-8b --device cuda --port 50990 --http-port 8990 --metrics-port 0 \
  --kv-cache-bytes 8G --max-running 64 > $OUT/server.log 2>&1 &
pid=$!
for _ in $(seq 900); do grep -q ready $OUT/server.log && break; sleep 0.2; done
for c in ${CONCURRENCY:-16 64}; do
  for round in 1 2; do
    for front in grpc http; do
      python3 bench/serve_load.py --front $front --addr 127.0.0.1:50990 --url http://127.0.0.1:8990 --concurrency "$c" \
        --prompt-words "${PROMPT_WORDS:-230}" --max-tokens "${MAX_TOKENS:-256}" \
        --label "synthetic:llama-3-8b bf16 KV, round $round" --json $OUT/serve_load_fronts.json 2>&1 | tail -1
    done
  done
done
kill $pid; wait $pid
