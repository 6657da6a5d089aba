#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps, .whl and the model's last chunk): long-context retrieval on
# Qwen2.5-Coder-1.5B through the server's gRPC API, per KV mode (bench/eval_quality.py).
# The 1.1 GB GGUF cannot travel in one call: split it into .xfer-src/ and stash the chunks call by
# call first (tools/gpu/stash.sh); this script joins them and checks the hash. The prompts' sizes
# come from bench/results/eval_sizes_qwen2.5_coder_1.5b.json (made here on the CPU with
# --size-only), which saves the sizing bisection on the GPU host.
#   MODES="a;b" LENGTHS=4096,... CASES=13 LIMIT=540 bash tools/gpu/eval_round.sh
source tools/gpu/qwen15b.sh
svdq="svdq_bf16@4,2,2,1,1,0,0,0"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | awk '{print tolower($2)}')  # h100, h200
modes="${MODES:-bf16_bf16;svdq_bf16@4,2,2,2,2,2,1,1;svdq_bf16@4,2,2,2,2,2,1,1|--sparse-budget 2048 --block-size 16;$svdq}"
SVDQ_BUILD_DIR=build-gpu timeout "${LIMIT:-540}" python3 bench/eval_quality.py --model $model --device cuda \
  --lengths "${LENGTHS:-4096,8192,16384,32000}" --cases "${CASES:-13}" --concurrency 16 --max-tokens 32 \
  --kv-cache-bytes 40G --server-flags "--block-size 64 --max-batch-tokens 8192" --modes "$modes" \
  --sizes bench/results/eval_sizes_qwen2.5_coder_1.5b.json \
  --json $OUT/eval_quality_${gpu:-gpu}${TAG:+_$TAG}.json 2>&1 | tee $OUT/eval.txt | grep -v "^$"
echo "eval done at ${SECONDS}s"
