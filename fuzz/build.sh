#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/*_fuzz.cc) with clang++ -std=c++17 -g -O1
# -fsanitize=fuzzer,address,undefined into DIR (default build-fuzz/, git-ignored), incrementally,
# from the torch-free sources they test (fuzz/Makefile lists them). Needs clang with its
# libFuzzer runtime, protoc and the protobuf, gRPC and nlohmann-json headers, which
# deploy/install-deps.sh installs.
#   fuzz/build.sh [DIR]          build the harnesses
#   fuzz/build.sh DIR seeds      also rewrite the seed corpus fuzz/corpus/ (make_seeds.cc)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "${1:-$root/build-fuzz}")"
cd "$root"
make --no-print-directory -f fuzz/Makefile OUT="$out" -j"$(nproc)" all "${@:2}"
