#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps, .whl and the model's last chunk; the GGUF stashed first as for
# eval_round.sh): issue 17's perplexity target at long context. Each window of Debian's license
# texts (joined) is prefilled to FIRST tokens in one piece, then the next tokens are scored by
# decode steps over the stored cache (prompt_logprobs_chunk 1, prompt_logprobs_first_chunk FIRST),
# dense SVDq against sparse attention (bench/kv_fidelity.py; its last column is each mode against
# the first, the dense one); landmarks over the head dim and of rank 16 (--sparse-landmark-rank).
#   FIRST=16000 CHARS=84000 WINDOWS=2 MODES="a;b" LIMIT=540 bash tools/gpu/sparse_ppl_round.sh
source tools/gpu/qwen15b.sh
s="svdq_bf16@4,2,2,2,2,2,1,1"
modes="${MODES:-$s|--block-size 16;$s|--block-size 16 --sparse-budget 2048;$s|--block-size 16 --sparse-budget 2048 --sparse-landmark-rank 16;$s|--block-size 64 --sparse-budget 2048}"
SVDQ_BUILD_DIR=build-gpu timeout "${LIMIT:-540}" python3 bench/kv_fidelity.py --model $model --device cuda \
  --chunk 1 --first-chunk "${FIRST:-16000}" --chars "${CHARS:-84000}" --windows "${WINDOWS:-2}" --concat \
  --texts "$(ls /usr/share/common-licenses/* | grep -v -e GFDL$ -e GPL$ -e LGPL$ | tr '\n' ',' | sed 's/,$//')" \
  --modes "$modes" --kv-cache-bytes 8G --timeout 500 --json $OUT/sparse_perplexity_h200${TAG:+_$TAG}.json 2>&1 | tee $OUT/sparse_ppl.txt
echo "done at ${SECONDS}s"
