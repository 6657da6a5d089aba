#!/usr/bin/env bash
# Installs everything svdq-serve needs on a fresh Debian 12 machine, or on Ubuntu 24.04
# (the Docker image's build stage runs this same script). Idempotent: a second run checks
# and returns in seconds.
#   - distribution packages (gRPC, protobuf, abseil, civetweb, curl, GoogleTest, clang with
#     libFuzzer for fuzz/, ...)
#   - prometheus-cpp from Debian 13's binary packages, unpacked into a private prefix
#   - a Python virtual environment at .venv with torch (its libtorch is what C++ links)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROM_PREFIX="${SVDQ_PROM_PREFIX:-/opt/svdq/prometheus-cpp}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  clang libclang-rt-dev
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libabsl-dev libre2-dev libc-ares-dev libssl-dev zlib1g-dev
  libcivetweb-dev libcivetweb1 civetweb libcurl4-openssl-dev
  nlohmann-json3-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev prometheus
  python3-venv curl ca-certificates
)

# Ubuntu 24.04: the same libraries under the same names; Debian's archive key for the
# prometheus-cpp download below. Prometheus itself (for the tests) is optional there.
. /etc/os-release
if [ "${ID:-}" = ubuntu ]; then
  APT_PACKAGES=("${APT_PACKAGES[@]/prometheus/}" debian-archive-keyring python3-pip)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  [ -n "$p" ] || continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# prometheus-cpp is not packaged for Debian 12. Debian 13 ships it; its binaries need
# nothing newer than Debian 12's libc and libstdc++ (GLIBCXX_3.4.29 at most). We do not
# install the .debs through dpkg: prometheus-cpp-push declares `libcurl4t64`, Debian 13's
# name for the libcurl.so.4 that Debian 12's libcurl4 provides, and forcing that through
# dpkg would leave apt broken. Instead a private apt configuration (sources and state
# under a temp folder, the system's apt untouched) downloads the four packages and we
# unpack them into $PROM_PREFIX. Their runtime needs (civetweb, libcurl, zlib) are the
# Debian 12 packages installed above.
if [ ! -f "$PROM_PREFIX/.complete" ]; then
  echo "install-deps: prometheus-cpp (Debian 13 packages) -> $PROM_PREFIX"
  work="$(mktemp -d)"; chmod 755 "$work"
  mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs"
  cat > "$work/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SRC
  touch "$work/status"
  aptopts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
           -o Dir::State::Lists="$work/lists" -o Dir::State::Status="$work/status"
           -o Dir::Cache::Archives="$work/archives" -o APT::Architecture=amd64
           -o Debug::NoLocking=1)
  apt-get "${aptopts[@]}" update -qq
  (cd "$work/debs" && apt-get "${aptopts[@]}" download \
     libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 prometheus-cpp-dev)
  $SUDO mkdir -p "$PROM_PREFIX"
  for deb in "$work"/debs/*.deb; do $SUDO dpkg-deb -x "$deb" "$PROM_PREFIX"; done
  $SUDO touch "$PROM_PREFIX/.complete"
  rm -rf "$work"
fi

# Python environment: torch (libtorch + its CMake config) and the reference/test tools.
VENV="$ROOT/.venv"
# openai and lm_eval[api] (its local-completions client) drive the HTTP front in the tests.
PY_PACKAGES=(torch transformers accelerate safetensors gguf tokenizers grpcio grpcio-tools grpcio-health-checking grpcio-reflection protobuf numpy pytest sentencepiece openai "lm_eval[api]")
if [ ! -f "$VENV/.complete" ]; then
  echo "install-deps: python venv at $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
  touch "$VENV/.complete"
else
  # An existing venv: install what was added to the list since it was made (one quick
  # Python call; a package with [extras] counts as missing while one of the extra's
  # requirements is).
  mapfile -t missing_py < <("$VENV/bin/python" - "${PY_PACKAGES[@]}" <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, distribution

def installed(name):
    try:
        distribution(name)
        return True
    except PackageNotFoundError:
        return False

for spec in sys.argv[1:]:
    m = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", spec)
    name, extras = m.group(1), [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
    ok = installed(name)
    if ok and extras:
        for req in distribution(name).requires or []:
            req_name, _, marker = req.partition(";")
            if any(re.search(r"extra\s*==\s*['\"]%s['\"]" % re.escape(e), marker) for e in extras):
                dep = re.match(r"\s*([A-Za-z0-9_.-]+)", req_name).group(1)
                ok = ok and installed(dep)
    if not ok:
        print(spec)
PY
  )
  if [ ${#missing_py[@]} -gt 0 ]; then
    echo "install-deps: python packages: ${missing_py[*]}"
    "$VENV/bin/pip" install -q "${missing_py[@]}"
  fi
fi
echo "install-deps: ok"
