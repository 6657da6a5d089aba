#!/usr/bin/env bash
# On the GPU host: the whole build, every GPU-labelled test, the attention benchmark and the
# serving benchmark (synthetic Llama-3-8B; MODES, CONCURRENCY as serve_bench.sh). Logs to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
source tools/gpu/build.sh || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu_state.txt
ctest --test-dir build-gpu -L gpu --output-on-failure 2>&1 | tail -25 | tee $OUT/gpu_tests.txt
build-gpu/bench/svdq_attention_bench --json $OUT/attention_h200.json --date "$(date +%F)" --iters 10 ${BENCH_ARGS:-} 2>&1 | tee $OUT/attention_bench.txt
if [ -n "$SERVE" ]; then
  MODEL=synthetic:llama-3-8b MODES="${MODES:-bf16_bf16 svdq_bf16}" CONCURRENCY="${CONCURRENCY:-1 16 64}" PROMPT_WORDS=250 MAX_TOKENS=64 \
    bash tools/gpu/serve_bench.sh $OUT 2>&1 | tail -5
  python3 -c "
import json
for l in open('$OUT/serve_load.json'):
    r = json.loads(l); print(r['label'], r['concurrency'], round(r['gen_tokens_per_s'], 1), 'tok/s')
"
fi
