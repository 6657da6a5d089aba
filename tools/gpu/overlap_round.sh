#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): overlapped decode steps. STAGE=tests (default): the
# decode-graph tests (a step's ids read on the device), the overlap end-to-end test (pytest, CUDA
# graphs on a synthetic model of SmolLM2's shape, bf16 and SVDq keys), then serving through gRPC
# at SmolLM2's shape, one stream, overlap on and off. STAGE=llama: synthetic Llama-3-8B through
# gRPC at 1 / 16 / 64 streams, bf16 and SVDq 2.0-bit keys, overlap on and off.
# 256 tokens per stream, ~1,400-token prompts, --max-running 64. Logs and JSON to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="svdq_decode_graph_tests svdq-server"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
serve() {  # MODEL, MODES, CONCURRENCY; $1 = overlap true | false
  MODEL=$MODEL MODES="$MODES" CONCURRENCY="$CONCURRENCY" PROMPT_WORDS=230 MAX_TOKENS=256 \
    EXTRA="--max-running 64 --overlap-steps $1" bash tools/gpu/serve_bench.sh $OUT 2>&1 | grep -v "^$" | tail -4
}
if [ "${STAGE:-tests}" = tests ]; then
  timeout 150 build-gpu/tests/unit/svdq_decode_graph_tests 2>&1 | tail -4 | tee $OUT/decode_graph_tests.txt
  SVDQ_BUILD_DIR=build-gpu SVDQ_TEST_CUDA=1 timeout 240 python3 -m pytest -q -p no:cacheprovider \
    tests/integration/test_overlap_steps.py -k gpu 2>&1 | tail -15 | tee $OUT/overlap_pytest.txt
  echo "tests done at ${SECONDS}s"
  for ov in true false true; do
    MODEL=synthetic:smollm2-135m MODES="bf16_bf16 svdq_bf16" CONCURRENCY=1 serve $ov
  done
else
  for ov in true false; do
    MODEL=synthetic:llama-3-8b MODES="bf16_bf16 svdq_bf16" CONCURRENCY="1 16 64" serve $ov
  done
fi
echo "serving done at ${SECONDS}s"
python3 -c "
import json
for l in open('$OUT/serve_load.json'):
    r = json.loads(l); print(r['label'], r['concurrency'], round(r['gen_tokens_per_s'], 1), 'tok/s overall,', round(r['steady_decode_tokens_per_s'] or 0, 1), 'steady decode')
"
