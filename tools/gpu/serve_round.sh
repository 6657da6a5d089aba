#!/usr/bin/env bash
# On the GPU host, after a build: serving throughput of synthetic Llama-3-8B through gRPC per
# KV mode (MODES, default "bf16_bf16 svdq_bf16") at CONCURRENCY (default "1 16 64"), prompts of
# PROMPT_WORDS (default 230: ~1,400 tokens with the synthetic models' byte-level tokenizer) and
# MAX_TOKENS (default 256) generated, --max-running 64. Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
source tools/gpu/build.sh > /dev/null || exit 1
MODEL=synthetic:llama-3-8b MODES="${MODES:-bf16_bf16 svdq_bf16}" CONCURRENCY="${CONCURRENCY:-1 16 64}" \
  PROMPT_WORDS="${PROMPT_WORDS:-230}" MAX_TOKENS="${MAX_TOKENS:-256}" EXTRA="${EXTRA:---max-running 64}" bash tools/gpu/serve_bench.sh $OUT 2>&1 | tail -12
cp /tmp/serve_bench.log $OUT/ 2>/dev/null
python3 -c "
import json
for l in open('$OUT/serve_load.json'):
    r = json.loads(l); print(r['label'], r['concurrency'], round(r['gen_tokens_per_s'], 1), 'tok/s overall,', round(r['steady_decode_tokens_per_s'], 1), 'steady decode')
"
