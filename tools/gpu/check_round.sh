#!/usr/bin/env bash
# On the GPU host (carry .gpu-deps and .whl): one call that runs rank_round.sh's checks and then,
# in the time left under the 600 s call limit, prefill_profile_round.sh's decode_step_bench (the
# 20k-token prefill with basis_index, bf16 against SVDq). Logs to $OUT.
#   bash tools/gpu/check_round.sh
set -o pipefail
export EXTRA_BUILD_TARGETS="decode_step_bench"
bash tools/gpu/rank_round.sh
left=$((560 - SECONDS))
if [ "$left" -gt 60 ]; then
  timeout "$left" build-gpu/bench/decode_step_bench --prefill-json $OUT/prefill_h200.json --json $OUT/decode_step_h200.json \
    --date "$(date +%F)" --model synthetic:llama-3.1-8b --streams 1 --context 20480 --steps 8 --modes bf16_bf16,svdq_bf16 --svdq-schedules 4,2,2,1,1,0,0,0 \
    --profile-prefill --profile-from 6 2>&1 | grep -v "Assertion" | head -250 | tee $OUT/decode_step_bench.txt
fi
echo "all done at ${SECONDS}s"
