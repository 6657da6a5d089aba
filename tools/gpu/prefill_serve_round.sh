#!/usr/bin/env bash
# On the GPU host, in one call: tools/gpu/prefill_round.sh (kernel and storage tests, the
# decode step benchmark with its prefill timing), then serving through gRPC on synthetic
# Llama-3-8B (tools/gpu/serve_round.sh: MODES, CONCURRENCY, MAX_TOKENS) if SERVE_DEADLINE_S
# (default 330) has not passed. Needs .whl carried for the Python client.
export EXTRA_TARGETS="svdq-server"
bash tools/gpu/prefill_round.sh
[ "$SECONDS" -lt "${SERVE_DEADLINE_S:-330}" ] || { echo "serving skipped: out of time at ${SECONDS}s"; exit 0; }
BUILD_TARGETS=svdq-server timeout $((590 - SECONDS)) bash tools/gpu/serve_round.sh
echo "serving done at ${SECONDS}s"
