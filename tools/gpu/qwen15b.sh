#!/usr/bin/env bash
# Sourced by the GPU rounds over Qwen2.5-Coder-1.5B (eval_round.sh, sparse_ppl_round.sh): builds
# BUILD_TARGETS (default: the server) into build-gpu, then joins the GGUF from the chunks stashed
# by tools/gpu/stash.sh (checking its hash) unless it is there already, and sets $model.
set -o pipefail
export PYTHONUNBUFFERED=1
export BUILD_TARGETS="${BUILD_TARGETS:-svdq-server}"
source tools/gpu/build.sh > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
echo "built at ${SECONDS}s"
model=.models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
if ! [ -f $model ]; then
  bash tools/gpu/stash.sh join $model cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 || exit 1
fi
