#!/usr/bin/env bash
# Runs each fuzz harness for SECONDS on its corpus: the checked-in seeds (fuzz/corpus/NAME/,
# read only) and what earlier runs found (DIR/corpus/NAME/, where new inputs go). Fails
# (nonzero exit) if any harness finds a crash, a sanitizer report, a failed check, a leak, an
# input slower than 10 s or one that takes more than 2 GB; the input is saved under
# DIR/crashes/NAME/ and the log's tail printed. Build first with fuzz/build.sh.
#   fuzz/run.sh SECONDS [DIR]    DIR: the build folder (default build-fuzz/)
# FUZZ_TARGETS (default: all seven) picks harnesses by name; FUZZ_FLAGS adds libFuzzer flags,
# e.g. FUZZ_FLAGS=-runs=1000000 stops each at 10^6 executions if that comes before SECONDS.
set -euo pipefail
secs="${1:?usage: fuzz/run.sh SECONDS [BUILD_DIR]}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "${2:-$root/build-fuzz}")"
targets="${FUZZ_TARGETS:-gguf safetensors tokenizer_json tokenizer_encode chat_format request openai}"
failed=()
for name in $targets; do
  bin="$out/${name}_fuzz"
  [ -x "$bin" ] || { echo "fuzz: $bin is missing; run fuzz/build.sh first" >&2; exit 2; }
  mkdir -p "$out/corpus/$name" "$out/crashes/$name"
  log="$out/$name.log"
  # shellcheck disable=SC2086  # FUZZ_FLAGS is a list of flags
  if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$out/crashes/$name/" ${FUZZ_FLAGS:-} "$out/corpus/$name" "$root/fuzz/corpus/$name" \
       >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    corpus=$(find "$out/corpus/$name" "$root/fuzz/corpus/$name" -type f | wc -l)
    echo "fuzz $name: ok, ${runs:-?} executions (${rate:-?}/s), corpus $corpus files"
  else
    echo "fuzz $name: FAILED (log $log, input under $out/crashes/$name/)"
    grep -v '^#' "$log" | tail -n 40  # the report, without libFuzzer's progress lines
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failures in ${failed[*]}" >&2
  exit 1
fi
