#!/usr/bin/env bash
# A file too large for one device call (64 MiB) travels in chunks, one or a few per call, while
# the machine stays warm: split it here into .xfer-src/ (ignored), name the chunks of each call in
# `carry`, and run `bash tools/gpu/stash.sh` there: it moves the carried chunks into
# build-gpu/xfer/, which survives between calls. Once every chunk is there,
#   bash tools/gpu/stash.sh join OUT SHA256
# concatenates them in name order into OUT and checks the hash.
#   Here:  head -c 31457280 F > .xfer-src/m00; tail -c +31457281 F | split -b 62914560 -d -a 2 --numeric-suffixes=1 - .xfer-src/m
set -euo pipefail
mkdir -p build-gpu/xfer
if compgen -G ".xfer-src/*" > /dev/null; then mv .xfer-src/* build-gpu/xfer/; fi
ls build-gpu/xfer | tr '\n' ' '; echo "($(du -sm build-gpu/xfer | cut -f1) MiB stashed)"
if [ "${1:-}" = join ]; then
  out="${2:?join OUT SHA256}" sha="${3:?join OUT SHA256}"
  mkdir -p "$(dirname "$out")"
  cat build-gpu/xfer/* > "$out"
  echo "$sha  $out" | sha256sum -c
fi
