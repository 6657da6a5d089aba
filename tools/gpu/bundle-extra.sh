#!/usr/bin/env bash
# The Debian packages the GPU host needs beyond ../shared/gpu/bundle-deps.sh's list: cpp-httplib
# (the OpenAI HTTP front) and brotli, which it links. Run it here after bundle-deps.sh:
#   ../shared/gpu/bundle-deps.sh .gpu-deps && bash tools/gpu/bundle-extra.sh .gpu-deps && cp ../shared/gpu/activate.sh .gpu-deps/
# Without them the GPU host's configure stops at "Could not find HTTPLIB_INCLUDE_DIR".
set -euo pipefail
dir=${1:?usage: bundle-extra.sh DIR}
mkdir -p "$dir"
cd "$dir"
apt-get download libcpp-httplib-dev libcpp-httplib0.11 libbrotli-dev libbrotli1 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
ls ./*httplib* ./*brotli* | wc -l | xargs echo "extra packages in $dir:"
