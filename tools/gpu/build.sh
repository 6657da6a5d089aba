#!/usr/bin/env bash
# On the offline GPU host: unpack the carried dependency bundle (.gpu-deps) and wheels
# (.whl), then configure and build into build-gpu. Source it (it exports the environment
# that the tests need, and leaves the shell's options alone):  source tools/gpu/build.sh
# BUILD_TARGETS="a b": build only those targets.
source .gpu-deps/activate.sh || return 1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site
fi
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" -DProtobuf_PROTOC_EXECUTABLE="$PROTOC" -DSVDQ_PYTHON=python3 > /tmp/cmake-gpu.log 2>&1 || { tail -40 /tmp/cmake-gpu.log; return 1; }
cmake --build build-gpu -j 16 ${BUILD_TARGETS:+--target $BUILD_TARGETS} 2>&1 | tail -5
